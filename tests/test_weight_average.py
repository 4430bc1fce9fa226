"""The weights' moving average: its update rule by hand; a training run that saves and predicts with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.io import read_image
from organseg.open_model import open_segmenter
from organseg.phantom import write_dataset
from organseg.runs import run_training
from organseg.weight_average import average_rate, weight_average


def _scalar_model(value: float) -> torch.nn.Linear:
    model = torch.nn.Linear(1, 1, bias=False)
    _set(model, value)
    return model


def _set(model: torch.nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_the_average_copies_first_then_warms_up_to_its_decay() -> None:
    model = _scalar_model(4.0)
    average = weight_average(model, decay=0.5)
    average.update_parameters(model)  # the first update copies
    assert average.module.weight.item() == 4.0
    _set(model, 0.0)
    average.update_parameters(model)  # rate min(0.5, 2/11)
    assert average.module.weight.item() == pytest.approx(4.0 * 2 / 11)
    # By hand: (1 + n) / (10 + n) is 3/12 at n = 2, 8/17 at 7, and 9/18 = 0.5 at 8.
    assert average_rate(0.5, 2) == pytest.approx(0.25) and average_rate(0.5, 7) == pytest.approx(8 / 17)
    assert average_rate(0.5, 8) == 0.5 and average_rate(0.5, 30) == 0.5
    before = average.module.weight.item()
    for _ in range(9):  # rates 3/12 ... 0.5, the decay reached at 8 updates (9/18)
        average.update_parameters(model)
    expected = before
    for updates in range(2, 11):
        expected *= average_rate(0.5, updates)
    assert average.module.weight.item() == pytest.approx(expected)
    assert average_rate(0.5, 10) == 0.5 and average_rate(0.99, 10) == pytest.approx(11 / 20)


def test_no_decay_means_no_average_and_training_leaves_the_weights_alone() -> None:
    assert weight_average(_scalar_model(1.0), decay=0.0) is None
    model = _scalar_model(1.0)
    average = weight_average(model, decay=0.9)
    average.update_parameters(model)
    _set(model, 3.0)
    average.update_parameters(model)
    assert model.weight.item() == 3.0 and 1.0 < average.module.weight.item() < 3.0


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("data") / "phantoms", labeled=3, unlabeled=0, test=1, seed=4, shape=(48, 48, 24)
    )


def test_a_run_with_an_average_saves_and_predicts_with_it(phantoms: Path, tmp_path: Path) -> None:
    config = resolve_config(
        "tiny",
        overrides=["stage1.epochs=2", "stage2.epochs=2", "stage2.iterations_per_epoch=3", "stage2.weight_average=0.9"],
    )
    run_training(discover_dataset(phantoms), tmp_path / "run", config)
    last = torch.load(tmp_path / "run" / "stage2" / "last.pt", weights_only=True)
    assert last["averaged_steps"] == 6  # one update per step
    names = list(last["model"])
    assert any(not torch.equal(last["model"][n], last["trained_model"][n]) for n in names)
    stage1 = torch.load(tmp_path / "run" / "stage1" / "last.pt", weights_only=True)
    assert "trained_model" not in stage1  # stage 1 has no average
    best = torch.load(tmp_path / "run" / "stage2" / "best.pt", weights_only=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "stage2" / "log.jsonl").read_text().splitlines()]
    assert best["best_metric"] == max(row["val_dice"] for row in rows)
    segmenter = open_segmenter(tmp_path / "run", device="cpu")
    assert torch.equal(segmenter.stage2.model.state_dict()[names[0]].float(), best["model"][names[0]].float())
    image = read_image(phantoms / "imagesTs" / "phantom_t001_0000.nii.gz")
    assert segmenter.predict(image).array.shape == image.array.shape
