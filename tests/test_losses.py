"""Dice + cross-entropy loss and hard Dice: tables of hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from organseg.labels import IGNORE_LABEL
from organseg.losses import (
    MAX_CLASS_WEIGHT,
    class_weights,
    deep_supervision_loss,
    dice_ce_loss,
    dice_ce_per_sample,
    soft_dice_per_class,
)
from organseg.metrics import dice_per_class


def _one_hot_logits(target: torch.Tensor, classes: int, margin: float = 100.0) -> torch.Tensor:
    """(B, C, ...) logits with `margin` on the true class and 0 elsewhere."""
    return margin * torch.nn.functional.one_hot(target, classes).movedim(-1, 1).float()


def _two_class_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Four voxels, foreground probabilities 0.2, 0.6, 0.9, 0.5; target 0, 1, 1, 0."""
    p = torch.tensor([0.2, 0.6, 0.9, 0.5])
    logits = torch.stack([torch.zeros(4), torch.log(p / (1 - p))]).view(1, 2, 1, 1, 4)
    return logits, torch.tensor([0, 1, 1, 0]).view(1, 1, 1, 4)


_TARGET_4 = torch.tensor([0, 1, 2, 2, 2, 3, 0, 1]).view(1, 2, 2, 2)  # class counts 2, 2, 3, 1
_TARGET_RANDOM = torch.randint(0, 3, (2, 4, 4, 4), generator=torch.Generator().manual_seed(0))

CASES = [
    # (name, logits, target, smooth, expected loss)
    ("perfect prediction", _one_hot_logits(_TARGET_RANDOM, 3), _TARGET_RANDOM, 1e-5, 0.0),
    # Class 3 absent from target and prediction: its Dice is smooth / smooth = 1.
    ("perfect, a class absent", _one_hot_logits(_TARGET_RANDOM, 4), _TARGET_RANDOM, 1e-5, 0.0),
    # Uniform: CE = log 4; Dice_c = 2 (n_c / 4) / (8 / 4 + n_c) for n_c = 2, 3, 1.
    ("uniform logits", torch.zeros(1, 4, 2, 2, 2), _TARGET_4, 0.0, math.log(4) + 1 - (1 / 4 + 1.5 / 5 + 0.5 / 3) / 3),
    # CE = -mean(log .8, log .6, log .9, log .5); Dice = 2 (.6 + .9) / ((.2 + .6 + .9 + .5) + 2).
    (
        "two classes by hand",
        *_two_class_case(),
        0.0,
        -(math.log(0.8) + math.log(0.6) + math.log(0.9) + math.log(0.5)) / 4 + 1 - 3.0 / 4.2,
    ),
]


@pytest.mark.parametrize(("logits", "target", "smooth", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_loss_table(logits, target, smooth, expected) -> None:
    loss = dice_ce_loss(logits, target, smooth=smooth)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_two_class_case_numbers() -> None:
    assert dice_ce_loss(*_two_class_case(), smooth=0.0).item() == pytest.approx(0.38312 + 0.285714, abs=1e-5)
    assert soft_dice_per_class(*_two_class_case(), smooth=0.0).item() == pytest.approx(3.0 / 4.2)


def test_uniform_logits_cross_entropy_is_log_classes() -> None:
    # Dice part 1 - 2 (N_c / C) / (N / C + N_c) is exact; the rest must be log C.
    target = torch.randint(0, 5, (3, 6, 5, 4), generator=torch.Generator().manual_seed(1))
    per_sample = dice_ce_per_sample(torch.zeros(3, 5, 6, 5, 4), target, smooth=0.0)
    counts = torch.stack([torch.bincount(t.flatten(), minlength=5)[1:] for t in target]).float()
    dice = 2 * (counts / 5) / (120 / 5 + counts)
    assert torch.allclose(per_sample - (1 - dice.mean(dim=1)), torch.full((3,), math.log(5)), atol=1e-6)


def test_sample_weights_give_the_weighted_mean() -> None:
    logits = torch.randn(3, 3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    per_sample = dice_ce_per_sample(logits, _TARGET_RANDOM[[0, 1, 0]])
    loss = dice_ce_loss(logits, _TARGET_RANDOM[[0, 1, 0]], torch.tensor([2.0, 1.0, 0.5]))
    assert loss.item() == pytest.approx(((2 * per_sample[0] + per_sample[1] + 0.5 * per_sample[2]) / 3.5).item())
    assert dice_ce_loss(logits, _TARGET_RANDOM[[0, 1, 0]], torch.ones(3)).item() == pytest.approx(per_sample.mean())


def test_weight_zero_removes_a_sample_exactly() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(3)).requires_grad_()
    loss = dice_ce_loss(logits, _TARGET_RANDOM, torch.tensor([1.0, 0.0]))
    loss.backward()
    assert loss.item() == pytest.approx(dice_ce_loss(logits[:1], _TARGET_RANDOM[:1]).item(), abs=1e-7)
    assert torch.count_nonzero(logits.grad[1]) == 0 and torch.count_nonzero(logits.grad[0]) > 0


def test_gradient_flows_to_every_class_and_lowers_the_loss() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(4)).requires_grad_()
    loss = dice_ce_loss(logits, _TARGET_RANDOM)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad.abs().sum(dim=(0, 2, 3, 4)) > 0)
    with torch.no_grad():
        assert dice_ce_loss(logits - 1.0 * logits.grad / logits.grad.norm(), _TARGET_RANDOM) < loss


def test_bf16_logits_under_autocast_give_a_float32_loss() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dice_ce_loss(logits.bfloat16(), _TARGET_RANDOM)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(dice_ce_loss(logits, _TARGET_RANDOM).item(), rel=2e-2)


@pytest.mark.parametrize(
    ("logits_shape", "target_shape", "weights", "message"),
    [
        ((2, 3, 4, 4, 4), (2, 4, 4, 5), None, "expected logits"),
        ((2, 3, 4, 4, 4), (2, 3, 4, 4, 4), None, "expected logits"),
        ((2, 3, 4, 4, 4), (2, 4, 4, 4), torch.ones(3), "sample_weights must have shape"),
        ((2, 3, 4, 4, 4), (2, 4, 4, 4), torch.tensor([1.0, -1.0]), ">= 0 with a positive sum"),
        ((2, 3, 4, 4, 4), (2, 4, 4, 4), torch.zeros(2), ">= 0 with a positive sum"),
    ],
)
def test_bad_inputs_raise(logits_shape, target_shape, weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        dice_ce_loss(torch.zeros(logits_shape), torch.zeros(target_shape, dtype=torch.int64), weights)


def test_float_target_raises() -> None:
    with pytest.raises(ValueError, match="integer class indices"):
        dice_ce_loss(torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2))


# --- hard Dice -------------------------------------------------------------------------------

_MAP = np.array([[[0, 1, 1, 1, 1, 2, 2, 0]]], dtype=np.uint8)  # (1, 1, 8): label 1 x4, label 2 x2

DICE_CASES = [
    # (name, prediction, target, labels, expected)
    ("identical", _MAP, _MAP, [1, 2], {1: 1.0, 2: 1.0}),
    ("disjoint", np.roll(_MAP, 4, axis=2), _MAP, [1, 2], {1: 0.0, 2: 0.0}),
    ("half overlap", np.roll(_MAP, 2, axis=2), _MAP, [1], {1: 2 * 2 / (4 + 4)}),
    ("both empty", _MAP, _MAP, [3], {3: 1.0}),
    ("empty target, prediction not", _MAP, np.where(_MAP == 2, 0, _MAP), [2], {2: 0.0}),
    ("empty prediction, target not", np.where(_MAP == 2, 0, _MAP), _MAP, [2], {2: 0.0}),
    ("labels above the scored ones", np.where(_MAP == 2, 300, _MAP), _MAP, [1, 2], {1: 1.0, 2: 0.0}),
]


@pytest.mark.parametrize(
    ("prediction", "target", "labels", "expected"), [c[1:] for c in DICE_CASES], ids=[c[0] for c in DICE_CASES]
)
def test_dice_per_class_table(prediction, target, labels, expected) -> None:
    assert dice_per_class(prediction, target, labels) == pytest.approx(expected)


def test_dice_per_class_agrees_with_the_definition() -> None:
    rng = np.random.default_rng(0)
    target, prediction = rng.integers(0, 14, (2, 12, 10, 8), dtype=np.int16)
    scores = dice_per_class(prediction, target, range(1, 14))
    for label, score in scores.items():
        a, b = prediction == label, target == label
        assert score == pytest.approx(2 * np.sum(a & b) / (a.sum() + b.sum()))


@pytest.mark.parametrize(
    ("prediction", "target", "message"),
    [
        (np.zeros((2, 2, 2), int), np.zeros((2, 2, 3), int), "shapes differ"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2), int), "integer arrays"),
        (np.full((2, 2, 2), -1), np.zeros((2, 2, 2), int), "non-negative"),
    ],
)
def test_dice_per_class_bad_inputs(prediction, target, message) -> None:
    with pytest.raises(ValueError, match=message):
        dice_per_class(prediction, target, [1])


def test_ignored_voxels_count_in_neither_term() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 6, 6, 6, generator=generator, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 6, 6), generator=generator)
    target[:, :3] = IGNORE_LABEL
    loss = dice_ce_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert (logits.grad[:, :, :3] == 0).all() and (logits.grad[:, :, 3:] != 0).any()
    # The same as the loss of the known half alone.
    half = logits.detach()[:, :, 3:].clone()
    assert torch.allclose(loss, dice_ce_loss(half, target[:, 3:]), atol=1e-6)


# --- class-balanced cross-entropy ---


def test_class_weights_by_hand() -> None:
    # 16 voxels: background 12, class 1 three, class 2 one; unknown voxels count for nothing.
    target = torch.tensor([0] * 12 + [1] * 3 + [2] + [IGNORE_LABEL] * 4).view(1, 4, 5, 1)
    weights = class_weights(target, 3, power=0.5).flatten()
    assert torch.allclose(weights[:12], torch.ones(12))
    assert torch.allclose(weights[12:15], torch.full((3,), 2.0))  # sqrt(12 / 3)
    assert weights[15].item() == pytest.approx(math.sqrt(12))
    assert torch.all(weights[16:] == 0)


def test_class_weights_are_capped_and_never_below_one() -> None:
    # A class with more voxels than the background weighs 1; a one-voxel class at most the cap.
    target = torch.tensor([0] * 5000 + [1] * 6000 + [2]).view(1, 11001, 1, 1)
    weights = class_weights(target, 3, power=1.0).flatten()
    assert weights[5000].item() == 1.0
    assert weights[-1].item() == MAX_CLASS_WEIGHT


def test_class_weights_are_per_sample() -> None:
    target = torch.stack([torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 1, 1])]).view(2, 2, 2, 1)
    weights = class_weights(target, 2, power=1.0).view(2, 4)
    assert weights[0, 3].item() == 3.0 and weights[1, 1].item() == 1.0


def test_class_balance_zero_is_the_plain_loss() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    assert dice_ce_loss(logits, _TARGET_RANDOM, class_balance=0.0).item() == dice_ce_loss(logits, _TARGET_RANDOM).item()


def test_class_balance_strengthens_the_rare_class_gradient() -> None:
    # One voxel of class 1 among 63 of background, uniform logits: balancing moves more of the
    # cross-entropy's pull onto the rare voxel's class-1 logit.
    target = torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    target[0, 1, 2, 3] = 1
    pulls = []
    for balance in (0.0, 0.5):
        logits = torch.zeros(1, 2, 4, 4, 4, requires_grad=True)
        dice_ce_loss(logits, target, class_balance=balance).backward()
        rare = -logits.grad[0, 1, 1, 2, 3]
        pulls.append(rare / logits.grad[0, 1].abs().sum())
    assert pulls[1] > 2 * pulls[0]


def test_class_balanced_loss_still_ignores_unknown_voxels() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    target = _TARGET_RANDOM.clone()
    changed = logits.clone()
    target[:, 0] = IGNORE_LABEL
    changed[:, :, 0] = 50.0 * torch.randn(2, 3, 4, 4)  # anything at the unknown voxels
    loss = dice_ce_loss(logits, target, class_balance=0.5)
    assert torch.allclose(loss, dice_ce_loss(changed, target, class_balance=0.5))


def test_deep_supervision_loss_weighs_levels_by_resolution() -> None:
    generator = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (2, 8, 8, 4), generator=generator)
    target[0, 0, 0, 0] = IGNORE_LABEL
    levels = [torch.randn(2, 3, 8 // 2**k, 8 // 2**k, 4 // 2**k, generator=generator) for k in range(3)]
    weights = torch.tensor([1.0, 0.5])
    by_hand = (
        dice_ce_loss(levels[0], target, weights)
        + 0.5 * dice_ce_loss(levels[1], target[:, ::2, ::2, ::2], weights)
        + 0.25 * dice_ce_loss(levels[2], target[:, ::4, ::4, ::4], weights)
    ) / 1.75
    assert torch.allclose(deep_supervision_loss(levels, target, weights), by_hand)
    # The coarse targets are voxels of the fine one, so an unknown voxel stays unknown there.
    assert int(target[:, ::2, ::2, ::2][0, 0, 0, 0]) == IGNORE_LABEL


def test_deep_supervision_loss_of_one_output_is_the_plain_loss() -> None:
    logits = torch.randn(1, 4, 6, 6, 6)
    target = torch.randint(0, 4, (1, 6, 6, 6))
    assert torch.equal(
        deep_supervision_loss(logits, target, class_balance=0.5), dice_ce_loss(logits, target, class_balance=0.5)
    )
