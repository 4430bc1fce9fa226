"""Partially labeled cases: declared per case, checked, learnt with the marginal loss, completed by a teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax

from organseg.augment import AugmentParams, mirrored_ids
from organseg.cascade import merge_unlearnt
from organseg.cli import main
from organseg.completion import complete_labels
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.dataset_checks import check_dataset, describe_dataset
from organseg.io import read_image, read_label
from organseg.labels import FLARE22
from organseg.losses import deep_supervision_loss, dice_ce_loss
from organseg.open_model import open_segmenter
from organseg.phantom import write_dataset
from organseg.phantom.writer import partial_annotation
from organseg.runs import choose_split, run_training

SMOOTH = 1e-5


def _logits(probabilities) -> torch.Tensor:
    """(1, C, 1, 1, 1) logits whose softmax is `probabilities`."""
    return torch.log(torch.tensor(probabilities, dtype=torch.float64)).reshape(1, -1, 1, 1, 1).float()


# --- the marginal loss ------------------------------------------------------------------------


def test_marginal_loss_by_hand_on_one_voxel() -> None:
    # Classes: background, liver, kidney. The voxel is kidney, but the case annotates only the
    # liver, so its label map says background there.
    p = (0.2, 0.3, 0.5)
    logits, target = _logits(p), torch.zeros(1, 1, 1, 1, dtype=torch.long)
    unannotated = torch.tensor([[False, False, True]])
    partial = dice_ce_loss(logits, target, unannotated=unannotated)
    # -log(p_bg + p_kidney), and the Dice of the liver alone (the kidney's truth is unknown).
    expected = -math.log(0.2 + 0.5) + 1 - SMOOTH / (0.3 + SMOOTH)
    assert partial.item() == pytest.approx(expected, rel=1e-5)
    plain = dice_ce_loss(logits, target)
    expected_plain = -math.log(0.2) + 1 - 0.5 * (SMOOTH / (0.3 + SMOOTH) + SMOOTH / (0.5 + SMOOTH))
    assert plain.item() == pytest.approx(expected_plain, rel=1e-5)


def test_unannotated_organ_voxel_gives_no_gradient_towards_background() -> None:
    """Moving probability from the kidney to background changes nothing: d loss/d p_bg == d loss/d p_kidney."""
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    unannotated = torch.tensor([[False, False, True]])
    loss = dice_ce_loss(torch.log(p).reshape(1, 3, 1, 1, 1), target, unannotated=unannotated)
    (grad,) = torch.autograd.grad(loss, p)
    assert grad[0].item() == pytest.approx(grad[2].item(), abs=1e-6)
    # The plain loss pushes the same voxel from the kidney to background.
    plain = dice_ce_loss(torch.log(p).reshape(1, 3, 1, 1, 1), target)
    (grad,) = torch.autograd.grad(plain, p)
    assert grad[0].item() < grad[2].item() - 1.0
    # And in logits: the kidney's is never pushed down on such a voxel.
    logits = _logits((0.2, 0.3, 0.5)).requires_grad_()
    (grad,) = torch.autograd.grad(dice_ce_loss(logits, target, unannotated=unannotated), logits)
    assert grad[0, 2].item() <= 0


def test_fully_annotated_samples_get_exactly_todays_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    levels = [torch.randn(3, 5, 8 // 2**k, 8 // 2**k, 8 // 2**k, generator=generator) for k in range(3)]
    target = torch.randint(0, 5, (3, 8, 8, 8), generator=generator)
    target[0, :2] = 255
    weights = torch.tensor([1.0, 0.5, 2.0])
    today = deep_supervision_loss(levels, target, weights, class_balance=0.5)
    none_missing = torch.zeros(3, 5, dtype=torch.bool)
    assert deep_supervision_loss(levels, target, weights, 0.5, none_missing).item() == today.item()
    # A batch mixing one partial sample with full ones changes only that sample's term.
    missing = none_missing.clone()
    missing[1, 3] = True
    mixed = deep_supervision_loss(levels, target, torch.tensor([1.0, 0.0, 2.0]), 0.5, missing)
    alone = deep_supervision_loss(levels, target, torch.tensor([1.0, 0.0, 2.0]), 0.5)
    assert mixed.item() == pytest.approx(alone.item(), rel=1e-6)


def test_mirroring_swaps_the_unannotated_side() -> None:
    pairs = FLARE22.mirror_pairs()
    assert mirrored_ids((2, 7), AugmentParams(mirror_axes=(0,)), pairs) == (8, 13)
    assert mirrored_ids((2, 7), AugmentParams(mirror_axes=(1,)), pairs) == (2, 7)


def test_unlearnt_classes_join_background_at_inference() -> None:
    logits = np.log(np.array([0.2, 0.3, 0.5], np.float32)).reshape(3, 1)
    merged = merge_unlearnt(logits, (2,))
    assert softmax(merged, axis=0)[:, 0].tolist() == pytest.approx([0.7, 0.3, 0.0])
    assert merged.argmax(0).item() == 0 and merge_unlearnt(logits, ()) is logits


# --- declaring and checking partial labels -----------------------------------------------------


@pytest.fixture(scope="module")
def partial_phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("partial") / "phantoms"
    return write_dataset(root, labeled=2, unlabeled=2, test=1, seed=3, shape=(40, 40, 24), partial=3)


def test_phantom_partial_cases_hold_only_their_declared_organs(partial_phantoms: Path) -> None:
    declared = json.loads((partial_phantoms / "dataset.json").read_text())["partial_labels"]
    assert sorted(declared) == ["phantom_p001", "phantom_p002", "phantom_p003"]
    for index, case_id in enumerate(sorted(declared), start=1):
        ids = partial_annotation(3, index)
        assert 1 <= len(ids) <= 4 and [FLARE22.name(label) for label in ids] == declared[case_id]
        present = set(np.unique(read_label(partial_phantoms / "labelsTr" / f"{case_id}.nii.gz").array)) - {0}
        assert present <= set(ids)
    dataset = discover_dataset(partial_phantoms)
    by_id = {case.case_id: case for case in dataset.labeled}
    assert by_id["phantom_001"].annotated is None and by_id["phantom_p001"].annotated == partial_annotation(3, 1)


def test_check_reports_coverage_and_refuses_contradictions(partial_phantoms: Path, tmp_path: Path) -> None:
    dataset = discover_dataset(partial_phantoms)
    report = check_dataset(dataset)
    assert report.problems == []
    text = describe_dataset(dataset, report)
    assert "annotating / containing each, of 5; 3 partially labeled" in text
    # Declare the first partial case without one of the organs its label map holds.
    label = partial_phantoms / "labelsTr" / "phantom_p001.nii.gz"
    held = sorted(set(np.unique(read_label(label).array)) - {0})
    mapping = {"phantom_p001": [FLARE22.name(held[0] % 13 + 1)] if held else []}
    file = tmp_path / "partial.json"
    file.write_text(json.dumps(mapping))
    report = check_dataset(discover_dataset(partial_phantoms, partial_labels=file))
    contradiction = [line for line in report.problems if "declare unannotated" in line]
    assert held and len(contradiction) == 1 and str(label) in contradiction[0]


def test_unknown_organs_and_cases_in_partial_labels_are_problems(partial_phantoms: Path, tmp_path: Path) -> None:
    file = tmp_path / "partial.json"
    file.write_text(json.dumps({"phantom_p001": ["liver", "appendix"], "nobody": ["liver"]}))
    problems = discover_dataset(partial_phantoms, partial_labels=file).problems
    assert any("'appendix'" in line for line in problems) and any("'nobody'" in line for line in problems)
    assert main(["check", str(partial_phantoms), "--partial-labels", str(tmp_path / "missing.json")]) != 0


def test_partially_labeled_cases_never_validate(partial_phantoms: Path) -> None:
    dataset = discover_dataset(partial_phantoms)
    for seed in range(5):
        split = choose_split(dataset.labeled, resolve_config("tiny", overrides=[f"seed={seed}"]))
        assert all(not case_id.startswith("phantom_p") for case_id in split["validation"])


def test_completion_keeps_ground_truth_and_takes_the_other_organs_from_the_teacher() -> None:
    truth = np.array([1, 1, 0, 0, 0, 0], np.uint8)  # annotates the liver (1) only
    pseudo = np.array([1, 0, 1, 2, 255, 0], np.uint8)
    # Teacher's liver outside the truth's liver: background; its kidney (2) and unsure voxel: kept.
    assert complete_labels(truth, pseudo, (1,)).tolist() == [1, 1, 0, 2, 255, 0]


# --- training with partial labels --------------------------------------------------------------


def test_real_case_declared_without_esophagus_trains_and_never_predicts_it(real_data: Path, tmp_path: Path) -> None:
    dataset_dir = tmp_path / "ts"
    (dataset_dir / "imagesTr").mkdir(parents=True)
    (dataset_dir / "labelsTr").mkdir()
    source = real_data / "ts_abdomen"
    (dataset_dir / "imagesTr" / "ts_0000.nii.gz").symlink_to(source / "image.nii.gz")
    (dataset_dir / "labelsTr" / "ts.nii.gz").symlink_to(source / "label_flare13.nii.gz")
    annotated = [name for _, name in FLARE22.names if name != "esophagus"]
    meta = {"labels": FLARE22.to_json(), "file_ending": ".nii.gz", "partial_labels": {"ts": annotated}}
    (dataset_dir / "dataset.json").write_text(json.dumps(meta))
    overrides = ["validation_cases=0", "stage1.epochs=2", "stage2.epochs=2", "stage1_target=organs"]
    run_training(
        discover_dataset(dataset_dir), tmp_path / "run", resolve_config("tiny", overrides=overrides), device="cpu"
    )
    segmenter = open_segmenter(tmp_path / "run", "cpu")
    assert segmenter.unlearnt == (10,)  # the esophagus
    labels = segmenter.predict(read_image(source / "image.nii.gz"))
    assert not (labels.array == 10).any()


def test_self_training_completes_partial_cases_with_ground_truth_first(partial_phantoms: Path, tmp_path: Path) -> None:
    from organseg.selftraining import run_ssl

    overrides = ["stage1.epochs=2", "stage2.epochs=2", "ssl.rounds=1", "ssl.filter=none", "validation_cases=1"]
    run_ssl(discover_dataset(partial_phantoms), tmp_path / "ssl", resolve_config("tiny", overrides=overrides), "cpu")
    completed = tmp_path / "ssl" / "round1" / "partial" / "completed"
    split = json.loads((tmp_path / "ssl" / "round0" / "splits.json").read_text())
    partial_in_training = sorted(c for c in split["train"] if c.startswith("phantom_p"))
    assert sorted(p.name.removesuffix(".nii.gz") for p in completed.glob("*.nii.gz")) == partial_in_training
    for case_id in partial_in_training:
        truth = read_label(partial_phantoms / "labelsTr" / f"{case_id}.nii.gz").array
        filled = read_label(completed / f"{case_id}.nii.gz").array
        marked = truth > 0
        assert (filled[marked] == truth[marked]).all()  # ground truth wins where it exists
        annotated = partial_annotation(3, int(case_id[-3:]))
        assert not np.isin(filled[~marked], annotated).any()  # no annotated organ beyond the truth's
    # The student learnt from the completed cases (their cache points at the completed label maps).
    meta = json.loads((tmp_path / "ssl" / "cache" / f"{partial_in_training[0]}.json").read_text())
    assert meta["sources"]["label"] == str(completed / f"{partial_in_training[0]}.nii.gz")


def test_fully_labeled_cases_keep_their_share_of_every_batch() -> None:
    from types import SimpleNamespace

    from organseg.batches import draw_batch

    full = [SimpleNamespace(pseudo=False, annotated=None, synthetic=False, name=f"f{i}") for i in range(2)]
    partial = [SimpleNamespace(pseudo=False, annotated=(1,), synthetic=False, name=f"p{i}") for i in range(12)]
    rng = np.random.default_rng(0)
    drawn = [case.name for _ in range(400) for case in draw_batch(full + partial, 2, 0.5, rng)]
    assert sum(name.startswith("f") for name in drawn) == 400  # one of each batch of 2, not 2 in 14


def test_partial_cases_train_stage_2_on_the_box_stage_1_finds(partial_phantoms: Path, tmp_path: Path) -> None:
    from organseg.prepared import prepare_cases
    from organseg.runs import with_inference_boxes

    dataset = discover_dataset(partial_phantoms)
    config = resolve_config("tiny", overrides=["stage1.epochs=2", "stage2.epochs=1", "validation_cases=0"])
    run_training(dataset, tmp_path / "run", config, stages=("stage1",), device="cpu")
    cases = prepare_cases(list(dataset.labeled), tmp_path / "run" / "cache", config)
    boxed = with_inference_boxes(cases, tmp_path / "run" / "stage1" / "best.pt", torch.device("cpu"))
    for before, after in zip(cases, boxed):
        if before.annotated is None:
            assert after.organ_box == before.organ_box
        else:  # the case's own organs stay inside a box that is at least as large
            assert all(a <= b for a, b in zip(after.organ_box.start, before.organ_box.start))
            assert all(a >= b for a, b in zip(after.organ_box.stop, before.organ_box.stop))
