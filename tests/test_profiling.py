"""Efficiency profile: curve areas by hand, the sampler on real work, `predict --profile` end to end."""

from __future__ import annotations

import csv
import json
import mmap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from organseg.cli import main
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.phantom import write_dataset
from organseg.phases import PREDICT_PHASES, PhaseClock
from organseg.profiling import (
    COLUMNS,
    Profiler,
    ResourceSampler,
    area_above,
    area_under_curve,
    read_profile_rows,
    write_profile,
)
from organseg.runs import run_training


@pytest.mark.parametrize(
    ("times_s", "values", "floor", "expected"),
    [
        ([0.0, 0.1, 0.2, 0.3], [0, 100, 50, 100], None, 25.0),  # 100*0.1 + 50*0.1 + 100*0.1
        ([0.0, 0.1, 0.25], [7, 200, 200], None, 50.0),  # value 0 has no interval before it
        ([0.0], [300], None, 0.0),  # one sample: no time has passed
        ([0.0, 0.1, 0.2, 0.3], [1000, 3048, 4048, 2048], 2048.0, 300.0),  # (1000 + 2000 + 0) * 0.1
        ([0.0, 0.5, 1.0], [1024, 1024, 2000], 2048.0, 0.0),  # never above the floor
    ],
)
def test_curve_areas_by_hand(times_s, values, floor, expected) -> None:
    area = area_under_curve(times_s, values) if floor is None else area_above(times_s, values, floor)
    assert area == pytest.approx(expected)


def test_cpu_area_is_the_cpu_time_used_by_a_busy_loop() -> None:
    process = psutil.Process()
    before = process.cpu_times()
    sampler = ResourceSampler()
    sampler.start()
    deadline = time.perf_counter() + 0.45
    while time.perf_counter() < deadline:
        pass
    samples = sampler.stop()
    after = process.cpu_times()
    cpu_seconds = (after.user - before.user) + (after.system - before.system)
    area = area_under_curve(samples.times_s, samples.cpu_percent)
    assert samples.times_s.size >= 4 and samples.times_s[0] == 0 and np.all(np.diff(samples.times_s) > 0)
    assert samples.cpu_percent.max() > 0 and area > 0
    # Each value is the mean over its interval, so the area is 100 x the CPU seconds spent.
    assert area == pytest.approx(100 * cpu_seconds, rel=0.1, abs=5.0)
    assert samples.gpu_mb is None


def test_a_big_allocation_raises_the_peak_rss() -> None:
    sampler = ResourceSampler()
    sampler.start()
    baseline_mb = psutil.Process().memory_info().rss / 2**20
    # 200 MB of fresh pages, every one written: a mapping of its own, since memory the C heap
    # freed earlier in this process may still be resident and would not raise the RSS.
    block = mmap.mmap(-1, 200 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    time.sleep(0.25)
    samples = sampler.stop()
    block.close()
    assert samples.rss_mb.max() - baseline_mb > 150


def test_profiler_rows_with_a_gpu_reader() -> None:
    resets = []
    profiler = Profiler(
        gpu_memory_mb=lambda: 3072.0, gpu_peak_mb=lambda: 5000.0, reset_gpu_peak=lambda: resets.append(1)
    )
    with profiler.case("a"):
        time.sleep(0.3)
    (row,) = profiler.rows
    assert list(row) == list(COLUMNS) and row["case"] == "a" and resets == [1]
    assert row["gpu_peak_mb"] == 5000.0  # PyTorch's own peak catches what sampling missed
    assert row["gpu_area_mb_s"] == pytest.approx(3072 * row["wall_s"], rel=0.05)
    assert row["gpu_area_above_2048_mb_s"] == pytest.approx(1024 * row["wall_s"], rel=0.05)
    assert row["samples"] >= 3 and row["wall_s"] >= 0.3


def test_a_failed_case_adds_no_row_and_stops_its_sampler() -> None:
    profiler = Profiler()
    threads = threading.active_count()
    with pytest.raises(RuntimeError, match="boom"), profiler.case("broken"):
        raise RuntimeError("boom")
    assert profiler.rows == [] and threading.active_count() == threads


def test_written_profiles_merge_with_earlier_cases(tmp_path: Path) -> None:
    csv_path, json_path = tmp_path / "profile.csv", tmp_path / "profile.json"
    profiler = Profiler()
    for case in ("b", "a"):
        with profiler.case(case):
            time.sleep(0.05)
    write_profile(profiler.rows, csv_path, json_path, {"device": "cpu"})
    rerun = dict(profiler.rows[0], wall_s=9.0)  # case "b" profiled again
    write_profile([rerun], csv_path, json_path)
    rows = read_profile_rows(csv_path)
    assert [row["case"] for row in rows] == ["a", "b"]
    assert rows[1]["wall_s"] == 9.0 and rows[0]["gpu_peak_mb"] is None
    summary = json.loads(json_path.read_text())
    assert summary["cases"] == 2 and summary["max"]["wall_s"] == 9.0
    assert summary["median"]["wall_s"] == pytest.approx((9.0 + rows[0]["wall_s"]) / 2)
    assert summary["median"]["gpu_peak_mb"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_is_followed_on_cuda() -> None:
    device = torch.device("cuda")
    profiler = Profiler.for_device(str(device))
    with profiler.case("gpu"):
        block = torch.empty(3 * 2**30, dtype=torch.uint8, device=device)
        time.sleep(0.3)
        del block
    (row,) = profiler.rows
    assert row["gpu_peak_mb"] >= 3072 and row["gpu_area_above_2048_mb_s"] > 0
    assert profiler.settings["device"] == "cuda" and "gpu" in profiler.settings


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A one-epoch tiny run and its phantom dataset (two test images)."""
    root = tmp_path_factory.mktemp("profile")
    data = write_dataset(root / "phantoms", labeled=2, unlabeled=0, test=2, seed=5, shape=(32, 32, 20))
    config = resolve_config("tiny", overrides=["stage1.epochs=1", "stage2.epochs=1"])
    run_training(discover_dataset(data), root / "run", config, device="cpu")
    return root / "run", data


def test_predict_profile_writes_csv_and_json_in_the_output_folder(tiny_run, tmp_path: Path, capsys) -> None:
    run_dir, data = tiny_run
    out = tmp_path / "predictions"
    assert main(["predict", str(run_dir), str(data / "imagesTs"), str(out), "--device", "cpu", "--profile"]) == 0
    assert "profile.csv" in capsys.readouterr().out
    with open(out / "profile.csv", newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert [row["case"] for row in rows] == ["phantom_t001", "phantom_t002"]
    for row in rows:
        assert float(row["wall_s"]) > 0 and float(row["peak_rss_mb"]) > 50 and int(row["samples"]) >= 2
        assert float(row["cpu_area_percent_s"]) > 0
        assert row["gpu_peak_mb"] == row["gpu_area_above_2048_mb_s"] == ""  # CPU only
        # Every phase of the case is timed, and together they account for the case's time.
        phases = [float(row[f"{phase}_s"]) for phase in PREDICT_PHASES]
        assert all(seconds >= 0 for seconds in phases)
        assert 0.5 * float(row["wall_s"]) < sum(phases) <= float(row["wall_s"])
    summary = json.loads((out / "profile.json").read_text())
    assert summary["cases"] == 2 and summary["device"] == "cpu" and summary["model_load_s"] > 0
    assert summary["sample_interval_s"] == 0.1 and summary["gpu_memory_floor_mb"] == 2048
    walls = [float(row["wall_s"]) for row in rows]
    assert summary["median"]["wall_s"] == pytest.approx(np.median(walls), abs=1e-4)
    assert summary["max"]["peak_rss_mb"] == pytest.approx(max(float(row["peak_rss_mb"]) for row in rows), abs=1e-4)


def test_predict_profile_of_one_file_lies_beside_it(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    out = tmp_path / "one.nii.gz"
    image = data / "imagesTs" / "phantom_t001_0000.nii.gz"
    assert main(["predict", str(run_dir), str(image), str(out), "--device", "cpu", "--profile"]) == 0
    rows = read_profile_rows(tmp_path / "one.profile.csv")
    assert [row["case"] for row in rows] == ["phantom_t001"]
    assert json.loads((tmp_path / "one.profile.json").read_text())["cases"] == 1
    plain = tmp_path / "plain.nii.gz"
    assert main(["predict", str(run_dir), str(image), str(plain), "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.nii.gz",
        "one.profile.csv",
        "one.profile.json",
        "plain.nii.gz",
    ]


def test_phase_clock_adds_up_repeated_phases_and_starts_afresh_after_take() -> None:
    clock = PhaseClock()
    for _ in range(2):
        with clock.phase("a"):
            time.sleep(0.02)
    with pytest.raises(RuntimeError), clock.phase("b"):  # a failing phase still counts
        raise RuntimeError
    taken = clock.take()
    assert list(taken) == ["a", "b"] and taken["a"] >= 0.04 and taken["b"] >= 0
    assert clock.take() == {}


def test_profiles_written_before_the_phase_columns_are_still_read(tmp_path: Path) -> None:
    old_columns = COLUMNS[: COLUMNS.index("samples") + 1]
    path = tmp_path / "profile.csv"
    path.write_text(",".join(old_columns) + "\n" + "a,1.5,100,150,225,,,,15\n")
    (row,) = read_profile_rows(path)
    assert row["wall_s"] == 1.5 and row["samples"] == 15 and row["read_s"] is None
