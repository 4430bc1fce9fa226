"""Memory of the paper preset's networks, counted without a GPU.

    python benchmarks/bench_train_memory.py [--grid 160 160 160] [--time-grid 64 64 64] [--skip-inference]

1. Training: the bytes the autograd graph keeps for the backward pass of stage 2 (41M
   parameters, 14 classes) at batch 1, 2 and 4, with and without activation checkpointing
   (`stage2.activation_checkpointing`), counted on the meta device (shapes only, in
   float32: autocast does not apply there; under bf16 the convolutions' outputs are half
   as large). What a micro-batch keeps is what its batch size's row says.
2. Inference: the peak bytes of live tensors (weights, autocast's bf16 copies of them,
   activations, the float32 logits) during stage 2's forward pass at batch 1 in bf16
   autocast on the CPU, counted operator by operator. A GPU adds its CUDA context and
   cuDNN's workspace, which only a GPU can measure (benchmarks/gpu_check.sh).
3. Time: seconds per training step (forward, backward) on the CPU at a smaller grid, with
   and without activation checkpointing (each in a process of its own), the peak of live
   tensors during a step (what a GPU's allocator must hold) and the process's peak
   resident memory (which on the CPU also holds oneDNN's buffers and freed memory the C
   heap keeps).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from organseg.config import resolve_config
from organseg.nets.unet3d import count_saved_for_backward
from organseg.stage_state import build_model

GIB = 2**30
CLASSES = 14


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, nargs=3, default=(160, 160, 160))
    parser.add_argument("--time-grid", type=int, nargs=3, default=(64, 64, 64), help="grid of the timed steps")
    parser.add_argument("--time-batch", type=int, default=2)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--one-timing", type=int, choices=(0, 1), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one_timing is not None:
        print(json.dumps(time_steps(tuple(args.time_grid), args.time_batch, bool(args.one_timing))))
        return
    grid = tuple(args.grid)
    print(f"## Training: kept for the backward pass, stage 2, grid {grid}, float32 (GiB)\n")
    print("| batch | plain | activation checkpointing | less |\n|---|---|---|---|")
    for batch in (1, 2, 4):
        plain, recomputed = (saved_for_backward(grid, batch, recompute) / GIB for recompute in (False, True))
        print(f"| {batch} | {plain:.1f} | {recomputed:.1f} | {1 - recomputed / plain:.0%} |")
    if not args.skip_inference:
        weights, peak = inference_peak(grid)
        print(f"\n## Inference, batch 1, bf16 autocast: peak of live tensors {peak / GIB:.2f} GiB")
        print(f"(of which the float32 weights {weights / GIB:.2f} GiB)")
    print(f"\n## Time on this CPU: grid {tuple(args.time_grid)}, batch {args.time_batch}, forward and backward\n")
    print("| activation checkpointing | s per step (best of 3) | peak of live tensors (GiB) | peak resident (GiB) |")
    print("|---|---|---|---|")
    for recompute in (0, 1):
        command = [sys.executable, __file__, "--one-timing", str(recompute), "--time-batch", str(args.time_batch)]
        command += ["--time-grid", *map(str, args.time_grid)]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        cells = f"{row['seconds']:.2f} | {row['live_gib']:.2f} | {row['resident_gib']:.2f}"
        print(f"| {'on' if recompute else 'off'} | {cells} |")


def _stage2(recompute: bool) -> torch.nn.Module:
    config = resolve_config("paper", overrides=[f"stage2.activation_checkpointing={str(recompute).lower()}"])
    return build_model(config.stage2, CLASSES)


def saved_for_backward(grid: tuple[int, int, int], batch: int, recompute: bool) -> int:
    """Bytes kept for the backward pass of one forward pass in training mode (meta device)."""
    model = _stage2(recompute).to("meta").train()
    return count_saved_for_backward(model, torch.empty((batch, 1, *grid), device="meta"))


class LiveTensors(TorchDispatchMode):
    """Bytes of tensor storage alive, added as operators make them and taken off as Python frees them."""

    def __init__(self, already: int = 0) -> None:
        super().__init__()
        self.live = self.peak = already
        self._counted: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage())
        return output

    def _count(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._counted:  # a view of a counted storage
            return
        self._counted.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._counted.discard(key)
        self.live -= size


def inference_peak(grid: tuple[int, int, int]) -> tuple[int, int]:
    """(weights, peak) bytes of stage 2's forward pass at batch 1 under bf16 autocast, as the GPU path runs it."""
    model = _stage2(False).eval()
    image = torch.randn((1, 1, *grid))
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    with torch.no_grad(), LiveTensors(weights + image.nbytes) as live, torch.autocast("cpu", dtype=torch.bfloat16):
        model(image).float()
    return weights, live.peak


def time_steps(grid: tuple[int, int, int], batch: int, recompute: bool) -> dict:
    model = _stage2(recompute).to(memory_format=torch.channels_last_3d)
    image = torch.randn((batch, 1, *grid)).to(memory_format=torch.channels_last_3d)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        _step(model, image)
        times.append(time.perf_counter() - started)
    resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = sum(parameter.nbytes for parameter in model.parameters())
    with LiveTensors(2 * weights + image.nbytes) as live:  # the weights and their gradients
        _step(model, image)
    return {"seconds": min(times), "resident_gib": resident / GIB, "live_gib": live.peak / GIB}


def _step(model: torch.nn.Module, image: torch.Tensor) -> None:
    model(image).float().square().mean().backward()


if __name__ == "__main__":
    main()
