"""Synthetic abdominal CT phantoms with the 13 FLARE22 organs labeled.

`generate_case` draws one case: a contrast-enhanced (portal venous) CT with body wall,
spine, ribs, lung bases, bowel and the 13 organs in anatomically plausible places, with
random body size, organ sizes, deformation, contrast, noise, field of view and header
orientation. `write_dataset` writes many of them in the nnU-Net v2 raw layout.

Modules: canvas (grid, deformation, smooth random fields), shapes (ellipsoids, tubes),
body (everything but the organs), organs (the 13 organs), tones (HU and scanner effects),
case (one case), orientations (slice orientations for DICOM series), writer (a dataset).
"""

from organseg.phantom.case import generate_case
from organseg.phantom.writer import write_dataset

__all__ = ["generate_case", "write_dataset"]
