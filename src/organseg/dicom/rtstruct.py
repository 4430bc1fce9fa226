"""RT Structure Set (RTSTRUCT) objects: one ROI per organ, closed planar contours per slice.

Contours follow the organ's outer pixel edges (organseg.dicom.contours) and are placed in
patient millimetres from the label map's own geometry; each refers to the slice it lies
on. Holes and islands are separate contours (even-odd rule). Coordinates are written as
DS values of at most 16 characters, rounded to 0.1 micrometre, which planning systems
read; more digits than that make some of them refuse the file.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from organseg import __version__
from organseg.atomic import atomic_write
from organseg.dicom.contours import outlines
from organseg.dicom.seg import SERIES_NUMBER, organs_present
from organseg.dicom.source import SourceSeries
from organseg.io import Volume
from organseg.labels import LabelSet, label_colour
from organseg.preprocess.crop import bounding_box

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# The study is referred to as DICOM's RT structure sets do, through this (retired) SOP class.
STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"
MM_DECIMALS = 4
# Attributes copied from the source so the structure set joins its patient and study.
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
# Type 2 attributes: present, possibly empty.
REQUIRED_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def write_rtstruct(labels: Volume, source: SourceSeries, label_set: LabelSet, path: Path, model: str) -> bool:
    """Write the organs of `labels` (on `source`'s grid) as an RTSTRUCT at `path`; False if no organ was found."""
    present = organs_present(labels.array, label_set, path)
    if not present:
        return False
    dataset = _header(source, model)
    for number, label in enumerate(present, start=1):
        name = label_set.name(label)
        dataset.StructureSetROISequence.append(_roi(number, name, source))
        dataset.ROIContourSequence.append(_roi_contours(number, labels, label, source))
        dataset.RTROIObservationsSequence.append(_observation(number, label_set.concepts(name)[0]))
    with atomic_write(path) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    return True


def _header(source: SourceSeries, model: str) -> Dataset:
    now = datetime.datetime.now()
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    first = source.slices[0]
    dataset.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100") or "ISO_IR 100"
    dataset.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    for keyword in REQUIRED_EMPTY:
        setattr(dataset, keyword, "")
    for keyword in PATIENT_AND_STUDY:
        if keyword in first and first.get(keyword) is not None:
            setattr(dataset, keyword, first.get(keyword))
    dataset.StudyInstanceUID = source.study_uid
    dataset.FrameOfReferenceUID = source.frame_of_reference_uid
    dataset.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SeriesNumber = SERIES_NUMBER + 1
    dataset.SeriesDescription = "organseg organs"
    dataset.Manufacturer = "organseg"
    dataset.ManufacturerModelName = model[:64]
    dataset.SoftwareVersions = __version__
    dataset.OperatorsName = ""
    dataset.InstanceNumber = 1
    dataset.StructureSetLabel = "organseg"
    dataset.StructureSetName = "organs"
    dataset.StructureSetDate = now.strftime("%Y%m%d")
    dataset.StructureSetTime = now.strftime("%H%M%S")
    dataset.ReferencedFrameOfReferenceSequence = Sequence([_frame_reference(source)])
    dataset.StructureSetROISequence = Sequence()
    dataset.ROIContourSequence = Sequence()
    dataset.RTROIObservationsSequence = Sequence()
    return dataset


def _frame_reference(source: SourceSeries) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = source.series_uid
    series.ContourImageSequence = Sequence([_image_reference(image) for image in source.slices])
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_REFERENCE_CLASS
    study.ReferencedSOPInstanceUID = source.study_uid
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = source.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([study])
    return frame


def _image_reference(image: Dataset) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return reference


def _roi(number: int, name: str, source: SourceSeries) -> Dataset:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = source.frame_of_reference_uid
    roi.ROIName = name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"organseg {__version__}"
    return roi


def _roi_contours(number: int, labels: Volume, label: int, source: SourceSeries) -> Dataset:
    contours = Sequence()
    geometry = labels.geometry
    mask = labels.array == label
    # Outlines are traced in the organ's box, not the whole slice: a 512x512 slice holds a small organ.
    box = bounding_box(mask, geometry.spacing_mm)
    (i0, j0, _), (i1, j1, _) = box.start, box.stop
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        for outline in outlines(mask[i0:i1, j0:j1, k]):
            index = np.column_stack([outline + (i0, j0), np.full(len(outline), float(k))])
            contour = Dataset()
            contour.ContourImageSequence = Sequence([_image_reference(source.slices[k])])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(outline)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = _ds_values(geometry.index_to_world(index).ravel())
            contours.append(contour)
    roi = Dataset()
    roi.ROIDisplayColor = [round(255 * c) for c in to_rgb(label_colour(label))]
    roi.ContourSequence = contours
    roi.ReferencedROINumber = number
    return roi


def _observation(number: int, concept: tuple[str, str, str]) -> Dataset:
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = "ORGAN"
    observation.ROIInterpreter = ""
    identification = Dataset()
    identification.CodingSchemeDesignator, identification.CodeValue, identification.CodeMeaning = concept
    observation.RTROIIdentificationCodeSequence = Sequence([identification])
    return observation


def _ds_values(values: np.ndarray) -> list[float]:
    """Millimetres for DS: rounded to MM_DECIMALS, Python's shortest repr then needs at most 16 characters."""
    return [float(v) for v in np.round(values, MM_DECIMALS) + 0.0]
