"""A training run folder, and `run_training`: check, split, prepare, train both stages.

RUN_DIR/
  config.json      the resolved configuration (also inside every checkpoint)
  labels.json      the label map {name: id}
  splits.json      which labeled cases train and which validate
  cache/           prepared cases (see organseg.prepared)
  phantoms/        generated phantoms training beside the cases (organseg.synthetic), if any
  stage1/, stage2/ last.pt, best.pt, log.jsonl, curve.png

Under torchrun every process calls `run_training` with its `World`; rank 0 writes all of
the above (organseg.distributed describes the scheme).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from organseg.atomic import write_json
from organseg.cascade import StageInput, organ_box_from_coarse
from organseg.config import STAGES, Config, load_config, save_config
from organseg.dataset import Case, Dataset
from organseg.dataset_checks import check_dataset
from organseg.device import resolve_device
from organseg.distributed import ALONE, World, process_group
from organseg.errors import InputError
from organseg.labels import LabelSet
from organseg.network_stage import load_stage
from organseg.prepared import PreparedCase, prepare_cases
from organseg.preprocess.crop import Box
from organseg.shards import Shard
from organseg.stage_state import StageRun
from organseg.synthetic import synthetic_cases
from organseg.train import train_stage

log = logging.getLogger(__name__)

Split = dict[str, list[str]]  # {"train": case ids, "validation": case ids}, as in splits.json


@dataclass(frozen=True)
class TrainingInputs:
    """What a run learns from besides its dataset's labeled cases, and what its caller settled."""

    pseudo_cases: tuple[Case, ...] = ()  # image + pseudo-label; they train, never validate
    cache_dir: Path | None = None  # prepared labeled cases shared by several runs (default RUN_DIR/cache)
    split: Split | None = None  # a split the caller chose (self-training: one for every round)
    dataset_checked: bool = False  # the caller checked the dataset already (self-training: once)
    init_from: Path | None = None  # a run folder whose stages' best.pt start this run's networks
    phantoms_dir: Path | None = None  # the run's phantoms (`synthetic.phantoms`; default RUN_DIR/phantoms)


def run_training(
    dataset: Dataset,
    run_dir: Path,
    config: Config | None,
    stages: tuple[str, ...] = STAGES,
    device: str = "auto",
    world: World = ALONE,
    inputs: TrainingInputs = TrainingInputs(),
) -> dict[str, dict]:
    """Train the stages of a run on a dataset's labeled cases; returns each stage's last log row.

    `config` None resumes the run where it stopped, with its saved settings.
    `world`: this process's place under torchrun (`World.from_environment()`); every
    process calls `run_training` alike, and the process group lives as long as the call.
    """
    run_dir = Path(run_dir)
    torch_device = resolve_device(world.device(device))  # a bad --device: the same error in every process
    resume = config is None
    with process_group(world, torch_device):
        config, train_cases, val_cases, phantoms = world.on_main(_set_up, dataset, run_dir, config, stages, inputs)
        if world.is_distributed and not (run_dir / "config.json").is_file():
            raise InputError(
                f"{run_dir}: rank {world.rank} does not see the config.json rank 0 wrote; "
                "across nodes, RUN_DIR must be on a filesystem all of them share"
            )
        cache_dir = Path(inputs.cache_dir) if inputs.cache_dir else run_dir / "cache"
        prepared = _prepare(train_cases + val_cases, cache_dir, config, world)
        train_prepared, val_prepared = prepared[: len(train_cases)], prepared[len(train_cases) :]
        if inputs.pseudo_cases:
            # Pseudo-labels change from round to round: kept apart from the shared cache.
            pseudo_dir = run_dir / "cache_pseudo"
            train_prepared += _prepare(list(inputs.pseudo_cases), pseudo_dir, config, world, pseudo=True)
        if phantoms:
            train_prepared += _prepare(phantoms, cache_dir, config, world, synthetic=True)
        results = {}
        unlearnt = never_annotated(train_prepared, dataset.label_set)
        for stage in stages:
            if stage == "stage2":
                train_prepared = with_inference_boxes(train_prepared, run_dir / "stage1" / "best.pt", torch_device)
            start = Path(inputs.init_from) / stage / "best.pt" if inputs.init_from else None
            run = StageRun(stage, config, dataset.label_set, run_dir / stage, torch_device, world, start, unlearnt)
            results[stage] = train_stage(run, train_prepared, val_prepared, resume)
        return results


def with_inference_boxes(cases: list[PreparedCase], stage1: Path, device: torch.device) -> list[PreparedCase]:
    """The cases, partially labeled ones with the organ box the trained stage 1 finds in them.

    A partial case's own organs may be one adrenal gland: cropping stage 2's samples around
    them alone would show it regions far smaller, and so magnified far more, than the
    region stage 1 gives it at inference. Its box becomes stage 1's, joined with its own.
    """
    if all(case.annotated is None for case in cases) or not stage1.is_file():
        return cases
    predictor, _ = load_stage(stage1, device)
    boxed = []
    for case in cases:
        if case.annotated is None:
            boxed.append(case)
            continue
        image = np.array(case.grid1_image, dtype=np.float32)[None]
        whole = Box.whole(case.scan.shape)
        coarse = predictor(StageInput(image, whole, case.scan.shape))[0].argmax(0).astype(np.uint8)
        found = organ_box_from_coarse(coarse, case.scan.shape) or case.organ_box
        own = case.organ_box if case.organ_box != whole else found
        start = tuple(min(a, b) for a, b in zip(found.start, own.start))
        stop = tuple(max(a, b) for a, b in zip(found.stop, own.stop))
        boxed.append(replace(case, organ_box=Box(start, stop)))
    return boxed


def never_annotated(cases: list[PreparedCase], label_set: LabelSet) -> tuple[int, ...]:
    """The label ids no training case annotates (partial labels): the networks never learn them."""
    annotated = set().union(*(label_set.ids if case.annotated is None else case.annotated for case in cases))
    unlearnt = tuple(label for label in label_set.ids if label not in annotated)
    if unlearnt:
        names = ", ".join(label_set.name(label) for label in unlearnt)
        log.warning("no training case annotates %s: the model will not predict it (organseg.cascade)", names)
    return unlearnt


def _set_up(
    dataset: Dataset, run_dir: Path, config: Config | None, stages: tuple[str, ...], inputs: TrainingInputs
) -> tuple[Config, list[Case], list[Case], list[Case]]:
    """Check the dataset, settle the settings and the split, write them, generate the phantoms: rank 0's decisions.

    Returns the settings and the training, validation and phantom cases.
    """
    if not inputs.dataset_checked:
        report = check_dataset(dataset)  # before anything is written
        if report.problems:
            raise InputError("\n".join(report.problems))
    resume = config is None
    config = _run_config(run_dir, config, stages)
    train_cases, val_cases = _split(run_dir, dataset.labeled, config, resume, inputs.split)
    write_json(run_dir / "labels.json", dataset.label_set.to_json())
    phantoms = synthetic_cases(inputs.phantoms_dir or run_dir / "phantoms", config, dataset.label_set)
    return config, train_cases, val_cases, phantoms


def _prepare(
    cases: list[Case], cache_dir: Path, config: Config, world: World, pseudo: bool = False, synthetic: bool = False
) -> list[PreparedCase]:
    """`prepare_cases`; under several processes each writes its share of the cache, then all read every case."""
    if not world.is_distributed:
        return prepare_cases(cases, cache_dir, config, pseudo, synthetic)
    # Disjoint shares: no two processes ever write the same case's files.
    share = Shard(world.rank, world.world_size).select(cases, key=lambda case: case.case_id)
    prepare_cases(share, cache_dir, config, pseudo, synthetic)
    world.barrier()
    return prepare_cases(cases, cache_dir, config, pseudo, synthetic)


def _run_config(run_dir: Path, config: Config | None, stages: tuple[str, ...]) -> Config:
    """The settings of the run: saved ones when resuming (`config` None) or adding a stage, else `config` (saved)."""
    saved = run_dir / "config.json"
    if config is None:
        if not saved.is_file():
            raise InputError(f"{run_dir}: nothing to resume (no config.json); start a run without --resume")
        return load_config(saved)
    if any((run_dir / stage / "last.pt").is_file() for stage in stages):
        raise InputError(f"{run_dir}: already holds a trained run; use --resume to continue it or choose a new RUN_DIR")
    if any((run_dir / stage / "last.pt").is_file() for stage in STAGES):
        # Adding a stage to a run: both stages must share one configuration.
        if load_config(saved) != config:
            raise InputError(f"{run_dir}: its other stage was trained with other settings ({saved}); use the same")
        return config
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    return config


def _split(
    run_dir: Path, cases: tuple[Case, ...], config: Config, resume: bool, chosen: Split | None
) -> tuple[list[Case], list[Case]]:
    """The run's split: its saved one when resuming, else `chosen` or one drawn by the seed; saved."""
    path = run_dir / "splits.json"
    by_id = {case.case_id: case for case in cases}
    if resume and path.is_file():
        split = json.loads(path.read_text())
    else:
        split = chosen or choose_split(cases, config)
        write_json(path, split)
    missing = [case_id for case_id in split["train"] + split["validation"] if case_id not in by_id]
    if missing:
        raise InputError(f"{path}: cases {missing} of this run are no longer in the dataset; restore them")
    return [by_id[c] for c in split["train"]], [by_id[c] for c in split["validation"]]


def choose_split(cases: tuple[Case, ...], config: Config) -> Split:
    """Hold out `config.validation_cases` fully annotated labeled cases, chosen by the seed.

    Partially labeled cases always train: their Dice would count organs they do not annotate as errors.
    """
    full = [case for case in cases if case.annotated is None]
    order = np.random.default_rng(config.seed).permutation(len(full))
    held_out = config.validation_cases if len(full) > config.validation_cases else 0
    if held_out < config.validation_cases:
        log.warning("only %d fully labeled case(s): training without a validation case", len(full))
    validation = sorted(full[i].case_id for i in order[:held_out])
    train = sorted(case.case_id for case in cases if case.case_id not in validation)
    return {"train": train, "validation": validation}
