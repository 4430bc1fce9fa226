"""Training one stage: the loop, validation, checkpoints, logs and resuming.

Every `checkpoint_every` epochs (and after the last) `last.pt` is written atomically
(model, optimizer, learning-rate schedule, epoch, random states, best metric), so a run
killed at any moment resumes with `--resume` exactly, losing at most the epochs since.
SIGUSR1 writes it at the next step, mid-epoch if need be; SIGTERM writes it and stops
(organseg.stop_requests). Checkpoints are written by a background thread while training
goes on (organseg.checkpoint.CheckpointWriter). `best.pt` is the checkpoint with the
highest validation Dice (or the newest one when there is no validation case). With
`stageN.weight_average` the checkpoints' model is the weights' moving average, which is also
what validates; last.pt keeps the trained weights beside it (organseg.weight_average). One JSON
line per epoch goes to `log.jsonl`; `curve.png` shows loss and validation Dice.

Each step is one optimiser step of `batch_size` samples, in as many micro-batches as the
memory needs (organseg.train_step).

Under several processes (torchrun; see organseg.distributed for the whole scheme) the
model is wrapped in DistributedDataParallel, every process draws its own samples, rank 0
alone validates and writes, and `last.pt` holds every process's random state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from organseg.atomic import append_line, read_jsonl, write_text
from organseg.batches import Sampler, epoch_batches, loader_workers
from organseg.checkpoint import CheckpointWriter, load_checkpoint
from organseg.config import to_dict
from organseg.device import autocast, describe_precision
from organseg.errors import InputError, Preempted
from organseg.metrics import dice_per_class
from organseg.nets.unet3d import UNet3D
from organseg.pictures import save_training_curve
from organseg.prepared import PreparedCase
from organseg.progress import progress_bar
from organseg.stage_state import StageRun, StageState, initial_state
from organseg.stop_requests import NONE, STOP, StopRequests
from organseg.train_step import fit_micro_batches, train_step

log = logging.getLogger(__name__)


def train_stage(run: StageRun, train_cases: list[PreparedCase], val_cases: list[PreparedCase], resume: bool) -> dict:
    """Train one stage; returns the last log row. `resume` continues from its last.pt.

    Under torchrun every process calls `train_stage` alike, with its own `run.world`, whose
    process group must be up (organseg.distributed.process_group).
    """
    run.stage_dir.mkdir(parents=True, exist_ok=True)
    state = initial_state(run)
    last = run.stage_dir / "last.pt"
    world = run.world
    if resume and last.is_file():
        _restore(run, state, load_checkpoint(last, run.device))
        where = f"at step {state.step} of epoch {state.epoch + 1}" if state.step else f"after epoch {state.epoch}"
        log.info("%s: resuming %s of %d", run.name, where, run.stage.epochs)
        if world.is_main:
            _trim_log(run.stage_dir, state.epoch)
    elif last.is_file():
        raise InputError(
            f"{run.stage_dir}: already holds a trained {run.name}; use --resume to continue or a new RUN_DIR"
        )
    elif run.init_from is not None:
        warm_start(state.model, run.init_from, run.device)
        log.info("%s: starting from the weights of %s", run.name, run.init_from)
    world.barrier()  # every process has looked at last.pt before rank 0 writes the next one
    if world.is_distributed and run.device.type == "cuda":
        fit_micro_batches(run, state)
    if world.is_distributed:
        # Wrapped after the restore: DDP starts every replica from rank 0's weights.
        state.replica = DistributedDataParallel(
            state.model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    # One pass over the cases is shared by the processes: each takes batch_size samples a step.
    per_step = run.stage.batch_size * world.world_size
    iterations = run.stage.iterations_per_epoch or math.ceil(len(train_cases) / per_step)
    total = run.stage.epochs * iterations
    row = {"epoch": state.epoch, "best_metric": state.best_metric}
    sampler = run.sampler(train_cases)
    workers = loader_workers(run.config.workers, run.device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    log.info(
        "%s: precision %s; %d loader worker(s)", run.name, describe_precision(run.device, run.config.precision), workers
    )
    initial = state.epoch * iterations + state.step
    with (
        progress_bar(total=total, initial=initial, desc=run.name, unit="it") as bar,
        StopRequests() as requests,
        CheckpointWriter() as writer,
    ):
        while state.epoch < run.stage.epochs:
            row = _train_epoch(run, state, _Epoch(sampler, iterations, workers, val_cases, requests, writer, bar))
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_dice=_format(row.get("val_dice")))
    world.assert_replicas_agree(state.model)
    return row


@dataclass(frozen=True)
class _Epoch:
    """What an epoch of `train_stage` works with besides the run and its state."""

    sampler: Sampler
    iterations: int
    workers: int
    val_cases: list[PreparedCase]
    requests: StopRequests
    writer: CheckpointWriter
    bar: object  # the progress bar


def _train_epoch(run: StageRun, state: StageState, epoch: _Epoch) -> dict:
    """The rest of the epoch in progress (all of it unless resumed mid-epoch); returns its log row."""
    started = time.perf_counter()
    state.epoch_streams = _random_state(state)
    # The epoch's draws first, in one process's order; the batches are made from them (by
    # workers). A resumed epoch draws them all again from its saved start and skips those done.
    draws = [epoch.sampler.draw_step(run.stage.batch_size, state.rng, state.generator) for _ in range(epoch.iterations)]
    request = NONE
    for batch in _count(epoch.bar, epoch_batches(epoch.sampler, draws[state.step :], epoch.workers)):
        # Losses stay on the device until the epoch ends: reading one back would wait for its step.
        state.losses.append(train_step(run, state, batch))
        state.step += 1
        request = epoch.requests.take(run.world)
        if request != NONE and state.step < epoch.iterations:  # the epoch's end writes its own checkpoint
            _write_mid_epoch(run, state, epoch.writer)
            _stop_if_asked(run, state, epoch, request)
    row = _end_epoch(run, state, epoch.val_cases, started, epoch.writer, forced=request != NONE)
    _stop_if_asked(run, state, epoch, request)
    return row


def _stop_if_asked(run: StageRun, state: StageState, epoch: _Epoch, request: int) -> None:
    if request != STOP:
        return
    epoch.writer.wait()
    run.world.barrier()  # no process ends (and makes torchrun end the others) before the checkpoint is whole
    raise Preempted(
        f"{run.name}: stopped on {epoch.requests.signal_name or 'request'} after {state.epoch} epoch(s) "
        f"and {state.step} step(s) of the next, saved in {run.stage_dir / 'last.pt'}; continue with --resume"
    )


def _count(bar, items: Iterable):
    for item in items:
        yield item
        bar.update(1)


def warm_start(model: UNet3D, checkpoint: Path, device: torch.device) -> None:
    """Load a trained network's weights into `model`; the optimiser and schedule start afresh."""
    if not Path(checkpoint).is_file():
        raise InputError(f"{checkpoint}: no such checkpoint to start from; train that model first")
    content = load_checkpoint(checkpoint, device)
    if json.dumps(content["net"]) != json.dumps(model.init_kwargs):  # tuples and lists alike
        raise InputError(
            f"{checkpoint}: its network ({content['net']}) differs from this run's ({model.init_kwargs}); "
            "a student can start from its teacher only with the same network settings"
        )
    model.load_state_dict(content["model"])


def _end_epoch(
    run: StageRun, state: StageState, val_cases: list[PreparedCase], started, writer: CheckpointWriter, forced: bool
) -> dict:
    """Step the schedule, validate when due, write checkpoints and the log; returns the log row (rank 0's).

    `forced`: write last.pt whatever `checkpoint_every` says (a signal asked for it).
    """
    state.epoch += 1
    loss = run.world.mean(float(torch.stack(state.losses).float().mean()))
    state.step, state.losses = 0, []
    row = {"epoch": state.epoch, "loss": loss, "lr": state.optimizer.param_groups[0]["lr"]}
    state.scheduler.step()
    streams = run.world.gather(_random_state(state))  # every process's, for an exact resume
    if run.world.is_main:
        write_last = forced or state.epoch % run.stage.checkpoint_every == 0 or state.epoch == run.stage.epochs
        _validate_and_write(run, state, row, val_cases, started, _content(run, state, streams), writer, write_last)
    # After rank 0's validation: every process logs the same row.
    return run.world.broadcast(row)


def _write_mid_epoch(run: StageRun, state: StageState, writer: CheckpointWriter) -> None:
    """last.pt in the middle of an epoch: the epoch's starting streams, the steps done and their losses."""
    streams = run.world.gather(state.epoch_streams)
    losses = run.world.gather([float(loss) for loss in state.losses])
    if run.world.is_main:
        content = _content(run, state, streams)
        content.update(step=state.step, epoch_losses=losses)
        writer.write(content, run.stage_dir / "last.pt")
        log.info("%s: checkpoint at epoch %d step %d", run.name, state.epoch + 1, state.step)


def _validate_and_write(
    run: StageRun,
    state: StageState,
    row: dict,
    val_cases: list[PreparedCase],
    started,
    content: dict,
    writer: CheckpointWriter,
    write_last: bool,
) -> None:
    """Rank 0's part of an epoch's end: validation when due, the log row, best.pt and last.pt, the curve."""
    due = state.epoch % run.stage.val_every == 0 or state.epoch == run.stage.epochs
    paths = []
    if due and val_cases:
        row.update(validate(run, state.predicting_model, val_cases))
        if row["val_dice"] > state.best_metric:
            state.best_metric, state.best_epoch = row["val_dice"], state.epoch
            content.update(best_metric=state.best_metric, best_epoch=state.best_epoch)
            paths.append(run.stage_dir / "best.pt")
    row["seconds"] = round(time.perf_counter() - started, 3)
    # The log row first: a kill before the checkpoint then repeats this epoch's row on
    # resume, which trims the log to the checkpoint's epoch (_trim_log) first.
    _append_log(run.stage_dir, row)
    if write_last:
        paths.append(run.stage_dir / "last.pt")
        if not val_cases:  # nothing to choose by: the newest model is the best we know
            paths.append(run.stage_dir / "best.pt")
    if paths:
        writer.write(content, *paths)
    if due:
        save_training_curve(read_jsonl(run.stage_dir / "log.jsonl"), run.stage_dir / "curve.png", title=run.name)


@torch.no_grad()
def validate(run: StageRun, model: UNet3D, cases: list[PreparedCase]) -> dict:
    """Mean Dice on the stage's own grid over the organs present in each validation case."""
    model.eval()
    per_organ: dict[int, list[float]] = {label: [] for label in run.label_ids}
    sampler = run.sampler(cases)
    for case in cases:
        image, labels = sampler.sample(case)
        with autocast(run.device, run.precision):
            logits = model(image[None].to(run.device))
        prediction = logits[0].float().argmax(0).cpu().numpy()
        truth = labels.numpy()
        present = [label for label in run.label_ids if (truth == label).any()]
        for label, value in dice_per_class(prediction, truth, present).items():
            per_organ[label].append(value)
    means = {label: float(np.mean(values)) for label, values in per_organ.items() if values}
    return {"val_dice": float(np.mean(list(means.values()))) if means else 0.0, "val_dice_per_organ": means}


def _content(run: StageRun, state: StageState, streams: list[dict]) -> dict:
    """A checkpoint's content; `streams`: the random state of every process, by rank, to resume from."""
    content = {
        "stage": run.name,
        "epoch": state.epoch,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "model": state.predicting_model.state_dict(),
        "net": state.model.init_kwargs,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": streams[0],  # rank 0's (the only process that writes)
        "config": to_dict(run.config),
        "labels": run.label_set.to_json(),
        "label_codes": run.label_set.codes_to_json(),
        "unlearnt": list(run.unlearnt),
    }
    if state.scaler is not None:
        content["scaler"] = state.scaler.state_dict()
    if state.average is not None:  # "model" holds the average; training goes on from these
        content.update(trained_model=state.model.state_dict(), averaged_steps=int(state.average.n_averaged))
    if len(streams) > 1:
        content["rng_ranks"] = streams
    return content


def _random_state(state: StageState) -> dict:
    return {"numpy": state.rng.bit_generator.state, "torch": state.generator.get_state()}


def _restore(run: StageRun, state: StageState, content: dict) -> None:
    """Load a checkpoint into `state`; each process takes its own random state when the checkpoint has it."""
    state.model.load_state_dict(content.get("trained_model", content["model"]))
    if state.average is not None and "trained_model" in content:
        state.average.module.load_state_dict(content["model"])
        state.average.n_averaged.fill_(int(content["averaged_steps"]))
    state.optimizer.load_state_dict(content["optimizer"])
    state.scheduler.load_state_dict(content["scheduler"])
    if state.scaler is not None and "scaler" in content:
        state.scaler.load_state_dict(content["scaler"])
    streams = content.get("rng_ranks") or [content["rng"]]
    if run.world.rank < len(streams):
        state.rng.bit_generator.state = streams[run.world.rank]["numpy"]
        # The generator state must be a CPU tensor, whatever device the checkpoint was loaded to.
        state.generator.set_state(streams[run.world.rank]["torch"].cpu())
    elif run.world.rank == len(streams):  # the first rank without a saved state says so, once
        log.warning(
            "%s: rank %d and above start fresh random streams (%d saved)", run.name, run.world.rank, len(streams)
        )
    state.epoch = int(content["epoch"])
    state.step = int(content.get("step", 0))  # > 0: saved mid-epoch, with the epoch's starting streams
    if state.step:
        saved = content["epoch_losses"]
        own = saved[run.world.rank] if run.world.rank < len(saved) else []
        state.losses = [torch.tensor(loss, device=run.device) for loss in own]
    state.best_metric = float(content["best_metric"])
    state.best_epoch = int(content["best_epoch"])


def _append_log(stage_dir: Path, row: dict) -> None:
    append_line(stage_dir / "log.jsonl", json.dumps(row))


def _trim_log(stage_dir: Path, epoch: int) -> None:
    """Drop the log rows of epochs after `epoch`, the checkpoint resumed from: they are trained again."""
    path = stage_dir / "log.jsonl"
    rows = read_jsonl(path) if path.is_file() else []
    kept = [row for row in rows if row.get("epoch", 0) <= epoch]
    if len(kept) < len(rows):
        write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
