"""The GPU path in numbers: training steps and the prediction of a 512x512x100 CT, with peak GPU memory.

Three timings, each followed by the peak GPU memory PyTorch allocated and reserved:
1. network steps: forward, loss and backward of the preset's stage-2 network on random
   input of its grid, batch `batch_size` (the GPU's share of a step alone);
2. training steps: `organseg train`'s own loop on small phantoms (sampling, augmentation on
   the CPU, the network step), rank 0's epoch time from the log after a warm-up epoch (the
   log's `seconds`: the steps, without the checkpoint written after them);
3. prediction: the trained cascade on one phantom of `--shape` (read once; predicted once to
   warm up, then `--repeats` times), seconds per case.

    python benchmarks/bench_gpu.py OUT_DIR [--device cuda] [--preset paper] [--steps 5] [--shape 512 512 100]

`--device cpu` runs the same on the CPU (with `--preset tiny` and a small `--shape`, a check
of this script on a machine without a GPU); it then prints peak resident memory instead.
benchmarks/gpu_check.sh runs it with the GPU tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.device import autocast, resolve_device, resolve_precision
from organseg.io import read_image
from organseg.losses import deep_supervision_loss
from organseg.network_stage import segmenter_from_run
from organseg.phantom import write_dataset
from organseg.runs import run_training
from organseg.train import build_model

NUM_CLASSES = 14  # background and the 13 organs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to check the script without a GPU")
    parser.add_argument("--preset", default="paper", help="settings of the networks (default: paper)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (training: per epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions")
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 100), help="voxels of the predicted CT")
    parser.add_argument("--set", action="append", default=[], help="a setting, e.g. stage2.batch_size=2")
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = resolve_config(args.preset, overrides=args.set)
    print(f"torch {torch.__version__} on {_device_name(device)}; preset {args.preset}, overrides {args.set or 'none'}")
    time_network_steps(config, device, args.steps)
    run_dir = time_training_steps(config, args.preset, args.set, device, args.out, args.steps)
    time_prediction(run_dir, device, args.out, tuple(args.shape), args.repeats)


def time_network_steps(config, device: torch.device, steps: int) -> None:
    stage = config.stage2
    model = build_model(stage, NUM_CLASSES).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.learning_rate)
    precision = resolve_precision(device, config.precision)
    images = torch.randn(stage.batch_size, 1, *stage.grid, device=device)
    targets = torch.randint(0, NUM_CLASSES, (stage.batch_size, *stage.grid), device=device)
    _reset_peak(device)
    times = []
    for step in range(steps + 2):  # two warm-up steps: kernel choice, allocator
        started = _now(device)
        with autocast(device, precision):
            logits = model(images)
        loss = deep_supervision_loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(_now(device) - started)
    seconds = statistics.median(times)
    print(
        f"network steps (stage 2, grid {list(stage.grid)}, batch {stage.batch_size}, {precision}): "
        f"{seconds:.3f} s/step, {stage.batch_size / seconds:.1f} samples/s; {_peak(device)}"
    )
    del model, optimizer, images, targets, logits, loss
    _release(device)


def time_training_steps(config, preset: str, overrides: list[str], device, out: Path, steps: int) -> Path:
    data = out / "data"
    if not (data / "dataset.json").is_file():
        write_dataset(data, labeled=3, unlabeled=0, test=0, seed=0)
    run_dir = out / f"run_{device.type}"
    if (run_dir / "config.json").is_file():
        print(f"training steps: {run_dir} exists, reusing its model (delete it to time training again)")
        return run_dir
    # Stage 1 gets one step (the cascade needs it to predict); stage 2 a warm-up epoch and a timed one.
    timing = ["validation_cases=0", "stage1.epochs=1", "stage1.iterations_per_epoch=1"]
    timing += ["stage2.epochs=2", f"stage2.iterations_per_epoch={steps}", "stage2.val_every=2"]
    settings = resolve_config(preset, overrides=[*overrides, *timing])
    _reset_peak(device)
    run_training(discover_dataset(data), run_dir, settings, device=str(device))
    rows = [json.loads(line) for line in (run_dir / "stage2" / "log.jsonl").read_text().splitlines()]
    seconds = rows[-1]["seconds"] / steps
    batch = config.stage2.batch_size
    print(
        f"training steps (organseg train, stage 2, batch {batch}): {seconds:.3f} s/step, "
        f"{batch / seconds:.1f} samples/s; {_peak(device)}"
    )
    _release(device)
    return run_dir


def time_prediction(run_dir: Path, device: torch.device, out: Path, shape: tuple[int, int, int], repeats: int) -> None:
    data = out / f"ct_{'x'.join(map(str, shape))}"
    if not (data / "dataset.json").is_file():
        write_dataset(data, labeled=0, unlabeled=0, test=1, seed=0, shape=shape)
    started = time.perf_counter()
    image = read_image(next((data / "imagesTs").iterdir()))
    read_s = time.perf_counter() - started
    segmenter = segmenter_from_run(run_dir, str(device))
    segmenter.predict(image)  # warm-up
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        started = _now(device)
        segmenter.predict(image)
        times.append(_now(device) - started)
    print(
        f"prediction of a {'x'.join(map(str, shape))} CT: {statistics.median(times):.2f} s per case "
        f"(median of {repeats}; reading it took {read_s:.2f} s more); {_peak(device)}"
    )


def _now(device: torch.device) -> float:
    """The time once the device has finished what it was given (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak(device: torch.device) -> str:
    if device.type == "cuda":
        allocated = torch.cuda.max_memory_allocated(device) / 2**30
        reserved = torch.cuda.max_memory_reserved(device) / 2**30
        return f"peak GPU memory {allocated:.2f} GiB allocated, {reserved:.2f} GiB reserved"
    # Linux reports kilobytes; the process's peak since it started, not since the last reset.
    return f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process)"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
