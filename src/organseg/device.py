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


def _cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 convolutions run 2-3x faster than float32 (measured on Zen 4)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
