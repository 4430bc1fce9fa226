"""Coarse to fine: the two-stage predictor.

read -> canonical orientation -> normalise -> stage 1 on the whole volume (coarse grid)
-> organs' bounding box + margin (whole volume if stage 1 finds nothing) -> stage 2 on the
region (fine grid) -> logits back to the region, argmax -> paste into the full volume ->
largest component per organ -> undo the orientation: a label map on the input's exact grid.

A stage is any `Predictor`: a callable from a `StageInput` to logits. Networks are one
kind (`NetworkPredictor`); tests plug in ground-truth oracles to check every index and
affine of the path without training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from organseg.checkpoint import load_checkpoint
from organseg.config import Config, from_dict
from organseg.device import autocast, resolve_device, use_bf16
from organseg.errors import InputError
from organseg.io import Volume
from organseg.labels import LabelSet
from organseg.nets.unet3d import UNet3D
from organseg.postprocess import keep_largest_component
from organseg.preprocess.crop import Box, bounding_box, crop, paste
from organseg.preprocess.normalize import normalize_ct
from organseg.preprocess.orientation import canonical_transform
from organseg.preprocess.resample import resample_image
from organseg.samples import grow_box


@dataclass(frozen=True)
class StageInput:
    """What a stage is asked to segment."""

    image: torch.Tensor  # (1, 1, G...) normalised CT on the stage's grid
    box: Box  # the region of the canonical volume it shows
    volume_shape: tuple[int, int, int]  # the canonical volume's shape


Predictor = Callable[[StageInput], torch.Tensor]  # -> logits (1, C, G...)


class NetworkPredictor:
    """A trained stage network as a Predictor (bf16 autocast where it pays)."""

    def __init__(self, model: UNet3D, device: torch.device, bf16: bool):
        self.model = model.to(device).eval()
        self.device = device
        self.bf16 = bf16

    @torch.no_grad()
    def __call__(self, stage_input: StageInput) -> torch.Tensor:
        with autocast(self.device, self.bf16):
            logits = self.model(stage_input.image.to(self.device))
        return logits.float().cpu()


class Segmenter:
    """Two stages and the settings that join them; `predict` maps a CT Volume to its label Volume."""

    def __init__(self, stage1: Predictor, stage2: Predictor, config: Config, label_set: LabelSet):
        self.stage1 = stage1
        self.stage2 = stage2
        self.config = config
        self.label_set = label_set

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto") -> Segmenter:
        """Load both stages' best checkpoints of a training run; the settings come from the checkpoints."""
        run_dir = Path(run_dir)
        if not (run_dir / "stage1" / "best.pt").is_file() or not (run_dir / "stage2" / "best.pt").is_file():
            raise InputError(
                f"{run_dir}: no trained model (stage1/best.pt and stage2/best.pt); run organseg train first"
            )
        torch_device = resolve_device(device)
        predictors, config, label_set = [], None, None
        for stage in ("stage1", "stage2"):
            content = load_checkpoint(run_dir / stage / "best.pt", "cpu")
            config = from_dict(content["config"], base=Config(), source=str(run_dir / stage / "best.pt"))
            label_set = LabelSet.from_mapping(content["labels"])
            model = UNet3D(**content["net"])
            model.load_state_dict(content["model"])
            predictors.append(NetworkPredictor(model, torch_device, use_bf16(torch_device, config.precision)))
        return cls(predictors[0], predictors[1], config, label_set)

    def predict(self, image: Volume) -> Volume:
        """The label map of `image` on exactly its grid (shape, spacing, origin, direction)."""
        transform = canonical_transform(image.geometry)
        geometry = transform.apply_geometry(image.geometry)
        normalized = normalize_ct(transform.apply(image.array), self.config.window_hu)
        box = self.locate(normalized, geometry.spacing_mm)
        region = self.segment_region(normalized, box)
        labels = paste(region, box, normalized.shape)
        if self.config.largest_component:
            labels = keep_largest_component(labels)
        return Volume(np.ascontiguousarray(transform.inverse().apply(labels)), image.geometry)

    def locate(self, normalized: np.ndarray, spacing_mm: tuple[float, float, float]) -> Box:
        """Stage 1: the organs' box on the canonical volume, grown by the margin; the whole volume if none."""
        grid = self.config.stage1.grid
        whole = Box.whole(normalized.shape)
        stage_input = StageInput(resample_image(normalized, grid)[None, None], whole, normalized.shape)
        coarse = self.stage1(stage_input)[0].argmax(0).numpy().astype(np.uint8)
        coarse = keep_largest_component(coarse)  # a stray blob must not stretch the box
        if not coarse.any():
            warnings.warn("stage 1 found no organ; stage 2 segments the whole volume", stacklevel=2)
            return whole
        box_on_grid = bounding_box(coarse > 0, spacing_mm=(1.0, 1.0, 1.0))
        box = _grid_box_to_volume(box_on_grid, grid, normalized.shape)
        margins = np.full((2, 3), self.config.crop.margin_mm)
        return grow_box(box, spacing_mm, margins, np.zeros(3), normalized.shape)

    def segment_region(self, normalized: np.ndarray, box: Box) -> np.ndarray:
        """Stage 2 on `box`: labels (uint8/uint16) on the region's own voxels."""
        region = np.ascontiguousarray(crop(normalized, box))
        stage_input = StageInput(resample_image(region, self.config.stage2.grid)[None, None], box, normalized.shape)
        logits = self.stage2(stage_input)[0]
        # Linear where the region has more voxels than the grid; where it has fewer, the
        # logits at each voxel's centre, so a grid finer than the image loses nothing.
        logits_back = resample_image(logits, box.shape, shrink="nearest")  # (C, region...)
        dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
        return logits_back.argmax(0).numpy().astype(dtype)


def _grid_box_to_volume(box: Box, grid: tuple[int, int, int], shape: tuple[int, int, int]) -> Box:
    """The volume voxels covered by grid cells box.start..box.stop (cells share the field of view)."""
    start = [int(np.floor(s * n / g)) for s, n, g in zip(box.start, shape, grid)]
    stop = [min(n, int(np.ceil(e * n / g))) for e, n, g in zip(box.stop, shape, grid)]
    return Box(tuple(start), tuple(stop))
