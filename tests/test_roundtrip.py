"""Property tests of the whole preprocessing path and its inverse.

reorient -> crop (margin in mm) -> resample to a grid, then back: resample to the crop ->
paste -> undo the reorientation. Over random spacings (0.5-5 mm), all 48 axis orders
and flips, and oblique direction cosines:
- the result is always on the original grid (shape and geometry),
- it is identical to the input where the path is lossless (grid at least as fine as the crop),
- every resampled voxel carries the label found at its own world position in the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from organseg.geometry import Geometry
from organseg.io import read_label
from organseg.preprocess.crop import Box, bounding_box, crop, paste
from organseg.preprocess.orientation import all_axis_transforms, canonical_transform
from organseg.preprocess.resample import resample_labels

ORIENTATIONS = all_axis_transforms()


@dataclass
class Path3:
    """What the forward path produced, and what undoes it."""

    transform: object
    box: Box
    canonical_geometry: Geometry
    grid_labels: np.ndarray
    grid_geometry: Geometry


def forward(labels: np.ndarray, geometry: Geometry, grid: tuple[int, int, int], margin_mm: float) -> Path3:
    transform = canonical_transform(geometry)
    canonical = transform.apply(labels)
    canonical_geometry = transform.apply_geometry(geometry)
    box = bounding_box(canonical > 0, canonical_geometry.spacing_mm, margin_mm) or Box.whole(canonical.shape)
    grid_labels = resample_labels(np.ascontiguousarray(crop(canonical, box)), grid, "nearest")
    grid_geometry = canonical_geometry.cropped(box.start, box.shape).resized(grid)
    return Path3(transform, box, canonical_geometry, grid_labels, grid_geometry)


def inverse(path: Path3) -> tuple[np.ndarray, Geometry]:
    in_crop = resample_labels(path.grid_labels, path.box.shape, "nearest")
    canonical = paste(in_crop, path.box, path.canonical_geometry.shape)
    undo = path.transform.inverse()
    return undo.apply(canonical), undo.apply_geometry(path.canonical_geometry)


def blobs(shape: tuple[int, int, int], rng: np.random.Generator, count: int = 3) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    labels = np.zeros(shape, np.uint8)
    for label in range(1, count + 1):
        centre = rng.uniform(0.25, 0.75, 3) * np.asarray(shape)
        radii = rng.uniform(0.1, 0.3, 3) * np.asarray(shape)
        labels[(((grid - centre) / radii) ** 2).sum(-1) < 1] = label
    return labels


def oblique_direction(orientation: int, tilt_deg: float, axis: np.ndarray) -> np.ndarray:
    """An axis permutation/flip followed by a rotation of `tilt_deg` about `axis`."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(tilt_deg)
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    base = ORIENTATIONS[orientation].apply_geometry(Geometry((2, 2, 2), (1, 1, 1), (0, 0, 0))).direction_matrix
    return rotation @ base


def assert_labels_follow_world_positions(labels: np.ndarray, geometry: Geometry, path: Path3) -> None:
    """Each grid voxel's label is the input label at the voxel's world position (nearest)."""
    index = np.argwhere(np.ones(path.grid_labels.shape, bool))
    source = geometry.world_to_index(path.grid_geometry.index_to_world(index))
    fraction = source - np.floor(source)
    clear = (np.abs(fraction - 0.5) > 1e-6).all(axis=1)  # exact ties may round either way
    nearest = np.floor(source[clear] + 0.5).astype(int)
    assert np.array_equal(path.grid_labels[tuple(index[clear].T)], labels[tuple(nearest.T)])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    spacing=st.tuples(*[st.floats(0.5, 5.0)] * 3),
    orientation=st.integers(0, 47),
    tilt_deg=st.floats(0.0, 30.0),
    axis=st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda a: np.linalg.norm(a) > 0.1),
    seed=st.integers(0, 10_000),
    lossless=st.booleans(),
)
def test_forward_and_inverse_path(spacing, orientation, tilt_deg, axis, seed, lossless) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(6, 22, 3))
    direction = oblique_direction(orientation, tilt_deg, np.asarray(axis))
    geometry = Geometry(shape, spacing, tuple(rng.uniform(-100, 100, 3)), tuple(direction.ravel()))
    labels = blobs(shape, rng)
    margin_mm = float(rng.uniform(0, 10))
    canonical_shape = canonical_transform(geometry).apply_geometry(geometry).shape
    if lossless:
        grid = tuple(int(n + rng.integers(0, 12)) for n in canonical_shape)
    else:
        grid = tuple(int(rng.integers(3, n + 1)) for n in canonical_shape)

    path = forward(labels, geometry, grid, margin_mm)
    back, back_geometry = inverse(path)

    assert back.shape == labels.shape
    assert back_geometry.is_close(geometry, tolerance_mm=1e-9, tolerance_cos=1e-12)
    assert_labels_follow_world_positions(labels, geometry, path)
    if all(g >= n for g, n in zip(grid, path.box.shape)):
        assert np.array_equal(back, labels)


def test_real_case_through_the_default_grid_comes_back_identical(real_data: Path) -> None:
    label = read_label(real_data / "ts_abdomen" / "label_flare13.nii.gz")
    path = forward(label.array, label.geometry, (160, 160, 160), margin_mm=10.0)
    back, back_geometry = inverse(path)
    # The crop (at most 122x101x112 voxels) is coarser than 160^3: the path is lossless.
    assert np.array_equal(back, label.array)
    assert back_geometry.is_close(label.geometry, tolerance_mm=1e-9)
    assert_labels_follow_world_positions(label.array, label.geometry, path)


@pytest.mark.parametrize("grid", [(64, 64, 64), (48, 40, 96)])
def test_real_case_through_coarse_grids_returns_to_the_original_grid(real_data: Path, grid) -> None:
    label = read_label(real_data / "ts_upper_abdomen_bad_origin" / "label_flare13.nii.gz")
    path = forward(label.array, label.geometry, grid, margin_mm=5.0)
    back, back_geometry = inverse(path)
    assert back.shape == label.array.shape
    assert back_geometry.is_close(label.geometry, tolerance_mm=1e-9)
    assert_labels_follow_world_positions(label.array, label.geometry, path)
    liver_dice = 2 * ((back == 1) & (label.array == 1)).sum() / ((back == 1).sum() + (label.array == 1).sum())
    assert liver_dice > 0.9
