"""Out of memory in a training step: the batch is cut into micro-batches, the effective batch kept."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from organseg import stage_state, train_step
from organseg.batches import Batch
from organseg.config import resolve_config
from organseg.errors import InputError
from organseg.labels import LabelSet

LABELS = LabelSet(((1, "liver"), (2, "spleen"), (3, "left kidney")))
GRID = (16, 16, 16)


def _run(tmp_path: Path, *settings: str) -> stage_state.StageRun:
    config = resolve_config(
        "tiny",  # fp32: the comparisons are of the arithmetic, not of bf16's rounding
        overrides=[
            f"stage2.grid={list(GRID)}",
            "stage2.batch_size=4",
            "class_balance=0.5",
            "precision=fp32",
            *settings,
        ],
    )
    return stage_state.StageRun("stage2", config, LABELS, tmp_path, torch.device("cpu"))


def _batch(partial: bool = False) -> Batch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((4, 1, *GRID), generator=generator)
    targets = torch.randint(0, 4, (4, *GRID), generator=generator)
    unannotated = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    return Batch(images, targets, torch.tensor([1.0, 0.5, 1.0, 0.5]), unannotated if partial else None)


@pytest.fixture
def no_room_for_batches(monkeypatch) -> list[int]:
    return _refuse_batches(monkeypatch)


def _refuse_batches(monkeypatch) -> list[int]:
    """The network runs out of memory on more than one sample at a time; returns the batch sizes it saw."""
    seen = []
    real_forward = stage_state.UNet3D.forward

    def forward(model, image):
        seen.append(image.shape[0])
        if image.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (mocked)")
        return real_forward(model, image)

    monkeypatch.setattr(stage_state.UNet3D, "forward", forward)
    return seen


def _gradients(state: stage_state.StageState) -> list[torch.Tensor]:
    return [parameter.grad.clone() for parameter in state.model.parameters()]


@pytest.mark.parametrize("partial", [False, True], ids=["annotated", "partially-annotated"])
def test_running_out_of_memory_cuts_the_batch_and_keeps_its_loss_and_gradient(
    tmp_path: Path, monkeypatch, partial: bool, caplog
) -> None:
    run = _run(tmp_path)
    whole = stage_state.initial_state(run)
    cut = stage_state.initial_state(run)
    loss = train_step.train_step(run, whole, _batch(partial))

    seen = _refuse_batches(monkeypatch)
    cut_loss = train_step.train_step(run, cut, _batch(partial))

    assert seen == [4, 2, 1, 1, 1, 1]  # 4 fails, 2 fails, then four pieces of 1
    assert cut.micro_batches == 4
    assert "now 4 micro-batches of at most 1 samples per step (the effective batch stays 4)" in caplog.text
    torch.testing.assert_close(cut_loss, loss, rtol=1e-6, atol=1e-6)
    for ours, reference in zip(_gradients(cut), _gradients(whole), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)


def test_later_steps_keep_the_cut(tmp_path: Path, no_room_for_batches: list[int]) -> None:
    run = _run(tmp_path)
    state = stage_state.initial_state(run)
    train_step.train_step(run, state, _batch())
    no_room_for_batches.clear()
    train_step.train_step(run, state, _batch())
    assert no_room_for_batches == [1, 1, 1, 1]


def test_one_sample_too_many_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    def forward(model, image):
        raise torch.OutOfMemoryError("out of memory (mocked)")

    monkeypatch.setattr(stage_state.UNet3D, "forward", forward)
    run = _run(tmp_path)
    with pytest.raises(InputError, match=r"1 sample\(s\) of \[16, 16, 16\].*activation_checkpointing=true"):
        train_step.train_step(run, stage_state.initial_state(run), _batch())


def test_the_cut_is_found_before_training_without_touching_the_weights(
    tmp_path: Path, no_room_for_batches: list[int]
) -> None:
    run = _run(tmp_path)
    state = stage_state.initial_state(run)
    before = copy.deepcopy(state.model.state_dict())
    train_step.fit_micro_batches(run, state)
    assert state.micro_batches == 4 and no_room_for_batches == [4, 2, 1]
    assert all(parameter.grad is None for parameter in state.model.parameters())
    for name, tensor in before.items():
        assert torch.equal(tensor, state.model.state_dict()[name]), name


def test_configured_micro_batches_give_the_whole_batch_s_step(tmp_path: Path) -> None:
    whole_run, cut_run = _run(tmp_path), _run(tmp_path, "stage2.micro_batches=3")
    whole, cut = stage_state.initial_state(whole_run), stage_state.initial_state(cut_run)
    cut.micro_batches = cut_run.stage.micro_batches
    loss = train_step.train_step(whole_run, whole, _batch())
    torch.testing.assert_close(train_step.train_step(cut_run, cut, _batch()), loss, rtol=1e-6, atol=1e-6)
    for ours, reference in zip(_gradients(cut), _gradients(whole), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)


def test_a_step_with_a_non_finite_gradient_changes_nothing(tmp_path: Path, monkeypatch, caplog) -> None:
    # Without a gradient scaler (fp32, bf16) one NaN gradient would make every weight NaN for good.
    run = _run(tmp_path)
    state = stage_state.initial_state(run)
    train_step.train_step(run, state, _batch())  # a normal step, so the optimiser has moments to keep
    weights, moments = copy.deepcopy(state.model.state_dict()), copy.deepcopy(state.optimizer.state_dict())
    real_backward = train_step._backward

    def backward(state_, loss):
        real_backward(state_, loss)
        next(state_.model.parameters()).grad.view(-1)[0] = float("nan")  # one weight's gradient, as seen

    monkeypatch.setattr(train_step, "_backward", backward)
    loss = train_step.train_step(run, state, _batch())
    assert torch.isfinite(loss)
    for name, value in state.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for before, after in zip(moments["state"].values(), state.optimizer.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(before[key], after[key]) for key in before)  # moments and step count
    assert "gradients are not finite" in caplog.text
    monkeypatch.setattr(train_step, "_backward", real_backward)
    train_step.train_step(run, state, _batch())  # the next step trains again
    assert not torch.equal(next(state.model.parameters()), next(iter(weights.values())))
