"""One stage's training: what stays fixed (StageRun) and what changes and must survive a restart (StageState)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from organseg.batches import Sampler
from organseg.config import STAGES, Config, StageConfig
from organseg.device import resolve_precision, training_memory_format
from organseg.distributed import ALONE, World
from organseg.labels import LabelSet
from organseg.nets.unet3d import UNet3D
from organseg.prepared import PreparedCase
from organseg.weight_average import weight_average


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
    step: int = 0  # steps done in the epoch in progress
    losses: list[torch.Tensor] = field(default_factory=list)  # theirs, left on the device
    epoch_streams: dict | None = None  # the random streams at the start of the epoch in progress
    micro_batches: int = 1  # pieces each batch is cut into: the setting, raised when a step runs out of memory
    average: AveragedModel | None = None  # the weights' moving average (stageN.weight_average > 0)

    @property
    def predicting_model(self) -> torch.nn.Module:
        """The network that validates and is saved as the model: the average when there is one."""
        return self.model if self.average is None else self.average.module


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
    model = UNet3D(1, num_classes, net.widths, net.blocks_per_level, net.upsample, net.deep_supervision)
    model.recompute_top_level = stage.activation_checkpointing
    return model


def initial_state(run: StageRun) -> StageState:
    """A stage's state before its first step: He-initialised weights, a fresh optimiser and schedule, seeded streams."""
    seed = run.config.seed + STAGES.index(run.name)
    torch.manual_seed(seed)  # the network's He initialisation: the same in every process
    model = build_model(run.stage, run.num_classes).to(run.device, memory_format=training_memory_format(run.device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.stage.learning_rate, weight_decay=run.stage.weight_decay)
    scheduler = build_scheduler(optimizer, run.stage)
    stream = stream_seed(seed, run.world.rank)
    generator = torch.Generator().manual_seed(stream)
    scaler = torch.amp.GradScaler(run.device.type) if run.precision == "fp16" else None
    rng = np.random.default_rng(stream)
    return StageState(
        model,
        optimizer,
        scheduler,
        rng,
        generator,
        scaler=scaler,
        micro_batches=run.stage.micro_batches,
        average=weight_average(model, run.stage.weight_average),
    )


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
