"""The `cpu` preset on phantoms: training time and test accuracy on this machine.

Generates 8 labeled and 8 test phantoms (default generator), trains both stages with
the cpu preset (plus any --set overrides), predicts the test cases and prints per-organ
DSC and NSD (FLARE22 tolerances) with the wall time of each step. Run from the repository
root:

    python benchmarks/bench_cpu_preset.py OUT_DIR [--seed 0] [--set key=value ...]

To compare stage-2 settings alone, `--stage1-from RUN_DIR` reuses that run's stage 1 (and
its data, split and prepared cases) and trains only stage 2 with the settings given:

    python benchmarks/bench_cpu_preset.py OUT_DIR --stage1-from OTHER_OUT/run --set stage2.epochs=100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from organseg.config import resolve_config, save_config
from organseg.dataset import discover_dataset
from organseg.evaluate import run_evaluation
from organseg.labels import FLARE22
from organseg.phantom import write_dataset
from organseg.predict import run_prediction
from organseg.runs import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labeled", type=int, default=8)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--stage1-from", type=Path, help="a run folder of this benchmark whose stage 1 to reuse")
    args = parser.parse_args()
    config = resolve_config("cpu", overrides=args.set)
    stages = ("stage1", "stage2")
    if args.stage1_from:
        data = args.stage1_from.parent / "data"
        _reuse_stage1(args.stage1_from, args.out / "run", config)
        stages = ("stage2",)
    else:
        data = args.out / "data"
        if not (data / "dataset.json").is_file():
            write_dataset(data, labeled=args.labeled, unlabeled=0, test=args.test, seed=args.seed)
    started = time.perf_counter()
    run_training(discover_dataset(data), args.out / "run", config, stages=stages)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run_prediction(args.out / "run", data / "imagesTs", args.out / "predictions", device="cpu")
    predict_seconds = (time.perf_counter() - started) / args.test
    result = run_evaluation(args.out / "predictions", data / "labelsTs", args.out / "evaluation")
    summary = json.loads((args.out / "evaluation" / "summary.json").read_text())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; overrides: {args.set or 'none'}")
    trained = " and ".join(stages)
    print(f"training {trained}: {train_seconds / 60:.1f} min; prediction: {predict_seconds:.2f} s per case")
    print(markdown_table(summary))
    del result


def _reuse_stage1(source: Path, run_dir: Path, config) -> None:
    """A new run folder holding `source`'s stage 1, split and prepared cases, with `config` saved."""
    run_dir.mkdir(parents=True)
    for name in ("splits.json", "labels.json"):
        shutil.copy(source / name, run_dir / name)
    shutil.copytree(source / "stage1", run_dir / "stage1")
    os.symlink(source.resolve() / "cache", run_dir / "cache")
    # Stage 2 is added to a run whose settings are `config`: stage 1's own settings are in its checkpoints.
    save_config(config, run_dir / "config.json")


def markdown_table(summary: dict) -> str:
    organs = summary["organs"]
    lines = ["| organ | DSC | NSD |", "|---|---|---|"]
    for label in FLARE22.ids:
        entry = organs.get(FLARE22.name(label)) or organs.get(str(label))
        if entry:
            lines.append(f"| {FLARE22.name(label)} | {entry['dsc']['mean']:.3f} | {entry['nsd']['mean']:.3f} |")
    overall = summary["overall"]
    lines.append(f"| **mean** | **{overall['dsc']['mean']:.3f}** | **{overall['nsd']['mean']:.3f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
