"""A training run folder, and `run_training`: validate, split, prepare, train both stages.

RUN_DIR/
  config.json      the resolved configuration (also inside every checkpoint)
  labels.json      the label map {name: id}
  splits.json      which labelled cases train and which validate
  cache/           prepared cases (see organseg.prepared)
  stage1/, stage2/ last.pt, best.pt, log.jsonl, curve.png

Under torchrun every process calls `run_training` with its `World`; rank 0 writes all of
the above (organseg.distributed describes the scheme).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from organseg.atomic import atomic_write
from organseg.config import Config, from_dict, save_config
from organseg.dataset import Case, Dataset
from organseg.device import resolve_device
from organseg.distributed import ALONE, World, process_group
from organseg.errors import InputError
from organseg.prepared import PreparedCase, prepare_cases
from organseg.shards import Shard
from organseg.train import STAGES, train_stage
from organseg.validation import validate_dataset


def run_training(
    dataset: Dataset,
    run_dir: Path,
    config: Config | None,
    stages: tuple[str, ...] = STAGES,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    pseudo_cases: list[Case] = (),
    cache_dir: Path | None = None,
    world: World = ALONE,
) -> dict[str, dict]:
    """Train the stages of a run on a dataset's labelled cases; returns each stage's last log row.

    With `resume`, the run's saved configuration is used and `config` must be None.
    `pseudo_cases` (image + pseudo-label) join the training cases, never the validation
    ones; `cache_dir` (default RUN_DIR/cache) lets several runs share prepared cases.
    `world`: this process's place under torchrun (`World.from_environment()`); every
    process calls `run_training` alike, and the process group lives as long as the call.
    """
    run_dir = Path(run_dir)
    torch_device = resolve_device(world.device(device))  # a bad --device: the same error in every process
    with process_group(world, torch_device):
        return _train(dataset, run_dir, config, stages, torch_device, resume, progress, pseudo_cases, cache_dir, world)


def _train(
    dataset: Dataset,
    run_dir: Path,
    config: Config | None,
    stages: tuple[str, ...],
    torch_device,
    resume: bool,
    progress: bool,
    pseudo_cases: list[Case],
    cache_dir: Path | None,
    world: World,
) -> dict[str, dict]:
    progress = progress and world.is_main
    config, train_cases, val_cases = world.on_main(_set_up, dataset, run_dir, config, stages, resume, progress)
    if world.is_distributed and not (run_dir / "config.json").is_file():
        raise InputError(
            f"{run_dir}: rank {world.rank} does not see the config.json rank 0 wrote; "
            "across nodes, RUN_DIR must be on a filesystem all of them share"
        )
    cache_dir = Path(cache_dir) if cache_dir else run_dir / "cache"
    prepared = _prepare(train_cases + val_cases, cache_dir, config, progress, world)
    train_prepared, val_prepared = prepared[: len(train_cases)], prepared[len(train_cases) :]
    if pseudo_cases:
        # Pseudo-labels change from round to round: kept apart from the shared cache.
        train_prepared += _prepare(list(pseudo_cases), run_dir / "cache_pseudo", config, progress, world, pseudo=True)
    results = {}
    for stage in stages:
        results[stage] = train_stage(
            stage,
            train_prepared,
            val_prepared,
            config,
            dataset.label_set,
            run_dir / stage,
            torch_device,
            resume,
            progress,
            world,
        )
    return results


def _set_up(
    dataset: Dataset, run_dir: Path, config: Config | None, stages: tuple[str, ...], resume: bool, progress: bool
) -> tuple[Config, list[Case], list[Case]]:
    """Validate the dataset, settle the settings and the split, write them: rank 0's decisions."""
    report = validate_dataset(dataset, progress=progress)  # before anything is written
    if report.problems:
        raise InputError("\n".join(report.problems))
    config = _run_config(run_dir, config, resume, stages)
    train_cases, val_cases = _split(run_dir, dataset.labeled, config, resume)
    _write_json(run_dir / "labels.json", dataset.label_set.to_json())
    return config, train_cases, val_cases


def _prepare(
    cases: list[Case], cache_dir: Path, config: Config, progress: bool, world: World, pseudo: bool = False
) -> list[PreparedCase]:
    """`prepare_cases`; under several processes each writes its share of the cache, then all read every case."""
    if not world.is_distributed:
        return prepare_cases(cases, cache_dir, config, progress, pseudo)
    # Disjoint shares: no two processes ever write the same case's files.
    share = Shard(world.rank, world.world_size).select(cases, key=lambda case: case.case_id)
    prepare_cases(share, cache_dir, config, progress, pseudo)
    world.barrier()
    return prepare_cases(cases, cache_dir, config, progress=False, pseudo=pseudo)


def _run_config(run_dir: Path, config: Config | None, resume: bool, stages: tuple[str, ...]) -> Config:
    """The settings of the run: saved ones when resuming or adding a stage, else `config` (then saved)."""
    saved = run_dir / "config.json"
    if resume:
        if config is not None:
            raise InputError(
                f"{run_dir}: a resumed run keeps its own settings (config.json); drop --preset/--set/--config"
            )
        if not saved.is_file():
            raise InputError(f"{run_dir}: nothing to resume (no config.json); start a run without --resume")
        return from_dict(json.loads(saved.read_text()), base=Config(), source=str(saved))
    if config is None:
        raise ValueError("run_training needs a config unless resuming")
    if any((run_dir / stage / "last.pt").is_file() for stage in stages):
        raise InputError(f"{run_dir}: already holds a trained run; use --resume to continue it or choose a new RUN_DIR")
    if any((run_dir / stage / "last.pt").is_file() for stage in STAGES):
        # Adding a stage to a run: both stages must share one configuration.
        previous = from_dict(json.loads(saved.read_text()), base=Config(), source=str(saved))
        if previous != config:
            raise InputError(f"{run_dir}: its other stage was trained with other settings ({saved}); use the same")
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    return config


def _split(run_dir: Path, cases: tuple[Case, ...], config: Config, resume: bool) -> tuple[list[Case], list[Case]]:
    """Hold out `config.validation_cases` labelled cases, chosen by the seed (the same on resume)."""
    path = run_dir / "splits.json"
    by_id = {case.case_id: case for case in cases}
    if resume and path.is_file():
        splits = json.loads(path.read_text())
        missing = [case_id for case_id in splits["train"] + splits["validation"] if case_id not in by_id]
        if missing:
            raise InputError(f"{path}: cases {missing} of this run are no longer in the dataset; restore them")
        return [by_id[c] for c in splits["train"]], [by_id[c] for c in splits["validation"]]
    order = np.random.default_rng(config.seed).permutation(len(cases))
    held_out = config.validation_cases if len(cases) > config.validation_cases else 0
    if held_out < config.validation_cases:
        print(f"only {len(cases)} labelled case(s): training without a validation case", file=sys.stderr)
    validation = sorted(cases[i].case_id for i in order[:held_out])
    train = sorted(case.case_id for case in cases if case.case_id not in validation)
    _write_json(path, {"train": train, "validation": validation})
    return [by_id[c] for c in train], [by_id[c] for c in validation]


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")
