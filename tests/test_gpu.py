"""The CUDA path: training steps and a cascade's prediction on the GPU under bf16 autocast.

Skipped without CUDA; `benchmarks/gpu_check.sh` runs them on a GPU machine (pytest -m gpu).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from organseg.cascade import Segmenter
from organseg.checkpoint import load_checkpoint
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.geometry import Geometry
from organseg.io import Volume, read_image
from organseg.labels import FLARE22
from organseg.network_stage import NetworkPredictor
from organseg.open_model import open_segmenter
from organseg.phantom import write_dataset
from organseg.runs import run_training
from organseg.stage_state import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SHAPE = (48, 48, 24)
STEPS = ["stage1.epochs=2", "stage2.epochs=2", "stage1.iterations_per_epoch=3", "stage2.iterations_per_epoch=3"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("data") / "phantoms", labeled=3, unlabeled=0, test=1, seed=5, shape=SHAPE
    )


@pytest.fixture(scope="module")
def cuda_run(phantoms: Path, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "cuda"
    config = resolve_config("tiny", overrides=["precision=bf16", *STEPS])
    torch.cuda.reset_peak_memory_stats()
    rows = run_training(discover_dataset(phantoms), run_dir, config, device="cuda")
    return run_dir, rows


def test_training_steps_run_on_the_gpu(cuda_run) -> None:
    run_dir, rows = cuda_run
    assert all(row["epoch"] == 2 and math.isfinite(row["loss"]) for row in rows.values())
    assert torch.cuda.max_memory_allocated() > 0  # the steps ran on the GPU
    content = load_checkpoint(run_dir / "stage2" / "last.pt")  # loads on the CPU: plain tensors
    assert all(tensor.dtype == torch.float32 for tensor in content["model"].values())  # autocast keeps fp32 weights


def test_the_cascade_predicts_on_cuda_under_bf16_autocast(cuda_run, phantoms: Path) -> None:
    segmenter = open_segmenter(cuda_run[0], device="cuda")
    for predictor in (segmenter.stage1, segmenter.stage2):
        assert predictor.precision == "bf16" and next(predictor.model.parameters()).is_cuda
    dtypes = []
    hook = segmenter.stage2.model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    image = read_image(phantoms / "imagesTs" / "phantom_t001_0000.nii.gz")
    try:
        labels = segmenter.predict(image)
    finally:
        hook.remove()
    assert dtypes == [torch.bfloat16]  # the network really ran in bf16
    assert labels.array.shape == image.array.shape and labels.geometry.is_close(image.geometry)


def test_a_full_size_ct_needs_under_2_gb_of_gpu_memory_with_the_default_networks() -> None:
    # FLARE's tolerance. Untrained networks of the default preset: stage 1 finding nothing
    # sends the whole 512x512x100 volume to stage 2, the largest box there can be.
    config = resolve_config("cpu")
    predictors = [
        NetworkPredictor(build_model(stage, 14), torch.device("cuda"), "bf16")
        for stage in (config.stage1, config.stage2)
    ]
    segmenter = Segmenter(*predictors, config, FLARE22)
    array = np.random.default_rng(0).integers(-1000, 1000, size=(512, 512, 100)).astype(np.int16)
    image = Volume(array, Geometry((512, 512, 100), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0)))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "stage 1 found no organ" is expected here
        labels = segmenter.predict(image)
    assert labels.array.shape == (512, 512, 100)
    assert torch.cuda.max_memory_reserved() < 2 * 2**30


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_train_one_run_with_nccl(phantoms: Path, tmp_path: Path) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "organseg", "train", str(phantoms), str(tmp_path / "run"), "--preset", "tiny"]
    command += ["--stage", "1", "--device", "cuda", "--set", "stage1.epochs=2"]
    command += ["--set", "stage1.iterations_per_epoch=3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr  # includes the bit-for-bit replica check
    rows = [json.loads(line) for line in (tmp_path / "run" / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert len(load_checkpoint(tmp_path / "run" / "stage1" / "last.pt")["rng_ranks"]) == 2
