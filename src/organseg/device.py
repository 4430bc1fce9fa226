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


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 tensor cores arrived with compute capability 8.0 (Ampere); before it,
# torch.cuda.is_bf16_supported() still says yes, but 3D convolutions then run emulated.
NATIVE_BF16_CAPABILITY = (8, 0)


def resolve_precision(device: torch.device, setting: str = "auto") -> str:
    """The precision the networks run in on `device`: "bf16", "fp16" or "fp32" (autocast; weights stay fp32).

    "auto": bf16 where the hardware computes it natively (CUDA compute capability >= 8.0,
    or a CPU with AVX-512 BF16 or AMX); on older GPUs fp16 (training then scales its loss,
    see organseg.train_step); fp32 on other CPUs, where neither half type is fast.
    """
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY else "fp16"
    return "bf16" if device.type == "cpu" and _cpu_has_native_bf16() else "fp32"


def describe_precision(device: torch.device, setting: str) -> str:
    """One line for the log: the precision chosen and why."""
    chosen = resolve_precision(device, setting)
    if setting != "auto":
        return f"{chosen} (as set)"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        native = "native" if chosen == "bf16" else "not native"
        return f"{chosen} autocast (bf16 is {native} at compute capability {major}.{minor})"
    return f"{chosen} (bf16 is {'native' if chosen == 'bf16' else 'not native'} on this CPU)"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to `precision` ("bf16", "fp16") on `device`; none for "fp32". Parameters stay float32."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


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
