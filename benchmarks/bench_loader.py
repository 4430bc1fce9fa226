"""Training samples per second from the loader: the paper preset's stage 2, 0, 1 and 2 workers.

    python benchmarks/bench_loader.py OUT [--steps 6] [--workers 0 1 2] [--shape 512 512 100]

Writes 3 labeled phantoms of `--shape` (full-size CT by default) to OUT/data unless there,
prepares them with the paper preset (OUT/cache), then draws `--steps` steps of batch 4 as
training does (stage 2: a random box at native resolution, resampled to 160^3 with its
labels, and the preset's augmentation) and times making them with each number of loader
workers: samples per second, and seconds per sample. The network is not run: this is what
the loader can feed. Prints a markdown table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from organseg.batches import Sampler, epoch_batches
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.labels import FLARE22
from organseg.phantom import write_dataset
from organseg.prepared import prepare_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100])
    args = parser.parse_args()
    data = args.out / "data"
    if not (data / "dataset.json").is_file():
        write_dataset(data, labeled=3, unlabeled=0, test=0, seed=0, shape=tuple(args.shape))
    config = resolve_config("paper")
    cases = prepare_cases(discover_dataset(data).labeled, args.out / "cache", config)
    sampler = Sampler("stage2", config, FLARE22, False, cases)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    batch = config.stage2.batch_size
    steps = [sampler.draw_step(batch, rng, generator) for _ in range(args.steps)]
    list(epoch_batches(sampler, steps[:1], 0))  # warm-up: page in the memory-mapped cases
    results = {"cpu": _cpu(), "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads()}
    results.update(batch=batch, steps=args.steps, shape=args.shape, rows=[])
    for workers in args.workers:
        started = time.perf_counter()
        made = sum(len(item.images) for item in epoch_batches(sampler, steps, workers))
        seconds = time.perf_counter() - started
        results["rows"].append(
            {"workers": workers, "samples_per_s": round(made / seconds, 3), "s_per_sample": round(seconds / made, 3)}
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{results['cpu']}, {results['cores']} cores; paper stage 2, batch {batch}, {args.steps} steps\n")
    print("| loader workers | samples/s | s per sample |\n|---|---|---|")
    for row in results["rows"]:
        print(f"| {row['workers']} | {row['samples_per_s']} | {row['s_per_sample']} |")


def _cpu() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


if __name__ == "__main__":
    main()
