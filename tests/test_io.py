"""Image I/O: real files read with correct HU and geometry, label maps written exactly, bad files refused."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import make_volume
from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import Volume, image_stem, read_image, read_label, write_label, write_volume

FULL = "ts_abdomen/image.nii.gz"
BAD_ORIGIN = "ts_upper_abdomen_bad_origin/image.nii.gz"
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def test_reads_real_nifti_of_both_dtypes_with_header_geometry(real_data: Path) -> None:
    full = read_image(real_data / FULL)
    part = read_image(real_data / BAD_ORIGIN)
    assert full.array.dtype == np.int32 and part.array.dtype == np.int16
    assert full.geometry.shape == (122, 101, 112) and part.geometry.shape == (122, 101, 30)
    for volume in (full, part):
        assert volume.geometry.spacing_mm == (3.0, 3.0, 3.0)
        assert volume.geometry.direction == RAS_DIRECTION
    # The cut-out keeps the full volume's origin in its header: we follow each file's own header.
    assert part.geometry.origin_mm == full.geometry.origin_mm
    # Same patient, slices 82-111, HU clipped to [-1100, 1207]: values and axis order agree exactly.
    assert np.array_equal(part.array, np.clip(full.array[:, :, 82:112], -1100, 1207))
    corners = full.array[[0, -1]][:, [0, -1]]
    assert np.median(corners) < -900, "air outside the body must read as about -1000 HU"


def test_reads_dicom_series_in_hounsfield_units(real_data: Path) -> None:
    folder = real_data / "dcmqi_3slice" / "dicom"
    volume = read_image(folder)
    assert volume.geometry.shape == (512, 512, 3)
    assert np.allclose(volume.geometry.spacing_mm, (0.810547, 0.810547, 1.0))
    assert np.allclose(volume.geometry.origin_mm, (-235.199997, -226.800003, -128.690002))
    for path in folder.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        hu = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
        slice_index = round((float(dataset.ImagePositionPatient[2]) - volume.geometry.origin_mm[2]) / 1.0)
        # pydicom gives [row, column] = [y, x]; our arrays are [x, y, z].
        assert np.array_equal(volume.array[:, :, slice_index], hu.T)


@pytest.mark.parametrize("name", [FULL, BAD_ORIGIN, "dcmqi_3slice/dicom", "dcmqi_3slice/liver_seg.nrrd"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_map_written_with_exact_geometry_of_each_real_file(real_data: Path, tmp_path: Path, name, suffix) -> None:
    source = read_image(real_data / name)
    labels = (source.array > 100).astype(np.uint8) * 3
    out = tmp_path / f"labels{suffix}"
    write_label(labels, source.geometry, out)
    back = read_label(out)
    assert back.array.dtype == np.uint8
    assert np.array_equal(back.array, labels)
    assert back.geometry.shape == source.geometry.shape
    # NIfTI stores the affine in float32: the geometry comes back within float32 rounding.
    assert back.geometry.is_close(source.geometry, tolerance_mm=1e-5, tolerance_cos=1e-6)
    assert list(tmp_path.iterdir()) == [out], "no temporary file may be left behind"


def test_real_label_files_read_as_flare_ids(real_data: Path) -> None:
    labels = read_label(real_data / "ts_abdomen" / "label_flare13.nii.gz")
    present = set(np.unique(labels.array).tolist())
    assert present == set(range(14)) - {10}, "12 of 13 organs, no esophagus"


def test_label_over_255_ids_written_as_uint16(tmp_path: Path) -> None:
    geometry = Geometry((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    labels = np.zeros(geometry.shape, np.int32)
    labels[1, 2, 3] = 300
    write_label(labels, geometry, tmp_path / "big.nii.gz")
    back = read_label(tmp_path / "big.nii.gz")
    assert back.array.dtype == np.uint16 and back.array[1, 2, 3] == 300


def test_oblique_geometry_round_trips(tmp_path: Path) -> None:
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    volume = make_volume(direction=tuple(rotation.ravel()))
    write_volume(volume, tmp_path / "oblique.nii.gz")
    back = read_image(tmp_path / "oblique.nii.gz")
    assert np.array_equal(back.array, volume.array)
    assert back.geometry.is_close(volume.geometry, tolerance_mm=1e-5, tolerance_cos=1e-6)


def test_float_and_unsigned_intensities_are_accepted(tmp_path: Path) -> None:
    volume = make_volume()
    for dtype in (np.float32, np.uint16):
        array = (volume.array.astype(np.float64) + 1024).astype(dtype)
        write_volume(Volume(array, volume.geometry), tmp_path / f"x_{np.dtype(dtype).name}.nrrd")
        assert read_image(tmp_path / f"x_{np.dtype(dtype).name}.nrrd").array.dtype == dtype


def test_image_stem_strips_compound_suffix() -> None:
    assert image_stem(Path("a/case_0000.nii.gz")) == "case_0000"
    assert image_stem(Path("b.mha")) == "b"


# --- refusals: one clear message naming the file -------------------------------------------


def _written(tmp_path: Path, name: str = "ct.nii.gz", volume: Volume | None = None) -> Path:
    path = tmp_path / name
    write_volume(volume or make_volume(shape=(40, 36, 24)), path)
    return path


def _expect_refusal(path: Path, *words: str, reader=read_image) -> None:
    with pytest.raises(InputError) as caught:
        reader(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message, message


def test_truncated_nifti_gz_is_refused_not_zero_filled(real_data: Path, tmp_path: Path) -> None:
    data = (real_data / FULL).read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    _expect_refusal(path, "truncated")


def test_truncated_uncompressed_nifti_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.nii"
    write_volume(make_volume(shape=(40, 36, 24)), path, compress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _expect_refusal(path, "truncated")


def test_corrupt_gzip_payload_is_refused(tmp_path: Path) -> None:
    path = _written(tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    _expect_refusal(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_nrrd_and_metaimage_are_refused(tmp_path: Path, suffix: str) -> None:
    path = _written(tmp_path, "ct" + suffix)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_refusal(path, "not a readable image")


def test_missing_empty_and_non_image_files_are_refused(tmp_path: Path) -> None:
    _expect_refusal(tmp_path / "absent.nii.gz", "no such file")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    _expect_refusal(tmp_path / "empty.nii.gz", "empty")
    (tmp_path / "text.nii.gz").write_text("hello")
    _expect_refusal(tmp_path / "text.nii.gz", "gzip")
    (tmp_path / "text.nrrd").write_text("hello")
    _expect_refusal(tmp_path / "text.nrrd", "not a readable image")


def test_impossible_header_dimensions_are_refused(tmp_path: Path) -> None:
    path = _written(tmp_path, "ct.nii")
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 42, -5)  # dim[1] of the NIfTI-1 header
    path.write_bytes(bytes(data))
    _expect_refusal(path, "impossible dimensions")


def test_two_and_four_dimensional_images_are_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image(20, 20, sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    _expect_refusal(tmp_path / "flat.nii.gz", "2D image")
    sitk.WriteImage(sitk.Image([20, 20, 1], sitk.sitkInt16), str(tmp_path / "one_slice.nii.gz"))
    _expect_refusal(tmp_path / "one_slice.nii.gz", "single slice")
    sitk.WriteImage(sitk.Image([10, 10, 10, 3], sitk.sitkInt16), str(tmp_path / "series.nii.gz"))
    _expect_refusal(tmp_path / "series.nii.gz", "4D image with 3 volumes")
    sitk.WriteImage(sitk.Image([10, 10, 10], sitk.sitkVectorFloat32, 3), str(tmp_path / "vector.mha"))
    _expect_refusal(tmp_path / "vector.mha", "3 values per voxel")


def test_four_dimensional_image_with_one_volume_is_accepted(tmp_path: Path) -> None:
    image = sitk.Image([10, 11, 12, 1], sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "single.nii.gz"))
    assert read_image(tmp_path / "single.nii.gz").geometry.shape == (10, 11, 12)


def test_nan_intensities_are_refused(tmp_path: Path) -> None:
    volume = make_volume()
    array = volume.array.astype(np.float32)
    array[3, 4, 5] = np.nan
    path = _written(tmp_path, "nan.nii.gz", Volume(array, volume.geometry))
    _expect_refusal(path, "NaN")


@pytest.mark.parametrize("spacing", [(0.01, 0.8, 2.5), (0.8, 0.8, 50.0)])
def test_insane_spacing_is_refused(tmp_path: Path, spacing) -> None:
    path = _written(tmp_path, volume=make_volume(spacing_mm=spacing))
    _expect_refusal(path, "spacing")


def test_non_integer_and_negative_labels_are_refused(tmp_path: Path) -> None:
    volume = make_volume(labels=3)
    fractional = volume.array.astype(np.float32) * 0.5
    path = _written(tmp_path, "frac.nii.gz", Volume(fractional, volume.geometry))
    _expect_refusal(path, "non-integer", reader=read_label)
    negative = volume.array.astype(np.int16) - 1
    path = _written(tmp_path, "neg.nii.gz", Volume(negative, volume.geometry))
    _expect_refusal(path, "negative", reader=read_label)
    whole_floats = volume.array.astype(np.float32)
    path = _written(tmp_path, "whole.nii.gz", Volume(whole_floats, volume.geometry))
    assert np.array_equal(read_label(path).array, volume.array)


# --- DICOM series problems ------------------------------------------------------------------


def _dicom_series(real_data: Path, folder: Path, slices: int = 6) -> list[Path]:
    """A synthetic series of `slices` 1 mm-spaced slices made from one real DICOM slice."""
    template = pydicom.dcmread(real_data / "dcmqi_3slice" / "dicom" / "01.dcm")
    folder.mkdir()
    paths = []
    for index in range(slices):
        template.ImagePositionPatient[2] = -100.0 + index
        template.InstanceNumber = index + 1
        template.SOPInstanceUID = pydicom.uid.generate_uid()
        path = folder / f"{index:03d}.dcm"
        template.save_as(path)
        paths.append(path)
    return paths


def test_synthetic_dicom_series_reads(real_data: Path, tmp_path: Path) -> None:
    _dicom_series(real_data, tmp_path / "series")
    assert read_image(tmp_path / "series").geometry.shape == (512, 512, 6)


def test_dicom_series_with_missing_slice_is_refused(real_data: Path, tmp_path: Path) -> None:
    paths = _dicom_series(real_data, tmp_path / "series")
    paths[3].unlink()
    _expect_refusal(tmp_path / "series", "slice is missing")


def test_dicom_folder_with_two_series_is_refused(real_data: Path, tmp_path: Path) -> None:
    paths = _dicom_series(real_data, tmp_path / "series")
    other = pydicom.dcmread(paths[0])
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.save_as(paths[0])
    _expect_refusal(tmp_path / "series", "2 DICOM series")


def test_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not dicom")
    _expect_refusal(tmp_path, "no DICOM series")


# --- atomic writes ----------------------------------------------------------------------------


def test_write_into_missing_folder_is_refused(tmp_path: Path) -> None:
    volume = make_volume(labels=2)
    with pytest.raises(InputError, match="does not exist"):
        write_label(volume.array, volume.geometry, tmp_path / "nowhere" / "x.nii.gz")


def test_disk_full_during_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    def fill_disk(image, path, useCompression=True):  # noqa: N803 - SimpleITK's keyword
        Path(path).write_bytes(b"partial")
        raise RuntimeError("ITK ERROR: NiftiImageIO: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", fill_disk)
    volume = make_volume(labels=2)
    with pytest.raises(OSError, match="No space left on device"):
        write_label(volume.array, volume.geometry, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_gzip_check_reads_whole_stream(tmp_path: Path) -> None:
    """A valid file written by other tools (plain gzip of a NIfTI) reads."""
    plain = _written(tmp_path, "ct.nii")
    regzipped = tmp_path / "regz.nii.gz"
    with open(plain, "rb") as source, gzip.open(regzipped, "wb") as target:
        shutil.copyfileobj(source, target)
    assert np.array_equal(read_image(regzipped).array, read_image(plain).array)
