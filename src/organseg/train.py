"""Training one stage: the loop, validation, checkpoints, logs and resuming.

Each epoch ends with `last.pt` written atomically (model, optimizer, learning-rate
schedule, epoch, random states, best metric), so a run killed at any moment resumes with
`--resume` losing at most the epoch in progress. `best.pt` is the checkpoint with the
highest validation Dice (or the last one when there is no validation case). One JSON line
per epoch goes to `log.jsonl`; `curve.png` shows loss and validation Dice.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from organseg.atomic import append_line, atomic_write
from organseg.augment import augment
from organseg.checkpoint import load_checkpoint, save_checkpoint
from organseg.config import Config, StageConfig, to_dict
from organseg.device import autocast, use_bf16
from organseg.errors import InputError
from organseg.labels import LabelSet
from organseg.losses import dice_ce_loss, dice_per_class
from organseg.nets.unet3d import UNet3D
from organseg.prepared import PreparedCase
from organseg.report import save_training_curve
from organseg.samples import stage1_sample, stage2_sample

STAGES = ("stage1", "stage2")


@dataclass
class StageState:
    """Everything that changes during training and must survive a restart."""

    model: UNet3D
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    rng: np.random.Generator  # which cases and boxes
    generator: torch.Generator  # augmentation
    epoch: int = 0  # epochs completed
    best_metric: float = -math.inf
    best_epoch: int = -1


@dataclass(frozen=True)
class StageRun:
    """What stays fixed while a stage trains."""

    name: str  # "stage1" or "stage2"
    config: Config
    label_set: LabelSet
    stage_dir: Path
    device: torch.device
    bf16: bool

    @property
    def stage(self) -> StageConfig:
        return getattr(self.config, self.name)

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
    return UNet3D(1, num_classes, stage.net.widths, stage.net.blocks_per_level, stage.net.upsample)


def train_stage(
    name: str,
    train_cases: list[PreparedCase],
    val_cases: list[PreparedCase],
    config: Config,
    label_set: LabelSet,
    stage_dir: Path,
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train stage `name` ('stage1' or 'stage2'); returns the last log row."""
    run = StageRun(name, config, label_set, Path(stage_dir), device, use_bf16(device, config.precision))
    run.stage_dir.mkdir(parents=True, exist_ok=True)
    state = _initial_state(run)
    last = run.stage_dir / "last.pt"
    if resume and last.is_file():
        _restore(state, load_checkpoint(last, device))
        print(f"{name}: resuming after epoch {state.epoch} of {run.stage.epochs}")
    elif last.is_file():
        raise InputError(f"{run.stage_dir}: already holds a trained {name}; use --resume to continue or a new RUN_DIR")
    iterations = run.stage.iterations_per_epoch or math.ceil(len(train_cases) / run.stage.batch_size)
    total = run.stage.epochs * iterations
    row = {"epoch": state.epoch, "best_metric": state.best_metric}
    with tqdm(total=total, initial=state.epoch * iterations, desc=name, unit="it", disable=not progress) as bar:
        while state.epoch < run.stage.epochs:
            started = time.perf_counter()
            losses = [_train_step(run, state, train_cases) for _ in _count(bar, iterations)]
            row = _end_epoch(run, state, losses, val_cases, started)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_dice=_format(row.get("val_dice")))
    return row


def _count(bar: tqdm, iterations: int):
    for index in range(iterations):
        yield index
        bar.update(1)


def _initial_state(run: StageRun) -> StageState:
    seed = run.config.seed + STAGES.index(run.name)
    torch.manual_seed(seed)  # the network's He initialisation
    model = build_model(run.stage, run.num_classes).to(run.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.stage.learning_rate, weight_decay=run.stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=run.stage.lr_halving_epochs, gamma=0.5)
    generator = torch.Generator().manual_seed(seed)
    return StageState(model, optimizer, scheduler, np.random.default_rng(seed), generator)


def _train_step(run: StageRun, state: StageState, cases: list[PreparedCase]) -> float:
    images, targets, weights = [], [], []
    for case in draw_batch(cases, run.stage.batch_size, run.config.ssl.labeled_fraction, state.rng):
        image, labels = _sample(run, case, state.rng)
        pairs = () if run.foreground_only else run.label_set.mirror_pairs()
        image, labels = augment(image, labels, run.config.augment, state.generator, pairs)
        images.append(image)
        targets.append(labels)
        weights.append(case.weight)
    state.model.train()
    with autocast(run.device, run.bf16):
        logits = state.model(torch.stack(images).to(run.device))
    loss = dice_ce_loss(logits, torch.stack(targets).to(run.device), torch.tensor(weights, dtype=torch.float32))
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    return float(loss.detach())


def draw_batch(
    cases: list[PreparedCase], batch_size: int, labeled_fraction: float, rng: np.random.Generator
) -> list[PreparedCase]:
    """The cases of one mini-batch.

    Without pseudo-labelled cases (or with `labeled_fraction` 0), uniformly from all. With
    them, floor(f * B) samples come from labelled cases and one more with probability
    frac(f * B), so on average exactly a share f of the samples is labelled at any batch
    size, however many pseudo-labelled cases there are (the paper's batches of 4 drew
    uniformly, and its pseudo-labels crowded the labelled cases out).
    """
    labeled = [case for case in cases if not case.pseudo]
    pseudo = [case for case in cases if case.pseudo]
    if not pseudo or not labeled or labeled_fraction == 0:
        chosen = rng.choice(len(cases), size=batch_size, replace=len(cases) < batch_size)
        return [cases[int(index)] for index in chosen]
    expected = labeled_fraction * batch_size
    count = int(expected) + int(rng.random() < expected - int(expected))
    return _pick(labeled, count, rng) + _pick(pseudo, batch_size - count, rng)


def _pick(cases: list[PreparedCase], count: int, rng: np.random.Generator) -> list[PreparedCase]:
    chosen = rng.choice(len(cases), size=count, replace=len(cases) < count)
    return [cases[int(index)] for index in chosen]


def _sample(run: StageRun, case: PreparedCase, rng: np.random.Generator | None):
    """A training (rng given) or validation (rng None) sample of the stage."""
    if run.name == "stage1":
        return stage1_sample(case, run.foreground_only)
    return stage2_sample(case, run.config, rng)


def _end_epoch(run: StageRun, state: StageState, losses: list[float], val_cases: list[PreparedCase], started) -> dict:
    """Step the schedule, validate when due, write checkpoints and the log; returns the log row."""
    state.epoch += 1
    row = {"epoch": state.epoch, "loss": float(np.mean(losses)), "lr": state.optimizer.param_groups[0]["lr"]}
    state.scheduler.step()
    due = state.epoch % run.stage.val_every == 0 or state.epoch == run.stage.epochs
    if due and val_cases:
        row.update(validate(run, state.model, val_cases))
        if row["val_dice"] > state.best_metric:
            state.best_metric, state.best_epoch = row["val_dice"], state.epoch
            save_checkpoint(run.stage_dir / "best.pt", _content(run, state))
    row["seconds"] = round(time.perf_counter() - started, 3)
    # The log row first: a kill before the checkpoint then repeats this epoch's row on
    # resume, instead of leaving a gap in the log.
    _append_log(run.stage_dir, row)
    save_checkpoint(run.stage_dir / "last.pt", _content(run, state))
    if not val_cases:  # nothing to choose by: the newest model is the best we know
        with atomic_write(run.stage_dir / "best.pt") as temporary:
            shutil.copyfile(run.stage_dir / "last.pt", temporary)
    if due:
        save_training_curve(_read_log(run.stage_dir), run.stage_dir / "curve.png", title=run.name)
    return row


@torch.no_grad()
def validate(run: StageRun, model: UNet3D, cases: list[PreparedCase]) -> dict:
    """Mean Dice on the stage's own grid over the organs present in each validation case."""
    model.eval()
    per_organ: dict[int, list[float]] = {label: [] for label in run.label_ids}
    for case in cases:
        image, labels = _sample(run, case, None)
        with autocast(run.device, run.bf16):
            logits = model(image[None].to(run.device))
        prediction = logits[0].float().argmax(0).cpu().numpy()
        truth = labels.numpy()
        present = [label for label in run.label_ids if (truth == label).any()]
        for label, value in dice_per_class(prediction, truth, present).items():
            per_organ[label].append(value)
    means = {label: float(np.mean(values)) for label, values in per_organ.items() if values}
    return {"val_dice": float(np.mean(list(means.values()))) if means else 0.0, "val_dice_per_organ": means}


def _content(run: StageRun, state: StageState) -> dict:
    return {
        "stage": run.name,
        "epoch": state.epoch,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "model": state.model.state_dict(),
        "net": state.model.init_kwargs,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": {"numpy": state.rng.bit_generator.state, "torch": state.generator.get_state()},
        "config": to_dict(run.config),
        "labels": run.label_set.to_json(),
    }


def _restore(state: StageState, content: dict) -> None:
    state.model.load_state_dict(content["model"])
    state.optimizer.load_state_dict(content["optimizer"])
    state.scheduler.load_state_dict(content["scheduler"])
    state.rng.bit_generator.state = content["rng"]["numpy"]
    state.generator.set_state(content["rng"]["torch"])
    state.epoch = int(content["epoch"])
    state.best_metric = float(content["best_metric"])
    state.best_epoch = int(content["best_epoch"])


def _append_log(stage_dir: Path, row: dict) -> None:
    append_line(stage_dir / "log.jsonl", json.dumps(row))


def _read_log(stage_dir: Path) -> list[dict]:
    return read_log(stage_dir / "log.jsonl")


def read_log(path: Path) -> list[dict]:
    """A training log's rows; a line torn by a kill is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
