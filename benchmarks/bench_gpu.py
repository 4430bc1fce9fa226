"""What the paper preset asks of one GPU: step time and memory, loader rate, utilisation, prediction.

    python benchmarks/bench_gpu.py PART OUT [--device cuda] [--seconds S]

benchmarks/gpu_check.sh runs the parts in this order, each in a process of its own (so each
starts CUDA cold, and a part that hangs or crashes costs only itself), after writing the
phantoms to OUT/data (organseg phantom OUT/data --labeled 3 --test 1 --seed 0 --shape 512 512 100):

- info: GPU, driver, torch, CUDA and cuDNN versions, and whether convolutions may use TF32.
- steps: the paper preset's stage-2 training step (forward, loss, backward, AdamW) on random
  input of its 160^3 grid at batch 1, 2 and 4, in bf16 autocast and fp32, with
  cudnn.benchmark and the channels-last-3d layout: median seconds per step after two
  warm-up steps, and the peak memory PyTorch allocated and reserved during the timed steps.
  A cell that runs out of memory says OOM. Then batch 4 in bf16 with activation
  checkpointing, where the configuration has `stage2.activation_checkpointing`.
- loader: samples/s the training loader (organseg.batches, as benchmarks/bench_loader.py)
  makes from the phantoms with 0, 2, 4 and 8 workers (at most the cores but one), against
  the samples/s of the bf16 batch-4 steps: how many workers keep the GPU fed.
- train: `organseg train` as it is (its own layout, cudnn.benchmark off, automatic workers):
  stage 1 one step, stage 2 two epochs of 10 steps, no validation case; the mean NVML
  utilisation of the GPU over stage 2's second epoch (the first warms up) and over the whole run.
- predict: the cascade trained by `train` segments the test phantom (512x512x100): seconds
  per case (median of 3 after a cold first case), the process's peak GPU memory as NVML
  reports it (CUDA context included) and PyTorch's peak reserved memory.

Results are printed and gathered in OUT/gpu_check.json, one key per part. NVML is read
through pynvml when it is installed, else through nvidia-smi.

`--device cpu` checks the script without a GPU: the tiny preset, 2 timed steps, at most 2
loader workers, no NVML (memory is then the process's peak resident size). `--seconds`:
the part's time limit; a part starts no measurement it could not finish within it, so its
results are written even when the GPU is slower than expected.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from organseg.atomic import write_json
from organseg.batches import Sampler, epoch_batches
from organseg.config import resolve_config
from organseg.cores import available_cores
from organseg.dataset import discover_dataset
from organseg.device import autocast, resolve_device
from organseg.io import read_image
from organseg.labels import FLARE22
from organseg.losses import deep_supervision_loss
from organseg.open_model import open_segmenter
from organseg.prepared import prepare_cases
from organseg.stage_state import build_model

NUM_CLASSES = 14  # background and the 13 organs
RESULTS = "gpu_check.json"
PRECISIONS = ("bf16", "fp32")
BATCHES = (1, 2, 4)
WARM_UP_STEPS = 2  # the first runs cuDNN's algorithm search, the second fills the allocator's pool
LOADER_WORKERS = (0, 2, 4, 8)
FED_BATCH = 4  # the loader is compared with the bf16 steps at the paper's batch
STAGE2_STEPS = 10  # per epoch of `train`
# Stage 1 gets one step: the cascade needs it to predict. Stage 2 gets two epochs; the first
# pays for cuDNN's first calls, so only the second is measured. No validation case: the first
# validation writes best.pt within its epoch's time, a pause of the GPU that training seldom has.
TRAINING = ["validation_cases=0", "stage1.epochs=1", "stage1.iterations_per_epoch=1"]
TRAINING += ["stage2.epochs=2", f"stage2.iterations_per_epoch={STAGE2_STEPS}"]


@dataclass(frozen=True)
class Setup:
    """What the parts measure with on a device."""

    device: torch.device
    preset: str  # paper on a GPU; tiny on the CPU, where the run only checks the script
    steps: int  # timed training steps per cell
    repeats: int  # timed predictions after the first
    max_workers: int
    monitor: Monitor | None  # NVML; None on the CPU or where neither pynvml nor nvidia-smi is found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to check the script without a GPU")
    parser.add_argument("--seconds", type=float, default=math.inf, help="the part's time limit")
    args = parser.parse_args()
    setup = _setup(args.device)
    results = PARTS[args.part](setup, args.out, Budget(args.seconds))
    save(args.out, args.part, results)


def _setup(device_name: str) -> Setup:
    # NVML first: the prediction part reads the GPU's memory before this process starts CUDA.
    monitor = Monitor.find() if device_name.startswith("cuda") else None
    device = resolve_device(device_name)
    if device.type == "cuda":
        return Setup(device, "paper", steps=5, repeats=3, max_workers=max(LOADER_WORKERS), monitor=monitor)
    return Setup(device, "tiny", steps=2, repeats=1, max_workers=2, monitor=None)


def describe(setup: Setup, out: Path, budget: Budget) -> dict:
    """The header: what ran the measurements."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if setup.device.type == "cuda":
        properties = torch.cuda.get_device_properties(setup.device)
        info.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}")
        info.update(memory_gib=round(properties.total_memory / 2**30, 1), cpu_cores=available_cores())
        info.update(driver=setup.monitor.driver() if setup.monitor else None)
        info.update(nvml=setup.monitor.via if setup.monitor else None)
        # "fp32" convolutions run in TF32 on tensor cores unless this is off: say which fp32 was timed.
        info.update(tf32_convolutions=torch.backends.cudnn.allow_tf32)
        print(
            f"GPU {info['gpu']} (compute capability {info['capability']}, {info['memory_gib']} GiB), "
            f"driver {info['driver'] or 'unknown (no NVML)'}; {info['cpu_cores']} CPU cores"
        )
    else:
        info.update(gpu=None, cpu=_cpu_name(), cpu_cores=available_cores())
        print(f"no GPU: a check of the script on the CPU ({info['cpu']}, {info['cpu_cores']} cores), tiny settings")
    print(f"torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}")
    if setup.device.type == "cuda":
        print(f"NVML through {info['nvml'] or 'nothing'}; fp32 convolutions may use TF32: {info['tf32_convolutions']}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULTS, {})  # a new check starts a new results file
    return info


def measure_steps(setup: Setup, out: Path, budget: Budget) -> dict:
    """Stage-2 training steps at each precision and batch; then bf16 batch 4 with activation checkpointing."""
    # The grid is fixed, so cuDNN's search for the fastest algorithms pays once per shape.
    torch.backends.cudnn.benchmark = True
    config = resolve_config(setup.preset)
    stage = config.stage2
    print(
        f"\n{setup.preset} preset, stage 2 (grid {list(stage.grid)}, widths {list(stage.net.widths)}): training "
        f"steps, median of {setup.steps} after {WARM_UP_STEPS}; cudnn.benchmark, channels-last-3d\n"
    )
    print(STEP_HEADER)
    model, optimizer = _training_model(stage, setup.device)
    rows = []
    for precision in PRECISIONS:
        for batch in BATCHES:
            rows.append(_step_cell(model, optimizer, stage.grid, precision, batch, setup, budget))
            print(_step_row(rows[-1]))
            save(out, "steps", {"rows": rows})  # a part killed later still leaves these
    del model, optimizer
    _release(setup.device)
    results = {"grid": list(stage.grid), "rows": rows, "checkpointing": None}
    if not hasattr(stage, "activation_checkpointing"):
        print("activation checkpointing: not available (no stage2.activation_checkpointing setting)")
        return results
    checkpointed = resolve_config(setup.preset, overrides=["stage2.activation_checkpointing=true"]).stage2
    model, optimizer = _training_model(checkpointed, setup.device)
    cell = _step_cell(model, optimizer, stage.grid, "bf16", 4, setup, budget)
    results["checkpointing"] = {**cell, "relative_to_plain": _relative(cell, _cell(rows, "bf16", 4))}
    print(_step_row(cell, "bf16, activation checkpointing"))
    relative = results["checkpointing"]["relative_to_plain"]
    if relative:
        print(
            f"\nactivation checkpointing at bf16 batch 4: {relative['time']:.2f}x the time, "
            f"{relative['memory']:.2f}x the peak memory of the plain step"
        )
    return results


STEP_HEADER = (
    "| precision | batch | s per step | samples/s | peak allocated GiB | peak reserved GiB |\n|---|---|---|---|---|---|"
)


def _training_model(stage, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model(stage, NUM_CLASSES).to(device, memory_format=torch.channels_last_3d)
    return model, torch.optim.AdamW(model.parameters(), lr=stage.learning_rate, weight_decay=stage.weight_decay)


def _step_cell(model, optimizer, grid, precision: str, batch: int, setup: Setup, budget: Budget) -> dict:
    """One cell of the table: seconds per step and peak memory, "OOM", or "skipped" when time is short."""
    cell = {"precision": precision, "batch": batch}
    if not budget.allows_another():
        return {**cell, "result": "skipped (time limit)"}
    started = time.perf_counter()
    try:
        seconds = _time_steps(model, optimizer, grid, precision, batch, setup)
    except torch.OutOfMemoryError:
        cell["result"] = "OOM"
    else:
        cell.update(result="ok", s_per_step=round(seconds, 4), samples_per_s=round(batch / seconds, 2))
        cell.update(_peak_memory(setup.device))
    # Out of the except clause: the error's traceback, which held the step's tensors, is gone.
    optimizer.zero_grad(set_to_none=True)
    _release(setup.device)
    budget.record(time.perf_counter() - started)
    return cell


def _time_steps(model, optimizer, grid, precision: str, batch: int, setup: Setup) -> float:
    """Median seconds per training step; the peak memory statistics then cover the timed steps only."""
    device = setup.device
    images = torch.randn(batch, 1, *grid, device=device).contiguous(memory_format=torch.channels_last_3d)
    targets = torch.randint(0, NUM_CLASSES, (batch, *grid), device=device)
    model.train()
    times = []
    for step in range(WARM_UP_STEPS + setup.steps):
        if step == WARM_UP_STEPS:
            # The algorithm search's workspaces stay cached: dropped, so the peaks are a step's own.
            _release(device)
        started = _now(device)
        with autocast(device, precision):
            logits = model(images)
        loss = deep_supervision_loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(_now(device) - started)
        del logits, loss
    return statistics.median(times[WARM_UP_STEPS:])


def _step_row(cell: dict, label: str | None = None) -> str:
    name = label or cell["precision"]
    if cell["result"] != "ok":
        return f"| {name} | {cell['batch']} | {cell['result']} | | | |"
    reserved = cell.get("reserved_gib", "-")  # none on the CPU
    return (
        f"| {name} | {cell['batch']} | {cell['s_per_step']:.3f} | {cell['samples_per_s']:.1f} "
        f"| {_memory_gib(cell)} | {reserved} |"
    )


def _memory_gib(cell: dict) -> float:
    """Peak allocated GPU memory; on the CPU the process's peak resident size (since it started)."""
    return cell.get("allocated_gib", cell.get("process_peak_rss_gib"))


def _cell(rows: list[dict], precision: str, batch: int) -> dict | None:
    """The measured cell of `rows` at `precision` and `batch`; None if it ran out of memory or time."""
    return next((r for r in rows if (r["precision"], r["batch"], r["result"]) == (precision, batch, "ok")), None)


def _relative(cell: dict, plain: dict | None) -> dict | None:
    """Time and peak memory of `cell` as multiples of `plain`'s."""
    if plain is None or cell["result"] != "ok":
        return None
    return {
        "time": round(cell["s_per_step"] / plain["s_per_step"], 3),
        "memory": round(_memory_gib(cell) / _memory_gib(plain), 3),
    }


def measure_loader(setup: Setup, out: Path, budget: Budget) -> dict:
    """Samples/s of stage 2's loader by workers, against the samples/s of the bf16 batch-4 steps."""
    config = resolve_config(setup.preset)
    # Prepared into the training run's cache: `train` then finds the cases ready.
    cases = prepare_cases(discover_dataset(out / "data").labeled, run_folder(out, setup) / "cache", config)
    sampler = Sampler("stage2", config, FLARE22, False, cases)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    batch = config.stage2.batch_size
    list(epoch_batches(sampler, [sampler.draw_step(batch, rng, generator)], 0))  # page in the memory-mapped cases
    rows = []
    for workers in sorted({min(w, setup.max_workers, available_cores() - 1) for w in LOADER_WORKERS}):
        if not budget.allows_another():
            print(f"loader: {workers} workers skipped (time limit)")
            continue
        # Steps grow with the workers: each makes a few batches, so their start is a small part of the row.
        steps = [sampler.draw_step(batch, rng, generator) for _ in range(4 + 2 * workers)]
        started = time.perf_counter()
        made = sum(len(item.images) for item in epoch_batches(sampler, steps, workers))
        seconds = time.perf_counter() - started
        budget.record(seconds)
        rows.append({"workers": workers, "samples": made, "samples_per_s": round(made / seconds, 2)})
    needed = _workers_needed(rows, _step_rate(out, FED_BATCH))
    print(f"\nloader of {setup.preset} stage 2, batch {batch}, on {available_cores()} cores\n")
    print("| loader workers | samples | samples/s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['samples']} | {row['samples_per_s']:.2f} |")
    print(f"\n{needed['text']}")
    return {"batch": batch, "rows": rows, **needed}


def _step_rate(out: Path, batch: int) -> float | None:
    """Samples/s of the bf16 steps at `batch` from the steps part's results; None where it has none."""
    path = out / RESULTS
    steps = json.loads(path.read_text()).get("steps", {}) if path.is_file() else {}
    cell = _cell(steps.get("rows", []), "bf16", batch)
    return cell["samples_per_s"] if cell else None


def _workers_needed(rows: list[dict], gpu_rate: float | None) -> dict:
    """The fewest measured workers that make the GPU's samples/s; beyond them, an estimate from the most workers."""
    if gpu_rate is None or not rows:
        return {"gpu_samples_per_s": gpu_rate, "workers_needed": None, "text": "no bf16 batch-4 step time to compare"}
    text = f"bf16 batch-4 steps consume {gpu_rate:.1f} samples/s; "
    keeping_up = [row["workers"] for row in rows if row["samples_per_s"] >= gpu_rate]
    if keeping_up:
        needed = min(keeping_up)
        text += f"the loader keeps up with {needed} workers or more (measured)"
    elif rows[-1]["workers"] == 0:
        needed = None
        text += f"the loader makes {rows[-1]['samples_per_s']:.1f} without workers; no workers were measured"
    else:
        per_worker = rows[-1]["samples_per_s"] / rows[-1]["workers"]
        needed = math.ceil(gpu_rate / per_worker)
        text += f"the loader falls short; about {needed} workers would keep up ({per_worker:.2f} samples/s each "
        text += f"with {rows[-1]['workers']})"
    return {"gpu_samples_per_s": gpu_rate, "workers_needed": needed, "text": text}


def measure_training(setup: Setup, out: Path, budget: Budget) -> dict:
    """`organseg train` on the phantoms while NVML is read: the GPU's mean utilisation in stage 2."""
    run_dir = run_folder(out, setup)
    for stale in ("stage1", "stage2", "config.json", "splits.json"):  # an earlier check's run, not its cache
        path = run_dir / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "organseg", "train", str(out / "data"), str(run_dir), "-q"]
    command += ["--preset", setup.preset, "--device", setup.device.type]
    command += [argument for setting in TRAINING for argument in ("--set", setting)]
    print("\n" + " ".join(["organseg", *command[3:]]))
    started = time.time()
    limit = None if math.isinf(budget.left()) else budget.left() - 10  # stopped here, its output still told
    with Recorder(setup.monitor) as recorder:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as error:
            sys.exit(f"organseg train ran out of time ({limit:.0f} s):\n{(error.stderr or b'')[-3000:].decode()}")
    if done.returncode != 0:
        sys.exit(f"organseg train failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    log = run_dir / "stage2" / "log.jsonl"
    epoch = json.loads(log.read_text().splitlines()[-1])
    # The log's row is written when the epoch ends: its time, less the epoch's seconds, is when it began.
    window = (log.stat().st_mtime - epoch["seconds"], log.stat().st_mtime)
    samples = STAGE2_STEPS * resolve_config(setup.preset).stage2.batch_size
    results = {"run_s": round(time.time() - started, 1), "epoch_s": epoch["seconds"], "steps": STAGE2_STEPS}
    results["samples_per_s"] = round(samples / epoch["seconds"], 2)
    results.update(_utilisation(recorder.readings, window))
    print(
        f"stage 2's second epoch: {STAGE2_STEPS} steps in {epoch['seconds']:.1f} s ({results['samples_per_s']} "
        f"samples/s, the loader's start included); the whole run {results['run_s']} s"
    )
    if setup.monitor is None:
        print("GPU utilisation: not read (no NVML)")
    else:
        print(
            f"GPU utilisation (NVML): mean {results['epoch_utilisation']}% over that epoch "
            f"({results['epoch_readings']} readings), {results['run_utilisation']}% over the whole run; "
            f"device memory used at most {results['peak_used_gib']} GiB"
        )
    return results


def _utilisation(readings: list[Reading], window: tuple[float, float]) -> dict:
    if not readings:
        return {}
    epoch = [r.utilisation for r in readings if window[0] <= r.time <= window[1]]
    return {
        "epoch_utilisation": round(statistics.mean(epoch), 1) if epoch else None,
        "epoch_readings": len(epoch),
        "run_utilisation": round(statistics.mean(r.utilisation for r in readings), 1),
        "peak_used_gib": round(max(r.memory_mib for r in readings) / 1024, 2),
    }


def measure_prediction(setup: Setup, out: Path, budget: Budget) -> dict:
    """The cascade trained by `train` on the test phantom: seconds per case and peak GPU memory."""
    # Before torch starts CUDA here: where NVML cannot tell this process apart, memory is counted from this.
    before = setup.monitor.reading() if setup.monitor else None
    path = next((out / "data" / "imagesTs").iterdir())
    image = read_image(path)
    shape = "x".join(map(str, image.array.shape))
    with Recorder(setup.monitor, pid=os.getpid()) as recorder:
        segmenter = open_segmenter(run_folder(out, setup), str(setup.device))
        first = _timed_prediction(segmenter, image)
        budget.record(first)  # the cold case is the longest: the repeats then stop on the safe side
        segmenter.clock.take()  # the cold case's phases left out
        times = []
        while len(times) < setup.repeats and budget.allows_another():
            times.append(_timed_prediction(segmenter, image))
            budget.record(times[-1])
        phases = segmenter.clock.take()
        recorder.readings.append(recorder.read())  # after the last case: the caching allocator still holds its peak
    results = {"shape": shape, "first_case_s": round(first, 3), "case_s": [round(t, 3) for t in times]}
    results["median_case_s"] = round(statistics.median(times), 3) if times else None
    results["phases_s"] = {phase: round(seconds / len(times), 3) for phase, seconds in phases.items()}
    results.update(_peak_memory(setup.device))
    results.update(_process_memory(recorder.readings, before))
    print(f"\nprediction of a {shape} CT ({path.name}), {setup.preset} preset, on {setup.device}")
    print(f"per case: {results['median_case_s']} s (median of {len(times)}; the first, cold: {first:.2f} s)")
    print("per phase: " + ", ".join(f"{phase} {seconds} s" for phase, seconds in results["phases_s"].items()))
    print(f"peak memory: {_memory_text(results)}")
    return results


def _timed_prediction(segmenter, image) -> float:
    started = _now(torch.device(segmenter.device))
    segmenter.predict(image)
    return _now(torch.device(segmenter.device)) - started


def _process_memory(readings: list[Reading], before: Reading | None) -> dict:
    """This process's peak GPU memory by NVML: its own entry, else the rise of the device's use since `before`."""
    if before is None or not readings:
        return {}
    own = [r.process_mib for r in readings if r.process_mib is not None]
    if own:
        return {"nvml_process_peak_gib": round(max(own) / 1024, 2)}
    # In a container NVML lists host process ids, which this process's id does not match.
    rise = max(r.memory_mib for r in readings) - before.memory_mib
    return {"nvml_device_rise_gib": round(rise / 1024, 2)}


def _memory_text(results: dict) -> str:
    if "process_peak_rss_gib" in results:
        return f"{results['process_peak_rss_gib']} GiB resident (process, CPU)"
    text = f"torch reserved {results['reserved_gib']} GiB (allocated {results['allocated_gib']} GiB)"
    if "nvml_process_peak_gib" in results:
        return text + f"; NVML: {results['nvml_process_peak_gib']} GiB for this process, CUDA context included"
    if "nvml_device_rise_gib" in results:
        return text + (
            f"; NVML lists no process of this id (a container?): the device's use rose by "
            f"{results['nvml_device_rise_gib']} GiB, CUDA context included"
        )
    return text + "; NVML not read"


def run_folder(out: Path, setup: Setup) -> Path:
    """The training run of `train`, whose cascade `predict` uses."""
    return out / f"run_{setup.preset}"


def save(out: Path, part: str, results: dict) -> None:
    """`results` under `part` in OUT/gpu_check.json (the parts run one after the other, in processes of their own)."""
    path = out / RESULTS
    everything = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**everything, part: results})


class Budget:
    """A part's time limit: a measurement starts only while twice the longest one so far still fits."""

    def __init__(self, seconds: float):
        self.ends = time.perf_counter() + seconds
        self.longest = 0.0

    def left(self) -> float:
        return self.ends - time.perf_counter()

    def allows_another(self) -> bool:
        return self.left() > 2 * self.longest + 5

    def record(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


@dataclass(frozen=True)
class Reading:
    """One NVML reading of the GPU."""

    time: float  # time.time()
    utilisation: float  # % of the last sample period (1/6 to 1 s) in which a kernel ran
    memory_mib: float  # used on the device, by every process
    process_mib: float | None = None  # used by the process asked about (its CUDA context included), if listed


class Monitor:
    """NVML readings of the GPU that CUDA calls device 0 here: by pynvml when installed, else by nvidia-smi."""

    def __init__(self, gpu: str, nvml):
        self.gpu = gpu  # an NVML index or UUID
        self.nvml = nvml  # the pynvml module, or None for nvidia-smi
        self.via = "pynvml" if nvml else "nvidia-smi"
        self.interval = 0.2 if nvml else 0.5  # nvidia-smi takes some 0.1 s a call
        if nvml:
            by_index = nvml.nvmlDeviceGetHandleByIndex
            self.handle = by_index(int(gpu)) if gpu.isdigit() else nvml.nvmlDeviceGetHandleByUUID(gpu)

    @classmethod
    def find(cls) -> Monitor | None:
        # CUDA's device 0 is the first of CUDA_VISIBLE_DEVICES (an index or a UUID); found without
        # torch, so a reading can come before CUDA starts. (On a machine of mixed GPUs, CUDA's
        # order may differ from NVML's; this check assumes one GPU.)
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # not installed, or no NVML library where it looks
            return cls(gpu, None) if shutil.which("nvidia-smi") else None
        return cls(gpu, pynvml)

    def driver(self) -> str:
        if self.nvml:
            version = self.nvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else version
        return self._smi("--query-gpu=driver_version")[0][0]

    def reading(self, pid: int | None = None) -> Reading:
        """The GPU's utilisation and memory now; with `pid`, that process's memory too."""
        if self.nvml:
            used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20
            utilisation = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            listed = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle) if pid else []
            processes = {p.pid: p.usedGpuMemory / 2**20 for p in listed if p.usedGpuMemory is not None}
        else:
            utilisation, used = map(_number, self._smi("--query-gpu=utilization.gpu,memory.used")[0])
            listed = self._smi("--query-compute-apps=pid,used_memory") if pid else []
            processes = {int(p): _number(m) for p, m in listed if p.isdigit()}
        return Reading(time.time(), utilisation, used, processes.get(pid))

    def _smi(self, query: str) -> list[list[str]]:
        command = ["nvidia-smi", f"--id={self.gpu}", query, "--format=csv,noheader,nounits"]
        text = subprocess.run(command, capture_output=True, text=True, check=True, timeout=20).stdout
        return [[value.strip() for value in line.split(",")] for line in text.splitlines() if line.strip()]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Insufficient Permissions]"
        return None


class Recorder:
    """NVML readings taken in the background while a `with` block runs (none without a monitor)."""

    def __init__(self, monitor: Monitor | None, pid: int | None = None):
        self.monitor = monitor
        self.pid = pid
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> Reading | None:
        return self.monitor.reading(self.pid) if self.monitor else None

    def __enter__(self) -> Recorder:
        if self.monitor:
            self._thread.start()
        return self

    def __exit__(self, *exception) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.readings = [r for r in self.readings if r is not None]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.readings.append(self.read())
            self._stop.wait(self.monitor.interval)


def _now(device: torch.device) -> float:
    """The time once the device has finished what it was given (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _release(device: torch.device) -> None:
    """Cached blocks back to the driver, and the peaks counted from here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2),
        }
    # Linux reports kilobytes; the process's peak since it started, not since the last reset.
    return {"process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def _cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


PARTS = {
    "info": describe,
    "steps": measure_steps,
    "loader": measure_loader,
    "train": measure_training,
    "predict": measure_prediction,
}

if __name__ == "__main__":
    main()
