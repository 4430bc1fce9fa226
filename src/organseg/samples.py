"""What each stage's network is trained on, made from a prepared case.

- Stage 1: the whole volume on stage 1's grid (precomputed in the cache).
- Stage 2: the organs' region at native resolution, resampled to stage 2's grid. During
  training every face of the box gets a random margin and the box a random shift, so
  stage 2 sees boxes as loose, tight or off-centre as an imperfect stage 1 gives.
"""

from __future__ import annotations

import numpy as np
import torch

from organseg.config import Config
from organseg.labels import IGNORE_LABEL
from organseg.prepared import PreparedCase
from organseg.preprocess.crop import Box, crop, grow_box
from organseg.preprocess.resample import resample_labels
from organseg.preprocess.stage_input import stage_input


def stage1_sample(case: PreparedCase, foreground: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, G1...) float32, labels (G1...) int64) of the whole volume; 0/1 when `foreground`."""
    image = torch.from_numpy(np.array(case.grid1_image, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(case.grid1_labels).astype(np.int64))
    if foreground:  # all organs as class 1; unknown voxels stay unknown
        labels = torch.where(labels == IGNORE_LABEL, IGNORE_LABEL, (labels > 0).long())
    return image, labels


def draw_train_box(config: Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A training box's random margins (2, 3) and shift (3,), in mm."""
    margins = rng.uniform(*config.crop.train_margin_mm, size=(2, 3))
    shift = rng.uniform(-config.crop.train_shift_mm, config.crop.train_shift_mm, size=3)
    return margins, shift


def stage2_sample(
    case: PreparedCase, config: Config, box: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, G2...), labels (G2...)) of the organ region: with `box`'s margins and shift
    (`draw_train_box`), or the inference margin when None."""
    margins, shift = box if box is not None else (np.full((2, 3), config.crop.margin_mm), np.zeros(3))
    region = grow_box(case.organ_box, case.spacing_mm, margins, shift, case.scan.shape)
    return region_sample(case, region, config)


def region_sample(case: PreparedCase, box: Box, config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The region `box` of a case on stage 2's grid: the network input, as at inference, and labels."""
    grid = config.stage2.grid
    image = stage_input(case.scan, box, grid)
    labels = resample_labels(np.ascontiguousarray(crop(case.labels, box)), grid, config.label_resampling)
    return torch.from_numpy(image), torch.from_numpy(labels.astype(np.int64))
