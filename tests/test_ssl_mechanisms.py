"""Self-training mechanisms: strong augmentation of pseudo-labeled samples only, a student
that starts from its teacher, per-organ confidence thresholds, shipping by validation."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from organseg import batches as batches_module
from organseg import train as train_module
from organseg.augment import STRONG_P, strong_augment
from organseg.batches import augment_settings
from organseg.checkpoint import load_checkpoint, save_checkpoint
from organseg.config import AugmentConfig, SelfTrainingConfig, resolve_config
from organseg.dataset import Case, discover_dataset
from organseg.errors import InputError
from organseg.labels import FLARE22
from organseg.phantom import write_dataset
from organseg.pseudolabel import unsure_voxels
from organseg.runs import TrainingInputs, run_training
from organseg.selftraining import choose_shipped
from organseg.stage_state import build_model
from organseg.train import warm_start

SHAPE = (48, 48, 24)
TINY = ["stage1.epochs=2", "stage2.epochs=2"]


# --- strong augmentation, for pseudo-labeled samples alone ------------------------------------


def test_strong_augmentation_raises_each_probability_and_keeps_the_ranges() -> None:
    base = AugmentConfig(enabled=False, gamma_p=0.9, gamma_range=(0.8, 1.2), mirror_p=0.0)
    strong = strong_augment(base)
    assert strong.enabled
    for name, least in STRONG_P.items():
        assert getattr(strong, name) == max(getattr(base, name), least)
    assert strong.gamma_p == 0.9  # already stronger: kept
    assert strong.gamma_range == (0.8, 1.2) and strong.rotation_max_deg == base.rotation_max_deg
    assert strong.mirror_p == 0.0  # mirroring stays as configured: the abdomen is not symmetric


def test_only_pseudo_labeled_samples_get_the_strong_augmentation() -> None:
    config = resolve_config("cpu", overrides=["augment.enabled=false"])
    labeled, pseudo = SimpleNamespace(pseudo=False, annotated=None), SimpleNamespace(pseudo=True, annotated=None)
    assert augment_settings(config, labeled) is config.augment
    assert augment_settings(config, pseudo) == strong_augment(config.augment)
    plain = resolve_config("cpu", overrides=["augment.enabled=false", "ssl.strong_augment=false"])
    assert augment_settings(plain, pseudo) is plain.augment


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("mech") / "data", labeled=3, unlabeled=2, test=0, seed=3, shape=SHAPE)


@pytest.fixture(scope="module")
def teacher(phantoms: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("mech_runs") / "teacher"
    run_training(discover_dataset(phantoms), run_dir, resolve_config("tiny", overrides=TINY))
    return run_dir


def test_a_training_step_augments_exactly_its_pseudo_labeled_samples(
    phantoms: Path, teacher: Path, tmp_path: Path, monkeypatch
) -> None:
    seen = []
    real = batches_module.augment_settings

    def spy(config, case):
        settings = real(config, case)
        seen.append(settings.enabled)
        return settings

    monkeypatch.setattr(batches_module, "augment_settings", spy)
    dataset = discover_dataset(phantoms)
    pseudo = tuple(Case(c.case_id, c.image, c.label) for c in dataset.labeled[:2])  # stand-in pseudo-labels
    config = resolve_config("tiny", overrides=[*TINY, "augment.enabled=false", "ssl.labeled_fraction=0.5"])
    run_training(dataset, tmp_path / "student", config, inputs=TrainingInputs(pseudo))
    # batch 2 at a labeled share of 0.5: one plain and one strongly augmented sample each step
    assert seen.count(True) == seen.count(False) > 0


# --- a student that starts from its teacher ---------------------------------------------------


def test_warm_start_copies_the_weights_and_refuses_another_network(teacher: Path, tmp_path: Path) -> None:
    config = resolve_config("tiny")
    model = build_model(config.stage2, 14)
    checkpoint = teacher / "stage2" / "best.pt"
    warm_start(model, checkpoint, torch.device("cpu"))
    saved = load_checkpoint(checkpoint, "cpu")["model"]
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())
    wider = build_model(resolve_config("tiny", overrides=["stage2.net.widths=[8,16,32]"]).stage2, 14)
    with pytest.raises(InputError, match="differs from this run"):
        warm_start(wider, checkpoint, torch.device("cpu"))
    with pytest.raises(InputError, match="no such checkpoint"):
        warm_start(model, tmp_path / "missing.pt", torch.device("cpu"))


def test_a_student_run_begins_at_its_teachers_weights(phantoms: Path, teacher: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="organseg")
    # A rate so small that one epoch cannot move the weights: what is left is where it started.
    still = ["stage1.learning_rate=1e-12", "stage2.learning_rate=1e-12", "stage1.epochs=1", "stage2.epochs=1"]
    config = resolve_config("tiny", overrides=still)
    run_training(discover_dataset(phantoms), tmp_path / "student", config, inputs=TrainingInputs(init_from=teacher))
    for stage in ("stage1", "stage2"):
        before = load_checkpoint(teacher / stage / "best.pt", "cpu")["model"]
        after = load_checkpoint(tmp_path / "student" / stage / "last.pt", "cpu")["model"]
        assert all(torch.allclose(before[name], after[name], atol=1e-6) for name in before if "running" not in name)
        assert f"starting from the weights of {teacher / stage / 'best.pt'}" in caplog.text


def test_resuming_a_student_keeps_its_own_weights(phantoms: Path, teacher: Path, tmp_path: Path, monkeypatch) -> None:
    dataset, folder = discover_dataset(phantoms), tmp_path / "student"
    run_training(dataset, folder, resolve_config("tiny", overrides=TINY), inputs=TrainingInputs(init_from=teacher))
    trained = load_checkpoint(folder / "stage2" / "last.pt", "cpu")
    content = {**trained, "epoch": 1}  # as if killed after its first epoch
    save_checkpoint(folder / "stage2" / "last.pt", {k: v for k, v in content.items() if k != "format"})

    def refuse(*_):
        raise AssertionError("a resumed student must not be reset to its teacher's weights")

    monkeypatch.setattr(train_module, "warm_start", refuse)
    run_training(dataset, folder, None, stages=("stage2",), inputs=TrainingInputs(init_from=teacher))
    assert load_checkpoint(folder / "stage2" / "last.pt", "cpu")["epoch"] == 2


# --- per-organ confidence thresholds ------------------------------------------------------------


def test_an_organ_the_teacher_doubts_everywhere_keeps_half_its_voxels() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1, 7, 7, 7, 7], np.uint8)  # 1 liver, 7 right adrenal gland
    confidence = np.array([0.95, 0.85, 0.99, 0.97, 0.96, 0.8, 0.5, 0.55, 0.6, 0.65], np.float16)
    settings = SelfTrainingConfig(min_voxel_confidence=0.9, max_unsure_share=0.5)
    unsure = unsure_voxels(confidence, labels, settings, FLARE22)
    # background and the confident liver: the one threshold, 0.9; the adrenal: its own lower
    # median, 0.55, so only its 0.5 voxel is unknown
    assert unsure.tolist() == [False, True, False, False, False, True, True, False, False, False]
    one_threshold = SelfTrainingConfig(min_voxel_confidence=0.9, max_unsure_share=1.0)
    assert unsure_voxels(confidence, labels, one_threshold, FLARE22).tolist()[6:] == [True] * 4
    off = SelfTrainingConfig(min_voxel_confidence=0.0)
    assert not unsure_voxels(confidence, labels, off, FLARE22).any()


def test_at_most_the_share_of_an_organ_becomes_unknown() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 14, size=(20, 20, 20)).astype(np.uint8)
    confidence = rng.uniform(0.3, 1.0, size=labels.shape).astype(np.float16)
    unsure = unsure_voxels(confidence, labels, SelfTrainingConfig(max_unsure_share=0.3), FLARE22)
    for label in range(1, 14):
        assert unsure[labels == label].mean() <= 0.3 + 1e-9


# --- which round is shipped ---------------------------------------------------------------------


def _rounds(scores: list[float | None]) -> list[dict]:
    return [{"round": i, "model_dir": f"run/round{i}", "mean": {"dsc": s, "nsd": s}} for i, s in enumerate(scores)]


def test_the_best_round_by_validation_is_shipped_with_its_reason() -> None:
    shipped = choose_shipped(_rounds([0.60, 0.71, 0.68]))
    assert shipped["round"] == 1 and shipped["model_dir"] == "run/round1"
    assert (
        "0.710" in shipped["reason"]
        and "the teacher 0.600" in shipped["reason"]
        and "round 2 0.680" in shipped["reason"]
    )


def test_a_student_no_better_than_its_teacher_is_not_shipped() -> None:
    assert choose_shipped(_rounds([0.70, 0.70, 0.65]))["round"] == 0
    assert choose_shipped(_rounds([0.70, 0.69]))["round"] == 0


def test_the_last_round_is_shipped_when_asked_or_nothing_can_judge() -> None:
    assert choose_shipped(_rounds([0.70, 0.60]), "last")["round"] == 1
    shipped = choose_shipped(_rounds([None, None]))
    assert shipped["round"] == 1 and "no validation score" in shipped["reason"]
