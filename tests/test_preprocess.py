"""Preprocessing steps one by one: reorientation, resampling, cropping, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from organseg.geometry import Geometry
from organseg.preprocess import normalize
from organseg.preprocess.crop import Box, bounding_box, crop, paste
from organseg.preprocess.normalize import clip_to_window, ct_statistics, normalize_ct, zscore
from organseg.preprocess.orientation import AxisTransform, all_axis_transforms, canonical_transform
from organseg.preprocess.resample import (
    axis_weights,
    nearest_indices,
    resample_image,
    resample_labels,
    resampled_argmax,
)

# --- orientation ------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", all_axis_transforms(), ids=str)
def test_each_of_48_orientations_is_undone_exactly(transform: AxisTransform) -> None:
    rng = np.random.default_rng(0)
    geometry = Geometry((5, 6, 7), (0.7, 1.1, 2.5), (10.0, -3.0, 4.0))
    array = rng.integers(0, 100, geometry.shape)
    moved, moved_geometry = transform.apply(array), transform.apply_geometry(geometry)
    # Every voxel keeps its world position.
    index = np.argwhere(np.ones(moved.shape, bool))
    source = np.rint(geometry.world_to_index(moved_geometry.index_to_world(index))).astype(int)
    assert np.array_equal(moved[tuple(index.T)], array[tuple(source.T)])
    # The inverse restores array and geometry, and canonical orientation is found again.
    assert np.array_equal(transform.inverse().apply(moved), array)
    assert transform.inverse().apply_geometry(moved_geometry).is_close(geometry)
    canonical = canonical_transform(moved_geometry)
    assert np.array_equal(canonical.apply(moved), array)
    assert canonical.apply_geometry(moved_geometry).is_close(geometry)


@pytest.mark.parametrize("transform", all_axis_transforms(), ids=str)
def test_a_region_of_the_reoriented_array_is_cut_from_the_source(transform: AxisTransform) -> None:
    source = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    moved = transform.apply(source)
    for slices in [(slice(1, 3), slice(0, 2), slice(2, 5)), (slice(None), slice(3, None), slice(0, 1))]:
        region = source[transform.source_slices(slices, source.shape)]
        assert np.array_equal(transform.apply(region), moved[slices])


@pytest.mark.parametrize("code", ["RAS", "LPI", "AIL", "SRP", "PSL"])
def test_canonical_orientation_agrees_with_simpleitk_dicomorient(code: str) -> None:
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.integers(0, 50, (6, 7, 8)).astype(np.int16))
    image.SetSpacing((0.8, 1.3, 2.7))
    image = sitk.DICOMOrient(image, code)
    geometry = Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    reference = sitk.DICOMOrient(image, "LPS")
    transform = canonical_transform(geometry)
    assert np.array_equal(transform.apply(array), sitk.GetArrayFromImage(reference).transpose(2, 1, 0))
    ours = transform.apply_geometry(geometry)
    assert np.allclose(ours.origin_mm, reference.GetOrigin()) and np.allclose(ours.direction, np.eye(3).ravel())


def test_oblique_scan_keeps_its_small_rotation() -> None:
    angle = np.deg2rad(20)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    flipped = tilt @ np.diag([-1, 1, -1])
    geometry = Geometry((4, 4, 4), (1, 1, 1), (0, 0, 0), tuple(flipped[:, [2, 0, 1]].ravel()))
    result = canonical_transform(geometry).apply_geometry(geometry)
    assert np.allclose(result.direction_matrix, tilt)


def test_channel_axes_are_kept() -> None:
    array = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    transform = AxisTransform((2, 0, 1), (True, False, True))
    moved = transform.apply(array)
    assert moved.shape == (2, 5, 3, 4)
    assert np.array_equal(moved[1], transform.apply(array[1]))


# --- resampling -------------------------------------------------------------------------------


def test_upsampling_weights_are_pytorch_trilinear() -> None:
    image = torch.randn(7, 9, 5)
    ours = resample_image(image.numpy(), (14, 20, 11))
    theirs = F.interpolate(image[None, None], (14, 20, 11), mode="trilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-5)


def test_downsampling_averages_whole_cells() -> None:
    image = np.broadcast_to(np.arange(8.0).reshape(8, 1, 1), (8, 2, 2))
    assert np.allclose(resample_image(image, (4, 2, 2))[:, 0, 0], [0.5, 2.5, 4.5, 6.5])
    # A non-integer factor: output cell 0 of 3 spans input [0, 4/3): all of cell 0, a third of cell 1.
    weights = axis_weights(4, 3)
    assert np.allclose(weights[0], [0.75, 0.25, 0, 0])
    assert np.allclose(weights[1], [0, 0.5, 0.5, 0])
    assert np.allclose(weights.sum(axis=1), 1)


def test_constant_image_stays_constant_and_channels_resample_alike() -> None:
    image = np.full((2, 9, 10, 11), 42.0, np.float32)
    assert np.allclose(resample_image(image, (4, 15, 6)), 42.0)
    image[1] = np.random.default_rng(0).normal(size=(9, 10, 11))
    assert np.allclose(resample_image(image, (4, 15, 6))[1], resample_image(image[1], (4, 15, 6)))


@pytest.mark.parametrize("seed", range(20))
def test_nearest_labels_up_then_down_is_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(2, 30, 3))
    bigger = tuple(int(n + rng.integers(0, 50)) for n in shape)
    labels = rng.integers(0, 14, shape).astype(np.uint8)
    up = resample_labels(labels, bigger, "nearest")
    assert np.array_equal(resample_labels(up, shape, "nearest"), labels)
    up_index, down_index = nearest_indices(shape[0], bigger[0]), nearest_indices(bigger[0], shape[0])
    assert np.array_equal(up_index[down_index], np.arange(shape[0]))


def test_linear_labels_match_dense_one_hot_argmax() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros((30, 26, 12), np.uint8)
    for label in range(1, 6):
        start = rng.integers(0, 20, 3)
        labels[start[0] : start[0] + 9, start[1] : start[1] + 7, start[2] : start[2] + 4] = label
    for shape in [(11, 40, 5), (45, 13, 20)]:
        ours = resample_labels(labels, shape, "linear")
        scores = np.stack([resample_image((labels == k).astype(np.float32), shape) for k in range(6)])
        agree = (ours == scores.argmax(0)).mean()
        assert agree > 0.995  # exact but for ties, broken towards background here
        assert set(np.unique(ours).tolist()) <= set(range(6))


def test_linear_takes_the_area_majority_where_nearest_takes_the_centre_voxel() -> None:
    labels = np.full((40, 40, 8), 7, np.uint8)
    labels[2::4, 2::4, :] = 0  # the voxel under each 4x4 cell's centre, 1/16 of the cell
    assert (resample_labels(labels, (10, 10, 8), "nearest") == 0).all()
    assert (resample_labels(labels, (10, 10, 8), "linear") == 7).all()


def test_label_resampling_refuses_float_and_unknown_method() -> None:
    with pytest.raises(ValueError, match="integer"):
        resample_labels(np.zeros((3, 3, 3)), (2, 2, 2))
    with pytest.raises(ValueError, match="unknown"):
        resample_labels(np.zeros((3, 3, 3), np.uint8), (2, 2, 2), "cubic")


# --- crop and paste ---------------------------------------------------------------------------


def test_bounding_box_margin_in_mm_is_clipped_to_the_volume() -> None:
    mask = np.zeros((20, 20, 10), bool)
    mask[5:8, 10:12, 4:6] = True
    box = bounding_box(mask, spacing_mm=(1.0, 0.5, 3.0), margin_mm=3.0)
    assert box == Box((2, 4, 3), (11, 18, 7))
    assert bounding_box(mask, (1, 1, 1), margin_mm=100) == Box.whole(mask.shape)
    assert bounding_box(np.zeros((3, 3, 3), bool), (1, 1, 1)) is None


def test_paste_inverts_crop() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(1, 9, (2, 12, 10, 8))
    box = Box((2, 3, 1), (9, 10, 8))
    part = crop(array, box)
    assert part.shape == (2, 7, 7, 7)
    restored = paste(part, box, (12, 10, 8))
    assert np.array_equal(restored[(..., *box.slices)], part)
    assert restored.sum() == part.sum()
    with pytest.raises(ValueError):
        paste(part[..., :3], box, (12, 10, 8))


# --- normalisation ----------------------------------------------------------------------------


def test_normalize_clips_then_z_scores_inside_the_window() -> None:
    image = np.array([-1000, -1000, 0, 100, 200, 3000], dtype=np.int16)
    result = normalize_ct(image, window_hu=(-200, 400))
    inside = np.array([0, 100, 200, 400], dtype=np.float32)
    expected_mean, expected_std = inside.mean(), inside.std()
    assert result.dtype == np.float32
    assert np.allclose(result[2:], (inside - expected_mean) / expected_std)
    assert np.allclose(result[0], (-200 - expected_mean) / expected_std)
    fixed = normalize_ct(image, mean=0.0, std=100.0)
    assert np.allclose(fixed, np.clip(image, -200, 400) / 100.0)
    assert np.isfinite(normalize_ct(np.full(5, -1000))).all()


def test_nearest_shrink_inverts_nearest_label_upsampling_for_logits() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, (9, 7, 5)).astype(np.uint8)
    up = resample_labels(labels, (20, 13, 11), "nearest")
    one_hot = (np.arange(5)[:, None, None, None] == up[None]).astype(np.float32)
    back = resample_image(one_hot, (9, 7, 5), shrink="nearest").argmax(0)
    assert np.array_equal(back, labels)
    with pytest.raises(ValueError, match="shrink"):
        resample_image(one_hot, (9, 7, 5), shrink="cubic")


# --- argmax of resampled logits ------------------------------------------------------------


def _smooth_logits(rng: np.random.Generator, classes: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Logits with organ-like regions: random coarse fields grown to `shape`."""
    coarse = rng.normal(size=(classes, *(max(2, n // 3) for n in shape))).astype(np.float32)
    return resample_image(coarse, shape) * 4


@pytest.mark.parametrize("seed", range(6))
def test_resampled_argmax_equals_argmax_of_the_resampled_logits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = tuple(int(n) for n in rng.integers(3, 14, size=3))
    # Each axis grows, shrinks or stays; the answer must not depend on how the work was split.
    shape = tuple(int(n * f) or 1 for n, f in zip(grid, rng.choice([0.5, 1.0, 2.3, 4.0], size=3)))
    logits = _smooth_logits(rng, int(rng.integers(2, 9)), grid)
    dense = resample_image(logits, shape, shrink="nearest").argmax(0)
    fast = resampled_argmax(logits, shape, chunk_voxels=int(rng.integers(1, 50)))
    assert fast.dtype == np.uint8 and tuple(fast.shape) == shape
    assert np.array_equal(fast, dense)


def test_resampled_argmax_interpolates_only_along_class_borders() -> None:
    # Two classes split by a plane: only the cells that straddle it need interpolating,
    # and a class that wins at no input voxel can still win between them.
    logits = np.zeros((3, 4, 4, 4), np.float32)
    logits[0, :2], logits[1, 2:] = 1.0, 1.0
    logits[2] = 0.9  # second everywhere, first half way between the two
    result = resampled_argmax(logits, (16, 4, 4))
    dense = resample_image(logits, (16, 4, 4), shrink="nearest").argmax(0)
    assert np.array_equal(result, dense)
    assert set(result[:, 0, 0].tolist()) == {0, 1, 2}


def test_resampled_argmax_keeps_more_than_256_classes() -> None:
    logits = _smooth_logits(np.random.default_rng(0), 300, (4, 4, 4))
    logits[299, 0, 0, 0] = 100.0
    result = resampled_argmax(logits, (8, 8, 8))
    assert result.dtype == np.int16 and int(result[0, 0, 0]) == 299
    assert np.array_equal(result, resample_image(logits, (8, 8, 8), shrink="nearest").argmax(0))


# --- intensity window ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int32, np.float32, np.float64])
def test_window_clipping_is_compact_and_exact_for_every_input_type(dtype) -> None:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (info.min, info.max) if info else (-3000, 3000)
    values = np.random.default_rng(0).integers(max(low, -3000), min(high, 3000), size=(6, 5, 4)).astype(dtype)
    clipped = clip_to_window(values, (-200, 400))
    assert clipped.dtype == (np.int16 if info else np.float32)
    assert np.array_equal(clipped, np.clip(values.astype(np.float64), -200, 400))
    # A window that int16 cannot express exactly is clipped in float.
    assert clip_to_window(values, (-200.5, 400)).dtype == np.float32


def test_statistics_in_slabs_equal_those_of_the_whole_image(monkeypatch) -> None:
    image = np.random.default_rng(1).integers(-1000, 1500, size=(30, 20, 11)).astype(np.int16)
    inside = np.minimum(image[image > -200].astype(np.float64), 400)
    monkeypatch.setattr(normalize, "STATISTICS_CHUNK", 97)  # slabs that end mid-row
    for view in (image, image.transpose(2, 0, 1)[::-1]):  # and a strided, flipped view
        mean, std = ct_statistics(view)
        assert mean == pytest.approx(inside.mean(), rel=1e-12) and std == pytest.approx(inside.std(), rel=1e-9)


def test_z_scoring_after_resampling_equals_z_scoring_before() -> None:
    image = np.random.default_rng(2).integers(-1000, 1000, size=(37, 23, 9)).astype(np.int16)
    mean, std = ct_statistics(image)
    clipped = clip_to_window(image)
    for shape in [(16, 16, 8), (50, 11, 20)]:
        after = zscore(resample_image(clipped, shape), mean, std)
        before = resample_image(normalize_ct(image), shape)
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
