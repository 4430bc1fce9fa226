"""CPU inference on full-size CTs: `organseg predict` file to file, phase by phase.

    python benchmarks/bench_cpu_inference.py RUN_DIR OUT [--cases 5] [--repeats 1] [--batch 20]

RUN_DIR is a trained run (e.g. the `model_dir` of `organseg demo`). Writes full-size
phantoms (512x512x100, about 0.7x0.7x2.5 mm, int16 .nii.gz) to OUT/data unless already
there, then measures:

1. `organseg predict RUN_DIR CASE OUT.nii.gz` as a user runs it (a fresh process: start-up,
   model loading, reading, predicting, writing), every case `--repeats` times: wall time
   and the process's peak resident memory.
2. In one process, per phase (organseg.phases.PREDICT_PHASES), four paths with the same
   networks: organseg's (fp32, and bf16 autocast); "unoptimised", the same steps done
   plainly (a float32 copy of the whole CT, every class's logits brought back to full
   resolution, then argmax, clean-up on the whole volume); and "straightforward", the
   same with scipy.ndimage.zoom resampling and softmax probabilities. Agreement with
   organseg's fp32 labels and with the phantoms' true labels (mean Dice over organs).
3. A `--batch`-case folder (the cases repeated under new names) predicted by one process
   with --profile: peak resident memory per case, to show that memory stays flat.

Results go to OUT/results.json and are printed as markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from organseg.cascade import Segmenter, StageInput
from organseg.device import resolve_precision
from organseg.io import Volume, read_image, read_label, write_label
from organseg.metrics import dice_per_class, mean_dice
from organseg.network_stage import segmenter_from_run
from organseg.phases import PREDICT_PHASES, PhaseClock
from organseg.postprocess import keep_largest_component
from organseg.preprocess.crop import Box, crop, paste
from organseg.preprocess.normalize import normalize_ct
from organseg.preprocess.orientation import canonical_transform
from organseg.preprocess.resample import resample_image
from organseg.profiling import read_profile_rows

SHAPE = (512, 512, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="CLI runs per case")
    parser.add_argument("--batch", type=int, default=20, help="cases of the memory-flatness batch (0: skip)")
    args = parser.parse_args()
    images = full_size_cases(args.out / "data", args.cases)
    results = {
        "machine": machine(),
        "cli": cli_runs(args.run_dir, images, args.repeats, args.out / "cli"),
        "phases": phase_comparison(args.run_dir, images, args.out / "phases"),
    }
    if args.batch:
        results["batch"] = batch_memory(args.run_dir, images, args.batch, args.out / "batch")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)


def full_size_cases(folder: Path, count: int) -> list[Path]:
    if not (folder / "imagesTs").is_dir():
        # In a child process: a child's peak RSS (wait4) starts from its parent's at fork,
        # so this process must never hold full-size volumes before the CLI runs.
        shape = [str(n) for n in SHAPE]
        command = ["-m", "organseg", "phantom", str(folder), "--labeled", "0", "--test", str(count)]
        subprocess.run([sys.executable, *command, "--seed", "7", "--shape", *shape], check=True)
    images = sorted((folder / "imagesTs").glob("*.nii.gz"))
    if len(images) < count:
        raise SystemExit(f"{folder} holds {len(images)} cases, fewer than --cases {count}; remove it to regenerate")
    return images[:count]


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "native_bf16": resolve_precision(torch.device("cpu"), "auto") == "bf16",
    }


def cli_runs(run_dir: Path, images: list[Path], repeats: int, out: Path) -> dict:
    """Each case through `organseg predict` in a fresh process: wall seconds and peak RSS (MB)."""
    out.mkdir(parents=True, exist_ok=True)
    walls, peaks = [], []
    for _ in range(repeats):
        for image in images:
            target = out / image.name.replace("_0000", "")
            target.unlink(missing_ok=True)
            command = [sys.executable, "-m", "organseg", "predict", str(run_dir), str(image), str(target)]
            started = time.perf_counter()
            process = subprocess.Popen(command + ["--device", "cpu"])
            _, status, usage = os.wait4(process.pid, 0)
            walls.append(time.perf_counter() - started)
            peaks.append(usage.ru_maxrss / 1024)  # kB on Linux
            if status != 0:
                raise SystemExit(f"organseg predict failed on {image}")
    return {"runs": len(walls), "wall_s": _spread(walls), "peak_rss_mb": _spread(peaks)}


def phase_comparison(run_dir: Path, images: list[Path], out: Path) -> dict:
    """Per-phase seconds of each path, and their agreement with organseg's fp32 path and with the truth."""
    out.mkdir(parents=True, exist_ok=True)
    fast = segmenter_from_run(run_dir, "cpu", precision="fp32")  # compare like with like: fp32 everywhere
    bf16 = segmenter_from_run(run_dir, "cpu", precision="bf16")
    clocks = {name: PhaseClock() for name in ("unoptimised", "straightforward")}
    paths = {
        "organseg": (fast.predict, fast.clock),
        "organseg_bf16": (bf16.predict, bf16.clock),
        "unoptimised": (lambda image: plain_path(fast, image, clocks["unoptimised"], False), clocks["unoptimised"]),
        "straightforward": (
            lambda image: plain_path(fast, image, clocks["straightforward"], True),
            clocks["straightforward"],
        ),
    }
    timings = {name: [] for name in paths}
    agreement = {name: [] for name in paths if name != "organseg"}
    accuracy = {name: [] for name in paths}
    for image_path in images:
        labels = {}
        for name, (segment, clock) in paths.items():
            with clock.phase("read"):
                image = read_image(image_path)
            labels[name] = segment(image).array
            with clock.phase("write"):
                write_label(labels[name], image.geometry, out / f"{name}.nii.gz")
            timings[name].append(clock.take())
            del image
        truth = _truth(image_path)
        for name in paths:
            if name in agreement:
                agreement[name].append(mean_dice(labels["organseg"], labels[name]))
            if truth is not None:
                accuracy[name].append(_organ_dice(labels[name], truth))
    return {
        "cases": len(images),
        "median_s": {name: _phase_medians(rows) for name, rows in timings.items()},
        "mean_dice_vs_organseg_fp32": {name: _spread(values) for name, values in agreement.items()},
        "mean_dice_vs_truth": {name: _spread(values) for name, values in accuracy.items() if values},
    }


def plain_path(segmenter: Segmenter, image: Volume, clock: PhaseClock, straightforward: bool) -> Volume:
    """The cascade done plainly, with organseg's networks: a float32 copy of the whole CT, every
    class's full-resolution logits (or, `straightforward`, softmax probabilities) and clean-up on
    the whole volume. Resampling: organseg's (unoptimised) or scipy.ndimage.zoom (straightforward)."""
    config = segmenter.config
    resize = _zoom_to if straightforward else lambda array, grid: resample_image(array, grid)[None, None]
    with clock.phase("normalise"):
        transform = canonical_transform(image.geometry)
        spacing = transform.apply_geometry(image.geometry).spacing_mm
        normalized = np.ascontiguousarray(normalize_ct(transform.apply(image.array), config.window_hu))
    shape, whole = normalized.shape, Box.whole(normalized.shape)
    with clock.phase("resample_1"):
        coarse_input = resize(normalized, config.stage1.grid)
    with clock.phase("stage_1"):
        coarse = segmenter.stage1(StageInput(coarse_input, whole, shape))[0].argmax(0).astype(np.uint8)
    with clock.phase("locate"):
        box = segmenter.box_from_coarse(coarse, shape, spacing)
    with clock.phase("resample_2"):
        fine_input = resize(np.ascontiguousarray(crop(normalized, box)), config.stage2.grid)
    with clock.phase("stage_2"):
        logits = segmenter.stage2(StageInput(fine_input, box, shape))[0]
    with clock.phase("resample_back"):
        if straightforward:
            probabilities = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
            factors = np.divide(box.shape, probabilities.shape[1:])
            full = np.stack([ndimage.zoom(p, factors, order=1, grid_mode=True, mode="nearest") for p in probabilities])
        else:
            full = resample_image(logits, box.shape, shrink="nearest")
        region = full.argmax(0).astype(np.uint8)
    with clock.phase("clean_up"):
        labels = keep_largest_component(paste(region, box, shape))
    with clock.phase("restore_orientation"):
        labels = np.ascontiguousarray(transform.inverse().apply(labels))
    return Volume(labels, image.geometry)


def _zoom_to(image: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    factors = np.divide(grid, image.shape)
    return ndimage.zoom(image, factors, order=1, grid_mode=True, mode="nearest")[None, None]


def _truth(image_path: Path) -> np.ndarray | None:
    label_path = image_path.parent.parent / "labelsTs" / image_path.name.replace("_0000", "")
    return read_label(label_path).array if label_path.is_file() else None


def _organ_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    present = [label for label in np.unique(truth) if label > 0]
    return float(np.mean(list(dice_per_class(prediction, truth, [int(label) for label in present]).values())))


def batch_memory(run_dir: Path, images: list[Path], count: int, out: Path) -> dict:
    """One `organseg predict --profile` over `count` cases: peak RSS per case."""
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        link = folder / f"case{index:03d}_0000.nii.gz"
        if not link.exists():
            os.link(images[index % len(images)], link)
    predictions = out / "predictions"
    command = [sys.executable, "-m", "organseg", "predict", str(run_dir), str(folder), str(predictions)]
    subprocess.run(command + ["--device", "cpu", "--profile"], check=True)
    rows = read_profile_rows(predictions / "profile.csv")
    peaks = [row["peak_rss_mb"] for row in rows]
    # Case i repeats image i mod len(images): growth is a later pass's peak over the first's.
    first, last = peaks[: len(images)], peaks[-len(images) :]
    return {
        "cases": len(rows),
        "peak_rss_mb_per_case": [round(value, 1) for value in peaks],
        "wall_s": _spread([row["wall_s"] for row in rows]),
        "growth_mb_last_vs_first_pass": round(max(b - a for a, b in zip(first, last)), 1),
    }


def _spread(values: list[float]) -> dict:
    values = np.asarray(values, np.float64)
    return {
        "median": round(float(np.median(values)), 3),
        "min": round(float(values.min()), 3),
        "max": round(float(values.max()), 3),
    }


def _phase_medians(rows: list[dict]) -> dict:
    medians = {phase: float(np.median([row.get(phase, 0.0) for row in rows])) for phase in PREDICT_PHASES}
    medians["total"] = float(np.median([sum(row.values()) for row in rows]))
    return {phase: round(seconds, 3) for phase, seconds in medians.items()}


def print_tables(results: dict) -> None:
    cli, phases = results["cli"], results["phases"]
    print(f"\nmachine: {results['machine']}")
    wall, rss = cli["wall_s"], cli["peak_rss_mb"]
    print(f"\n`organseg predict`, file to file, {cli['runs']} runs:")
    print(f"wall {wall['median']} s (min {wall['min']}, max {wall['max']})")
    print(f"peak RSS {rss['median']} MB (max {rss['max']})")
    medians = phases["median_s"]
    names = list(medians)
    print(f"\nmedian seconds per phase over {phases['cases']} cases (in one process):\n")
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for phase in (*PREDICT_PHASES, "total"):
        print(f"| {phase} | " + " | ".join(f"{medians[name][phase]:.3f}" for name in names) + " |")
    print()
    for name in names:
        ratio = medians[name]["total"] / medians["organseg"]["total"]
        agree = phases["mean_dice_vs_organseg_fp32"].get(name)
        truth = phases["mean_dice_vs_truth"].get(name)
        print(
            f"{name}: {ratio:.2f}x organseg's time"
            + (f"; mean Dice vs organseg fp32 median {agree['median']} (min {agree['min']})" if agree else "")
            + (f"; vs truth median {truth['median']}" if truth else "")
        )
    if "batch" in results:
        batch = results["batch"]
        print(f"\n{batch['cases']}-case batch: peak RSS per case {batch['peak_rss_mb_per_case']} MB")
        growth = batch["growth_mb_last_vs_first_pass"]
        print(f"largest growth of an image's peak from its first to its last pass: {growth} MB")


if __name__ == "__main__":
    main()
