"""What `organseg predict` writes for a case: a NIfTI label map, a DICOM SEG, an RTSTRUCT, or several.

Each object is named after the case's label map path: `dir/case.nii.gz` gives
`dir/case.seg.dcm` and `dir/case.rtstruct.dcm`. The DICOM objects need the source series'
headers, so they are only made for DICOM series inputs; those headers are read and
checked before the networks run, so a series that cannot be answered in DICOM fails early.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from organseg.atomic import split_suffix
from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import Volume, write_label
from organseg.labels import LabelSet

if TYPE_CHECKING:
    from organseg.dicom.source import SourceSeries

log = logging.getLogger(__name__)
OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")
DICOM_TYPES = ("dicom-seg", "rtstruct")
SUFFIXES = {"dicom-seg": ".seg.dcm", "rtstruct": ".rtstruct.dcm"}


def parse_output_types(text: str) -> tuple[str, ...]:
    """The output types of a comma-separated list such as 'nifti,rtstruct', in OUTPUT_TYPES order."""
    asked = [word.strip().lower() for word in text.split(",") if word.strip()]
    unknown = sorted(set(asked) - set(OUTPUT_TYPES))
    if unknown or not asked:
        raise InputError(f"--output-type {text!r}: give one or more of {','.join(OUTPUT_TYPES)}, comma-separated")
    return tuple(kind for kind in OUTPUT_TYPES if kind in asked)


def output_paths(label_map: Path, types: tuple[str, ...]) -> dict[str, Path]:
    """Where each output type of the case whose label map path is `label_map` goes."""
    stem, _ = split_suffix(label_map)
    return {kind: label_map if kind == "nifti" else label_map.with_name(stem + SUFFIXES[kind]) for kind in types}


def source_for(paths: dict[str, Path], image: Path, geometry: Geometry) -> SourceSeries | None:
    """The source series' headers when `paths` holds a DICOM output, else None."""
    if not any(kind in DICOM_TYPES for kind in paths):
        return None
    _dicom_writers()  # a missing package fails here, before the networks run
    from organseg.dicom.source import read_source_series

    return read_source_series(image, geometry)


def write_outputs(
    labels: Volume, paths: dict[str, Path], label_set: LabelSet, model: str, source: SourceSeries | None = None
) -> list[Path]:
    """Write `labels` as every output in `paths`; returns the files written (an empty SEG or RTSTRUCT is not)."""
    wants_dicom = any(kind in DICOM_TYPES for kind in paths)
    if source is None and wants_dicom:
        raise InputError(f"{next(iter(paths.values()))}: DICOM outputs need a DICOM series as input")
    writers = _dicom_writers() if wants_dicom else {}
    written = []
    for kind, path in paths.items():
        if kind == "nifti":
            write_label(labels.array, labels.geometry, path)
            written.append(path)
        elif writers[kind](labels, source, label_set, path, model):
            written.append(path)
        else:
            log.warning("%s: no organ found, so no %s written (it needs at least one organ)", path, kind)
    return written


def _dicom_writers() -> dict:
    """The writer of each DICOM output type.

    pydicom, highdicom and scikit-image are imported only when a DICOM output is asked
    for: they add ~0.5 s to a process start, most predictions are NIfTI only, and the slim
    runtime (organseg[runtime]) may leave them out: the command line then names the extra.
    """
    from organseg.dicom.rtstruct import write_rtstruct
    from organseg.dicom.seg import write_seg

    return {"dicom-seg": write_seg, "rtstruct": write_rtstruct}
