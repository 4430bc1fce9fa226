"""Precision chosen by capability: bf16 only where the hardware computes it natively.

CUDA devices are mocked (their compute capability), as is the CPU's bf16 flag, so every
branch runs on any machine; a real fp16 training with loss scaling runs on the CPU in
tests/test_train.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

from organseg import device as device_module
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.device import autocast, describe_precision, resolve_precision
from organseg.errors import InputError
from organseg.phantom import write_dataset
from organseg.runs import run_training

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((6, 0), "fp16"), ((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")],
    ids=["P100", "V100", "T4", "A100", "L4", "H100"],
)
def test_auto_takes_bf16_on_gpus_that_compute_it_natively_else_fp16(monkeypatch, capability, expected) -> None:
    # is_bf16_supported() says yes on a V100 too (emulated): it must not decide.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision(CUDA, "auto") == expected
    assert f"compute capability {capability[0]}.{capability[1]}" in describe_precision(CUDA, "auto")
    for setting in ("bf16", "fp16", "fp32"):
        assert resolve_precision(CUDA, setting) == setting  # a setting is obeyed


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_the_cpu_takes_bf16_only_where_it_is_native(monkeypatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(device_module, "_cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == expected
    assert describe_precision(cpu, "auto").startswith(expected)


def test_autocast_runs_each_precision() -> None:
    layer = torch.nn.Conv3d(1, 2, 3)
    image = torch.randn(1, 1, 6, 6, 6)
    dtypes = {}
    for precision in ("bf16", "fp16", "fp32"):
        with autocast(torch.device("cpu"), precision):
            dtypes[precision] = layer(image).dtype
    assert dtypes == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def test_the_precision_is_said_once_per_stage_and_unknown_ones_refused(tmp_path, caplog) -> None:
    with pytest.raises(InputError, match="precision must be 'auto', 'bf16', 'fp16' or 'fp32'"):
        resolve_config("tiny", overrides=["precision=fp8"])
    data = write_dataset(tmp_path / "data", labeled=2, unlabeled=0, test=0, seed=2, shape=(32, 32, 20))
    config = resolve_config("tiny", overrides=["stage1.epochs=1", "stage2.epochs=1", "precision=fp32"])
    with caplog.at_level(logging.INFO, logger="organseg"):
        run_training(discover_dataset(data), tmp_path / "run", config, device="cpu")
    said = [record.getMessage() for record in caplog.records if "precision" in record.getMessage()]
    assert said == [f"{stage}: precision fp32 (as set); 0 loader worker(s)" for stage in ("stage1", "stage2")]
