"""The cascade with ground-truth oracles in place of the networks.

Each oracle answers with the true labels resampled to its stage's grid, so the cascade's
output differs from the truth only by what resampling, cropping and pasting lose. With
grids at least as fine as the image that must be (almost) nothing, in any orientation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from organseg.cascade import Segmenter, StageInput, _paste_in_input_order
from organseg.config import Config, CropConfig, StageConfig
from organseg.io import Volume, read_image, read_label
from organseg.labels import FLARE22
from organseg.metrics import dice_per_class
from organseg.open_model import open_segmenter
from organseg.phantom import generate_case
from organseg.preprocess.crop import Box, crop, paste
from organseg.preprocess.normalize import clip_to_window, normalize_ct
from organseg.preprocess.orientation import AxisTransform, all_axis_transforms, canonical_transform
from organseg.preprocess.resample import resample_image, resample_labels
from organseg.preprocess.stage_input import ScanView


class Oracle:
    """A stage that returns one-hot logits of the truth on its grid, for the region it is shown."""

    def __init__(self, truth: Volume, num_classes: int):
        transform = canonical_transform(truth.geometry)
        self.canonical = np.ascontiguousarray(transform.apply(truth.array))
        self.num_classes = num_classes
        self.calls: list[StageInput] = []

    def __call__(self, stage_input: StageInput) -> np.ndarray:
        self.calls.append(stage_input)
        region = np.ascontiguousarray(crop(self.canonical, stage_input.box))
        grid = tuple(stage_input.image.shape[2:])
        labels = resample_labels(region, grid, "nearest")
        one_hot = (np.arange(self.num_classes)[:, None, None, None] == labels[None]).astype(np.float32)
        return one_hot[None] * 10


def oracle_segmenter(truth: Volume, grid1, grid2, margin_mm=10.0, largest_component=False, width="body"):
    config = Config(
        stage1=StageConfig(grid=grid1),
        stage2=StageConfig(grid=grid2),
        crop=CropConfig(margin_mm=margin_mm, width=width),
        largest_component=largest_component,
    )
    return Segmenter(Oracle(truth, 14), Oracle(truth, 14), config, FLARE22)


def organ_dice(prediction: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    present = [label for label in FLARE22.ids if (truth == label).any()]
    return dice_per_class(prediction, truth, present)


@pytest.mark.parametrize("seed", [3, 11, 42])
def test_oracle_cascade_returns_the_phantom_labels_in_any_orientation(seed: int) -> None:
    image, truth = generate_case(seed)
    canonical_shape = canonical_transform(image.geometry).apply_geometry(image.geometry).shape
    grid = tuple(int(np.ceil(n / 16) * 16) for n in canonical_shape)  # at least as fine as the image
    segmenter = oracle_segmenter(truth, grid, grid)
    result = segmenter.predict(image)
    assert result.geometry == image.geometry and result.array.shape == truth.array.shape
    dice = organ_dice(result.array, truth.array)
    assert min(dice.values()) >= 0.99, dice
    # Stage 2 was shown the organs' region, not the whole volume.
    assert np.prod(segmenter.stage2.calls[0].box.shape) < np.prod(canonical_shape)


def test_oracle_cascade_returns_the_real_labels(real_data: Path) -> None:
    image = read_image(real_data / "ts_abdomen" / "image.nii.gz")
    truth = read_label(real_data / "ts_abdomen" / "label_flare13.nii.gz")
    segmenter = oracle_segmenter(truth, (128, 112, 112), (128, 112, 112))
    result = segmenter.predict(image)
    assert result.geometry == image.geometry
    dice = organ_dice(result.array, truth.array)
    assert len(dice) == 12 and min(dice.values()) >= 0.99, dice


def test_coarse_grids_lose_only_what_their_resolution_loses(real_data: Path) -> None:
    image = read_image(real_data / "ts_abdomen" / "image.nii.gz")
    truth = read_label(real_data / "ts_abdomen" / "label_flare13.nii.gz")
    result = oracle_segmenter(truth, (32, 32, 32), (64, 64, 64)).predict(image)
    dice = organ_dice(result.array, truth.array)
    # Large organs survive a 64^3 stage-2 grid; the 3 mm adrenal glands are where the ceiling shows.
    assert min(dice[label] for label in (1, 2, 3, 11, 13)) > 0.9, dice
    assert np.mean(list(dice.values())) > 0.8, dice


def test_stage_one_finding_nothing_falls_back_to_the_whole_volume(caplog: pytest.LogCaptureFixture) -> None:
    image, truth = generate_case(5)
    segmenter = oracle_segmenter(truth, (32, 32, 32), (32, 32, 32))
    segmenter.stage1 = lambda stage_input: np.zeros((1, 14, *stage_input.image.shape[2:]), np.float32)
    with caplog.at_level(logging.WARNING, logger="organseg"):
        segmenter.predict(image)
    assert any("whole volume" in record.getMessage() for record in caplog.records)
    call = segmenter.stage2.calls[0]
    # Every slice, all the depth, and the body's width (crop.width), where all organs lie.
    assert call.box.shape[1:] == call.volume_shape[1:]
    organs = np.argwhere(canonical_transform(image.geometry).apply(truth.array) > 0)
    assert organs[:, 0].min() >= call.box.start[0] and organs[:, 0].max() < call.box.stop[0]


@pytest.mark.parametrize("width", ["body", "organs"])
def test_the_body_s_width_keeps_the_side_a_blind_stage_one_missed(width: str) -> None:
    """A stage 1 that sees no organ on the patient's left: the body's width still reaches the spleen."""
    image, truth = generate_case(4)
    canonical_shape = canonical_transform(image.geometry).apply_geometry(image.geometry).shape
    grid = tuple(int(np.ceil(n / 16) * 16) for n in canonical_shape)
    segmenter = oracle_segmenter(truth, grid, grid, width=width)
    oracle = segmenter.stage1

    def blind_on_the_left(stage_input: StageInput) -> np.ndarray:
        logits = oracle(stage_input).copy()
        left = slice(logits.shape[2] // 2, None)  # canonical i runs to the patient's left
        logits[:, 1:, left], logits[:, 0, left] = 0, 10
        return logits

    segmenter.stage1 = blind_on_the_left
    dice = organ_dice(segmenter.predict(image).array, truth.array)
    left_organs = min(dice[3], dice[13])  # spleen, left kidney
    assert left_organs >= 0.95 if width == "body" else left_organs < 0.5, dice


def test_largest_component_clean_up_removes_a_stray_blob() -> None:
    image, truth = generate_case(8)
    noisy = truth.array.copy()
    corner = tuple(slice(0, 3) for _ in range(3))
    noisy[corner] = 3  # a stray piece of "spleen" in a corner of the volume
    stray = Volume(noisy, truth.geometry)
    config_grid = tuple(int(np.ceil(n / 16) * 16) for n in truth.array.shape)
    # The corner lies outside the body, which stage 2's region would otherwise never reach.
    settings = {"margin_mm": 1000, "width": "organs"}
    kept = oracle_segmenter(stray, config_grid, config_grid, **settings).predict(image)
    cleaned = oracle_segmenter(stray, config_grid, config_grid, **settings, largest_component=True)
    assert (kept.array[corner] == 3).all()
    assert (cleaned.predict(image).array[corner] == 0).all()


def test_segmenter_from_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    from organseg.errors import InputError

    with pytest.raises(InputError, match="no trained model"):
        open_segmenter(tmp_path)


def test_stage_inputs_have_the_configured_grids() -> None:
    image, truth = generate_case(2)
    segmenter = oracle_segmenter(truth, (32, 48, 16), (64, 32, 48))
    segmenter.predict(image)
    assert tuple(segmenter.stage1.calls[0].image.shape) == (1, 1, 32, 48, 16)
    assert tuple(segmenter.stage2.calls[0].image.shape) == (1, 1, 64, 32, 48)
    assert segmenter.stage1.calls[0].image.dtype == np.float32


@pytest.mark.parametrize("layout", ["C", "F"])
def test_stage_inputs_are_the_normalised_image_resampled_to_each_grid(layout: str) -> None:
    # The cascade z-scores after resampling, in the array's memory order; the networks must
    # see what z-scoring the whole canonical CT first and resampling it after would give
    # (as in training), whatever the memory layout (SimpleITK's arrays are transposed views).
    image, truth = generate_case(5)
    image = Volume(np.asarray(image.array, order=layout), image.geometry)
    segmenter = oracle_segmenter(truth, (32, 32, 16), (48, 32, 32))
    segmenter.predict(image)
    canonical = canonical_transform(image.geometry).apply(image.array)
    normalized = normalize_ct(np.ascontiguousarray(canonical))
    for oracle in (segmenter.stage1, segmenter.stage2):
        (call,) = oracle.calls
        expected = resample_image(np.ascontiguousarray(crop(normalized, call.box)), tuple(call.image.shape[2:]))
        np.testing.assert_allclose(call.image[0, 0], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("transform", all_axis_transforms()[::5], ids=str)
def test_region_is_pasted_straight_into_the_input_axis_order(transform: AxisTransform) -> None:
    rng = np.random.default_rng(0)
    input_shape = (9, 7, 5)
    canonical_shape = transform.apply(np.zeros(input_shape)).shape
    box = Box((1, 2, 0), (canonical_shape[0] - 1, canonical_shape[1], 3))
    region = rng.integers(1, 14, size=box.shape).astype(np.uint8)
    expected = transform.inverse().apply(paste(region, box, canonical_shape))
    assert np.array_equal(_paste_in_input_order(region, box, transform, input_shape), expected)


def test_scan_view_copies_no_voxel_and_clips_regions_in_int16() -> None:
    image, _ = generate_case(1)
    scan = ScanView.of(image.array, canonical_transform(image.geometry), (-200.0, 400.0))
    assert np.shares_memory(scan.voxels, image.array) and scan.voxels.flags.c_contiguous
    region = scan.voxels[scan.transform.source_slices(Box.whole(scan.shape).slices, scan.voxels.shape)]
    clipped = clip_to_window(np.ascontiguousarray(region), scan.window_hu)
    assert clipped.dtype == np.int16 and clipped.min() >= -200 and clipped.max() <= 400
