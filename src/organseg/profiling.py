"""Efficiency profile of prediction, FLARE22 style: time, memory, CPU and GPU use per case.

FLARE22 ranked efficiency by running time, the area under the CPU utilisation curve and the
area under the GPU memory curve, both sampled every 0.1 s, with GPU memory up to 2048 MB
not counted. A `ResourceSampler` thread samples this process while a case runs; `Profiler`
turns each case's samples into one row; `write_profile` writes the rows as CSV and their
medians and maxima as JSON.

Units: MB are 2^20 bytes (as nvidia-smi and FLARE count them); CPU utilisation is in % of
one core (200 = two cores busy); areas are value x seconds. Each CPU value is the mean
utilisation over the interval that ends at its time stamp, so the CPU area is exactly 100 x
the CPU seconds the process used. GPU memory is what PyTorch's allocator holds
(`torch.cuda.memory_reserved`): it leaves out the CUDA context (a few hundred MB), which
nvidia-smi would count.
"""

from __future__ import annotations

import contextlib
import csv
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from organseg.atomic import write_json, write_text
from organseg.errors import InputError
from organseg.phases import PREDICT_PHASES

SAMPLE_INTERVAL_S = 0.1  # FLARE22's sampling period
GPU_MEMORY_FLOOR_MB = 2048.0  # FLARE22 does not count GPU memory up to this much
MB = float(1 << 20)
COLUMNS = (
    "case",
    "wall_s",  # read + predict + write of the case
    "peak_rss_mb",  # highest sampled resident memory of the process
    "cpu_mean_percent",  # mean utilisation over the case, % of one core
    "cpu_area_percent_s",  # area under the CPU utilisation curve
    "gpu_peak_mb",  # highest GPU memory held (sampled, and PyTorch's own peak); empty without CUDA
    "gpu_area_mb_s",  # area under the GPU memory curve
    "gpu_area_above_2048_mb_s",  # area of the curve above GPU_MEMORY_FLOOR_MB: FLARE22's measure
    "samples",  # number of samples taken
    # then the seconds spent in each phase of the case (organseg.phases.PREDICT_PHASES)
    *(f"{phase}_s" for phase in PREDICT_PHASES),
)
NUMERIC_COLUMNS = tuple(column for column in COLUMNS[1:] if column != "samples")


@dataclass(frozen=True)
class Samples:
    """Resource use over time; entry i was taken `times_s[i]` seconds after the start (times_s[0] = 0)."""

    times_s: np.ndarray
    cpu_percent: np.ndarray  # mean over (times_s[i-1], times_s[i]]; 0 at i = 0
    rss_mb: np.ndarray  # resident memory at times_s[i]
    gpu_mb: np.ndarray | None  # GPU memory held at times_s[i]; None without a GPU reader


def area_under_curve(times_s: np.ndarray, values: np.ndarray) -> float:
    """Sum of values[i] x (times_s[i] - times_s[i-1]): the integral of a curve of interval values (unit x s)."""
    times_s, values = np.asarray(times_s, np.float64), np.asarray(values, np.float64)
    if times_s.size < 2:
        return 0.0
    return float(np.sum(values[1:] * np.diff(times_s)))


def area_above(times_s: np.ndarray, values: np.ndarray, floor: float) -> float:
    """Area of the part of the curve above `floor` (FLARE22: GPU memory above 2048 MB)."""
    return area_under_curve(times_s, np.maximum(np.asarray(values, np.float64) - floor, 0.0))


class ResourceSampler:
    """A background thread that samples this process's CPU utilisation and memory every `interval_s`."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S, gpu_memory_mb: Callable[[], float] | None = None):
        self.interval_s = interval_s
        self.gpu_memory_mb = gpu_memory_mb
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="organseg-profile", daemon=True)
        self._rows: list[tuple[float, float, float, float]] = []
        self._started = 0.0

    def start(self) -> None:
        """Take the first sample and begin sampling."""
        self._process.cpu_percent(None)  # the first call only sets the reference point
        self._started = time.perf_counter()
        self._rows.append((0.0, 0.0, *self._memory()))
        self._thread.start()

    def stop(self) -> Samples:
        """Stop sampling, take a last sample (so short cases get two) and return all samples."""
        self._stop.set()
        self._thread.join()
        self._sample()
        table = np.asarray(self._rows, np.float64)
        gpu = table[:, 3] if self.gpu_memory_mb is not None else None
        return Samples(table[:, 0], table[:, 1], table[:, 2], gpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        cpu = self._process.cpu_percent(None)
        self._rows.append((time.perf_counter() - self._started, cpu, *self._memory()))

    def _memory(self) -> tuple[float, float]:
        gpu = self.gpu_memory_mb() if self.gpu_memory_mb is not None else float("nan")
        return self._process.memory_info().rss / MB, gpu


class Profiler:
    """Per-case profiles of one prediction call: wrap each case's work in `case(case_id)`.

    Args:
        gpu_memory_mb: returns the GPU memory held now (MB), or None on CPU.
        gpu_peak_mb: returns the GPU memory peak since the case began (MB); catches spikes
            between samples.
        reset_gpu_peak: called when a case begins, to restart that peak.
    """

    def __init__(
        self,
        gpu_memory_mb: Callable[[], float] | None = None,
        gpu_peak_mb: Callable[[], float] | None = None,
        reset_gpu_peak: Callable[[], None] | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
    ):
        self.gpu_memory_mb = gpu_memory_mb
        self.gpu_peak_mb = gpu_peak_mb
        self.reset_gpu_peak = reset_gpu_peak
        self.interval_s = interval_s
        self.rows: list[dict] = []
        self.settings: dict = {"cpu_cores": psutil.cpu_count()}  # what the numbers were measured on

    @classmethod
    def for_device(cls, device: str, engine: str = "pytorch") -> Profiler:
        """A profiler that also follows GPU memory when `device` names a CUDA device ("cuda", "cuda:1").

        engine: what runs the networks, "pytorch" or "onnxruntime"; only a CUDA device imports torch here.
        """
        profiler = cls()
        if device.startswith("cuda"):
            import torch

            profiler = cls(
                gpu_memory_mb=lambda: torch.cuda.memory_reserved(device) / MB,
                gpu_peak_mb=lambda: torch.cuda.max_memory_reserved(device) / MB,
                reset_gpu_peak=lambda: torch.cuda.reset_peak_memory_stats(device),
            )
            profiler.settings["gpu"] = torch.cuda.get_device_name(device)
        profiler.settings.update(device=device, engine=engine)
        if engine == "pytorch":
            import torch

            profiler.settings["torch_threads"] = torch.get_num_threads()
        return profiler

    @contextlib.contextmanager
    def case(self, case_id: str) -> Iterator[None]:
        """Sample while the block runs; a block that completes adds the case's row to `rows`."""
        if self.reset_gpu_peak is not None:
            self.reset_gpu_peak()
        sampler = ResourceSampler(self.interval_s, self.gpu_memory_mb)
        started = time.perf_counter()
        sampler.start()
        try:
            yield
        finally:
            samples = sampler.stop()
        wall_s = time.perf_counter() - started
        peak = self.gpu_peak_mb() if self.gpu_peak_mb is not None else None
        self.rows.append(case_row(case_id, wall_s, samples, peak))


def case_row(case_id: str, wall_s: float, samples: Samples, gpu_peak_mb: float | None = None) -> dict:
    """One CSV row (COLUMNS) from a case's samples; GPU columns are None without GPU samples."""
    times = samples.times_s
    cpu_area = area_under_curve(times, samples.cpu_percent)
    row = {
        "case": case_id,
        "wall_s": wall_s,
        "peak_rss_mb": float(samples.rss_mb.max()),
        "cpu_mean_percent": cpu_area / times[-1] if times[-1] > 0 else 0.0,
        "cpu_area_percent_s": cpu_area,
        "gpu_peak_mb": None,
        "gpu_area_mb_s": None,
        "gpu_area_above_2048_mb_s": None,
        "samples": int(times.size),
        **{f"{phase}_s": None for phase in PREDICT_PHASES},  # filled in by whoever timed the phases
    }
    if samples.gpu_mb is not None:
        row["gpu_peak_mb"] = max(float(samples.gpu_mb.max()), gpu_peak_mb or 0.0)
        row["gpu_area_mb_s"] = area_under_curve(times, samples.gpu_mb)
        row["gpu_area_above_2048_mb_s"] = area_above(times, samples.gpu_mb, GPU_MEMORY_FLOOR_MB)
    return row


def summarize_profile(rows: list[dict]) -> dict:
    """Median and maximum of every numeric column over the cases (None where no case has a value)."""
    summary: dict = {"cases": len(rows), "median": {}, "max": {}}
    for column in NUMERIC_COLUMNS:
        values = [float(row[column]) for row in rows if row.get(column) is not None]
        summary["median"][column] = float(np.median(values)) if values else None
        summary["max"][column] = max(values) if values else None
    return summary


def read_profile_rows(csv_path: Path) -> list[dict]:
    """The rows of a profile CSV written earlier (empty values become None); [] if there is none."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as stream:
        reader = csv.DictReader(stream)
        # Profiles written before the phase columns existed are read too (those cells empty).
        if "case" not in (reader.fieldnames or ()) or not set(reader.fieldnames) <= set(COLUMNS):
            raise InputError(f"{csv_path}: not an organseg profile (other columns); move it away or delete it")
        rows = [{key: (value if key == "case" else _number(value)) for key, value in row.items()} for row in reader]
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


def write_profile(rows: list[dict], csv_path: Path, json_path: Path, settings: dict | None = None) -> None:
    """Write the rows as CSV and their summary (plus `settings`, e.g. the device) as JSON, each atomically.

    Rows of cases profiled before (in `csv_path`) and not profiled again are kept, so a
    resumed batch ends with one profile of all its cases.
    """
    new_cases = {row["case"] for row in rows}
    kept = [row for row in read_profile_rows(csv_path) if row["case"] not in new_cases]
    rows = sorted(kept + list(rows), key=lambda row: row["case"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _cell(row.get(key)) for key in COLUMNS} for row in rows)
    summary = {
        **summarize_profile(rows),
        "sample_interval_s": SAMPLE_INTERVAL_S,
        "gpu_memory_floor_mb": GPU_MEMORY_FLOOR_MB,
        **(settings or {}),
    }
    write_text(csv_path, buffer.getvalue())
    write_json(json_path, summary)


def _cell(value) -> str | int:
    if value is None:
        return ""
    return round(value, 4) if isinstance(value, float) else value


def _number(text: str | None) -> float | int | None:
    if text is None or text == "":
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)
