"""The DICOM series a label map was predicted on: its headers, each slice placed on the label map's grid.

DICOM-SEG and RTSTRUCT objects refer to the study, the series, the frame of reference and
every slice of their source, so those headers are read here (pydicom, without pixel data)
and checked once. Anonymisers often blank the SOP Class and SOP Instance UIDs in the data
set while the file meta keeps them: those are recovered; what cannot be recovered is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from organseg.errors import InputError
from organseg.geometry import Geometry

# A slice whose position lies further than this (in voxels) from a label-map slice is not on the grid.
ON_GRID_VOXELS = 0.01
ON_GRID_COSINE = 1e-4


@dataclass(frozen=True)
class SourceSeries:
    """A series' headers, `slices[k]` being the slice at index k of the label map's slice axis."""

    folder: Path
    slices: tuple[Dataset, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str


def read_source_series(folder: Path, geometry: Geometry) -> SourceSeries:
    """Read the headers of the series in `folder` and order them along `geometry`'s slice axis (index k).

    Raises InputError for what an output cannot do without (a study, a frame of reference,
    SOP UIDs) and ValueError when the slices do not lie on `geometry` (a label map that was
    not made on this series).
    """
    folder = Path(folder)
    datasets = [_recover_sop_uids(dataset, path) for path, dataset in _read_headers(folder)]
    study_uid = _one_uid(datasets, "StudyInstanceUID", folder, "Study Instance UID")
    series_uid = _one_uid(datasets, "SeriesInstanceUID", folder, "Series Instance UID")
    frame_uid = _one_uid(datasets, "FrameOfReferenceUID", folder, "Frame of Reference UID")
    for dataset in datasets:  # blanks filled in memory, so every slice a library reads is complete
        dataset.StudyInstanceUID = study_uid
    return SourceSeries(folder, _on_grid(datasets, geometry, folder), study_uid, series_uid, frame_uid)


def _read_headers(folder: Path) -> list[tuple[Path, Dataset]]:
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue  # not DICOM (a README, a DICOMDIR's companions); the image reader ignored it too
        if "ImagePositionPatient" in dataset:
            found.append((path, _default_character_set(dataset)))
    if not found:
        raise InputError(f"{folder}: no DICOM image slices with positions; give the folder of the CT series")
    return found


def _default_character_set(dataset: Dataset) -> Dataset:
    """Drop an empty Specific Character Set: absent and empty both mean the default repertoire."""
    if "SpecificCharacterSet" in dataset and not dataset.SpecificCharacterSet:
        del dataset.SpecificCharacterSet
    return dataset


def _recover_sop_uids(dataset: Dataset, path: Path) -> Dataset:
    meta = getattr(dataset, "file_meta", None)
    for attribute, meta_attribute, words in (
        ("SOPClassUID", "MediaStorageSOPClassUID", "SOP Class UID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID", "SOP Instance UID"),
    ):
        if str(dataset.get(attribute, "") or "").strip():
            continue
        recovered = str(meta.get(meta_attribute, "") or "").strip() if meta is not None else ""
        if not recovered:
            raise InputError(f"{path}: no {words} in the data set or its file meta; a DICOM output cannot refer to it")
        setattr(dataset, attribute, recovered)
    return dataset


def _one_uid(datasets: list[Dataset], attribute: str, folder: Path, words: str) -> str:
    values = {str(d.get(attribute, "") or "").strip() for d in datasets} - {""}
    if not values:
        raise InputError(f"{folder}: the series has no {words} (blanked?); DICOM outputs must refer to one")
    if len(values) > 1:
        raise InputError(
            f"{folder}: the series has {len(values)} different {words}s; DICOM outputs need one, "
            "so put each series in its own folder"
        )
    return values.pop()


def _on_grid(datasets: list[Dataset], geometry: Geometry, folder: Path) -> tuple[Dataset, ...]:
    """The slices ordered by their index along the grid's slice axis; every index filled exactly once."""
    direction = geometry.direction_matrix
    by_index: dict[int, Dataset] = {}
    for dataset in datasets:
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        if not np.allclose(orientation, np.concatenate([direction[:, 0], direction[:, 1]]), atol=ON_GRID_COSINE):
            raise ValueError(f"{folder}: slice orientation {list(orientation)} differs from the label map's")
        if (int(dataset.Rows), int(dataset.Columns)) != (geometry.shape[1], geometry.shape[0]):
            raise ValueError(
                f"{folder}: slices of {dataset.Rows}x{dataset.Columns} pixels for a label map of {geometry.shape}"
            )
        index = geometry.world_to_index(np.asarray(dataset.ImagePositionPatient, dtype=float))
        k = int(round(index[2]))
        if not np.allclose(index, (0, 0, k), atol=ON_GRID_VOXELS) or not 0 <= k < geometry.shape[2] or k in by_index:
            raise ValueError(
                f"{folder}: slice at {list(dataset.ImagePositionPatient)} mm is not on the label map's grid"
            )
        by_index[k] = dataset
    if len(by_index) != geometry.shape[2]:
        raise ValueError(f"{folder}: {len(by_index)} slices for a label map of {geometry.shape[2]}")
    return tuple(by_index[k] for k in range(geometry.shape[2]))
