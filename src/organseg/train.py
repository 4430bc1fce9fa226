"""Training one stage: the loop, validation, checkpoints, logs and resuming.

Each epoch ends with `last.pt` written atomically (model, optimizer, learning-rate
schedule, epoch, random states, best metric), so a run killed at any moment resumes with
`--resume` losing at most the epoch in progress. `best.pt` is the checkpoint with the
highest validation Dice (or the last one when there is no validation case). One JSON line
per epoch goes to `log.jsonl`; `curve.png` shows loss and validation Dice.

Under several processes (torchrun; see organseg.distributed for the whole scheme) the
model is wrapped in DistributedDataParallel, every process draws its own samples, rank 0
alone validates and writes, and `last.pt` holds every process's random state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from organseg.atomic import append_line, atomic_write, read_jsonl
from organseg.batches import Batch, Sampler, epoch_batches, loader_workers
from organseg.checkpoint import load_checkpoint, save_checkpoint
from organseg.config import STAGES, Config, StageConfig, to_dict
from organseg.device import autocast, describe_precision, resolve_precision, training_memory_format
from organseg.distributed import ALONE, World
from organseg.errors import InputError
from organseg.labels import LabelSet
from organseg.losses import deep_supervision_loss
from organseg.metrics import dice_per_class
from organseg.nets.unet3d import UNet3D
from organseg.pictures import save_training_curve
from organseg.prepared import PreparedCase
from organseg.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class StageState:
    """Everything that changes during training and must survive a restart."""

    model: UNet3D
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator  # which cases and boxes
    generator: torch.Generator  # augmentation
    epoch: int = 0  # epochs completed
    best_metric: float = -math.inf
    best_epoch: int = -1
    replica: torch.nn.Module | None = None  # the model in DistributedDataParallel, under several processes
    # fp16 only: the loss scale that keeps small gradients from vanishing (bf16 and fp32 need none).
    scaler: torch.amp.GradScaler | None = None


@dataclass(frozen=True)
class StageRun:
    """What stays fixed while a stage trains."""

    name: str  # "stage1" or "stage2"
    config: Config
    label_set: LabelSet
    stage_dir: Path
    device: torch.device
    world: World = ALONE
    init_from: Path | None = None  # a checkpoint whose weights start the network (a student's teacher)
    unlearnt: tuple[int, ...] = ()  # label ids no training case annotates; inference merges them into background

    @property
    def stage(self) -> StageConfig:
        return getattr(self.config, self.name)

    @property
    def precision(self) -> str:
        """The precision on this run's device: bf16, fp16 or fp32 (organseg.device.resolve_precision)."""
        return resolve_precision(self.device, self.config.precision)

    def sampler(self, cases: list[PreparedCase]) -> Sampler:
        """This stage's samples of `cases`."""
        return Sampler(self.name, self.config, self.label_set, self.foreground_only, cases)

    @property
    def foreground_only(self) -> bool:
        """Stage 1 set to segment all organs as one class."""
        return self.name == "stage1" and self.config.stage1_target == "foreground"

    @property
    def label_ids(self) -> tuple[int, ...]:
        """The classes this stage's network segments (besides background)."""
        return (1,) if self.foreground_only else self.label_set.ids

    @property
    def num_classes(self) -> int:
        return 2 if self.foreground_only else self.label_set.num_classes


def build_model(stage: StageConfig, num_classes: int) -> UNet3D:
    net = stage.net
    return UNet3D(1, num_classes, net.widths, net.blocks_per_level, net.upsample, net.deep_supervision)


def train_stage(run: StageRun, train_cases: list[PreparedCase], val_cases: list[PreparedCase], resume: bool) -> dict:
    """Train one stage; returns the last log row. `resume` continues from its last.pt.

    Under torchrun every process calls `train_stage` alike, with its own `run.world`, whose
    process group must be up (organseg.distributed.process_group).
    """
    run.stage_dir.mkdir(parents=True, exist_ok=True)
    state = _initial_state(run)
    last = run.stage_dir / "last.pt"
    world = run.world
    if resume and last.is_file():
        _restore(run, state, load_checkpoint(last, run.device))
        log.info("%s: resuming after epoch %d of %d", run.name, state.epoch, run.stage.epochs)
    elif last.is_file():
        raise InputError(
            f"{run.stage_dir}: already holds a trained {run.name}; use --resume to continue or a new RUN_DIR"
        )
    elif run.init_from is not None:
        warm_start(state.model, run.init_from, run.device)
        log.info("%s: starting from the weights of %s", run.name, run.init_from)
    world.barrier()  # every process has looked at last.pt before rank 0 writes the next one
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
    with progress_bar(total=total, initial=state.epoch * iterations, desc=run.name, unit="it") as bar:
        while state.epoch < run.stage.epochs:
            started = time.perf_counter()
            # The epoch's draws first, in one process's order; the batches are made from them (by workers).
            steps = [sampler.draw_step(run.stage.batch_size, state.rng, state.generator) for _ in range(iterations)]
            batches = epoch_batches(sampler, steps, workers)
            # Losses stay on the device until the epoch ends: reading one back would wait for its step.
            losses = torch.stack([_train_step(run, state, batch) for batch in _count(bar, batches)])
            row = _end_epoch(run, state, losses, val_cases, started)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_dice=_format(row.get("val_dice")))
    world.assert_replicas_agree(state.model)
    return row


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


def _initial_state(run: StageRun) -> StageState:
    seed = run.config.seed + STAGES.index(run.name)
    torch.manual_seed(seed)  # the network's He initialisation: the same in every process
    model = build_model(run.stage, run.num_classes).to(run.device, memory_format=training_memory_format(run.device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.stage.learning_rate, weight_decay=run.stage.weight_decay)
    scheduler = build_scheduler(optimizer, run.stage)
    stream = stream_seed(seed, run.world.rank)
    generator = torch.Generator().manual_seed(stream)
    scaler = torch.amp.GradScaler(run.device.type) if run.precision == "fp16" else None
    return StageState(model, optimizer, scheduler, np.random.default_rng(stream), generator, scaler=scaler)


POLY_EXPONENT = 0.9


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The stage's learning-rate schedule, stepped once per epoch (see StageConfig.lr_schedule)."""
    if stage.lr_schedule == "poly":
        # A short budget gains most from ending at a small rate: the last epochs refine
        # instead of jumping around the minimum.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: max(0.0, 1 - epoch / stage.epochs) ** POLY_EXPONENT
        )
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=stage.lr_halving_epochs, gamma=0.5)


def stream_seed(seed: int, rank: int) -> int:
    """The seed of a process's random stream (samples, augmentation): `seed` itself for rank 0.

    So one process draws exactly as always, and every other process its own samples.
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _train_step(run: StageRun, state: StageState, batch: Batch) -> torch.Tensor:
    """One optimiser step on `batch`; its loss, left on the device."""
    state.model.train()
    network = state.model if state.replica is None else state.replica  # the replica averages gradients
    with autocast(run.device, run.precision):
        images = batch.images.to(run.device, memory_format=training_memory_format(run.device))
        logits = network(images)
    targets = batch.targets.to(run.device)
    loss = deep_supervision_loss(logits, targets, batch.weights, run.config.class_balance, batch.unannotated)
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is None:
        loss.backward()
        state.optimizer.step()
    else:
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)  # skipped when a gradient overflowed; the scale then falls
        state.scaler.update()
    return loss.detach()


def _end_epoch(run: StageRun, state: StageState, losses: list[float], val_cases: list[PreparedCase], started) -> dict:
    """Step the schedule, validate when due, write checkpoints and the log; returns the log row (rank 0's)."""
    state.epoch += 1
    loss = run.world.mean(float(losses.float().mean()))
    row = {"epoch": state.epoch, "loss": loss, "lr": state.optimizer.param_groups[0]["lr"]}
    state.scheduler.step()
    streams = run.world.gather(_random_state(state))  # every process's, for an exact resume
    if run.world.is_main:
        _validate_and_write(run, state, row, val_cases, started, streams)
    # After rank 0's writes: no process leaves the epoch before its checkpoint is complete.
    return run.world.broadcast(row)


def _validate_and_write(
    run: StageRun, state: StageState, row: dict, val_cases: list[PreparedCase], started, streams: list[dict]
) -> None:
    """Rank 0's part of an epoch's end: validation when due, best.pt, the log row, last.pt, the curve."""
    due = state.epoch % run.stage.val_every == 0 or state.epoch == run.stage.epochs
    if due and val_cases:
        row.update(validate(run, state.model, val_cases))
        if row["val_dice"] > state.best_metric:
            state.best_metric, state.best_epoch = row["val_dice"], state.epoch
            save_checkpoint(run.stage_dir / "best.pt", _content(run, state, streams))
    row["seconds"] = round(time.perf_counter() - started, 3)
    # The log row first: a kill before the checkpoint then repeats this epoch's row on
    # resume, instead of leaving a gap in the log.
    _append_log(run.stage_dir, row)
    save_checkpoint(run.stage_dir / "last.pt", _content(run, state, streams))
    if not val_cases:  # nothing to choose by: the newest model is the best we know
        with atomic_write(run.stage_dir / "best.pt") as temporary:
            shutil.copyfile(run.stage_dir / "last.pt", temporary)
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
    """A checkpoint's content; `streams`: the random state of every process, by rank."""
    content = {
        "stage": run.name,
        "epoch": state.epoch,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "model": state.model.state_dict(),
        "net": state.model.init_kwargs,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": _random_state(state),
        "config": to_dict(run.config),
        "labels": run.label_set.to_json(),
        "label_codes": run.label_set.codes_to_json(),
        "unlearnt": list(run.unlearnt),
    }
    if state.scaler is not None:
        content["scaler"] = state.scaler.state_dict()
    if len(streams) > 1:
        content["rng_ranks"] = streams
    return content


def _random_state(state: StageState) -> dict:
    return {"numpy": state.rng.bit_generator.state, "torch": state.generator.get_state()}


def _restore(run: StageRun, state: StageState, content: dict) -> None:
    """Load a checkpoint into `state`; each process takes its own random state when the checkpoint has it."""
    state.model.load_state_dict(content["model"])
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
    state.best_metric = float(content["best_metric"])
    state.best_epoch = int(content["best_epoch"])


def _append_log(stage_dir: Path, row: dict) -> None:
    append_line(stage_dir / "log.jsonl", json.dumps(row))


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
