"""Where the networks run, and in which precision."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from organseg.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
        return torch.device(name)
    raise InputError(f"--device {name}: unknown device; use auto, cpu or cuda")


def use_bf16(device: torch.device, precision: str) -> bool:
    """Whether to run under bfloat16 autocast: 'auto' picks it where the hardware computes it natively."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_native_bf16()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device` when enabled; parameters stay float32."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def training_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of a network's weights and batches during training.

    Channels-last on the CPU: oneDNN's backward pass of the narrow 3D convolutions of small
    U-Nets runs faster on it; a training step of the cpu preset's stage 2 takes 1.4x less
    time at batch 2 (benchmarks/RESULTS.md, "Training step on the CPU"). Elsewhere the
    usual layout: channels-last was not measured there.
    """
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def _cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 convolutions run 2-3x faster than float32 (measured on Zen 4)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
