"""Geometry agrees with SimpleITK's own index-to-world mapping, for crops and resized grids too."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from organseg.geometry import Geometry


def _random_geometry(rng: np.random.Generator) -> Geometry:
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Geometry(
        tuple(rng.integers(5, 40, 3)),
        tuple(rng.uniform(0.5, 5.0, 3)),
        tuple(rng.uniform(-200, 200, 3)),
        tuple(rotation.ravel()),
    )


def _sitk_image(geometry: Geometry) -> sitk.Image:
    image = sitk.Image([int(n) for n in geometry.shape], sitk.sitkUInt8)
    image.SetSpacing(geometry.spacing_mm)
    image.SetOrigin(geometry.origin_mm)
    image.SetDirection(geometry.direction)
    return image


@pytest.mark.parametrize("seed", range(5))
def test_index_to_world_matches_simpleitk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    geometry = _random_geometry(rng)
    image = _sitk_image(geometry)
    indices = rng.uniform(-1, 30, (20, 3))
    ours = geometry.index_to_world(indices)
    theirs = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in indices])
    assert np.allclose(ours, theirs, atol=1e-9)
    assert np.allclose(geometry.world_to_index(ours), indices, atol=1e-9)
    assert np.allclose(geometry.affine()[:3, :3] @ indices[0] + geometry.affine()[:3, 3], ours[0])


@pytest.mark.parametrize("seed", range(5))
def test_cropped_matches_simpleitk_region_of_interest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    geometry = _random_geometry(rng)
    start = tuple(int(rng.integers(0, n // 2)) for n in geometry.shape)
    size = tuple(int(rng.integers(1, n - s + 1)) for n, s in zip(geometry.shape, start))
    roi = sitk.RegionOfInterest(_sitk_image(geometry), size, start)
    cropped = geometry.cropped(start, size)
    assert np.allclose(cropped.origin_mm, roi.GetOrigin(), atol=1e-9)
    assert cropped.shape == roi.GetSize()


@pytest.mark.parametrize("seed", range(5))
def test_resized_keeps_the_outer_faces_of_the_field_of_view(seed: int) -> None:
    rng = np.random.default_rng(seed)
    geometry = _random_geometry(rng)
    shape = tuple(int(n) for n in rng.integers(3, 80, 3))
    resized = geometry.resized(shape)
    corners_before = geometry.index_to_world(np.array([[-0.5] * 3, np.asarray(geometry.shape) - 0.5]))
    corners_after = resized.index_to_world(np.array([[-0.5] * 3, np.asarray(shape) - 0.5]))
    assert np.allclose(corners_before, corners_after, atol=1e-9)
    assert resized.resized(geometry.shape).is_close(geometry, tolerance_mm=1e-9)


def test_differences_name_what_differs() -> None:
    base = Geometry((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    other = Geometry((4, 5, 6), (1.0, 1.0, 2.5), (0.0, 3.0, 0.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    found = " ".join(base.differences(other))
    assert "spacing" in found and "origin" in found and "direction" in found and "shape" not in found
    assert base.differences(base) == []
    assert Geometry.from_dict(other.to_dict()) == other
