"""`organseg demo [OUT_DIR]`: the main job, end to end, on built-in synthetic data.

1. Generate a phantom dataset: few labeled, many unlabeled, a held-out test set.
2. Self-training (organseg.selftraining): the teacher on the labeled cases is the
   full-supervision model; three rounds of pseudo-labels and a student that continues
   from its teacher's weights, each student teaching the next (one round with --quick).
   The best of teacher and students on the validation case is the semi-supervised model.
3. Predict the test set with both and evaluate them (FLARE22 DSC and NSD).
4. Print the per-organ table; write OUT_DIR/results.json and an HTML report of the
   semi-supervised model's test predictions (OUT_DIR/report/index.html).

The models use the `cpu` preset's networks and grids with shorter schedules (DEMO_SETTINGS),
so the whole job takes about 15 minutes on 2 CPU cores without AMX (benchmarks/RESULTS.md).
The semi-supervised model has had more training steps than the full-supervision one (its
teachers' and its own); benchmarks/bench_ssl_seeds.py also compares it with full
supervision trained for as many steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from organseg.atomic import write_json
from organseg.config import Config, resolve_config
from organseg.dataset import discover_dataset
from organseg.evaluate import run_evaluation
from organseg.labels import LabelSet
from organseg.phantom import write_dataset
from organseg.predict import run_prediction
from organseg.report import run_report
from organseg.selftraining import round_dir, run_ssl

# 24 unlabeled scans: with 12 the student does not beat its teacher; 8 test cases make the
# comparison less noisy (benchmarks/RESULTS.md).
FULL = {"labeled": 4, "unlabeled": 24, "test": 8}
QUICK = {"labeled": 3, "unlabeled": 4, "test": 2}

# Differences from the cpu preset. Fixed steps per epoch, so every student (3 labeled + 24
# pseudo-labeled cases) trains exactly as long as the teacher (3 labeled cases). Stage 2
# trains the labeled samples without the preset's augmentation, deep supervision and poly
# schedule, which need more than its 300 steps to pay; pseudo-labeled samples are strongly
# augmented. Three rounds: the test score still rose from the second student to the third.
# Stage 2's rate ends high (halving, not poly), so its models are the moving average of
# their weights, a better teacher on every seed measured (benchmarks/RESULTS.md).
DEMO_SETTINGS = [
    "ssl.rounds=3",
    "augment.enabled=false",
    "stage2.lr_schedule=halving",
    "stage2.net.deep_supervision=false",
    "stage1.epochs=20",
    "stage1.iterations_per_epoch=4",
    "stage1.lr_halving_epochs=8",
    "stage2.epochs=30",
    "stage2.iterations_per_epoch=10",
    "stage2.lr_halving_epochs=12",
    "stage2.val_every=5",
    "stage2.weight_average=0.95",
]
QUICK_SETTINGS = [
    "ssl.rounds=1",
    "stage1.epochs=8",
    "stage1.lr_halving_epochs=4",
    "stage2.epochs=4",
    "stage2.lr_halving_epochs=2",
    "stage2.val_every=2",
]
log = logging.getLogger(__name__)
MODELS = ("full_supervision", "semi_supervised")  # the teacher (round 0) and the shipped round


def demo_config(quick: bool = False, seed: int = 0) -> Config:
    return resolve_config("cpu", overrides=[*DEMO_SETTINGS, *(QUICK_SETTINGS if quick else []), f"seed={seed}"])


def run_demo(out: Path, seed: int = 0, quick: bool = False, device: str = "auto") -> dict:
    """Run the demo into `out`; returns the content of results.json. A rerun resumes."""
    out = Path(out)
    started = time.perf_counter()
    dataset = _dataset(out / "dataset", seed, quick)
    run_dir = out / "ssl"
    resume = (run_dir / "config.json").is_file()
    shipped = run_ssl(dataset, run_dir, None if resume else demo_config(quick, seed), device)["shipped"]
    results = {}
    for name, index in zip(MODELS, (0, shipped["round"])):
        results[name] = score_on_test_set(round_dir(run_dir, index), dataset, out, name, device)
    results["shipped"] = shipped
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["settings"] = {"quick": quick, "seed": seed, "cases": QUICK if quick else FULL}
    write_json(out / "results.json", results)
    semi = results["semi_supervised"]["model_dir"]
    test_images, test_labels = dataset.root / "imagesTs", dataset.root / "labelsTs"
    predictions = out / "predictions" / "semi_supervised"
    report = run_report(predictions, out / "report", test_images, test_labels, Path(semi), dataset.label_set)
    log.info("%s", results_table(results, dataset.label_set))
    log.info("results: %s; report (pictures, metrics, curves): %s", out / "results.json", report)
    log.info("predict with the semi-supervised model: organseg predict %s IN OUT", semi)
    return results


def _dataset(folder: Path, seed: int, quick: bool):
    if (folder / "dataset.json").is_file():
        log.info("reusing the phantom dataset in %s", folder)
    else:
        write_dataset(folder, seed=seed, **(QUICK if quick else FULL))
    return discover_dataset(folder)


def score_on_test_set(model_dir: Path, dataset, out: Path, name: str, device: str) -> dict:
    """Predict the test set with one model into OUT/predictions/NAME, evaluate: per-organ and mean DSC, NSD."""
    predictions = out / "predictions" / name
    run_prediction(model_dir, dataset.root / "imagesTs", predictions, device)
    evaluation = run_evaluation(predictions, dataset.root / "labelsTs", out / "evaluation" / name)
    organs = evaluation.summary["organs"]
    return {
        "model_dir": str(model_dir),
        "dsc": {organ: values["dsc"]["mean"] for organ, values in organs.items()},
        "nsd": {organ: values["nsd"]["mean"] for organ, values in organs.items()},
        "mean_dsc": evaluation.summary["overall"]["dsc"]["mean"],
        "mean_nsd": evaluation.summary["overall"]["nsd"]["mean"],
    }


def results_table(results: dict, label_set: LabelSet) -> str:
    """Markdown: test DSC / NSD per organ, full supervision against semi-supervised."""
    lines = ["test set DSC / NSD", "", "| organ | full supervision | semi-supervised |", "|---|---|---|"]
    for _, organ in sorted(label_set.names):
        cells = [f"{results[m]['dsc'][organ]:.3f} / {results[m]['nsd'][organ]:.3f}" for m in MODELS]
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    means = [f"{results[m]['mean_dsc']:.3f} / {results[m]['mean_nsd']:.3f}" for m in MODELS]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines)
