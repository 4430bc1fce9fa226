"""Partial labels on phantoms: does learning from partially annotated cases pay? Several seeds.

Per seed, one phantom dataset: 2 fully labeled cases, 12 partially labeled ones (each
annotating 1-4 random organs, `organseg phantom --partial`), 8 unlabeled and 6 test
phantoms. Five models, all with the demo's schedule (fixed steps per epoch, so each
trains as long as the others; `--stage2-steps` lengthens stage 2 for all of them, its
learning rate halving at the same fractions of the run), no validation case (a partial case cannot validate, and
2 full cases leave none to spare), scored on the test phantoms (FLARE22 DSC and NSD):

  a  full only        the 2 fully labeled cases alone
  b  as background    all 14 cases, unannotated organs taken as background (no partial_labels)
  c  marginal loss    all 14 cases with their partial labels (the teacher of d)
  d  c + completion   one self-training round: c pseudo-labels the unlabeled scans and
                      completes the partial cases (ground truth first); the student goes on from c
  e  all full         all 14 cases fully labeled (the same images; an upper bound)

    python benchmarks/bench_partial_labels.py OUT [--seeds 0 1 2] [--stage2-steps 300] [--quick]

Rerunning with the same OUT resumes: finished models and scores are kept. OUT/summary.md
holds the per-seed table, the paired differences and their mean +- sd.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_cpu_inference import machine

from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.demo import DEMO_SETTINGS, QUICK_SETTINGS, score_on_test_set
from organseg.io import write_label
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.writer import case_seed
from organseg.runs import run_training
from organseg.selftraining import round_dir, run_ssl

DEVICE = "cpu"
COUNTS = {"labeled": 2, "partial": 12, "unlabeled": 8, "test": 6}
QUICK_COUNTS = {"labeled": 2, "partial": 3, "unlabeled": 2, "test": 2}
SETTINGS = [*DEMO_SETTINGS, "ssl.rounds=1", "ssl.ship=last", "validation_cases=0"]
MODELS = ("a_full_only", "b_as_background", "c_marginal", "d_completion", "e_all_full")
PAIRS = (
    ("c_marginal", "a_full_only"),
    ("c_marginal", "b_as_background"),
    ("d_completion", "a_full_only"),
    ("d_completion", "b_as_background"),
    ("d_completion", "e_all_full"),
    ("d_completion", "c_marginal"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stage2-steps", type=int, default=300, help="stage-2 steps of every model (a multiple of 50)")
    parser.add_argument("--quick", action="store_true", help="a few tiny cases and short schedules (to test it)")
    args = parser.parse_args()
    settings = [*SETTINGS, *schedule(args.stage2_steps), *(QUICK_SETTINGS if args.quick else [])]
    results = {seed: run_seed(args.out / f"seed{seed}", seed, settings, args.quick) for seed in args.seeds}
    summary = summarise(results)
    (args.out / "summary.md").write_text(summary)
    print(summary)


def schedule(stage2_steps: int) -> list[str]:
    """The demo's stage-2 schedule stretched to `stage2_steps` (10 steps an epoch, halving at 2/5 of the run)."""
    epochs = stage2_steps // 10
    return [f"stage2.epochs={epochs}", f"stage2.lr_halving_epochs={max(1, round(epochs * 0.4))}"]


def run_seed(out: Path, seed: int, settings: list[str], quick: bool) -> dict:
    cache = out / "bench.json"
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    counts = QUICK_COUNTS if quick else COUNTS
    shape = (48, 48, 24) if quick else None
    data = out / "data"
    if not data.is_dir():
        write_dataset(data, seed=seed, shape=shape, **counts)
    twin = _fully_labeled_twin(data, out / "data_full", seed, counts["partial"], shape)
    config = resolve_config("cpu", overrides=[*settings, f"seed={seed}"])
    dataset = discover_dataset(data)
    runs = {
        "a_full_only": replace(dataset, labeled=tuple(c for c in dataset.labeled if c.annotated is None)),
        "d_completion": dataset,
        "e_all_full": discover_dataset(twin),
        "b_as_background": replace(dataset, labeled=tuple(replace(c, annotated=None) for c in dataset.labeled)),
    }
    for name, variant in runs.items():  # the partial-label models early: a tentative run shows them first
        if name in scores:
            continue
        started = time.perf_counter()
        if name == "d_completion":
            run_ssl(variant, out / "ssl", config, DEVICE)
            scores["c_marginal"] = _score(round_dir(out / "ssl", 0), dataset, out, "c_marginal", started)
            scores[name] = _score(round_dir(out / "ssl", 1), dataset, out, name, started)
        else:
            run_training(variant, out / name, config, device=DEVICE)
            scores[name] = _score(out / name, dataset, out, name, started)
        cache.write_text(json.dumps(scores, indent=1))
    return scores


def _score(model_dir: Path, dataset, out: Path, name: str, started: float) -> dict:
    scored = score_on_test_set(model_dir, dataset, out, name, DEVICE)
    return {**scored, "minutes": round((time.perf_counter() - started) / 60, 1)}


def _fully_labeled_twin(data: Path, twin: Path, seed: int, partial: int, shape) -> Path:
    """The same dataset with every partially labeled case fully labeled (its phantom drawn again)."""
    if twin.is_dir():
        return twin
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (twin / folder).mkdir(parents=True)
        for path in (data / folder).iterdir():
            (twin / folder / path.name).symlink_to(path.resolve())
    for index in range(1, partial + 1):
        _, labels = generate_case(case_seed(seed, "partial", index), shape)
        target = twin / "labelsTr" / f"phantom_p{index:03d}.nii.gz"
        target.unlink()
        write_label(labels.array, labels.geometry, target)
    meta = json.loads((data / "dataset.json").read_text())
    meta.pop("partial_labels", None)
    (twin / "dataset.json").write_text(json.dumps(meta))
    return twin


def summarise(results: dict[int, dict]) -> str:
    lines = [f"machine: {machine()['cpu']}, seeds {sorted(results)}", ""]
    lines += ["| seed | " + " | ".join(MODELS) + " |", "|---" * (len(MODELS) + 1) + "|"]
    for seed, scores in sorted(results.items()):
        cells = [f"{scores[m]['mean_dsc']:.3f} / {scores[m]['mean_nsd']:.3f}" if m in scores else "-" for m in MODELS]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", "test mean DSC / NSD; paired differences of test mean DSC:", ""]
    lines += ["| difference | per seed | mean +- sd |", "|---|---|---|"]
    for left, right in PAIRS:
        diffs = [s[left]["mean_dsc"] - s[right]["mean_dsc"] for s in results.values() if left in s and right in s]
        if diffs:
            per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
            spread = np.std(diffs, ddof=1) if len(diffs) > 1 else 0.0
            lines.append(f"| {left} - {right} | {per_seed} | {np.mean(diffs):+.3f} +- {spread:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
