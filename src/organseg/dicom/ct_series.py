"""A CT volume written as a DICOM series of CT Image Storage slices (pydicom).

Slice k of the volume becomes one file; its position and orientation come from the
volume's geometry, so the series lies exactly where the volume does in any orientation.
UIDs derive from `uid_seed`, so the same volume and seed give the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from organseg import __version__
from organseg.atomic import atomic_folder
from organseg.io import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
HU_RANGE = (-1024, 3071)  # 12-bit CT values as scanners store them
SERIES_DATE = "20260101"  # fixed, so files are byte-identical per seed


def write_ct_series(volume: Volume, folder: Path, uid_seed: str, patient_id: str, reverse_files: bool = False) -> Path:
    """Write `volume` (HU) as a series folder, one file per slice along index axis k; returns the folder.

    `reverse_files`: number the files and instances from the last slice to the first, as
    scanners that step from head to foot do, so readers must sort by position.
    The folder appears complete or not at all.
    """
    geometry = volume.geometry
    if np.linalg.det(geometry.direction_matrix) < 0:
        raise ValueError("slices must run along the normal of their rows and columns; flip the slice axis first")
    folder = Path(folder)
    with atomic_folder(folder) as staging:
        common = _series_header(volume, uid_seed, patient_id)
        pixels = np.clip(np.rint(volume.array), *HU_RANGE).astype(np.int16)
        count = geometry.shape[2]
        for k in range(count):
            number = count - k if reverse_files else k + 1
            dataset = _slice(
                common, pixels[:, :, k], geometry.index_to_world(np.array([0.0, 0.0, k])), number, uid_seed
            )
            dataset.save_as(staging / f"{number:04d}.dcm", enforce_file_format=True)
    return folder


def _series_header(volume: Volume, uid_seed: str, patient_id: str) -> Dataset:
    geometry = volume.geometry
    direction = geometry.direction_matrix
    header = Dataset()
    header.SpecificCharacterSet = "ISO_IR 100"
    header.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    header.SOPClassUID = CT_IMAGE_STORAGE
    header.StudyDate = header.SeriesDate = header.ContentDate = SERIES_DATE
    header.StudyTime = header.SeriesTime = header.ContentTime = "120000"
    header.AccessionNumber = ""
    header.Modality = "CT"
    header.Manufacturer = "organseg phantom"
    header.ReferringPhysicianName = ""
    header.StudyDescription = "organseg phantom"
    header.SeriesDescription = "phantom CT"
    header.PatientName = f"Phantom^{patient_id}"
    header.PatientID = patient_id
    header.PatientBirthDate = ""
    header.PatientSex = "O"
    header.SliceThickness = _ds(geometry.spacing_mm[2])
    header.KVP = "120"
    header.SoftwareVersions = __version__
    header.PatientPosition = "HFS"
    header.Laterality = ""  # type 2C: dicom3tools cannot tell that the abdomen is not a paired part
    header.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    header.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    header.StudyID = "1"
    header.SeriesNumber = 1
    header.AcquisitionNumber = 1
    header.FrameOfReferenceUID = generate_uid(entropy_srcs=[uid_seed, "frame"])
    header.PositionReferenceIndicator = ""
    header.ImageOrientationPatient = [_ds(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    # Rows step along index axis j, columns along i: PixelSpacing is (row spacing, column spacing).
    header.PixelSpacing = [_ds(geometry.spacing_mm[1]), _ds(geometry.spacing_mm[0])]
    header.SamplesPerPixel = 1
    header.PhotometricInterpretation = "MONOCHROME2"
    header.Rows, header.Columns = geometry.shape[1], geometry.shape[0]
    header.BitsAllocated, header.BitsStored, header.HighBit = 16, 16, 15
    header.PixelRepresentation = 1
    header.RescaleIntercept, header.RescaleSlope, header.RescaleType = "0", "1", "HU"
    header.WindowCenter, header.WindowWidth = "40", "400"
    return header


def _slice(common: Dataset, plane: np.ndarray, position: np.ndarray, number: int, uid_seed: str) -> Dataset:
    dataset = Dataset()
    dataset.update(common)
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "slice", str(number)])
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.InstanceNumber = number
    dataset.ImagePositionPatient = [_ds(v) for v in position]
    dataset.PixelData = np.ascontiguousarray(plane.T).tobytes()  # [i, j] -> rows of j, columns of i
    return dataset


def _ds(value: float) -> str:
    """A DS string of at most 16 characters; positions to 1 micrometre, cosines to 1e-6."""
    return format_number_as_ds(round(float(value), 6) + 0.0)
