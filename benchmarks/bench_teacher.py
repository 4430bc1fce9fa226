"""The demo's teacher under other settings: a cheap screen before a whole self-training run.

For each seed (which changes the phantoms and the training, as `organseg demo --seed`), the
demo's teacher (round 0: full supervision on the 3 training phantoms, validated on the
fourth) is trained with the demo's settings and with each variant's settings over them, on
the same cases, split and cache, and scored on the 8 test phantoms (FLARE22 DSC and NSD).
The summary gives every variant's paired difference from the demo's settings per seed.

    python benchmarks/bench_teacher.py OUT --seeds 0 1 2 --variant poly stage2.lr_schedule=poly

Rerunning with the same OUT resumes: finished models and scores are kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_cpu_inference import machine
from bench_ssl_seeds import _dataset, _sd

from organseg.config import resolve_config
from organseg.demo import DEMO_SETTINGS, score_on_test_set
from organseg.runs import TrainingInputs, choose_split, run_training

DEVICE = "cpu"
BASELINE = "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"), help="a name, settings"
    )
    args = parser.parse_args()
    variants = {BASELINE: [], **{name: settings for name, *settings in args.variant}}
    rows = [run_seed(args.out / f"seed{seed}", seed, variants) for seed in args.seeds]
    summary = summary_table(rows, list(variants))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(
        json.dumps({"machine": machine(), "variants": variants, "seeds": rows}, indent=2) + "\n"
    )
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)


def run_seed(out: Path, seed: int, variants: dict[str, list[str]]) -> dict:
    dataset = _dataset(out / "dataset", seed, quick=False)
    return {
        "seed": seed,
        "test": {name: _teacher(dataset, out, name, seed, settings) for name, settings in variants.items()},
    }


def _teacher(dataset, out: Path, name: str, seed: int, settings: list[str]) -> dict:
    scores = out / "scores" / f"{name}.json"
    if scores.is_file():
        return json.loads(scores.read_text())
    config = resolve_config("cpu", overrides=[*DEMO_SETTINGS, f"seed={seed}", *settings])
    folder = out / name
    inputs = TrainingInputs((), out / "cache", choose_split(dataset.labeled, config), dataset_checked=True)
    started = time.perf_counter()
    run_training(dataset, folder, None if (folder / "config.json").is_file() else config, device=DEVICE, inputs=inputs)
    result = {**score_on_test_set(folder, dataset, out, name, DEVICE), "minutes": (time.perf_counter() - started) / 60}
    scores.parent.mkdir(parents=True, exist_ok=True)
    scores.write_text(json.dumps(result) + "\n")
    return result


def summary_table(rows: list[dict], names: list[str]) -> str:
    """Per seed: each teacher's test mean DSC / NSD; then each variant minus the demo's settings."""
    lines = ["| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        cells = [f"{row['test'][n]['mean_dsc']:.3f} / {row['test'][n]['mean_nsd']:.3f}" for n in names]
        lines.append(f"| {row['seed']} | " + " | ".join(cells) + " |")
    lines += ["", f"paired differences in test mean DSC from `{BASELINE}`, per seed; mean +- sd:", ""]
    for name in names[1:]:
        differences = [row["test"][name]["mean_dsc"] - row["test"][BASELINE]["mean_dsc"] for row in rows]
        per_seed = ", ".join(f"{d:+.3f}" for d in differences)
        lines.append(f"- {name}: {per_seed}; {np.mean(differences):+.3f} +- {_sd(differences):.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
