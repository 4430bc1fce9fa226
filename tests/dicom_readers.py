"""Independent readers of organseg's DICOM outputs, for the round-trip tests.

They take positions from the DICOM files themselves (the SEG as dcmqi decodes it, the
RTSTRUCT's contour points in millimetres and the CT slices' own position, orientation and
spacing headers), never from organseg's Geometry, and compare with the label map in
patient millimetres: a mirrored, rotated or shifted output does not match.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from organseg.dicom.contours import fill

DCMQI_SEG_READER = Path(sys.executable).with_name("segimage2itkimage")


def seg_as_label_map(seg: Path, label_map: Path, names: dict[str, int], workdir: Path) -> np.ndarray:
    """The SEG decoded by dcmqi, resampled in patient mm onto `label_map`'s grid, as label ids ([k, j, i])."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [str(DCMQI_SEG_READER), "--inputDICOM", str(seg), "--outputDirectory", str(workdir)]
    subprocess.run([*command, "--outputType", "nifti", "--mergeSegments"], check=True, capture_output=True)
    meta = json.loads((workdir / "meta.json").read_text())
    segments = [segment for group in meta["segmentAttributes"] for segment in group]
    lookup = np.zeros(max(s["labelID"] for s in segments) + 1, np.int64)
    for segment in segments:
        lookup[segment["labelID"]] = names[segment["SegmentLabel"]]
    decoded = sitk.ReadImage(str(workdir / "1.nii.gz"))
    reference = sitk.ReadImage(str(label_map))
    # dcmqi stores the extent of the frames present; nearest neighbour in mm puts them on the grid.
    on_grid = sitk.Resample(decoded, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, decoded.GetPixelID())
    counts = (sitk.GetArrayFromImage(decoded) > 0).sum(), (sitk.GetArrayFromImage(on_grid) > 0).sum()
    assert counts[0] == counts[1], f"resampling onto the label map's grid lost voxels: {counts}"
    return lookup[sitk.GetArrayFromImage(on_grid)]


def rtstruct_masks(rtstruct: Path, series: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each ROI's contours filled on the slices they refer to: {roi name: {SOP instance UID: mask [row, col]}}.

    A contour point further than 1 micrometre from its slice's plane fails: contours must
    lie on the slice they name.
    """
    slices = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir())}
    structure = pydicom.dcmread(rtstruct)
    names = {roi.ROINumber: roi.ROIName for roi in structure.StructureSetROISequence}
    masks: dict[str, dict[str, np.ndarray]] = {}
    for roi in structure.ROIContourSequence:
        per_slice: dict[str, list[np.ndarray]] = {}
        for contour in roi.ContourSequence:
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            per_slice.setdefault(uid, []).append(_pixel_coordinates(points, slices[uid]))
        masks[names[roi.ReferencedROINumber]] = {
            uid: fill(polygons, (int(slices[uid].Rows), int(slices[uid].Columns)))
            for uid, polygons in per_slice.items()
        }
    return masks


def _pixel_coordinates(points: np.ndarray, image: pydicom.Dataset) -> np.ndarray:
    """(row, column) of patient-mm points on `image`'s plane."""
    orientation = np.asarray(image.ImageOrientationPatient, dtype=float)
    along_row, along_column = orientation[:3], orientation[3:]
    offset = points - np.asarray(image.ImagePositionPatient, dtype=float)
    row_spacing, column_spacing = (float(s) for s in image.PixelSpacing)
    normal = np.cross(along_row, along_column)
    assert np.abs(offset @ normal).max() < 1e-3, "contour points lie off their slice's plane"
    return np.column_stack([offset @ along_column / row_spacing, offset @ along_row / column_spacing])


def label_map_on_slice(label_map: Path, image: pydicom.Dataset) -> np.ndarray:
    """The label map's ids at the pixel centres of one CT slice ([row, col]), looked up in patient mm."""
    labels = sitk.ReadImage(str(label_map))
    orientation = np.asarray(image.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(s) for s in image.PixelSpacing)
    rows, columns = np.meshgrid(np.arange(int(image.Rows)), np.arange(int(image.Columns)), indexing="ij")
    world = (
        np.asarray(image.ImagePositionPatient, dtype=float)
        + (columns * column_spacing)[..., None] * orientation[:3]
        + (rows * row_spacing)[..., None] * orientation[3:]
    )
    to_world = np.asarray(labels.GetDirection()).reshape(3, 3) * np.asarray(labels.GetSpacing())
    offset = world.reshape(-1, 3) - np.asarray(labels.GetOrigin())
    index = np.rint(offset @ np.linalg.inv(to_world).T).astype(int)
    inside = np.all((index >= 0) & (index < np.asarray(labels.GetSize())), axis=1)
    array = sitk.GetArrayFromImage(labels)  # [k, j, i]
    values = np.zeros(len(index), array.dtype)
    values[inside] = array[index[inside, 2], index[inside, 1], index[inside, 0]]
    return values.reshape(rows.shape)
