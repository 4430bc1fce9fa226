"""One optimiser step of a stage, in as many micro-batches as memory needs.

A step that runs out of memory is retried with its batch cut into twice as many
micro-batches (`micro_batches`), whose losses are weighted by their share of the batch's
sample weights and whose gradients add up before the optimiser step: the effective batch,
the loss and the gradient stay the whole batch's. Under several processes a step retried
by one process alone would leave the others waiting in its gradient exchange, so there the
cut is found before training (`fit_micro_batches`) and running out later is an error.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math

import torch

from organseg.batches import Batch
from organseg.device import autocast, training_memory_format
from organseg.errors import InputError
from organseg.losses import deep_supervision_loss
from organseg.stage_state import StageRun, StageState

log = logging.getLogger(__name__)


def train_step(run: StageRun, state: StageState, batch: Batch) -> torch.Tensor:
    """One optimiser step on `batch`, cut into more micro-batches each time memory runs out; its loss."""
    while True:
        try:
            return _step(run, state, batch)
        except torch.OutOfMemoryError:
            if run.world.is_distributed:  # the others are inside this step's collectives: no retry alone
                raise InputError(_out_of_memory(run, state, f"--set {run.name}.micro_batches=N")) from None
        # Outside the except block, whose traceback holds the failed step's tensors.
        _step_down(run, state)


def fit_micro_batches(run: StageRun, state: StageState) -> None:
    """Find the micro-batches a step fits in, before training (under several processes).

    Each process tries a step of zeros (the memory a step takes depends on shapes alone) on
    its bare network, without collectives or an optimiser step, cutting the batch finer
    until it fits; then all take the finest cut any of them needed.
    """
    while not _fits(run, state):
        _step_down(run, state)
    state.optimizer.zero_grad(set_to_none=True)
    _free_memory(run.device)
    agreed = run.world.agree(state.micro_batches)
    if agreed != state.micro_batches:
        state.micro_batches = agreed
        log.warning("%s: another process needs %d micro-batches per step; all take them", run.name, agreed)


def _fits(run: StageRun, state: StageState) -> bool:
    """Whether a forward and backward pass of one micro-batch of zeros fits in memory (its tensors freed on return)."""
    size, grid = math.ceil(run.stage.batch_size / state.micro_batches), run.stage.grid
    state.model.train()
    try:
        images = torch.zeros((size, 1, *grid), device=run.device)
        with autocast(run.device, run.precision):
            logits = state.model(images.to(memory_format=training_memory_format(run.device)))
        targets = torch.zeros((size, *grid), dtype=torch.int64, device=run.device)
        deep_supervision_loss(logits, targets, class_balance=run.config.class_balance).backward()
    except torch.OutOfMemoryError:
        return False
    return True


def _step(run: StageRun, state: StageState, batch: Batch) -> torch.Tensor:
    """One optimiser step: forward and backward passes of each micro-batch, then the update."""
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    pieces = _cut(batch, state.micro_batches)
    total_weight = batch.weights.sum()
    loss = torch.zeros((), device=run.device)
    for index, piece in enumerate(pieces):
        # Gradients are averaged over the processes once, after the last piece.
        last = index == len(pieces) - 1
        exchange = contextlib.nullcontext() if last or state.replica is None else state.replica.no_sync()
        with exchange:
            piece_loss = _loss(run, state, piece)
            if len(pieces) > 1:  # each piece's share of the batch's weighted mean
                piece_loss = piece_loss * float(piece.weights.sum() / total_weight)
            _backward(state, piece_loss)
        loss = loss + piece_loss.detach()
    if state.scaler is None:
        if _gradients_finite(run, state):
            state.optimizer.step()
    else:
        state.scaler.step(state.optimizer)  # skipped when a gradient overflowed; the scale then falls
        state.scaler.update()
    if state.average is not None:
        state.average.update_parameters(state.model)
    return loss


def _gradients_finite(run: StageRun, state: StageState) -> bool:
    """Whether every gradient is finite; if not, the step is to be skipped, with a warning.

    One NaN or infinite gradient would make the weights NaN for the rest of the run. They
    come from numerical faults, not from the data: seen on a CPU as a rare NaN in the weight
    gradient of one bf16 convolution, on a few-voxel grid, the same step computing finite
    gradients in other runs. A gradient scaler (fp16) makes the same check itself. The
    check costs one host sync per step; the next step clears the skipped gradients.
    """
    gradients = [parameter.grad for parameter in state.model.parameters() if parameter.grad is not None]
    if not gradients or bool(torch.isfinite(torch.nn.utils.get_total_norm(gradients))):
        return True
    log.warning("%s: a step's gradients are not finite (a numerical fault); the step is skipped", run.name)
    return False


def _loss(run: StageRun, state: StageState, batch: Batch) -> torch.Tensor:
    network = state.model if state.replica is None else state.replica  # the replica averages gradients
    with autocast(run.device, run.precision):
        images = batch.images.to(run.device, memory_format=training_memory_format(run.device))
        logits = network(images)
    targets = batch.targets.to(run.device)
    return deep_supervision_loss(logits, targets, batch.weights, run.config.class_balance, batch.unannotated)


def _backward(state: StageState, loss: torch.Tensor) -> None:
    (loss if state.scaler is None else state.scaler.scale(loss)).backward()


def _cut(batch: Batch, pieces: int) -> list[Batch]:
    """`batch` as `pieces` consecutive micro-batches (sizes differing by at most one)."""
    if pieces == 1:
        return [batch]
    parts = [
        torch.tensor_split(tensor, pieces) if tensor is not None else (None,) * pieces
        for tensor in (batch.images, batch.targets, batch.weights, batch.unannotated)
    ]
    return [Batch(*fields) for fields in zip(*parts)]


def _step_down(run: StageRun, state: StageState) -> None:
    """After running out of memory: twice as many micro-batches, or a clear error at one sample each."""
    state.optimizer.zero_grad(set_to_none=True)
    _free_memory(run.device)
    batch_size = run.stage.batch_size
    if state.micro_batches >= batch_size:
        raise InputError(_out_of_memory(run, state, f"--set {run.name}.activation_checkpointing=true"))
    state.micro_batches = min(batch_size, 2 * state.micro_batches)
    log.warning(
        "%s: out of %s memory at a batch of %d; now %d micro-batches of at most %d samples per step "
        "(the effective batch stays %d)",
        run.name,
        run.device.type,
        batch_size,
        state.micro_batches,
        math.ceil(batch_size / state.micro_batches),
        batch_size,
    )


def _out_of_memory(run: StageRun, state: StageState, remedy: str) -> str:
    size = math.ceil(run.stage.batch_size / state.micro_batches)
    return (
        f"{run.name}: a training step of {size} sample(s) of {list(run.stage.grid)} in {run.precision} runs out of "
        f"{run.device.type} memory; try {remedy}, a lower precision (--set precision=bf16 or fp16) or a smaller grid"
    )


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
