"""Semi-supervised learning: batch composition, pseudo-label clean-up, scores, filtering, rounds, demo."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from organseg import demo as demo_module
from organseg.batches import draw_batch
from organseg.config import SelfTrainingConfig, resolve_config
from organseg.dataset import Case, discover_dataset
from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import Volume, read_image, read_label
from organseg.labels import IGNORE_LABEL
from organseg.phantom import write_dataset
from organseg.pseudolabel import clean_pseudo_label, decide, read_scores, run_pseudo_labeling
from organseg.runs import TrainingInputs, run_training
from organseg.selftraining import add_rounds, choose_shipped, rounds_table, run_ssl

SHAPE = (48, 48, 24)
TINY = ["stage1.epochs=2", "stage2.epochs=2"]


# --- mini-batch composition -------------------------------------------------------------


def _pool(labeled: int, pseudo: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(pseudo=False, annotated=None, synthetic=False, index=i) for i in range(labeled)] + [
        SimpleNamespace(pseudo=True, annotated=None, synthetic=False, index=labeled + i) for i in range(pseudo)
    ]


def test_batch_of_four_holds_exactly_one_labeled_sample_at_a_quarter() -> None:
    rng, cases = np.random.default_rng(0), _pool(3, 24)
    for _ in range(500):
        batch = draw_batch(cases, 4, 0.25, rng)
        assert len(batch) == 4 and sum(not case.pseudo for case in batch) == 1


@pytest.mark.parametrize("batch_size, fraction", [(1, 0.25), (2, 0.25), (3, 0.5), (1, 0.6)])
def test_labeled_share_matches_the_fraction_at_any_batch_size(batch_size: int, fraction: float) -> None:
    rng, cases = np.random.default_rng(1), _pool(3, 24)
    draws = [case for _ in range(4000) for case in draw_batch(cases, batch_size, fraction, rng)]
    share = np.mean([not case.pseudo for case in draws])
    assert abs(share - fraction) < 0.03
    assert {case.index for case in draws} == set(range(27))  # every case gets drawn


def test_fraction_zero_draws_uniformly_so_pseudo_labels_crowd_out() -> None:
    rng, cases = np.random.default_rng(2), _pool(3, 24)
    draws = [case for _ in range(3000) for case in draw_batch(cases, 4, 0.0, rng)]
    assert abs(np.mean([not case.pseudo for case in draws]) - 3 / 27) < 0.02


def test_without_pseudo_labels_the_draw_is_the_plain_uniform_one() -> None:
    cases = _pool(5, 0)
    batch = draw_batch(cases, 3, 0.25, np.random.default_rng(3))
    expected = np.random.default_rng(3).choice(5, size=3, replace=False)
    assert [case.index for case in batch] == expected.tolist()


# --- clean-up by connected components on hand-made volumes --------------------------------


def _volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Volume:
    geometry = Geometry(array.shape, spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    return Volume(array.astype(np.uint8), geometry)


def test_two_blobs_of_one_organ_keep_the_larger() -> None:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:12, 2:12, 2:12] = 1  # 1000 voxels
    labels[20:24, 20:24, 20:24] = 1  # 64 voxels, apart
    cleaned = clean_pseudo_label(_volume(labels), SelfTrainingConfig(min_component_ml=0, fill_holes=False)).array
    assert cleaned[5, 5, 5] == 1 and cleaned[21, 21, 21] == 0 and (cleaned == 1).sum() == 1000


def test_enclosed_hole_is_filled_but_an_organ_inside_another_stays() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:18, 2:18, 2:18] = 1
    labels[8:10, 8:10, 8:10] = 0  # a cavity of background: filled
    labels[4:6, 4:6, 4:6] = 5  # a vessel inside the liver: kept
    cleaned = clean_pseudo_label(_volume(labels), SelfTrainingConfig(min_component_ml=0)).array
    assert (cleaned[8:10, 8:10, 8:10] == 1).all()
    assert (cleaned[4:6, 4:6, 4:6] == 5).all()


def test_touching_organs_stay_separate_and_whole() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:18, 2:18] = 2  # right kidney against
    labels[10:18, 2:18, 2:18] = 13  # left kidney, face to face
    cleaned = clean_pseudo_label(_volume(labels), SelfTrainingConfig()).array
    assert np.array_equal(cleaned, labels)


def test_pieces_under_the_volume_limit_are_removed() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 1  # 1000 voxels of 2 mm^3: 8 mL
    labels[15:17, 15:17, 15:17] = 3  # a whole organ of 8 voxels: 0.064 mL
    volume = _volume(labels, spacing=(2.0, 2.0, 2.0))
    assert (clean_pseudo_label(volume, SelfTrainingConfig(min_component_ml=0.1)).array == 3).sum() == 0
    assert (clean_pseudo_label(volume, SelfTrainingConfig(min_component_ml=0.05)).array == 3).sum() == 8


# --- filtering rules ------------------------------------------------------------------------


def _rows(scores: list[float]) -> list[dict]:
    return [{"case": f"c{i}", "score": s, "organs_found": 0 if s == 0 else 13} for i, s in enumerate(scores)]


def test_filters_keep_all_above_threshold_or_the_best_fraction() -> None:
    rows = _rows([0.95, 0.5, 0.0, 0.8, 0.91])
    none = decide(rows, SelfTrainingConfig(filter="none"))
    assert [kept for kept, _ in none] == [True, True, False, True, True]
    assert none[2][1] == "no organ found"
    threshold = decide(rows, SelfTrainingConfig(filter="threshold", min_score=0.9))
    assert [kept for kept, _ in threshold] == [True, False, False, False, True]
    assert "below the threshold 0.9" in threshold[1][1]
    fraction = decide(rows, SelfTrainingConfig(filter="fraction", keep_fraction=0.5))  # 2 of the 4 usable
    assert [kept for kept, _ in fraction] == [True, False, False, False, True]
    assert "not in the best 50%" in fraction[3][1]


# --- pseudo-labeling and rounds with the tiny preset ------------------------------------------


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ssl_data") / "phantoms"
    return write_dataset(root, labeled=3, unlabeled=4, test=1, seed=7, shape=SHAPE)


@pytest.fixture(scope="module")
def teacher(phantoms: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ssl_runs") / "teacher"
    run_training(discover_dataset(phantoms), run_dir, resolve_config("tiny", overrides=TINY))
    return run_dir


def test_pseudo_labels_sit_on_their_images_grid_with_a_manifest(phantoms: Path, teacher: Path, tmp_path) -> None:
    manifest = run_pseudo_labeling(teacher, phantoms / "imagesUnlabeled", tmp_path / "pl")
    assert [row.case_id for row in manifest] == [f"phantom_u{i:03d}" for i in range(1, 5)]
    for row in manifest:
        image, label = read_image(row.image), read_label(row.label)
        assert label.geometry.is_close(image.geometry) and label.array.shape == image.array.shape
        assert 0 <= row.score <= 1
    header = (tmp_path / "pl" / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["case", "kept", "reason", "score"]
    assert {"confidence", "stage_agreement", "crop_agreement", "liver (mL)", "left kidney (mL)"} <= set(header)
    records = json.loads((tmp_path / "pl" / "manifest.json").read_text())["cases"]
    assert all(set(record["volumes_ml"]) >= {"liver", "aorta"} for record in records)


def test_a_rerun_skips_finished_cases_and_another_model_is_refused(
    phantoms: Path, teacher: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pl"
    run_pseudo_labeling(teacher, phantoms / "imagesUnlabeled", out)
    stamps = {path.name: path.stat().st_mtime_ns for path in out.glob("*.nii.gz")}
    lines = (out / "scores.jsonl").read_text()
    run_pseudo_labeling(teacher, phantoms / "imagesUnlabeled", out)
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("*.nii.gz")} == stamps
    assert (out / "scores.jsonl").read_text() == lines
    other = tmp_path / "other_run"
    shutil.copytree(teacher, other)
    with pytest.raises(InputError, match="another model"):
        run_pseudo_labeling(other, phantoms / "imagesUnlabeled", out)


def test_the_state_a_kill_leaves_is_cleaned_up_and_redone(phantoms: Path, teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "pl"
    run_pseudo_labeling(teacher, phantoms / "imagesUnlabeled", out)
    # As if killed while writing case 4 (partial file) and appending case 3's row (torn line),
    # after case 4's label map replaced an older one whose row never came.
    rows = (out / "scores.jsonl").read_text().splitlines()
    (out / "scores.jsonl").write_text("\n".join(rows[:2]) + "\n" + rows[2][:25])
    (out / ".phantom_u004.partial-0a1b2c3d.nii.gz").write_bytes(b"\x1f\x8b half a file")
    run_pseudo_labeling(teacher, phantoms / "imagesUnlabeled", out)
    assert sorted(read_scores(out)) == [f"phantom_u{i:03d}" for i in range(1, 5)]
    assert not list(out.glob(".*partial*"))
    for path in out.glob("*.nii.gz"):
        read_label(path)


def test_pseudo_labeling_killed_midway_resumes(phantoms: Path, teacher: Path, tmp_path: Path) -> None:
    many = write_dataset(tmp_path / "many", labeled=0, unlabeled=8, test=0, seed=11, shape=(96, 96, 48))
    out = tmp_path / "pl"
    command = [sys.executable, "-m", "organseg", "pseudo-label", str(teacher), str(many / "imagesUnlabeled"), str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(read_scores(out)) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(read_scores(out))
    assert 1 <= finished < 8, "the kill must land after the first case and before the last"
    assert not (out / "manifest.csv").exists()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "8 pseudo-label(s)" in result.stdout
    assert len(read_scores(out)) == 8 and not list(out.glob(".*partial*"))
    for path in sorted(out.glob("*.nii.gz")):
        assert (
            read_label(path).array.shape
            == read_image(many / "imagesUnlabeled" / path.name.replace(".nii.gz", "_0000.nii.gz")).array.shape
        )


def test_ssl_rounds_keep_every_model_manifest_and_metric(phantoms: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="organseg")
    run_dir = tmp_path / "ssl"
    overrides = [*TINY, "ssl.rounds=2", "ssl.filter=fraction", "ssl.keep_fraction=0.5"]
    summary = run_ssl(discover_dataset(phantoms), run_dir, resolve_config("tiny", overrides=overrides), "cpu")
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert [r["pseudo_labels_kept"] for r in summary["rounds"]] == [0, 2, 2]
    for index in range(3):
        assert (run_dir / f"round{index}" / "stage2" / "best.pt").is_file()
    validation = json.loads((run_dir / "round0" / "splits.json").read_text())["validation"]
    assert all(r["validation_cases"] == validation for r in summary["rounds"])  # one split for all rounds
    second = json.loads((run_dir / "round2" / "pseudo" / "manifest.json").read_text())["cases"]
    assert all("previous_agreement" in record for record in second)  # round 2 compares with round 1
    kept = {record["case"] for record in second if record["kept"]}
    assert {path.name.removesuffix(".json") for path in (run_dir / "round2" / "cache_pseudo").glob("*.json")} == kept
    table = caplog.text
    assert "| organ | full supervision | round 1 | round 2 |" in table and "| liver |" in table
    assert rounds_table(summary["rounds"], discover_dataset(phantoms).label_set) in table
    shipped = summary["shipped"]
    assert shipped == choose_shipped(summary["rounds"]) == json.loads((run_dir / "rounds.json").read_text())["shipped"]
    assert f"shipped: {shipped['model_dir']}" in table and shipped["reason"] in (run_dir / "rounds.md").read_text()
    # every student continued from its teacher (ssl.student_init=teacher, the default)
    for index in (1, 2):
        assert f"starting from the weights of {run_dir / f'round{index - 1}' / 'stage2' / 'best.pt'}" in table

    stamp = (run_dir / "round2" / "stage2" / "last.pt").stat().st_mtime_ns
    again = run_ssl(discover_dataset(phantoms), run_dir, None, "cpu")
    assert (run_dir / "round2" / "stage2" / "last.pt").stat().st_mtime_ns == stamp  # nothing retrained
    assert again["rounds"] == summary["rounds"]
    with pytest.raises(InputError, match="already holds a self-training run"):
        run_ssl(discover_dataset(phantoms), run_dir, resolve_config("tiny"), "cpu")

    # a finished run takes one more round; the finished ones stay as they are
    with pytest.raises(InputError, match="has 2 rounds and --rounds can only add some"):
        add_rounds(run_dir, 1)
    add_rounds(run_dir, 3)
    longer = run_ssl(discover_dataset(phantoms), run_dir, None, "cpu")
    assert [r["round"] for r in longer["rounds"]] == [0, 1, 2, 3] and longer["rounds"][:3] == summary["rounds"]
    assert (run_dir / "round2" / "stage2" / "last.pt").stat().st_mtime_ns == stamp
    assert f"starting from the weights of {run_dir / 'round2' / 'stage2' / 'best.pt'}" in caplog.text


def test_ssl_needs_unlabeled_images(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", labeled=2, unlabeled=0, test=0, seed=1, shape=SHAPE)
    with pytest.raises(InputError, match="no unlabeled images"):
        run_ssl(discover_dataset(data), tmp_path / "run", resolve_config("tiny"), "cpu")


def test_demo_writes_results_for_both_models(tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="organseg")
    monkeypatch.setattr(demo_module, "QUICK", {"labeled": 3, "unlabeled": 2, "test": 2})
    two_rounds = [*TINY, "ssl.rounds=2"]  # the semi-supervised model is the shipped round
    monkeypatch.setattr(demo_module, "demo_config", lambda quick, seed: resolve_config("tiny", overrides=two_rounds))
    monkeypatch.setattr(
        demo_module, "write_dataset", lambda folder, **counts: write_dataset(folder, shape=SHAPE, **counts)
    )
    results = demo_module.run_demo(tmp_path / "demo", quick=True, device="cpu")
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["full_supervision"]["model_dir"].endswith("round0")
    assert saved["semi_supervised"]["model_dir"] == saved["shipped"]["model_dir"]
    assert saved["shipped"]["model_dir"].endswith(f"round{saved['shipped']['round']}") and saved["shipped"]["reason"]
    for model in ("full_supervision", "semi_supervised"):
        entry = saved[model]
        assert set(entry["dsc"]) == set(entry["nsd"]) and "liver" in entry["dsc"] and len(entry["dsc"]) == 13
        assert 0 <= entry["mean_dsc"] <= 1 and 0 <= entry["mean_nsd"] <= 1
        assert (Path(entry["model_dir"]) / "stage2" / "best.pt").is_file()
    assert results["semi_supervised"]["mean_dsc"] == saved["semi_supervised"]["mean_dsc"]
    out = caplog.text
    assert "| organ | full supervision | semi-supervised |" in out and "results.json" in out


def test_full_demo_runs_three_rounds_and_quick_one() -> None:
    assert demo_module.demo_config(quick=False).ssl.rounds == 3
    assert demo_module.demo_config(quick=True).ssl.rounds == 1


def test_doubtful_voxels_become_unknown_and_a_student_trains_on_them(
    phantoms: Path, teacher: Path, tmp_path: Path
) -> None:
    settings = SelfTrainingConfig(min_voxel_confidence=0.5)  # the tiny teacher doubts a lot
    manifest = run_pseudo_labeling(teacher, phantoms / "imagesUnlabeled", tmp_path / "pl", settings)
    arrays = [read_label(row.label).array for row in manifest]
    assert any((array == IGNORE_LABEL).any() for array in arrays)
    records = json.loads((tmp_path / "pl" / "manifest.json").read_text())["cases"]
    for record, array in zip(records, arrays):
        assert record["unsure_percent"] == pytest.approx(100 * (array == IGNORE_LABEL).mean(), abs=1e-3)
    pseudo = [Case(row.case_id, row.image, row.label) for row in manifest]
    config = resolve_config("tiny", overrides=TINY)
    run_training(discover_dataset(phantoms), tmp_path / "student", config, inputs=TrainingInputs(tuple(pseudo)))
    assert (tmp_path / "student" / "stage2" / "best.pt").is_file()
