"""Training batches: drawn in the training process, made in loader worker processes.

A step's batch is fixed by random draws: which cases (`draw_batch`), each stage-2 box's
margins and shift, each sample's augmentation. They come from the stage's two random
streams in the order one process has always drawn them, a whole epoch at a time, so the
streams' state in a checkpoint resumes training exactly, with or without workers.

Making the samples from the draws (cutting a region from a full-resolution case,
resampling image and labels, warping them) is the expensive part, and needs no
randomness of its own. With `workers` > 0 it runs in that many DataLoader worker
processes, in step order, while the network trains on the batches already made; with 0
in the training process itself. Either way the batches are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import threadpoolctl
import torch

from organseg.augment import AugmentParams, apply_params, draw_params, mirrored_ids, strong_augment
from organseg.config import AugmentConfig, Config
from organseg.cores import available_cores
from organseg.labels import LabelSet
from organseg.prepared import PreparedCase
from organseg.samples import draw_train_box, stage1_sample, stage2_sample

# Batches each worker makes ahead of the one the network trains on.
PREFETCH_PER_WORKER = 2
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class SampleDraw:
    """The random choices that make one training sample."""

    case: int  # index into the training cases
    box: tuple[np.ndarray, np.ndarray] | None  # stage 2: the box's margins (2, 3) and shift (3,) in mm
    augment: AugmentConfig
    params: AugmentParams | None  # None: augmentation off


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (B, 1, G...) float32
    targets: torch.Tensor  # (B, G...) int64
    weights: torch.Tensor  # (B,) float32, each sample's loss weight
    unannotated: torch.Tensor | None  # (B, C) bool: classes a sample's labels do not annotate; None if none


@dataclass(frozen=True)
class Sampler:
    """The training samples of one stage from its cases."""

    stage: str  # "stage1" or "stage2"
    config: Config
    label_set: LabelSet
    foreground: bool  # stage 1 segmenting all organs as one class
    cases: list[PreparedCase]

    @property
    def num_classes(self) -> int:
        return 2 if self.foreground else self.label_set.num_classes

    @property
    def mirror_pairs(self):
        return () if self.foreground else self.label_set.mirror_pairs()

    def draw_step(self, batch_size: int, rng: np.random.Generator, generator: torch.Generator) -> list[SampleDraw]:
        """One step's draws: the cases first, then each sample's box and augmentation, in one process's order."""
        draws = []
        shares = (self.config.ssl.labeled_fraction, self.config.synthetic.share)
        for index in _draw_indices(self.cases, batch_size, shares, rng):
            box = draw_train_box(self.config, rng) if self.stage == "stage2" else None
            settings = augment_settings(self.config, self.cases[index])
            params = draw_params(settings, generator) if settings.enabled else None
            draws.append(SampleDraw(index, box, settings, params))
        return draws

    def make_batch(self, draws: list[SampleDraw]) -> Batch:
        """The batch of `draws`, made with one BLAS thread, as a loader worker makes it.

        On some CPUs a float32 matrix product (resampling's) sums in an order that depends
        on how many threads share it (seen: an AMD EPYC of family 26, 1e-6 apart), and a
        batch must not depend on which process made it.
        """
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            return self._make_batch(draws)

    def _make_batch(self, draws: list[SampleDraw]) -> Batch:
        images, targets, weights, unannotated = [], [], [], []
        for draw in draws:
            case = self.cases[draw.case]
            image, labels = self.sample(case, draw.box)
            params = draw.params or AugmentParams()
            if draw.params is not None:
                image, labels = apply_params(image, labels, params, self.mirror_pairs, draw.augment.image_fill)
            images.append(image)
            targets.append(labels)
            weights.append(case.weight)
            unannotated.append(self._unannotated(case, params))
        return Batch(
            torch.stack(images),
            torch.stack(targets),
            torch.tensor(weights, dtype=torch.float32),
            torch.stack(unannotated) if any(row.any() for row in unannotated) else None,
        )

    def sample(self, case: PreparedCase, box: tuple[np.ndarray, np.ndarray] | None = None):
        """(image, labels) of a case: stage 2's region with a drawn box, or as at inference when None."""
        if self.stage == "stage1":
            return stage1_sample(case, self.foreground)
        return stage2_sample(case, self.config, box)

    def _unannotated(self, case: PreparedCase, params: AugmentParams) -> torch.Tensor:
        """(C,) bool: the classes a sample's labels do not annotate (see organseg.losses), after its mirroring."""
        row = torch.zeros(self.num_classes, dtype=torch.bool)
        if case.annotated is None:
            return row
        if self.foreground:  # "organ" is unknown wherever an unannotated organ may lie
            row[1] = set(self.label_set.ids) != set(case.annotated)
            return row
        missing = tuple(sorted(set(self.label_set.ids) - set(case.annotated)))
        row[list(mirrored_ids(missing, params, self.mirror_pairs))] = True
        return row


def epoch_batches(sampler: Sampler, steps: list[list[SampleDraw]], workers: int) -> Iterator[Batch]:
    """The batches of an epoch's draws, in order; made by `workers` processes (0: here)."""
    if workers == 0:
        yield from (sampler.make_batch(draws) for draws in steps)
        return
    loader = torch.utils.data.DataLoader(
        _EpochSteps(sampler, steps),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=PREFETCH_PER_WORKER,
        worker_init_fn=_one_thread,
        multiprocessing_context="fork",  # the cases' memory maps are shared, not pickled
        collate_fn=_as_made,
    )
    yield from loader


def loader_workers(setting: int, device: torch.device, processes_per_node: int = 1) -> int:
    """Workers per training process: `setting`, or for -1 what the machine offers.

    Auto: none on a CPU device, whose cores the network's own threads already use; on a
    GPU the cores this process owns (its share of the node) but one, at most MAX_AUTO_WORKERS.
    """
    if setting >= 0:
        return setting
    if device.type == "cpu":
        return 0
    return max(0, min(MAX_AUTO_WORKERS, available_cores() // max(1, processes_per_node) - 1))


def augment_settings(config: Config, case: PreparedCase) -> AugmentConfig:
    """A sample's augmentation: strong for pseudo-labeled cases when `ssl.strong_augment`, else `augment`."""
    if case.pseudo and config.ssl.strong_augment:
        return strong_augment(config.augment)
    return config.augment


def draw_batch(
    cases: list[PreparedCase],
    batch_size: int,
    labeled_fraction: float,
    rng: np.random.Generator,
    synthetic_share: float = 0.0,
) -> list[PreparedCase]:
    """The cases of one mini-batch.

    Phantoms (organseg.synthetic) beside real cases: a share `synthetic_share` of the
    samples comes from the phantoms, the rest from the real cases by the rule below.
    Among the real cases, those fully labeled by a person form one pool; pseudo-labeled and
    partially labeled cases the other. Without the second (or with `labeled_fraction` 0),
    uniformly from all. With it, a share `labeled_fraction` comes from the fully labeled.

    A share f of B samples is floor(f * B) samples and one more with probability
    frac(f * B), so on average exactly f at any batch size, however many cases each pool
    has (the paper's batches of 4 drew uniformly, and its pseudo-labels crowded the labeled
    cases out; partial labels or many phantoms would crowd them out the same way).
    """
    indices = _draw_indices(cases, batch_size, (labeled_fraction, synthetic_share), rng)
    return [cases[index] for index in indices]


def _draw_indices(
    cases: list[PreparedCase], batch_size: int, shares: tuple[float, float], rng: np.random.Generator
) -> list[int]:
    """`draw_batch` as indices into `cases`; `shares`: (labeled_fraction, synthetic_share)."""
    labeled_fraction, synthetic_share = shares
    synthetic = [i for i, case in enumerate(cases) if case.synthetic]
    if synthetic and len(synthetic) < len(cases):
        real = [i for i, case in enumerate(cases) if not case.synthetic]
        count = _share_of(synthetic_share, batch_size, rng)
        chosen = _draw_indices([cases[i] for i in real], batch_size - count, (labeled_fraction, 0.0), rng)
        return _pick(synthetic, count, rng) + [real[i] for i in chosen]
    labeled = [i for i, case in enumerate(cases) if not case.pseudo and case.annotated is None]
    pseudo = [i for i, case in enumerate(cases) if case.pseudo or case.annotated is not None]
    if not pseudo or not labeled or labeled_fraction == 0:
        return _pick(list(range(len(cases))), batch_size, rng)
    count = _share_of(labeled_fraction, batch_size, rng)
    return _pick(labeled, count, rng) + _pick(pseudo, batch_size - count, rng)


def _share_of(share: float, batch_size: int, rng: np.random.Generator) -> int:
    """floor(share * B), plus one with probability frac(share * B)."""
    expected = share * batch_size
    return int(expected) + int(rng.random() < expected - int(expected))


def _pick(indices: list[int], count: int, rng: np.random.Generator) -> list[int]:
    chosen = rng.choice(len(indices), size=count, replace=len(indices) < count)
    return [indices[int(position)] for position in chosen]


class _EpochSteps(torch.utils.data.Dataset):
    """An epoch's steps as a dataset: item i is step i's batch."""

    def __init__(self, sampler: Sampler, steps: list[list[SampleDraw]]):
        self.sampler = sampler
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> Batch:
        return self.sampler.make_batch(self.steps[index])


def _as_made(batch: Batch) -> Batch:
    return batch


def _one_thread(_worker_id: int) -> None:
    # Workers run side by side: one thread each, or they fight over the cores (BLAS threads
    # too, which resampling uses: with them 2 workers on 2 cores made half the samples).
    torch.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)
