"""The PyTorch engine: a trained run's checkpoints as the two stages of a Segmenter.

Used by training (validation, inference boxes), pseudo-labeling and `organseg predict` on
a run folder. The exported-model engine (organseg.onnx_stage) runs the same Segmenter
without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from organseg.cascade import Segmenter, StageInput
from organseg.checkpoint import load_checkpoint
from organseg.config import STAGES, saved_config
from organseg.device import autocast, resolve_device, resolve_precision
from organseg.errors import InputError
from organseg.labels import LabelSet
from organseg.nets.unet3d import UNet3D


class NetworkPredictor:
    """A trained stage network as a Predictor, in the precision given ("bf16", "fp16" autocast or "fp32")."""

    def __init__(self, model: UNet3D, device: torch.device, precision: str):
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision

    @torch.no_grad()
    def __call__(self, stage_input: StageInput) -> np.ndarray:
        with autocast(self.device, self.precision):
            logits = self.model(torch.from_numpy(stage_input.image).to(self.device))
        return logits.float().cpu().numpy()


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a trained run (both stages' best checkpoints)."""
    return all((Path(folder) / stage / "best.pt").is_file() for stage in STAGES)


def segmenter_from_run(run_dir: Path, device: str = "auto", precision: str | None = None) -> Segmenter:
    """Both stages' best checkpoints of a training run; the settings come from the checkpoints.

    precision: None keeps the run's own setting ("auto": bf16 where the hardware has it);
    "fp32" or "bf16" overrides it.
    """
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise InputError(f"{run_dir}: no trained model (stage1/best.pt and stage2/best.pt); run organseg train first")
    torch_device = resolve_device(device)
    stage1, _ = load_stage(run_dir / "stage1" / "best.pt", torch_device, precision)
    stage2, content = load_stage(run_dir / "stage2" / "best.pt", torch_device, precision)
    config = saved_config(content["config"], source=str(run_dir / "stage2" / "best.pt"))
    label_set = LabelSet.from_mapping(content["labels"], codes=content.get("label_codes"))
    return Segmenter(stage1, stage2, config, label_set, tuple(content.get("unlearnt", ())), str(torch_device))


def load_network(checkpoint: Path) -> tuple[UNet3D, dict]:
    """A stage's network (CPU, float32) from its checkpoint; and the checkpoint's content."""
    content = load_checkpoint(checkpoint, "cpu")
    model = UNet3D(**content["net"])
    model.load_state_dict(content["model"])
    return model, content


def load_stage(checkpoint: Path, device: torch.device, precision: str | None = None) -> tuple[NetworkPredictor, dict]:
    """A stage's network from its checkpoint, as a Predictor; and the checkpoint's content."""
    model, content = load_network(checkpoint)
    config = saved_config(content["config"], source=str(checkpoint))
    return NetworkPredictor(model, device, resolve_precision(device, precision or config.precision)), content
