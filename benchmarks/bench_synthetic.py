"""One real labeled CT with phantoms, against the real CT alone and against phantoms alone.

    python benchmarks/bench_synthetic.py OUT [--seeds 0 1 2] [--phantoms 8] [--arms ...] [--schedule demo|long]

Per seed, four trainings (ARMS), by default with the demo's schedule for its teacher
(the `cpu` preset's networks, 80 stage-1 and 300 stage-2 steps of batch 2, no
augmentation of labeled samples); `--schedule long` trains the `cpu` preset itself
(augmentation, deep supervision, poly schedule) for 400 and 4000 steps. No validation case:

- "real": the shared real `ts_abdomen` alone (non-contrast abdomen-pelvis CT, declared
  without the esophagus, which its field of view lacks);
- "real + phantoms": it and `--phantoms` generated phantoms (`synthetic.phantoms`; mixed
  contrast phases and fields of view), half of every batch from each;
- "phantoms": those phantoms alone;
- "phantoms, mixed appearance": the same anatomies, half of them with random tissue
  intensities (`organseg phantom --appearance mixed`).

Each model is scored on the liver of the real `dcmqi_3slice` (a 3-slice non-contrast CT
no model here trains on), on 4 upper-abdominal test phantoms of each contrast phase, and
on `ts_abdomen` itself (the real arms trained on it: their figure is the fit, not transfer).

Writes OUT/results.json (a rerun adds what is missing) and prints per-seed tables and
paired differences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from bench_cpu_inference import machine
from bench_phases import TEST_CASES, _dataset, _mean_dsc, _test_pairs, print_paired, real_ct_scores

from organseg.atomic import write_json
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.demo import DEMO_SETTINGS
from organseg.labels import FLARE22
from organseg.network_stage import segmenter_from_run
from organseg.phantom import write_dataset
from organseg.phantom.tones import PHASES
from organseg.runs import run_training
from organseg.synthetic import phantom_seed

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
ARMS = ("real", "real + phantoms", "phantoms", "phantoms, mixed appearance")
SCHEDULES = {
    "demo": DEMO_SETTINGS,
    "long": [
        "stage1.epochs=50",
        "stage1.iterations_per_epoch=8",
        "stage1.lr_halving_epochs=20",
        "stage2.epochs=80",
        "stage2.iterations_per_epoch=50",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phantoms", type=int, default=8)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--schedule", choices=tuple(SCHEDULES), default="demo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"machine": machine(), "seeds": {}}
    results.update(phantoms=args.phantoms, schedule=args.schedule)
    for seed in args.seeds:
        row = results["seeds"].setdefault(str(seed), {})
        for arm in args.arms:
            if arm not in row:
                row[arm] = one_arm(args.out / f"seed{seed}", seed, arm, (args.phantoms, args.schedule))
                results_path.write_text(json.dumps(results, indent=2))
    print_tables(results)


def one_arm(folder: Path, seed: int, arm: str, setting: tuple[int, str]) -> dict:
    """Train `arm` of `seed`; `setting`: the number of phantoms and the schedule."""
    phantoms, schedule = setting
    count = phantoms if arm == "real + phantoms" else 0
    overrides = [*SCHEDULES[schedule], f"seed={seed}", "validation_cases=0", f"synthetic.phantoms={count}"]
    config = resolve_config("cpu", overrides=overrides)
    started = time.perf_counter()  # generating the phantoms counts: a user waits for it too
    data = _real_dataset(folder / "real") if arm.startswith("real") else _phantoms(folder, config, phantoms, arm)
    run_dir = folder / f"run_{arm.replace(' + ', '_').replace(', ', '_').replace(' ', '_')}"
    if not (run_dir / "stage2" / "last.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_training(discover_dataset(data), run_dir, config)
    minutes = (time.perf_counter() - started) / 60
    segmenter = segmenter_from_run(run_dir, device="cpu")
    scores = {}
    for phase in PHASES:
        test = _dataset(folder / f"test_{phase}", seed, (phase, "upper-abdomen"), 0, TEST_CASES)
        scores[phase] = _mean_dsc(segmenter, _test_pairs(test))
    real = real_ct_scores(segmenter)
    scores["dcmqi liver"], scores["ts_abdomen"], organs = real["dcmqi liver"], real["ts_abdomen"], real["organs"]
    print(f"seed {seed} {arm}: {json.dumps(scores)}", flush=True)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)  # hundreds of MB per run
    return {"scores": scores, "ts_abdomen_organs": organs, "train_minutes": round(minutes, 1)}


def _real_dataset(folder: Path) -> Path:
    """ts_abdomen as a dataset of one labeled case that annotates every organ but the esophagus."""
    if (folder / "dataset.json").exists():
        return folder
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(REAL / "ts_abdomen" / "image.nii.gz", folder / "imagesTr" / "ts_abdomen_0000.nii.gz")
    shutil.copy(REAL / "ts_abdomen" / "label_flare13.nii.gz", folder / "labelsTr" / "ts_abdomen.nii.gz")
    organs = [name for _, name in FLARE22.names if name != "esophagus"]
    meta = {
        "name": "ts_abdomen",
        "channel_names": {"0": "CT"},
        "labels": FLARE22.to_json(),
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "partial_labels": {"ts_abdomen": organs},
    }
    write_json(folder / "dataset.json", meta)
    return folder


def _phantoms(folder: Path, config, count: int, arm: str) -> Path:
    """The phantoms the "real + phantoms" arm trains on (the same seed and looks), as a dataset of their own."""
    appearance = "mixed" if "appearance" in arm else "realistic"
    data = folder / f"phantoms_{appearance}"
    if not (data / "dataset.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        write_dataset(
            data,
            labeled=count,
            unlabeled=0,
            test=0,
            seed=phantom_seed(config),
            phase="mixed",
            field_of_view="mixed",
            appearance=appearance,
        )
    return data


def print_tables(results: dict) -> None:
    columns = [*PHASES, "dcmqi liver", "ts_abdomen"]
    print("\n| seed | training | " + " | ".join(columns) + " | minutes |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    for seed, row in results["seeds"].items():
        for arm in (a for a in ARMS if a in row):
            cells = " | ".join(f"{row[arm]['scores'][column]:.3f}" for column in columns)
            print(f"| {seed} | {arm} | {cells} | {row[arm]['train_minutes']} |")
    seeds = list(results["seeds"].values())
    present = [arm for arm in ARMS if all(arm in row for row in seeds)]
    pairs = (("real + phantoms", "real"), ("real + phantoms", "phantoms"), ("phantoms, mixed appearance", "phantoms"))
    for better, base in pairs:
        if better in present and base in present:
            print_paired(seeds, better, base, columns, "scores")
    if present:
        print(f"\nts_abdomen per organ (mean over seeds): {' / '.join(present)}\n")
        for organ in seeds[0][present[0]]["ts_abdomen_organs"]:
            values = [np.mean([row[arm]["ts_abdomen_organs"].get(organ, np.nan) for row in seeds]) for arm in present]
            print(f"- {organ}: " + " / ".join(f"{value:.3f}" for value in values))


if __name__ == "__main__":
    main()
