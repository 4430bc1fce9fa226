"""Training batches made in loader workers are the batches one process makes.

The draws (cases, boxes, augmentations) come from the stage's random streams in the
training process; workers only make samples from them. So any number of workers gives
the same batches, and a run trained with workers ends bit-identical to one without.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from organseg import batches as batches_module
from organseg.batches import Sampler, epoch_batches, loader_workers
from organseg.config import PAPER_WIDTHS, resolve_config
from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.labels import FLARE22
from organseg.phantom import write_dataset
from organseg.prepared import prepare_cases
from organseg.runs import run_training


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batches") / "phantoms"
    return write_dataset(root, labeled=3, unlabeled=0, test=0, seed=8, shape=(40, 40, 24))


def _steps(sampler: Sampler, count: int, seed: int):
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    return [sampler.draw_step(2, rng, generator) for _ in range(count)], rng, generator


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_workers_make_the_batches_one_process_makes(data: Path, tmp_path: Path, stage: str) -> None:
    config = resolve_config("tiny", overrides=["augment.rotation_p=0.5", "augment.elastic_p=0.5"])
    cases = prepare_cases(discover_dataset(data).labeled, tmp_path / "cache", config)
    sampler = Sampler(stage, config, FLARE22, False, cases)
    steps, _, _ = _steps(sampler, 5, seed=3)
    alone = list(epoch_batches(sampler, steps, workers=0))
    for workers in (1, 2):
        made = list(epoch_batches(sampler, steps, workers=workers))
        assert len(made) == len(alone) == 5
        for one, other in zip(alone, made):
            assert torch.equal(one.images, other.images) and torch.equal(one.targets, other.targets)
            assert torch.equal(one.weights, other.weights) and one.unannotated is other.unannotated is None
    # The steps differ from each other: the draws really vary the samples.
    assert not torch.equal(alone[0].images, alone[1].images)


def test_draws_leave_the_streams_where_drawing_step_by_step_does(data: Path, tmp_path: Path) -> None:
    config = resolve_config("tiny")
    cases = prepare_cases(discover_dataset(data).labeled, tmp_path / "cache", config)
    sampler = Sampler("stage2", config, FLARE22, False, cases)
    _, rng, generator = _steps(sampler, 4, seed=5)
    rng_again, generator_again = np.random.default_rng(5), torch.Generator().manual_seed(5)
    for _ in range(4):
        sampler.draw_step(2, rng_again, generator_again)
    assert rng.random() == rng_again.random()
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=generator_again))


def test_a_run_trained_with_workers_ends_where_one_without_does(data: Path, tmp_path: Path) -> None:
    weights = {}
    for workers in (0, 2):
        overrides = ["stage1.epochs=1", "stage2.epochs=2", f"workers={workers}"]
        run_dir = tmp_path / f"workers{workers}"
        run_training(discover_dataset(data), run_dir, resolve_config("tiny", overrides=overrides), device="cpu")
        weights[workers] = torch.load(run_dir / "stage2" / "last.pt", weights_only=True)["model"]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[2][name]), name


def test_auto_workers_follow_the_device_and_the_cores_a_process_owns(monkeypatch) -> None:
    monkeypatch.setattr(batches_module, "available_cores", lambda: 32)
    assert loader_workers(-1, torch.device("cpu")) == 0  # the network's threads use the CPU's cores
    assert loader_workers(-1, torch.device("cuda", 0)) == batches_module.MAX_AUTO_WORKERS
    assert loader_workers(-1, torch.device("cuda", 0), processes_per_node=8) == 3  # 4 cores each, one trains
    assert loader_workers(3, torch.device("cpu")) == 3
    with pytest.raises(InputError, match="workers must be -1"):
        resolve_config("tiny", overrides=["workers=-2"])


def test_the_paper_preset_trains_a_few_steps_per_stage_with_workers(data: Path, tmp_path: Path) -> None:
    """The paper's networks (41M parameters each), batch, schedule and augmentation, on a 64x32x32 grid.

    The grid is the one change, from 160^3, so that the steps take seconds on 2 cores.
    """
    small = ["grid=[64, 32, 32]", "epochs=1", "iterations_per_epoch=2", "micro_batches=2"]
    overrides = [f"{stage}.{setting}" for stage in ("stage1", "stage2") for setting in small]
    config = resolve_config("paper", overrides=[*overrides, "validation_cases=1", "workers=2"])
    rows = run_training(discover_dataset(data), tmp_path / "run", config)
    for stage in ("stage1", "stage2"):
        checkpoint = torch.load(tmp_path / "run" / stage / "last.pt", weights_only=True)
        assert tuple(checkpoint["net"]["widths"]) == PAPER_WIDTHS
        assert (checkpoint["epoch"], checkpoint["config"][stage]["batch_size"]) == (1, 4)
        assert np.isfinite(rows[stage]["loss"])
