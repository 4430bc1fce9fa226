"""Data-parallel training speed on the CPU: samples per second with 1 and 2 processes (torchrun, gloo).

Trains stage 2 of the cpu preset (its 80x64x48 network, batch 1 per process) on default
phantoms under `torchrun --nproc_per_node P` for every P of --processes, each process
with T threads (default: the cores divided by P), the same number of steps per epoch for
every P. Rank 0's epoch times come from the run's log; the first epoch is a warm-up and
not counted. A step trains on batch_size x P samples, so

    samples/s = steps x batch_size x P / median epoch seconds,  speed-up = samples/s / that of the first P.

An epoch's time is the log's `seconds`: its steps (with the gradient exchange), not the
checkpoint written after them. Run it alone on the machine:

    python benchmarks/bench_scaling.py OUT_DIR [--processes 1 2] [--steps 20] [--epochs 3] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from organseg.config import resolve_config
from organseg.cores import available_cores
from organseg.phantom import write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs, the first a warm-up (at least 2)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    parser.add_argument("--labeled", type=int, default=4, help="phantom cases to train on")
    args = parser.parse_args()
    if args.epochs < 2 or args.steps < 1:
        parser.error("--epochs must be >= 2 (the first is a warm-up) and --steps >= 1")
    data = args.out / "data"
    if not (data / "dataset.json").is_file():
        write_dataset(data, labeled=args.labeled, unlabeled=0, test=0, seed=0)
    batch = resolve_config("cpu").stage2.batch_size
    cores = available_cores()
    lines = ["| processes | threads per process | samples/s | speed-up |", "|---|---|---|---|"]
    baseline = None
    for processes in args.processes:
        threads = args.threads or max(1, cores // processes)
        seconds = epoch_seconds(args.out / f"run_p{processes}", data, processes, threads, args.steps, args.epochs)
        rate = args.steps * batch * processes / seconds
        baseline = baseline or rate
        lines.append(f"| {processes} | {threads} | {rate:.2f} | {rate / baseline:.2f}x |")
        print(f"{processes} process(es) x {threads} thread(s): {seconds:.2f} s per epoch of {args.steps} steps")
    print(f"cpu preset, stage 2, batch {batch} per process, {args.steps} steps per epoch, {cores} cores")
    print("\n".join(lines))


def epoch_seconds(run_dir: Path, data: Path, processes: int, threads: int, steps: int, epochs: int) -> float:
    """Median epoch time (s) of rank 0 after the warm-up epoch, for a fresh run under torchrun."""
    shutil.rmtree(run_dir, ignore_errors=True)
    settings = [f"stage2.epochs={epochs}", f"stage2.iterations_per_epoch={steps}", f"stage2.val_every={epochs}"]
    settings += ["validation_cases=0"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "organseg", "train", str(data), str(run_dir), "--preset", "cpu", "--stage", "2"]
    command += [item for setting in settings for item in ("--set", setting)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        sys.exit(f"training with {processes} process(es) failed:\n{result.stderr}")
    rows = [json.loads(line) for line in (run_dir / "stage2" / "log.jsonl").read_text().splitlines()]
    return statistics.median(row["seconds"] for row in rows[1:])


if __name__ == "__main__":
    main()
