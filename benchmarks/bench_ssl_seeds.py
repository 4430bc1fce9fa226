"""Does self-training pay on the demo setting? Several seeds, against full supervision at equal compute.

For each seed (which changes the phantoms and the training, as `organseg demo --seed`):

1. The demo's self-training run (`organseg.demo.demo_config`, plus any --set): the teacher
   on the labeled cases, `ssl.rounds` students, the round shipped by validation.
2. Full-supervision controls on the same labeled cases, split and cache, without the
   unlabeled scans:
   - students that continue from their teacher (`ssl.student_init=teacher`): a chain of as
     many runs as there are rounds, each continuing from the last with the same settings
     on the labeled cases alone. Round k of the chain has exactly the steps of student k,
     so "equal steps" (the shipped round's) and "equal total compute" (the last round's)
     are both rows of the chain.
   - students from scratch: the teacher has the steps of every student ("equal steps"),
     and one run with (rounds + 1) times the epochs is "equal total compute".
3. Every model scored on the test phantoms (FLARE22 DSC and NSD).

With --precision-check, each seed's teacher also pseudo-labels the unlabeled scans in
float32 and in bf16: their agreement and each one's Dice against the phantoms' truth.

    python benchmarks/bench_ssl_seeds.py OUT [--seeds 0 1 2 3 4] [--set KEY=VALUE ...] [--precision-check]

Rerunning with the same OUT resumes: finished runs and scores are kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from organseg.config import Config, resolve_config
from organseg.dataset import discover_dataset
from organseg.demo import DEMO_SETTINGS, FULL, QUICK, QUICK_SETTINGS, score_on_test_set
from organseg.io import read_image
from organseg.labels import IGNORE_LABEL
from organseg.metrics import mean_dice
from organseg.network_stage import segmenter_from_run
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.writer import case_seed
from organseg.pseudolabel import clean_pseudo_label
from organseg.runs import TrainingInputs, run_training
from organseg.selftraining import round_dir, run_ssl

DEVICE = "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], help="a setting over the demo's, e.g. ssl.rounds=1")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick setting (to test the benchmark)")
    parser.add_argument("--no-controls", action="store_true", help="self-training only (to compare variants)")
    parser.add_argument("--precision-check", action="store_true")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args.out / f"seed{seed}", seed, args))
        write_summary(args.out, rows, args)
    print((args.out / "summary.md").read_text())


def run_seed(out: Path, seed: int, args) -> dict:
    cached = out / "bench.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    started = time.perf_counter()
    dataset = _dataset(out / "dataset", seed, args.quick)
    overrides = [*DEMO_SETTINGS, *(QUICK_SETTINGS if args.quick else []), f"seed={seed}", *args.set]
    config = resolve_config("cpu", overrides=overrides)
    ssl_dir = out / "ssl"
    summary = run_ssl(dataset, ssl_dir, None if (ssl_dir / "config.json").is_file() else config, DEVICE)
    ssl_seconds = time.perf_counter() - started
    models = {f"round {r['round']}": Path(r["model_dir"]) for r in summary["rounds"]}
    controls = {} if args.no_controls else train_controls(dataset, out, config)
    row = {
        "seed": seed,
        "ssl_minutes": round(ssl_seconds / 60, 1),
        "shipped_round": summary["shipped"]["round"],
        "shipped_reason": summary["shipped"]["reason"],
        "validation": {f"round {r['round']}": r["mean"]["dsc"] for r in summary["rounds"]},
        "test": {name: _score(path, dataset, out) for name, path in {**models, **controls}.items()},
    }
    if args.precision_check:
        row["precision"] = precision_check(round_dir(ssl_dir, 0), dataset, seed, config)
    row["minutes"] = round((time.perf_counter() - started) / 60, 1)
    cached.write_text(json.dumps(row, indent=2) + "\n")
    return row


def _dataset(folder: Path, seed: int, quick: bool):
    if not (folder / "dataset.json").is_file():
        write_dataset(folder, seed=seed, **(QUICK if quick else FULL))
    return discover_dataset(folder)


def train_controls(dataset, out: Path, config: Config) -> dict[str, Path]:
    """Full supervision at the steps of each round (see the module's docstring); {name: run folder}."""
    ssl_dir = out / "ssl"
    split = json.loads((round_dir(ssl_dir, 0) / "splits.json").read_text())
    inputs = TrainingInputs((), ssl_dir / "cache", split, dataset_checked=True)
    rounds = config.ssl.rounds
    if config.ssl.student_init == "teacher":
        runs, previous = {}, round_dir(ssl_dir, 0)
        for index in range(1, rounds + 1):
            folder = out / "full_supervision" / f"round{index}"
            _train(dataset, folder, config, replace(inputs, init_from=previous))
            runs[f"full supervision, steps of round {index}"] = previous = folder
        return runs
    longer = {}
    for name in ("stage1", "stage2"):
        stage = getattr(config, name)
        longer[name] = replace(
            stage, epochs=stage.epochs * (rounds + 1), lr_halving_epochs=stage.lr_halving_epochs * (rounds + 1)
        )
    folder = out / "full_supervision" / "all_steps"
    _train(dataset, folder, replace(config, **longer), inputs)
    return {f"full supervision, steps of all {rounds + 1} models": folder}


def _train(dataset, folder: Path, config: Config, inputs: TrainingInputs) -> None:
    started = (folder / "config.json").is_file()
    run_training(dataset, folder, None if started else config, device=DEVICE, inputs=inputs)


def _score(model_dir: Path, dataset, out: Path) -> dict:
    name = "_".join(model_dir.relative_to(out).parts)
    scores = out / "scores" / f"{name}.json"
    if not scores.is_file():
        scores.parent.mkdir(parents=True, exist_ok=True)
        scores.write_text(json.dumps(score_on_test_set(model_dir, dataset, out, name, DEVICE)) + "\n")
    return json.loads(scores.read_text())


def precision_check(teacher: Path, dataset, seed: int, config: Config) -> dict:
    """The teacher's cleaned pseudo-labels in float32 and bf16: agreement and true Dice (unknown voxels kept)."""
    segmenter = segmenter_from_run(teacher, DEVICE)
    agreement, true_dice = [], {"fp32": [], "bf16": []}
    for index, case in enumerate(dataset.unlabeled, start=1):
        image = read_image(case.image)
        labels = {}
        for precision in ("fp32", "bf16"):
            segmenter.stage1.precision = segmenter.stage2.precision = precision
            labels[precision] = clean_pseudo_label(segmenter.predict(image), config.ssl).array
        _, truth = generate_case(case_seed(seed, "unlabeled", index), None)
        agreement.append(mean_dice(labels["fp32"], labels["bf16"]))
        for precision, array in labels.items():
            true_dice[precision].append(mean_dice(np.where(array == IGNORE_LABEL, 0, array), truth.array))
    return {
        "agreement_mean_dice": float(np.mean(agreement)),
        "agreement_min_dice": float(np.min(agreement)),
        "true_dice": {precision: float(np.mean(values)) for precision, values in true_dice.items()},
    }


def write_summary(out: Path, rows: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": _cpu_model()}
    (out / "bench.json").write_text(
        json.dumps({"machine": machine, "args": vars(args), "seeds": rows}, indent=2, default=str)
    )
    (out / "summary.md").write_text(summary_table(rows) + "\n")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def summary_table(rows: list[dict]) -> str:
    """Per seed: test mean DSC / NSD of every model; then the paired differences of the shipped model."""
    names = list(rows[0]["test"])
    lines = ["| seed | shipped | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for row in rows:
        cells = [f"{row['test'][n]['mean_dsc']:.3f} / {row['test'][n]['mean_nsd']:.3f}" for n in names]
        lines.append(f"| {row['seed']} | round {row['shipped_round']} | " + " | ".join(cells) + " |")
    for metric in ("mean_dsc", "mean_nsd"):
        lines += ["", f"paired differences in test {metric} (shipped model minus control), per seed; mean +- sd:", ""]
        for control in names:
            differences = [_shipped(row)[metric] - row["test"][control][metric] for row in rows]
            per_seed = ", ".join(f"{d:+.3f}" for d in differences)
            lines.append(f"- shipped - {control}: {per_seed}; {np.mean(differences):+.3f} +- {_sd(differences):.3f}")
    shipped = [_shipped(row)["mean_dsc"] for row in rows]
    lines.append(f"- shipped model's test mean DSC: {np.mean(shipped):.3f} +- {_sd(shipped):.3f}")
    minutes = ", ".join(f"{row['ssl_minutes']:.1f}" for row in rows)
    lines.append(f"- minutes of each seed's self-training run (teacher, rounds, validation): {minutes}")
    lines += ["", organ_changes(rows)]
    return "\n".join(lines)


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _shipped(row: dict) -> dict:
    return row["test"][f"round {row['shipped_round']}"]


def organ_changes(rows: list[dict]) -> str:
    """Mean over the seeds of each organ's test DSC: teacher, shipped, and the largest-steps control."""
    control = list(rows[0]["test"])[-1]
    organs = list(rows[0]["test"]["round 0"]["dsc"])
    lines = [f"| organ (mean test DSC) | teacher | shipped | {control} |", "|---|---|---|---|"]
    for organ in organs:
        values = [np.mean([m(row)["dsc"][organ] for row in rows]) for m in _model_pickers(control)]
        lines.append(f"| {organ} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def _model_pickers(control: str):
    return (lambda row: row["test"]["round 0"], _shipped, lambda row: row["test"][control])


if __name__ == "__main__":
    main()
