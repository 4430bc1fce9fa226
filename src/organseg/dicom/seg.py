"""DICOM Segmentation (SEG) objects with highdicom: one segment per organ found.

Binary encoding: every reader in use (3D Slicer, OHIF, dcmqi, pydicom-seg, the PACS
viewers built on them) reads it, where the label-map encoding of DICOM 2024 is still
rare. Frames without any organ are left out, so the object stays small.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
from matplotlib.colors import to_rgb
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from organseg import __version__
from organseg.atomic import atomic_write
from organseg.dicom.source import SourceSeries
from organseg.errors import InputError
from organseg.io import Volume
from organseg.labels import LATERALITY_CODES, LabelSet, label_colour

SERIES_NUMBER = 901  # high, so the object sorts after the scanner's own series in a viewer


def write_seg(labels: Volume, source: SourceSeries, label_set: LabelSet, path: Path, model: str) -> bool:
    """Write the organs of `labels` (on `source`'s grid) as a DICOM SEG at `path`; False if no organ was found."""
    present = organs_present(labels.array, label_set, path)
    if not present:
        return False
    # Segment numbers run 1..n over the organs found; frames are the source's slices in order.
    numbers = np.zeros(max(present) + 1, np.uint16)
    numbers[present] = np.arange(1, len(present) + 1)
    frames = np.ascontiguousarray(numbers[labels.array].transpose(2, 1, 0))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="organseg", family=codes.cid7162.ArtificialIntelligence, version=__version__, parameters={"model": model}
    )
    descriptions = [_describe(number, label, label_set, algorithm) for number, label in enumerate(present, start=1)]
    with warnings.catch_warnings():
        # Scanner patient names are often one word; highdicom warns about each and copies them unchanged.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(source, frames, descriptions, model)
    with atomic_write(path) as temporary:
        seg.save_as(temporary)
    return True


def _segmentation(source: SourceSeries, frames: np.ndarray, descriptions: list, model: str) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=list(source.slices),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="organseg",
        manufacturer_model_name=model,
        software_versions=__version__,
        device_serial_number="0",
        series_description="organseg organs",
        content_label="ORGANS",
        content_description="Abdominal organs segmented by organseg",
    )


def organs_present(array: np.ndarray, label_set: LabelSet, path: Path) -> list[int]:
    """The label ids found in `array`, in increasing order; a value the label set does not name is refused."""
    found = [int(v) for v in np.unique(array) if v != 0]
    unnamed = sorted(set(found) - set(label_set.ids))
    if unnamed:
        raise InputError(f"{path}: label values {unnamed} have no name in the model's label set; cannot describe them")
    return found


def _describe(
    number: int, label: int, label_set: LabelSet, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    name = label_set.name(label)
    kind, category, laterality = label_set.concepts(name)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=_coded(category),
        segmented_property_type=_coded(kind),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=generate_uid(),
        tracking_id=name,
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in to_rgb(label_colour(label)))),
    )
    if laterality:
        modifier = _coded(("SCT", *LATERALITY_CODES[laterality]))
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def _coded(concept: tuple[str, str, str]) -> hd.sr.CodedConcept:
    scheme, value, meaning = concept
    return hd.sr.CodedConcept(value, scheme, meaning)
