"""Folder evaluation: outputs, parallel runs, and every user-facing error path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_volume
from organseg.errors import InputError
from organseg.evaluate import OUTPUT_NAMES, run_evaluation
from organseg.geometry import Geometry
from organseg.io import write_label
from organseg.labels import FLARE22

CASES = ("case_a", "case_b", "case_c")


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases: ground truth with four blob organs, predictions with blobs drawn elsewhere."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    for index, case in enumerate(CASES):
        gt = make_volume(shape=(24, 20, 16), seed=index, labels=4)
        pred = make_volume(shape=(24, 20, 16), seed=index + 10, labels=4)
        merged = np.where(np.random.default_rng(index).random(gt.array.shape) < 0.7, gt.array, pred.array)
        write_label(gt.array, gt.geometry, gt_dir / f"{case}.nii.gz")
        write_label(merged, pred.geometry, pred_dir / f"{case}_0000.nii.gz")  # nnU-Net style name
    return pred_dir, gt_dir


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_outputs(folders, tmp_path):
    pred_dir, gt_dir = folders
    result = run_evaluation(pred_dir, gt_dir, tmp_path / "out", workers=1)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    assert (out / "metrics.csv").read_text().splitlines()[0] == "case,label,organ,dsc,nsd"
    rows = _read_csv(out / "metrics.csv")
    assert len(rows) == len(CASES) * 13 and {row["case"] for row in rows} == set(CASES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary and summary["settings"]["flare_z_rule"] == "inclusive"
    assert summary["settings"]["tolerances_mm"]["duodenum"] == 7.0
    for organ, stats in summary["organs"].items():
        for metric in ("dsc", "nsd"):
            values = [float(row[metric]) for row in rows if row["organ"] == organ]
            assert stats[metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert stats[metric]["std"] == pytest.approx(np.std(values), abs=1e-12)
            assert stats[metric]["n"] == len(CASES)
    assert summary["overall"]["dsc"]["mean"] == pytest.approx(np.mean([float(row["dsc"]) for row in rows]))
    assert 0 < summary["organs"]["liver"]["dsc"]["mean"] < 1
    markdown = (out / "summary.md").read_text()
    assert "| liver | 1 | 5 | 3 |" in markdown and "**mean**" in markdown and "±" in markdown
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    volumes = _read_csv(out / "volumes.csv")
    assert list(volumes[0]) == ["case", "label", "organ", "volume_ml"] and len(volumes) == len(CASES) * 13
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_volumes_are_those_of_the_predictions(folders, tmp_path):
    pred_dir, gt_dir = folders
    result = run_evaluation(pred_dir, gt_dir, tmp_path / "out", workers=1)
    from organseg.io import read_label

    pred = read_label(pred_dir / "case_b_0000.nii.gz")
    liver = next(row for row in result.volumes if row["case"] == "case_b" and row["label"] == 1)
    voxel_ml = np.prod(pred.geometry.spacing_mm) / 1000
    assert liver["volume_ml"] == pytest.approx(np.count_nonzero(pred.array == 1) * voxel_ml)


def test_parallel_equals_serial(folders, tmp_path):
    pred_dir, gt_dir = folders
    serial = run_evaluation(pred_dir, gt_dir, tmp_path / "serial", workers=1)
    parallel = run_evaluation(pred_dir, gt_dir, tmp_path / "parallel", workers=2)
    assert parallel.rows == serial.rows and parallel.volumes == serial.volumes
    assert (tmp_path / "parallel" / "metrics.csv").read_text() == (tmp_path / "serial" / "metrics.csv").read_text()


def test_missing_prediction_names_the_case(folders, tmp_path):
    pred_dir, gt_dir = folders
    (pred_dir / "case_b_0000.nii.gz").unlink()
    with pytest.raises(InputError, match="case_b: no prediction") as error:
        run_evaluation(pred_dir, gt_dir, tmp_path / "out", workers=1)
    assert "case_a" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_extra_prediction_is_a_warning(folders, tmp_path):
    pred_dir, gt_dir = folders
    extra = make_volume(shape=(24, 20, 16), labels=2)
    write_label(extra.array, extra.geometry, pred_dir / "case_z.nii.gz")
    result = run_evaluation(pred_dir, gt_dir, tmp_path / "out", workers=1)
    assert len(result.warnings) == 1 and "case_z" in result.warnings[0]
    assert len(result.rows) == len(CASES) * 13


@pytest.mark.parametrize("workers", [1, 2])
def test_grid_mismatch_names_both_files_and_leaves_no_output(folders, tmp_path, workers):
    pred_dir, gt_dir = folders
    gt = make_volume(shape=(24, 20, 16), seed=1, labels=4)
    moved = Geometry(gt.geometry.shape, gt.geometry.spacing_mm, (0.0, 0.0, 0.0), gt.geometry.direction)
    write_label(gt.array, moved, pred_dir / "case_b_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as error:
        run_evaluation(pred_dir, gt_dir, out, workers=workers)
    message = str(error.value)
    assert "case_b_0000.nii.gz" in message and str(gt_dir / "case_b.nii.gz") in message and "origin" in message
    assert list(out.iterdir()) == []


def test_bad_arguments(folders, tmp_path):
    pred_dir, gt_dir = folders
    with pytest.raises(InputError, match="z rule"):
        run_evaluation(pred_dir, gt_dir, tmp_path / "out", flare_z_rule="strict")
    with pytest.raises(InputError, match="label 20"):
        run_evaluation(pred_dir, gt_dir, tmp_path / "out", tolerances_mm={20: 1.0})
    with pytest.raises(InputError, match="not found"):
        run_evaluation(tmp_path / "nowhere", gt_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_custom_tolerance_and_z_rule_are_recorded(folders, tmp_path):
    pred_dir, gt_dir = folders
    result = run_evaluation(pred_dir, gt_dir, tmp_path / "out", FLARE22, {1: 1.0}, flare_z_rule="flare", workers=1)
    assert result.summary["settings"] == {**result.summary["settings"], "flare_z_rule": "flare"}
    assert result.summary["organs"]["liver"]["tolerance_mm"] == 1.0
