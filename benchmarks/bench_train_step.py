"""Seconds per training sample of a stage's U-Net on this CPU: memory layout and batch size.

One training step = forward pass, Dice + cross-entropy loss, backward pass, AdamW step, on
random data (the arithmetic does not depend on the values). For each batch size the
default layout and channels-last are timed alternately, so drifts of the machine's speed
hit both alike. `--precision bf16` runs the step under bfloat16 autocast, as training does
where the CPU computes bf16 natively (AVX-512 BF16 or AMX). Run from the repository root:

    python benchmarks/bench_train_step.py [--preset cpu] [--stage stage2] [--batch 1 2 4] [--steps 6]
                                          [--precision fp32|bf16] [--set stage2.net.widths=[16,32,64,128]]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from organseg.config import resolve_config
from organseg.device import autocast
from organseg.labels import FLARE22
from organseg.losses import deep_supervision_loss
from organseg.stage_state import build_model

LAYOUTS = {"default": torch.contiguous_format, "channels-last": torch.channels_last_3d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--stage", default="stage2", choices=("stage1", "stage2"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (after one warm-up step)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--set", action="append", default=[], help="config override key=value, as in training")
    args = parser.parse_args()
    stage = getattr(resolve_config(args.preset, overrides=args.set), args.stage)
    precision = args.precision
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.precision}; {args.preset} {args.stage}: ")
    print(f"grid {stage.grid}, widths {stage.net.widths}\n")
    print("| batch | layout | seconds per step (median) | seconds per sample |")
    print("|---|---|---|---|")
    for batch in args.batch:
        timings = {name: [] for name in LAYOUTS}
        runs = {name: _Run(stage, batch, layout, precision) for name, layout in LAYOUTS.items()}
        for _ in range(args.steps):
            for name, run in runs.items():
                timings[name].append(run.step())
        for name, values in timings.items():
            median = statistics.median(values)
            print(f"| {batch} | {name} | {median:.3f} | {median / batch:.3f} |")


class _Run:
    """A model, an optimizer and a random batch in one memory layout; `step` times one training step."""

    def __init__(self, stage, batch: int, layout: torch.memory_format, precision: str) -> None:
        torch.manual_seed(0)
        self.precision = precision
        self.model = build_model(stage, FLARE22.num_classes).to(memory_format=layout)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=stage.learning_rate)
        self.image = torch.randn(batch, 1, *stage.grid).contiguous(memory_format=layout)
        self.target = torch.randint(0, FLARE22.num_classes, (batch, *stage.grid))
        self.step()  # warm-up: oneDNN picks and caches its kernels on the first call

    def step(self) -> float:
        started = time.perf_counter()
        with autocast(torch.device("cpu"), self.precision):
            loss = deep_supervision_loss(self.model(self.image), self.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started


if __name__ == "__main__":
    main()
