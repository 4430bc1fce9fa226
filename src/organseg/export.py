"""`organseg export`: a trained run as an exported model folder (organseg.export_folder).

Each stage's best network is rebuilt without its deep-supervision heads (prediction never
reads them), exported to ONNX in float32 with the fixed input shape of its grid (every CT
is resampled to that grid first, so no other shape ever reaches it), then checked: ONNX
Runtime and PyTorch must give the same logits on a CT-like input, within
`AGREEMENT_TOLERANCE`, or nothing is written. The folder appears complete under its final
name, or not at all.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from organseg import __version__
from organseg.atomic import atomic_folder, write_json
from organseg.cascade import StageInput
from organseg.config import STAGES
from organseg.errors import InputError
from organseg.export_folder import FORMAT, MANIFEST, sha256
from organseg.nets.unet3d import UNet3D
from organseg.network_stage import is_run, load_network
from organseg.onnx_stage import OnnxPredictor
from organseg.preprocess.crop import Box

log = logging.getLogger(__name__)

# torch.onnx's exporter needs onnx and onnxscript; the export is checked in onnxruntime.
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
OPSET = 18
# The largest logit difference allowed between ONNX Runtime and PyTorch, relative to the
# logits' own range: float32 sums taken in another order differ by about 1e-6 of it.
AGREEMENT_TOLERANCE = 1e-3


def export_run(run_dir: Path, out: Path) -> Path:
    """Write the exported model of `run_dir` to the new folder `out`; returns `out`."""
    run_dir, out = Path(run_dir), Path(out)
    if not is_run(run_dir):
        raise InputError(f"{run_dir}: no trained model (stage1/best.pt and stage2/best.pt); run organseg train first")
    if out.exists():
        raise InputError(f"{out}: already exists; give a new folder for the exported model")
    with atomic_folder(out) as staging:
        write_json(staging / MANIFEST, _export_stages(run_dir, staging))
    return out


def _export_stages(run_dir: Path, folder: Path) -> dict:
    """Export both stages into `folder`; the manifest describing them."""
    stages, contents = {}, {}
    for stage in STAGES:
        model, contents[stage] = load_network(run_dir / stage / "best.pt")
        stages[stage] = _export_network(_without_deep_heads(model), contents[stage], folder / f"{stage}.onnx")
        metric = contents[stage].get("best_metric")
        # A run without validation keeps -inf as its best metric; JSON has no infinity.
        stages[stage].update(
            epoch=contents[stage].get("epoch"),
            best_metric=metric if metric is not None and np.isfinite(metric) else None,
        )
    content = contents["stage2"]  # the settings and labels prediction reads, as from a run (organseg.network_stage)
    return {
        "format": FORMAT,
        "organseg_version": __version__,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_run": str(run_dir.resolve()),
        "precision": "fp32",
        "config": content["config"],
        "labels": content["labels"],
        "label_codes": content.get("label_codes", {}),
        "unlearnt": content.get("unlearnt", []),
        "stages": stages,
    }


def _without_deep_heads(model: UNet3D) -> UNet3D:
    """The same network without deep-supervision heads, in eval mode."""
    plain = UNet3D(model.in_channels, model.num_classes, model.widths, model.blocks_per_level, model.upsample)
    weights = {name: value for name, value in model.state_dict().items() if not name.startswith("deep_heads.")}
    plain.load_state_dict(weights)
    return plain.eval()


def _export_network(model: UNet3D, content: dict, path: Path) -> dict:
    """Export `model` for its stage's grid to `path`, check it against PyTorch; its manifest entry."""
    stage = content["stage"]
    grid = tuple(content["config"][stage]["grid"])
    shape = (1, model.in_channels, *grid)
    example = torch.zeros(shape)
    with _quiet_exporter():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    entry = {
        "file": path.name,
        "sha256": sha256(path),
        "input": {"name": "image", "shape": list(shape)},
        "output": {"name": "logits", "shape": [1, model.num_classes, *grid]},
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "opset": OPSET,
    }
    entry["max_logit_difference"] = _check_agreement(model, path, entry)
    return entry


def _check_agreement(model: UNet3D, path: Path, entry: dict) -> float:
    """The largest logit difference between ONNX Runtime and PyTorch on a smooth random input; refuses a mismatch."""
    rng = np.random.default_rng(0)
    shape = tuple(entry["input"]["shape"])
    # Smooth, z-scored-like values: the networks' inputs are resampled CT, not white noise.
    coarse = rng.normal(size=(*shape[:2], *(max(2, n // 8) for n in shape[2:]))).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=shape[2:], mode="trilinear")
    with torch.no_grad():
        expected = model(image).numpy()
    request = StageInput(image.numpy(), Box.whole(shape[2:]), shape[2:])
    found = OnnxPredictor(path, entry)(request)
    difference = float(np.abs(found - expected).max())
    scale = float(np.abs(expected).max()) or 1.0
    if not difference <= AGREEMENT_TOLERANCE * scale:
        raise InputError(
            f"{path.name}: ONNX Runtime's logits differ from PyTorch's by {difference:.3g} (scale {scale:.3g}); "
            "not exported. Report this with your torch and onnxruntime versions"
        )
    return difference


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's progress lines and notices silenced for the length of an export."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
