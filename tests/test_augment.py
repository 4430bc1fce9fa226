"""Training augmentation: shapes, label integrity, determinism, geometry of each transform."""

from __future__ import annotations

import math

import pytest
import torch

from organseg.augment import (
    AugmentConfig,
    AugmentParams,
    apply_params,
    augment,
    draw_params,
    gaussian_blur,
    upsample_field,
)
from organseg.labels import FLARE22

PAIRS = FLARE22.mirror_pairs()  # ((2, 13), (7, 8)): kidneys and adrenal glands
OFF = {f"{name}_p": 0.0 for name in ("rotation", "scale", "elastic", "mirror", "brightness", "contrast")} | {
    f"{name}_p": 0.0 for name in ("gamma", "noise", "blur")
}
ALL = {name: 1.0 for name in OFF}
SPATIAL_ONLY = OFF | {"rotation_p": 1.0, "scale_p": 1.0, "elastic_p": 1.0, "mirror_p": 1.0}
INTENSITY_ONLY = ALL | {"rotation_p": 0.0, "scale_p": 0.0, "elastic_p": 0.0, "mirror_p": 0.0}


def _patch(shape=(20, 16, 12), dtype=torch.uint8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, X, Y, Z) smooth random image and (X, Y, Z) labels 0, 1, 2, 7, 8, 13 in blocks."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.avg_pool3d(torch.randn(1, *shape, generator=generator)[None], 3, 1, 1)[0]
    labels = torch.zeros(shape, dtype=dtype)
    labels[2:8, 3:12, 2:10] = 2
    labels[12:18, 3:12, 2:10] = 13
    labels[8:12, 5:9, 4:8] = 1
    labels[4:6, 12:14, 4:6] = 7
    labels[14:16, 12:14, 4:6] = 8
    return image, labels


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    """Centroid of a (X, Y, Z) mask in voxels from the patch centre."""
    index = torch.nonzero(mask).double().mean(dim=0)
    return index - (torch.tensor(mask.shape, dtype=torch.float64) - 1) / 2


@pytest.mark.parametrize(
    "settings", [ALL, SPATIAL_ONLY, INTENSITY_ONLY, {}], ids=["all", "spatial", "intensity", "default"]
)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_shapes_dtypes_and_label_values_are_kept(settings, dtype) -> None:
    image, labels = _patch(dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        out_image, out_labels = augment(image, labels, AugmentConfig(**settings), generator, PAIRS)
        assert out_image.shape == image.shape and out_image.dtype == image.dtype
        assert out_labels.shape == labels.shape and out_labels.dtype == dtype
        assert set(out_labels.unique().tolist()) <= {0, 1, 2, 7, 8, 13}
        assert torch.isfinite(out_image).all()


def test_same_seed_same_result_and_no_global_rng() -> None:
    image, labels = _patch()
    config = AugmentConfig(**ALL)
    state = torch.get_rng_state()
    first = augment(image, labels, config, torch.Generator().manual_seed(7), PAIRS)
    second = augment(image, labels, config, torch.Generator().manual_seed(7), PAIRS)
    other = augment(image, labels, config, torch.Generator().manual_seed(8), PAIRS)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("config", [AugmentConfig(**OFF), AugmentConfig(**ALL, enabled=False)], ids=["p0", "disabled"])
def test_nothing_drawn_is_the_identity(config) -> None:
    image, labels = _patch()
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        out_image, out_labels = augment(image, labels, config, generator, PAIRS)
        assert torch.equal(out_image, image) and torch.equal(out_labels, labels)


def test_left_right_mirror_swaps_paired_labels() -> None:
    # A right kidney (2) at low i mirrored to high i is a left kidney (13), and vice versa:
    # the symmetric pair stays where it was; the unpaired liver (1) moves.
    labels = torch.zeros(16, 4, 4, dtype=torch.uint8)
    labels[:8] = 2
    labels[8:] = 13
    labels[1, 1, 1] = 1
    image = torch.arange(labels.numel(), dtype=torch.float32).view(1, *labels.shape)
    out_image, out_labels = augment(image, labels, AugmentConfig(**OFF | {"mirror_p": 1.0}), torch.Generator(), PAIRS)
    expected = labels.clone()
    expected[1, 1, 1], expected[14, 1, 1] = 2, 1
    assert torch.equal(out_labels, expected)
    assert torch.equal(out_image, image.flip(1))


def test_mirroring_a_lone_right_kidney_gives_a_left_kidney() -> None:
    labels = torch.zeros(16, 4, 4, dtype=torch.int64)
    labels[2:6] = 2
    labels[3, 0, 0] = 7  # right adrenal
    _, mirrored = apply_params(torch.zeros(1, 16, 4, 4), labels, AugmentParams(mirror_axes=(0,)), PAIRS)
    expected = torch.zeros_like(labels)
    expected[10:14] = 13  # i -> 15 - i
    expected[12, 0, 0] = 8  # left adrenal
    assert torch.equal(mirrored, expected)
    # Other axes are not left-right: no swap.
    _, flipped = apply_params(torch.zeros(1, 16, 4, 4), labels, AugmentParams(mirror_axes=(1,)), PAIRS)
    assert torch.equal(flipped, labels.flip(1))


def test_mirror_by_flip_and_by_the_sampling_grid_agree() -> None:
    image, labels = _patch()
    flipped = apply_params(image, labels, AugmentParams(mirror_axes=(0, 2)), PAIRS)
    # A zero displacement field forces the grid_sample path without moving anything.
    resampled = apply_params(
        image, labels, AugmentParams(mirror_axes=(0, 2), displacement_vox=torch.zeros(3, 2, 2, 2)), PAIRS
    )
    assert torch.equal(flipped[1], resampled[1])
    assert torch.allclose(flipped[0], resampled[0], atol=1e-5)


@pytest.mark.parametrize(
    ("rotation_deg", "start", "end"),
    [
        ((0, 0, 30), (8, 0, 0), (8 * math.cos(math.pi / 6), 8 * math.sin(math.pi / 6), 0)),  # axis 0 towards 1
        ((30, 0, 0), (0, 8, 0), (0, 8 * math.cos(math.pi / 6), 8 * math.sin(math.pi / 6))),  # axis 1 towards 2
        ((0, 90, 0), (0, 0, 8), (8, 0, 0)),  # axis 2 towards 0
    ],
)
def test_forced_rotation_moves_a_blob_as_expected(rotation_deg, start, end) -> None:
    shape = (32, 30, 28)
    offsets = [torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape]
    grid = torch.stack(torch.meshgrid(*offsets, indexing="ij"), dim=-1)
    blob = ((grid - torch.tensor(start, dtype=torch.float64)) ** 2).sum(-1) < 3.5**2
    params = AugmentParams(rotation_rad=tuple(math.radians(a) for a in rotation_deg))
    image, labels = apply_params(blob[None].float(), blob.to(torch.uint8) * 4, params)
    assert torch.allclose(_centroid(labels == 4), torch.tensor(end, dtype=torch.float64), atol=0.3)
    assert (labels == 4).sum() == pytest.approx(blob.sum().item(), rel=0.1)
    weights = image[0].double()
    assert torch.allclose(
        (grid * weights[..., None]).sum((0, 1, 2)) / weights.sum(), torch.tensor(end).double(), atol=0.3
    )


def test_scaling_enlarges_about_the_centre() -> None:
    image, labels = torch.zeros(1, 32, 32, 32), torch.zeros(32, 32, 32, dtype=torch.uint8)
    labels[18:22, 14:18, 14:18] = 3  # centre 4 voxels along axis 0 from the patch centre
    _, scaled = apply_params(image, labels, AugmentParams(scale=1.5))
    assert torch.allclose(_centroid(scaled == 3), torch.tensor([6.0, 0.0, 0.0], dtype=torch.float64), atol=0.3)
    assert (scaled == 3).sum() == 6 * 6 * 6


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_constant_displacement_shifts_by_whole_voxels(axis) -> None:
    # Each output voxel reads the input 2 voxels further along `axis`; outside: label 0, image fill.
    image, labels = _patch(shape=(12, 10, 8))
    displacement = torch.zeros(3, 3, 3, 3)
    displacement[axis] = 2.0
    params = AugmentParams(displacement_vox=displacement)
    out_image, out_labels = apply_params(image, labels, params, image_fill=-3.0)
    inside = [slice(None)] * 3
    inside[axis] = slice(0, -2)
    source = [slice(None)] * 3
    source[axis] = slice(2, None)
    outside = [slice(None)] * 3
    outside[axis] = slice(-2, None)
    assert torch.equal(out_labels[tuple(inside)], labels[tuple(source)])
    assert torch.all(out_labels[tuple(outside)] == 0)
    assert torch.allclose(out_image[(0, *inside)], image[(0, *source)], atol=1e-5)
    assert torch.allclose(out_image[(0, *outside)], torch.tensor(-3.0))
    # Without a fill value the border is repeated.
    border_image, _ = apply_params(image, labels, params)
    last = [slice(None)] * 3
    last[axis] = slice(-1, None)
    assert torch.allclose(border_image[(0, *outside)], image[(0, *last)].expand_as(border_image[(0, *outside)]))


def test_intensity_transforms_leave_labels_alone() -> None:
    image, labels = _patch()
    out_image, out_labels = augment(image, labels, AugmentConfig(**INTENSITY_ONLY), torch.Generator().manual_seed(0))
    assert out_labels is labels
    assert not torch.allclose(out_image, image)


@pytest.mark.parametrize(
    ("params", "check"),
    [
        (AugmentParams(brightness_shift=0.3), lambda x, y: torch.allclose(y, x + 0.3)),
        (
            AugmentParams(contrast_factor=1.2),
            lambda x, y: torch.allclose(y - y.mean(), 1.2 * (x - x.mean()), atol=1e-5),
        ),
        (
            AugmentParams(gamma=1.4),
            lambda x, y: torch.allclose(y.aminmax()[0], x.min()) and torch.allclose(y.max(), x.max()),
        ),
        (AugmentParams(noise_std=0.1, noise_seed=3), lambda x, y: 0.08 < (y - x).std() < 0.12),
        (
            AugmentParams(blur_sigma_vox=1.0),
            lambda x, y: torch.allclose(y.mean(), x.mean(), atol=0.05) and y.std() < x.std(),
        ),
    ],
    ids=["brightness", "contrast", "gamma", "noise", "blur"],
)
def test_intensity_transform_table(params, check) -> None:
    image, labels = _patch()
    out_image, _ = apply_params(image, labels, params)
    assert check(image, out_image)


def test_gamma_keeps_a_constant_image_and_blur_keeps_a_constant_image() -> None:
    image, labels = torch.full((1, 6, 6, 6), 2.5), torch.zeros(6, 6, 6, dtype=torch.uint8)
    assert torch.equal(apply_params(image, labels, AugmentParams(gamma=0.8))[0], image)
    assert torch.allclose(gaussian_blur(image, 0.7), image)


def test_draw_params_respects_probabilities_and_ranges() -> None:
    config = AugmentConfig(**ALL | {"mirror_axes": (0, 1, 2)})
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        params = draw_params(config, generator)
        assert all(abs(angle) <= math.radians(15) for angle in params.rotation_rad)
        assert 0.85 <= params.scale <= 1.15 and params.mirror_axes == (0, 1, 2)
        assert params.displacement_vox.shape == (3, 5, 5, 5) and params.displacement_vox.abs().max() <= 4.0
        assert 0.75 <= params.contrast_factor <= 1.25 and 0.7 <= params.gamma <= 1.5
    assert draw_params(AugmentConfig(**OFF), generator) == AugmentParams()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rotation_p": 1.5}, "rotation_p must be a probability"),
        ({"scale_range": (1.2, 0.8)}, "scale_range must be"),
        ({"mirror_axes": (3,)}, "mirror_axes"),
        ({"elastic_control_points": 1}, "elastic_control_points"),
        ({"noise_max_std": -1.0}, "magnitudes"),
    ],
)
def test_bad_config_raises(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**settings)


@pytest.mark.parametrize(
    ("image", "labels", "pairs", "message"),
    [
        (torch.zeros(8, 8, 8), torch.zeros(8, 8, 8, dtype=torch.uint8), (), r"image \(C, X, Y, Z\)"),
        (torch.zeros(1, 8, 8, 8), torch.zeros(8, 8, 6, dtype=torch.uint8), (), "same size"),
        (torch.zeros(1, 8, 8, 8), torch.zeros(8, 8, 8), (), "integer labels"),
        (torch.zeros(1, 8, 8, 8), torch.zeros(8, 8, 8, dtype=torch.uint8), ((2, 13), (13, 4)), "each id once"),
    ],
)
def test_bad_patches_raise(image, labels, pairs, message) -> None:
    with pytest.raises(ValueError, match=message):
        augment(image, labels, AugmentConfig(), torch.Generator(), pairs)


def test_upsampled_field_matches_trilinear_interpolation() -> None:
    coarse = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(coarse[None], size=(20, 9, 13), mode="trilinear", align_corners=True)
    assert torch.allclose(upsample_field(coarse, (20, 9, 13)), expected[0].permute(1, 2, 3, 0), atol=1e-5)
