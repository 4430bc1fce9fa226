"""Training and inference feed a stage the same array for the same CT and box.

The real `ts_abdomen` CT is written in random axis orders and flips. Its training case is
prepared as `organseg train` prepares it (the cache, then `samples`), and the cascade is
run on the same file with recording stages in place of the networks: what stage 1 and
stage 2 are shown must be the training samples' images, voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from organseg.cascade import Segmenter, StageInput
from organseg.config import Config
from organseg.dataset import Case
from organseg.io import Volume, read_image, read_label, write_label, write_volume
from organseg.labels import FLARE22
from organseg.prepared import prepare_cases
from organseg.preprocess.crop import Box, crop
from organseg.preprocess.normalize import normalize_ct
from organseg.preprocess.orientation import all_axis_transforms, canonical_transform
from organseg.preprocess.resample import resample_image
from organseg.preprocess.stage_input import ScanView, stage_input
from organseg.samples import region_sample, stage1_sample

ORIENTATIONS = 4


class Recorder:
    """A stage that keeps what it is shown; stage 1's answer marks one block of its grid as organ."""

    def __init__(self, num_classes: int, organ_block: tuple[slice, ...] | None = None):
        self.num_classes = num_classes
        self.organ_block = organ_block
        self.calls: list[StageInput] = []

    def __call__(self, request: StageInput) -> np.ndarray:
        self.calls.append(request)
        logits = np.zeros((1, self.num_classes, *request.image.shape[2:]), np.float32)
        if self.organ_block is not None:
            logits[(0, 1, *self.organ_block)] = 1.0
        return logits


def _reoriented_copy(real_data: Path, folder: Path, seed: int) -> Case:
    """ts_abdomen with a random permutation and flips of its axes, on the same patient grid."""
    transforms = all_axis_transforms()
    transform = transforms[np.random.default_rng(seed).integers(len(transforms))]
    folder.mkdir()
    paths = []
    for name, reader in (("image.nii.gz", read_image), ("label.nii.gz", read_label)):
        volume = reader(real_data / "ts_abdomen" / name.replace("label", "label_flare13"))
        array = np.ascontiguousarray(transform.apply(volume.array))
        geometry = transform.apply_geometry(volume.geometry)
        if name.startswith("image"):
            write_volume(Volume(array, geometry), folder / name)
        else:
            write_label(array, geometry, folder / name)
        paths.append(folder / name)
    return Case(f"abdomen{seed}", paths[0], paths[1])


@pytest.mark.parametrize("seed", range(ORIENTATIONS))
def test_training_and_inference_show_a_stage_the_same_array(real_data: Path, tmp_path: Path, seed: int) -> None:
    case = _reoriented_copy(real_data, tmp_path / "case", seed)
    config = Config()
    prepared = prepare_cases([case], tmp_path / "cache", config)[0]

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 12, size=3)
    block = tuple(slice(int(lo), int(lo) + int(size)) for lo, size in zip(low, rng.integers(8, 20, size=3)))
    stage1, stage2 = Recorder(2, block), Recorder(14)
    Segmenter(stage1, stage2, config, FLARE22).predict(read_image(case.image))

    shown1, shown2 = stage1.calls[0], stage2.calls[0]
    assert shown2.box != Box.whole(shown2.volume_shape)  # a region, not the whole volume
    trained1, _ = stage1_sample(prepared, foreground=True)
    trained2, _ = region_sample(prepared, shown2.box, config)
    assert trained1.dtype == torch.float32 and shown1.image.dtype == np.float32
    np.testing.assert_array_equal(trained1.numpy(), shown1.image[0])
    np.testing.assert_array_equal(trained2.numpy(), shown2.image[0])


def test_stage_input_equals_normalising_the_canonical_crop_then_resampling(real_data: Path) -> None:
    image = read_image(real_data / "ts_abdomen" / "image.nii.gz")
    transform = canonical_transform(image.geometry)
    window = Config().window_hu
    scan = ScanView.of(image.array, transform, window)
    canonical = np.ascontiguousarray(transform.apply(image.array))
    for box, grid in ((Box.whole(scan.shape), (48, 48, 32)), (Box((10, 5, 20), (100, 90, 70)), (80, 64, 48))):
        normalized = normalize_ct(np.asarray(crop(canonical, box)), window, scan.mean, scan.std)
        expected = resample_image(normalized, grid)
        np.testing.assert_allclose(stage_input(scan, box, grid)[0], expected, rtol=0, atol=1e-5)
