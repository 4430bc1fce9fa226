"""The slim runtime against the PyTorch path: agreement, fresh-process time and memory, install size.

    python benchmarks/bench_runtime.py RUN_DIR OUT [--repeats 10] [--runtime-venv DIR] [--paper]

RUN_DIR is a trained run (e.g. the model of `organseg demo`); it is exported to OUT/export.
Measures, in this order:

1. `organseg predict MODEL CT OUT.nii.gz` in a fresh process on a 512x512x100 phantom CT,
   `--repeats` times per engine, the engines interleaved: PyTorch (the run folder, in this
   environment), ONNX Runtime (the export, in this environment) and, with
   `--runtime-venv`, ONNX Runtime from a virtual environment that has organseg[runtime]
   and no torch (made there if missing). Wall time and peak resident memory (GNU time,
   /usr/bin/time, which the Debian package `time` installs).
2. Install size: site-packages of that environment against this one's.
3. Agreement of the labels, per organ (Dice; an organ neither engine finds is left out):
   ONNX Runtime against PyTorch in fp32, and against PyTorch in bf16 autocast, on the
   real ts_abdomen, the real DICOM series and 5 full-size phantoms.
4. With `--paper`: untrained networks of the paper preset (40.8M parameters per stage),
   exported too; seconds per full-size CT through each engine, in one process.

Results go to OUT/results.json and are printed as markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_cpu_inference import _spread, full_size_cases

from organseg.checkpoint import save_checkpoint
from organseg.config import resolve_config, to_dict
from organseg.device import resolve_precision
from organseg.export import export_run
from organseg.io import read_image
from organseg.labels import FLARE22
from organseg.metrics import dice_per_class
from organseg.network_stage import segmenter_from_run
from organseg.onnx_stage import segmenter_from_export
from organseg.stage_state import build_model

ROOT = Path(__file__).resolve().parents[1]
GNU_TIME = "/usr/bin/time"  # Debian package time
REAL = ROOT.parent / "shared" / "data" / "real"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runtime-venv", type=Path, help="a virtual environment with organseg[runtime], no torch")
    parser.add_argument("--paper", action="store_true", help="also time the paper preset's networks")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exported = args.out / "export"
    if not exported.exists():
        export_run(args.run_dir, exported)
    phantoms = full_size_cases(args.out / "data", 5)
    results = {"machine": machine(), "run": str(args.run_dir)}
    engines = {
        "pytorch": (_organseg(sys.executable), args.run_dir),
        "onnxruntime": (_organseg(sys.executable), exported),
    }
    if args.runtime_venv:
        python = runtime_environment(args.runtime_venv)
        engines["onnxruntime, no torch installed"] = (_organseg(python), exported)
        results["install_mb"] = {
            "this environment (train, runtime, dicom, test)": site_packages_mb(Path(sys.executable)),
            "organseg[runtime]": site_packages_mb(python),
        }
    results["cli"] = cli_runs(engines, phantoms[0], args.repeats, args.out / "cli")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    results["agreement"] = agreement(args.run_dir, exported, [REAL / "ts_abdomen" / "image.nii.gz"] + phantoms)
    results["agreement"]["dicom series (3 slices)"] = agreement(
        args.run_dir, exported, [REAL / "dcmqi_3slice" / "dicom"]
    )["fp32"]
    if args.paper:
        results["paper"] = paper_preset(args.out / "paper", phantoms[0])
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print_tables(results)


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    import onnxruntime

    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "flags": [flag for flag in flags if flag.startswith(("avx512", "amx", "avx2"))],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "native_bf16": resolve_precision(torch.device("cpu"), "auto") == "bf16",
    }


def _organseg(python: str | Path) -> list[str]:
    return [str(python), "-m", "organseg"]


def runtime_environment(venv: Path) -> Path:
    """The Python of `venv`, made with organseg[runtime] (and no torch) if it does not exist."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"{ROOT}[runtime]"], check=True)
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        raise SystemExit(f"{venv} has torch installed; give an environment without it")
    return python


def site_packages_mb(python: Path) -> float:
    """Size of the environment's site-packages in MB."""
    command = [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    folder = Path(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())
    return round(total / 2**20, 1)


def cli_runs(engines: dict[str, tuple[list[str], Path]], image: Path, repeats: int, out: Path) -> dict:
    """Each engine's `organseg predict` in a fresh process, `repeats` times, interleaved: wall s and peak RSS MB.

    Peak RSS comes from GNU time around each run: a child's own wait4 figure starts from
    this (large) process's peak, which it inherits when it is spawned.
    """
    out.mkdir(parents=True, exist_ok=True)
    walls = {name: [] for name in engines}
    peaks = {name: [] for name in engines}
    for _ in range(repeats):
        for name, (command, model) in engines.items():
            target, memory = out / "case.nii.gz", out / "peak_rss_kb.txt"
            target.unlink(missing_ok=True)
            timed = [GNU_TIME, "-f", "%M", "-o", str(memory), *command]
            started = time.perf_counter()
            subprocess.run([*timed, "predict", str(model), str(image), str(target), "--device", "cpu"], check=True)
            walls[name].append(time.perf_counter() - started)
            peaks[name].append(int(memory.read_text().split()[-1]) / 1024)
    return {
        name: {"runs": len(walls[name]), "wall_s": _spread(walls[name]), "peak_rss_mb": _spread(peaks[name])}
        for name in engines
    }


def agreement(run_dir: Path, exported: Path, images: list[Path]) -> dict:
    """Per organ, the Dice of ONNX Runtime's labels against PyTorch's in fp32 and in bf16 (min and mean over cases)."""
    onnx = segmenter_from_export(exported)
    references = {
        "fp32": segmenter_from_run(run_dir, "cpu", precision="fp32"),
        "bf16": segmenter_from_run(run_dir, "cpu", precision="bf16"),
    }
    scores = {name: {} for name in references}
    for path in images:
        image = read_image(path)
        labels = onnx.predict(image).array
        for name, reference in references.items():
            expected = reference.predict(image).array
            present = [label for label in FLARE22.ids if (expected == label).any() or (labels == label).any()]
            for label, value in dice_per_class(labels, expected, present).items():
                scores[name].setdefault(FLARE22.name(label), []).append(value)
            scores[name].setdefault("voxels equal", []).append(float((labels == expected).mean()))
    return {
        name: {organ: {"min": round(min(v), 5), "mean": round(float(np.mean(v)), 5)} for organ, v in rows.items()}
        for name, rows in scores.items()
    }


def paper_preset(folder: Path, image_path: Path) -> dict:
    """Seconds per full-size CT with untrained paper-preset networks, per engine (after a warm-up)."""
    config = resolve_config("paper", overrides=["stage1_target=organs"])
    run_dir = folder / "run"
    if not (run_dir / "stage2" / "best.pt").is_file():
        torch.manual_seed(0)
        for stage in ("stage1", "stage2"):
            model = build_model(getattr(config, stage), FLARE22.num_classes)
            content = {"stage": stage, "epoch": 0, "best_metric": 0.0, "model": model.state_dict()}
            content.update(net=model.init_kwargs, config=to_dict(config), labels=FLARE22.to_json())
            (run_dir / stage).mkdir(parents=True, exist_ok=True)
            save_checkpoint(run_dir / stage / "best.pt", content)
    exported = folder / "export"
    if not exported.exists():
        started = time.perf_counter()
        export_run(run_dir, exported)
        export_s = time.perf_counter() - started
    else:
        export_s = None
    image = read_image(image_path)
    segmenters = {
        "pytorch fp32": lambda: segmenter_from_run(run_dir, "cpu", precision="fp32"),
        "pytorch bf16": lambda: segmenter_from_run(run_dir, "cpu", precision="bf16"),
        "onnxruntime fp32": lambda: segmenter_from_export(exported),
    }
    seconds = {}
    for name, load in segmenters.items():
        segmenter = load()
        segmenter.predict(image)  # warm-up: first-call allocations and kernel choices
        segmenter.clock.take()
        started = time.perf_counter()
        segmenter.predict(image)
        phases = segmenter.clock.take()
        seconds[name] = {
            "total": round(time.perf_counter() - started, 2),
            "stage_1": round(phases.get("stage_1", 0.0), 2),
            "stage_2": round(phases.get("stage_2", 0.0), 2),
        }
        del segmenter
    parameters = json.loads((exported / "model.json").read_text())["stages"]["stage2"]["parameters"]
    return {"parameters_per_stage": parameters, "export_s": export_s, "seconds_per_ct": seconds}


def print_tables(results: dict) -> None:
    print(f"\nmachine: {results['machine']}")
    print("\n| engine | runs | wall s, median (min-max) | peak RSS MB, median (max) |\n|---|---:|---:|---:|")
    for name, row in results["cli"].items():
        wall, rss = row["wall_s"], row["peak_rss_mb"]
        print(
            f"| {name} | {row['runs']} | {wall['median']} ({wall['min']}-{wall['max']}) "
            f"| {rss['median']} ({rss['max']}) |"
        )
    if "install_mb" in results:
        print("\n| environment | site-packages MB |\n|---|---:|")
        for name, size in results["install_mb"].items():
            print(f"| {name} | {size} |")
    print("\n| organ | Dice vs PyTorch fp32, min (mean) | vs PyTorch bf16, min (mean) | DICOM series, fp32 |")
    print("|---|---:|---:|---:|")
    agreement = results["agreement"]
    for organ, row in agreement["fp32"].items():
        bf16 = agreement["bf16"].get(organ, {})
        series = agreement["dicom series (3 slices)"].get(organ, {})
        print(
            f"| {organ} | {row['min']} ({row['mean']}) | {bf16.get('min', '')} ({bf16.get('mean', '')}) "
            f"| {series.get('min', '')} |"
        )
    if "paper" in results:
        paper = results["paper"]
        print(f"\npaper preset ({paper['parameters_per_stage']:,} parameters per stage), export {paper['export_s']} s:")
        print("| engine | s per CT | stage 1 s | stage 2 s |\n|---|---:|---:|---:|")
        for name, row in paper["seconds_per_ct"].items():
            print(f"| {name} | {row['total']} | {row['stage_1']} | {row['stage_2']} |")


if __name__ == "__main__":
    main()
