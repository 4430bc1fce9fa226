"""Reading CT images and label maps, writing label maps: the only module that knows SimpleITK.

Arrays are indexed [i, j, k] in the image's index order (see `organseg.geometry`):
SimpleITK's GetArrayFromImage gives [k, j, i], so every array crossing this module is
transposed here and nowhere else.

Reads are checked before they are trusted: SimpleITK fills a truncated NIfTI with zeros
without complaint, so NIfTI data size and gzip streams are verified first, and so are the
header fields ITK misreads (a zero voxel size, a NaN or infinite qform/sform).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from organseg.atomic import atomic_write
from organseg.errors import InputError
from organseg.geometry import Geometry

CHANNEL_0_SUFFIX = "_0000"  # nnU-Net's name ending of a case's (only) CT channel
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
# Voxel sizes outside this range are header errors (metres written as mm, etc.), not CT.
SANE_SPACING_MM = (0.05, 20.0)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D array indexed [i, j, k] and the geometry that places it in the patient."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"array shape {self.array.shape} does not match geometry shape {self.geometry.shape}")


def is_image_path(path: Path) -> bool:
    """True for file names with a suffix organseg reads."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> str:
    """The file name without its image suffix ('case_0000' for 'case_0000.nii.gz')."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def case_id(path: Path) -> str:
    """The case a file belongs to: its stem without nnU-Net's channel suffix ('case' for 'case_0000.nii.gz')."""
    return image_stem(path).removesuffix(CHANNEL_0_SUFFIX)


def read_image(path: str | Path) -> Volume:
    """Read a CT image (NIfTI, NRRD, MetaImage or a DICOM series folder) in HU.

    DICOM rescale slope and intercept are applied, so values are Hounsfield units.
    Raises InputError, naming the file, for anything that is not one readable 3D image.
    """
    path = Path(path)
    image = _read_dicom_series(path) if path.is_dir() else _read_file(path)
    volume = _to_volume(image, path)
    if volume.array.dtype.kind == "f" and not np.isfinite(volume.array).all():
        raise InputError(f"{path}: image has NaN or infinite intensities; fix or remove the file")
    return volume


def read_label(path: str | Path) -> Volume:
    """Read a label map as an integer array; non-integer values are refused."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; a label map must be one image file")
    volume = _to_volume(_read_file(path), path)
    array = volume.array
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: label map has non-integer values; labels must be whole numbers")
        array = array.astype(np.int32)
    if array.size and array.min() < 0:
        raise InputError(f"{path}: label map has negative values ({array.min()}); labels must be >= 0")
    return Volume(array, volume.geometry)


def write_volume(volume: Volume, path: str | Path, compress: bool = True) -> None:
    """Write a volume atomically with exactly its geometry; the suffix picks the format."""
    path = Path(path)
    if not is_image_path(path) or path.name.lower().endswith(".dcm"):
        raise InputError(f"{path}: cannot write this format; use .nii.gz, .nii, .nrrd or .mha")
    array = np.ascontiguousarray(volume.array.transpose(2, 1, 0))
    image = sitk.GetImageFromArray(array)
    geometry = volume.geometry
    image.SetSpacing(geometry.spacing_mm)
    image.SetOrigin(geometry.origin_mm)
    image.SetDirection(geometry.direction)
    if not path.parent.is_dir():
        raise InputError(f"{path}: output folder {path.parent} does not exist; create it first")
    with atomic_write(path) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=compress)
        except RuntimeError as error:
            raise OSError(f"{path}: could not write ({_itk_reason(error)})") from None


def write_label(labels: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a label map on `geometry` (uint8, or uint16 past 255 labels), atomically."""
    labels = np.asarray(labels)
    if labels.shape != geometry.shape:
        raise ValueError(f"label map shape {labels.shape} does not match geometry shape {geometry.shape}")
    dtype = np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16
    write_volume(Volume(labels.astype(dtype, copy=False), geometry), path)


def _read_file(path: Path) -> sitk.Image:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty; re-export or remove it")
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return _itk_read(path)
    _check_nifti_header(path)  # before ITK sees the file: some headers make it hang
    # Scanning the data takes as long as ITK's own read (both inflate the whole gzip
    # stream) and both release the GIL, so they run side by side.
    with ThreadPoolExecutor(max_workers=1) as pool:
        scan = pool.submit(_check_nifti_complete, path)
        try:
            image = _itk_read(path)
        finally:
            scan.result()  # a truncated or corrupt file is named as such, not as ITK saw it
    return image


def _itk_read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: not a readable image ({_itk_reason(error)})") from None


def _read_dicom_series(folder: Path) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"{folder}: folder holds no DICOM series; give an image file or a DICOM series folder")
    if len(series_ids) > 1:
        raise InputError(f"{folder}: folder holds {len(series_ids)} DICOM series; put each series in its own folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: DICOM series could not be read ({_itk_reason(error)})") from None
    _check_slice_positions(reader, folder)
    return image


def _check_slice_positions(reader: sitk.ImageSeriesReader, folder: Path) -> None:
    """Refuse a series with a missing or duplicated slice (uneven slice positions)."""
    count = len(reader.GetFileNames())
    if count < 2:
        return
    try:
        orientation = np.array(reader.GetMetaData(0, "0020|0037").split("\\"), dtype=float)
        positions = np.array([reader.GetMetaData(s, "0020|0032").split("\\") for s in range(count)], dtype=float)
    except (RuntimeError, ValueError):
        raise InputError(f"{folder}: DICOM slices lack position or orientation tags; cannot stack them") from None
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(np.sort(positions @ normal))
    typical = float(np.median(steps))
    if typical <= 1e-3:
        raise InputError(f"{folder}: DICOM series has slices at the same position; remove duplicate files")
    uneven = np.flatnonzero(np.abs(steps - typical) > 0.1 * typical + 1e-3)
    if uneven.size:
        first = int(uneven[0])
        raise InputError(
            f"{folder}: DICOM slice positions are uneven (slices {first} and {first + 1} are "
            f"{steps[first]:.2f} mm apart, typical {typical:.2f} mm): a slice is missing or duplicated"
        )


def _to_volume(image: sitk.Image, path: Path) -> Volume:
    image = _as_scalar_3d(image, path)
    spacing = image.GetSpacing()
    low, high = SANE_SPACING_MM
    if not all(low <= s <= high for s in spacing):
        raise InputError(
            f"{path}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is outside "
            f"{low}-{high} mm; fix the header's spacing"
        )
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError(f"{path}: direction cosines are not orthonormal; fix the header")
    if not np.isfinite(image.GetOrigin()).all():
        raise InputError(f"{path}: origin {image.GetOrigin()} is not a finite position; fix the header")
    geometry = Geometry(image.GetSize(), spacing, image.GetOrigin(), image.GetDirection())
    # Keep a reference to `image` until the copy is made: a view of a freed image crashes.
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(array, geometry)


def _as_scalar_3d(image: sitk.Image, path: Path) -> sitk.Image:
    """Return a scalar 3D image: drop a trailing 4th axis of length 1, refuse the rest."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: image has {image.GetNumberOfComponentsPerPixel()} values per voxel; "
            "organseg needs a single-channel CT"
        )
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = sitk.Extract(image, (*size[:3], 0), (0, 0, 0, 0))
    elif image.GetDimension() == 4:
        raise InputError(f"{path}: 4D image with {size[3]} volumes; give one 3D CT volume per file")
    elif image.GetDimension() != 3:
        raise InputError(f"{path}: {image.GetDimension()}D image; organseg needs a 3D CT volume")
    if min(image.GetSize()) < 2:
        raise InputError(f"{path}: image of size {image.GetSize()} is a single slice; organseg needs a 3D CT volume")
    return image


# NIfTI-1/-2 header fields: (dim offset, dim type, datatype offset, bitpix offset,
# vox_offset offset, vox_offset type) by header size, from the NIfTI-1 and NIfTI-2 specifications.
_NIFTI_LAYOUTS = {348: (40, "8h", 70, 72, 108, "f"), 540: (16, "8q", 12, 14, 168, "q")}
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
# Bytes per voxel by NIfTI datatype code: readers size the data by the datatype, whatever bitpix says.
_NIFTI_VOXEL_BYTES = {
    2: 1,  # uint8
    4: 2,  # int16
    8: 4,  # int32
    16: 4,  # float32
    32: 8,  # complex64
    64: 8,  # float64
    128: 3,  # RGB
    256: 1,  # int8
    512: 2,  # uint16
    768: 4,  # uint32
    1024: 8,  # int64
    1280: 8,  # uint64
    1536: 16,  # float128
    1792: 16,  # complex128
    2048: 32,  # complex256
    2304: 4,  # RGBA
}
# Placement fields by header size: pixdim (offset, type); qform_code and sform_code (offset, type);
# quatern_b..qoffset_z then srow_x..srow_z, 18 numbers in a row (offset, type).
_NIFTI_PLACEMENT = {348: (76, "8f", 252, "2h", 256, "18f"), 540: (104, "8d", 344, "2i", 352, "18d")}
_CHUNK_BYTES = 1 << 22


@dataclass(frozen=True)
class _NiftiLayout:
    data_offset: int
    data_bytes: int
    float_dtype: np.dtype | None  # set when voxel values must be checked for NaN/Inf


@contextlib.contextmanager
def _nifti_stream(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, inflated when gzipped; a truncated or corrupt stream becomes an InputError."""
    try:
        with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb") as stream:
            yield stream
    except EOFError:
        raise InputError(f"{path}: file is truncated (gzip stream ends early); re-copy or re-export it") from None
    except (OSError, zlib.error) as error:
        raise InputError(f"{path}: file is corrupt ({error}); re-copy or re-export it") from None


def _check_nifti_header(path: Path) -> None:
    """Refuse a NIfTI header that is incomplete or places the image impossibly (reads 540 bytes)."""
    with _nifti_stream(path) as stream:
        _nifti_layout(stream.read(540), path)


def _check_nifti_complete(path: Path) -> None:
    """Read a NIfTI's data through once: refuse truncation, corruption and NaN/Inf values.

    ITK fills a truncated NIfTI with zeros and reads NaN as 0, so neither shows after
    SimpleITK's read; a gzip stream read to its end also verifies its checksum.
    """
    with _nifti_stream(path) as stream:
        header = stream.read(540)
        layout = _nifti_layout(header, path)
        total = len(header) + _scan_data(stream, header, layout, path)
    expected = layout.data_offset + layout.data_bytes
    if total < expected:
        raise InputError(
            f"{path}: file is truncated ({total} of {expected} bytes of image data); re-copy or re-export it"
        )


def _scan_data(stream, header: bytes, layout: _NiftiLayout, path: Path) -> int:
    """Read the rest of `stream`; check float voxels for NaN/Inf; return the bytes read."""
    pending = header[layout.data_offset :] if len(header) > layout.data_offset else b""
    skip = max(0, layout.data_offset - len(header))
    total = 0
    while chunk := stream.read(_CHUNK_BYTES):
        total += len(chunk)
        if layout.float_dtype is None:
            continue
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk[dropped:], skip - dropped
        pending += chunk
        usable = len(pending) - len(pending) % layout.float_dtype.itemsize
        values = np.frombuffer(pending[:usable], dtype=layout.float_dtype)
        if not np.isfinite(values).all():
            raise InputError(f"{path}: image has NaN or infinite intensities; fix or remove the file")
        pending = pending[usable:]
    return total


def _nifti_layout(header: bytes, path: Path) -> _NiftiLayout:
    for endian in "<>":
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] in _NIFTI_LAYOUTS:
            break
    else:
        raise InputError(f"{path}: not a NIfTI file (bad header size); re-export or remove it")
    size = struct.unpack(endian + "i", header[:4])[0]
    if len(header) < size:
        raise InputError(f"{path}: NIfTI header is cut short; re-export or remove it")
    dim_at, dim_type, datatype_at, bitpix_at, offset_at, offset_type = _NIFTI_LAYOUTS[size]
    dims = struct.unpack_from(endian + dim_type, header, dim_at)
    datatype = struct.unpack_from(endian + "h", header, datatype_at)[0]
    bitpix = struct.unpack_from(endian + "h", header, bitpix_at)[0]
    vox_offset = struct.unpack_from(endian + offset_type, header, offset_at)[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]) or bitpix <= 0 or bitpix % 8:
        raise InputError(
            f"{path}: NIfTI header has impossible dimensions {tuple(dims[1 : ndim + 1])} "
            f"or bits per voxel {bitpix}; re-export the file"
        )
    _check_nifti_placement(header, endian, size, ndim, path)
    if not math.isfinite(vox_offset):
        raise InputError(f"{path}: NIfTI header has an impossible data offset ({vox_offset}); re-export the file")
    voxels = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=object))
    float_code = _NIFTI_FLOAT_TYPES.get(datatype)
    return _NiftiLayout(
        data_offset=int(max(vox_offset, size)),
        data_bytes=voxels * _NIFTI_VOXEL_BYTES.get(datatype, bitpix // 8),
        float_dtype=np.dtype(endian + float_code) if float_code else None,
    )


def _check_nifti_placement(header: bytes, endian: str, size: int, ndim: int, path: Path) -> None:
    """Refuse voxel sizes and orientations that ITK misreads: a zero size reads as 1 mm, an
    infinite qform offset as 0, and an infinite sform entry makes the read loop forever."""
    pixdim_at, pixdim_type, codes_at, codes_type, forms_at, forms_type = _NIFTI_PLACEMENT[size]
    spacing = struct.unpack_from(endian + pixdim_type, header, pixdim_at)[1 : min(ndim, 3) + 1]
    if not all(math.isfinite(s) and s != 0 for s in spacing):
        sizes = tuple(round(s, 4) for s in spacing)
        raise InputError(f"{path}: NIfTI header has voxel spacing {sizes} mm (pixdim); fix the header's spacing")
    qform_code, sform_code = struct.unpack_from(endian + codes_type, header, codes_at)
    forms = struct.unpack_from(endian + forms_type, header, forms_at)
    used = (forms[:6] if qform_code > 0 else ()) + (forms[6:] if sform_code > 0 else ())
    if not all(math.isfinite(value) for value in used):
        raise InputError(f"{path}: NIfTI header's orientation (qform/sform) holds NaN or infinity; fix the header")


def _itk_reason(error: RuntimeError) -> str:
    """The informative last line of an ITK exception, without source paths."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception thrown", "/"))]
    return (useful or lines or ["unknown error"])[-1][:200]
