"""Contrast phases and fields of view of the training phantoms: do they carry a phantom-only model to real CT?

    python benchmarks/bench_phases.py OUT [--seeds 0 1 2]

Per seed, three phantom training sets of the demo's size (4 labeled cases: 3 to train, 1
to validate) with the same anatomy case by case (TRAININGS): every case portal-venous
and upper-abdominal (the default), one contrast phase per case drawn at random
(`organseg phantom --phase mixed`), and that with every field of view continued to the
femoral heads (`--fov abdomen-pelvis`). Each trains a model with the
demo's schedule for its teacher (the `cpu` preset's networks, 80 stage-1 and 300 stage-2
steps). Each is evaluated on 4 upper-abdominal test phantoms in each phase (the same 4
anatomies in every phase) and on the real `ts_abdomen` (non-contrast abdomen-pelvis CT,
12 organs; no model here has seen it). Mean DSC over the organs present in each ground
truth.

Writes OUT/results.json (a rerun adds what is missing) and prints per-seed tables and
paired differences.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_cpu_inference import machine

from organseg.dataset import discover_dataset
from organseg.demo import demo_config
from organseg.io import read_image, read_label
from organseg.metrics import evaluate_case
from organseg.network_stage import segmenter_from_run
from organseg.phantom import write_dataset
from organseg.phantom.tones import PHASES
from organseg.runs import run_training

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real" / "ts_abdomen"
# Training sets: name -> (contrast phase, field of view), each as `organseg phantom --phase --fov` takes them.
TRAININGS = {
    "portal-venous": ("portal-venous", "upper-abdomen"),
    "mixed": ("mixed", "upper-abdomen"),
    "mixed, pelvis": ("mixed", "abdomen-pelvis"),
}
TEST_CASES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"machine": machine(), "seeds": {}}
    for seed in args.seeds:
        row = results["seeds"].setdefault(str(seed), {})
        for training in TRAININGS:
            if training not in row:
                row[training] = one_training(args.out / f"seed{seed}", seed, training)
                results_path.write_text(json.dumps(results, indent=2))
    print_tables(results)


def one_training(folder: Path, seed: int, training: str) -> dict:
    """Train on the training set `training` of `seed` and score it on every test set."""
    tests = {
        phase: _dataset(folder / f"test_{phase}", seed, (phase, "upper-abdomen"), 0, TEST_CASES) for phase in PHASES
    }
    name = training.replace(", ", "_")
    data = _dataset(folder / f"train_{name}", seed, TRAININGS[training], labeled=4, test=0)
    run_dir = folder / f"run_{name}"
    started = time.perf_counter()
    if not (run_dir / "stage2" / "last.pt").exists():
        run_training(discover_dataset(data), run_dir, demo_config(seed=seed))
    minutes = (time.perf_counter() - started) / 60
    segmenter = segmenter_from_run(run_dir, device="cpu")
    scores = {phase: _mean_dsc(segmenter, _test_pairs(test)) for phase, test in tests.items()}
    real = _organ_dsc(segmenter, REAL / "image.nii.gz", REAL / "label_flare13.nii.gz")
    scores["ts_abdomen"] = float(np.mean(list(real.values())))
    print(f"seed {seed} {training}: {json.dumps(scores)}", flush=True)
    return {"mean_dsc": scores, "ts_abdomen_organs": real, "train_minutes": round(minutes, 1)}


def _dataset(folder: Path, seed: int, looks: tuple[str, str], labeled: int, test: int) -> Path:
    if not (folder / "dataset.json").exists():
        phase, field_of_view = looks
        write_dataset(
            folder, labeled=labeled, unlabeled=0, test=test, seed=seed, phase=phase, field_of_view=field_of_view
        )
    return folder


def _test_pairs(folder: Path) -> list[tuple[Path, Path]]:
    return [
        (image, folder / "labelsTs" / image.name.replace("_0000", ""))
        for image in sorted((folder / "imagesTs").glob("*.nii.gz"))
    ]


def _mean_dsc(segmenter, pairs: list[tuple[Path, Path]]) -> float:
    return float(np.mean([np.mean(list(_organ_dsc(segmenter, image, label).values())) for image, label in pairs]))


def _organ_dsc(segmenter, image_path: Path, label_path: Path) -> dict[str, float]:
    """DSC of every organ present in the ground truth."""
    truth = read_label(label_path)
    rows = evaluate_case(segmenter.predict(read_image(image_path)), truth)
    present = set(np.unique(truth.array).tolist())
    return {row["organ"]: float(row["dsc"]) for row in rows if row["label"] in present}


def real_ct_scores(segmenter) -> dict:
    """The shared real CT no phantom-trained model has seen: `ts_abdomen` (mean DSC over its
    12 organs, and each) and the liver of `dcmqi_3slice`."""
    shared = REAL.parent
    organs = _organ_dsc(segmenter, REAL / "image.nii.gz", REAL / "label_flare13.nii.gz")
    liver = _organ_dsc(segmenter, shared / "dcmqi_3slice" / "dicom", shared / "dcmqi_3slice" / "liver_seg.nrrd")
    return {"ts_abdomen": float(np.mean(list(organs.values()))), "dcmqi liver": liver["liver"], "organs": organs}


def print_tables(results: dict) -> None:
    columns = [*PHASES, "ts_abdomen"]
    print("\n| seed | training phantoms | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for seed, row in results["seeds"].items():
        for training in (t for t in TRAININGS if t in row):
            cells = " | ".join(f"{row[training]['mean_dsc'][column]:.3f}" for column in columns)
            print(f"| {seed} | {training} | {cells} |")
    seeds = [row for row in results["seeds"].values() if set(TRAININGS) <= set(row)]
    for better, base in (("mixed", "portal-venous"), ("mixed, pelvis", "portal-venous"), ("mixed, pelvis", "mixed")):
        print_paired(seeds, better, base, columns, "mean_dsc")
    print(f"\nts_abdomen per organ (mean over seeds): {' / '.join(TRAININGS)}\n")
    for organ in seeds[0]["mixed"]["ts_abdomen_organs"]:
        values = [np.mean([row[t]["ts_abdomen_organs"][organ] for row in seeds]) for t in TRAININGS]
        print(f"- {organ}: " + " / ".join(f"{value:.3f}" for value in values))


def print_paired(seeds: list[dict], better: str, base: str, columns: list[str], key: str) -> None:
    """Per-seed differences of `better` minus `base` in each column of row[arm][key], and their mean +- sd."""
    print(f"\npaired differences of mean DSC, {better} minus {base}; per seed; mean +- sd\n")
    for column in columns:
        differences = [row[better][key][column] - row[base][key][column] for row in seeds]
        spread = np.std(differences, ddof=1) if len(differences) > 1 else 0.0
        listed = ", ".join(f"{value:+.3f}" for value in differences)
        print(f"- {column}: {listed}; {np.mean(differences):+.3f} +- {spread:.3f}")


if __name__ == "__main__":
    main()
