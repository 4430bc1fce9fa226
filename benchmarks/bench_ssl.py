"""Full supervision against self-training variants on phantoms: filtering, batch composition.

One teacher is trained on the labeled cases (the demo's settings unless --set says
otherwise) and pseudo-labels every unlabeled case once. Each variant then trains a
student from scratch on the labeled + the pseudo-labeled cases its filter keeps, with
its batch composition and pseudo-label weight, for exactly as many steps as the teacher.
Every model is scored on the validation case(s) (to choose by) and on the test set (to
report). Also printed: how well each pseudo-label's quality score ranks its true Dice
(the phantom generator can remake the unlabeled cases' ground truth).

    python benchmarks/bench_ssl.py OUT_DIR [--labeled 4 --unlabeled 12 --test 4] [--seed 0] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from organseg.config import resolve_config
from organseg.dataset import Case, discover_dataset
from organseg.demo import DEMO_SETTINGS, score_on_test_set
from organseg.io import read_label
from organseg.labels import IGNORE_LABEL
from organseg.metrics import mean_dice
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.writer import case_seed
from organseg.pseudolabel import decide, read_scores, run_pseudo_labeling
from organseg.runs import TrainingInputs, run_training
from organseg.selftraining import validation_scores

UNIFORM = ["ssl.labeled_fraction=0", "ssl.pseudo_weight=1"]
HALF = ["ssl.labeled_fraction=0.5", "ssl.pseudo_weight=0.5"]
BEST = ["ssl.filter=fraction", "ssl.keep_fraction=0.75"]
UNSURE = ["ssl.min_voxel_confidence=0.9"]
VARIANTS = {
    "ssl: uniform batches, all pseudo-labels": [*UNIFORM, "ssl.filter=none"],
    "ssl: half labeled, weight 0.5, unsure voxels unknown": [*HALF, *UNSURE, "ssl.filter=none"],
    "ssl: half labeled, weight 0.5": [*HALF, "ssl.filter=none"],
    "ssl: uniform batches, best 75%": [*UNIFORM, *BEST],
    "ssl: half labeled, weight 0.5, unsure voxels unknown, best 75%": [*HALF, *UNSURE, *BEST],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=12)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--variants", nargs="*", help="names of VARIANTS to run (default: all)")
    args = parser.parse_args()
    data = args.out / "dataset"
    if not (data / "dataset.json").is_file():
        write_dataset(data, labeled=args.labeled, unlabeled=args.unlabeled, test=args.test, seed=args.seed)
    dataset = discover_dataset(data)
    overrides = [*DEMO_SETTINGS, f"seed={args.seed}", *args.set]
    results = {}
    started = time.perf_counter()
    teacher = _train(dataset, args.out / "full_supervision", resolve_config("cpu", overrides=overrides), [], args.out)
    results["full supervision"] = _scores(teacher, dataset, args.out, "full_supervision", started)
    quality = None
    for name in args.variants or VARIANTS:
        started = time.perf_counter()
        config = resolve_config("cpu", overrides=[*overrides, *VARIANTS[name]])
        # One set of pseudo-labels per unknown-voxel threshold (filters only read the scores).
        pseudo_dir = args.out / f"pseudo_unsure{config.ssl.min_voxel_confidence:g}"
        run_pseudo_labeling(teacher, list(dataset.unlabeled), pseudo_dir, config.ssl, device="cpu")
        rows = [read_scores(pseudo_dir)[case.case_id] for case in dataset.unlabeled]
        quality = quality or _score_quality(rows, pseudo_dir, args.seed)
        kept = [
            Case(case.case_id, case.image, pseudo_dir / f"{case.case_id}.nii.gz")
            for case, (keep, _) in zip(dataset.unlabeled, decide(rows, config.ssl))
            if keep
        ]
        folder = args.out / _slug(name)
        model = _train(dataset, folder, config, kept, args.out)
        results[name] = {**_scores(model, dataset, args.out, _slug(name), started), "pseudo_labels_kept": len(kept)}
    (args.out / "bench_ssl.json").write_text(json.dumps({"results": results, "quality": quality}, indent=2) + "\n")
    print(_table(results, dataset.label_set))
    print(f"quality score vs true Dice of the pseudo-labels: {quality['summary']}")


def _train(dataset, folder: Path, config, pseudo: list[Case], out: Path) -> Path:
    started = (folder / "config.json").is_file()
    inputs = TrainingInputs(tuple(pseudo), out / "cache")
    run_training(dataset, folder, None if started else config, device="cpu", inputs=inputs)
    return folder


def _scores(model: Path, dataset, out: Path, name: str, started: float) -> dict:
    minutes = (time.perf_counter() - started) / 60
    return {
        "validation": validation_scores(model, dataset, "cpu"),
        "test": score_on_test_set(model, dataset, out, name, "cpu"),
        "minutes_train_and_score": round(minutes, 1),
    }


def _score_quality(rows: list[dict], pseudo_dir: Path, seed: int) -> dict:
    """Spearman correlation between each pseudo-label's score and its Dice against the true labels."""
    true_dice = []
    for index, row in enumerate(rows, start=1):
        _, truth = generate_case(case_seed(seed, "unlabeled", index), None)
        pseudo_label = read_label(pseudo_dir / f"{row['case']}.nii.gz").array
        true_dice.append(mean_dice(np.where(pseudo_label == IGNORE_LABEL, 0, pseudo_label), truth.array))
    scores = [row["score"] for row in rows]
    rho = float(stats.spearmanr(scores, true_dice).statistic) if len(rows) > 2 else float("nan")
    cases = [{"case": r["case"], "score": s, "true_dice": d} for r, s, d in zip(rows, scores, true_dice)]
    summary = f"Spearman rho {rho:.2f} over {len(rows)} cases; true Dice {np.mean(true_dice):.3f} mean"
    return {"spearman": rho, "cases": cases, "summary": summary}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _table(results: dict, label_set) -> str:
    names = list(results)
    lines = ["| organ (test DSC) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for _, organ in sorted(label_set.names):
        lines.append(f"| {organ} | " + " | ".join(f"{results[n]['test']['dsc'][organ]:.3f}" for n in names) + " |")
    lines.append("| **test mean DSC** | " + " | ".join(f"{results[n]['test']['mean_dsc']:.3f}" for n in names) + " |")
    lines.append("| test mean NSD | " + " | ".join(f"{results[n]['test']['mean_nsd']:.3f}" for n in names) + " |")
    lines.append(
        "| validation mean DSC | " + " | ".join(f"{results[n]['validation']['mean']['dsc']:.3f}" for n in names) + " |"
    )
    kept = [str(results[n].get("pseudo_labels_kept", "–")) for n in names]
    lines.append("| pseudo-labels kept | " + " | ".join(kept) + " |")
    minutes = [f"{results[n]['minutes_train_and_score']:.1f}" for n in names]
    lines.append("| minutes (train + score) | " + " | ".join(minutes) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
