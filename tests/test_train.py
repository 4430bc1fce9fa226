"""Training and prediction end to end with the tiny preset: checkpoints, logs, resume, geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import predict_real_inputs
from organseg import train as train_module
from organseg.cli import main
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.io import read_image
from organseg.open_model import open_segmenter
from organseg.phantom import write_dataset
from organseg.runs import run_training

SHAPE = (48, 48, 24)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("data") / "phantoms", labeled=3, unlabeled=0, test=1, seed=4, shape=SHAPE
    )


@pytest.fixture(scope="module")
def trained_run(phantoms: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = resolve_config("tiny", overrides=["stage1.epochs=3", "stage2.epochs=3"])
    run_training(discover_dataset(phantoms), run_dir, config)
    return run_dir


def test_training_writes_the_run_folder(trained_run: Path) -> None:
    for name in ("config.json", "labels.json", "splits.json"):
        assert (trained_run / name).is_file()
    for stage in ("stage1", "stage2"):
        for name in ("last.pt", "best.pt", "log.jsonl", "curve.png"):
            assert (trained_run / stage / name).is_file(), (stage, name)
        rows = (trained_run / stage / "log.jsonl").read_text().splitlines()
        assert len(rows) == 3 and '"val_dice"' in rows[-1]


def test_checkpoints_load_with_weights_only_and_carry_config_and_labels(trained_run: Path) -> None:
    content = torch.load(trained_run / "stage2" / "best.pt", weights_only=True)
    assert content["config"]["preset"] == "tiny" and content["config"]["stage2"]["epochs"] == 3
    assert content["labels"]["liver"] == 1 and content["stage"] == "stage2"
    assert content["net"]["num_classes"] == 14


def test_lr_halves_on_schedule(trained_run: Path) -> None:
    rows = [json.loads(line) for line in (trained_run / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == [1e-3, 5e-4, 2.5e-4]  # tiny: halved every epoch


def test_prediction_is_on_the_exact_grid_of_every_real_input(
    trained_run: Path, real_data: Path, tmp_path: Path
) -> None:
    segmenter = open_segmenter(trained_run, device="cpu")
    for image, written in predict_real_inputs(trained_run, real_data, tmp_path):
        assert np.array_equal(written.array, segmenter.predict(image).array)


def test_predict_folder_skips_finished_cases(trained_run: Path, phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions"
    assert main(["predict", str(trained_run), str(phantoms / "imagesTs"), str(out)]) == 0
    written = out / "phantom_t001.nii.gz"
    assert written.is_file()
    stamp = written.stat().st_mtime_ns
    assert main(["predict", str(trained_run), str(phantoms / "imagesTs"), str(out)]) == 0
    assert written.stat().st_mtime_ns == stamp


def test_a_second_training_into_a_trained_run_is_refused(trained_run: Path, phantoms: Path) -> None:
    with pytest.raises(InputError, match="--resume"):
        run_training(discover_dataset(phantoms), trained_run, resolve_config("tiny"))


def test_poly_schedule_falls_smoothly_to_zero(phantoms: Path, tmp_path: Path) -> None:
    config = resolve_config("tiny", overrides=["stage1.epochs=4", "stage1.lr_schedule=poly"])
    run_training(discover_dataset(phantoms), tmp_path / "run", config, stages=("stage1",))
    rows = [json.loads(line) for line in (tmp_path / "run" / "stage1" / "log.jsonl").read_text().splitlines()]
    expected = [1e-3 * (1 - epoch / 4) ** 0.9 for epoch in range(4)]  # the rate each epoch trained with
    assert [row["lr"] for row in rows] == pytest.approx(expected, rel=1e-9)


def test_a_deeply_supervised_run_predicts_like_a_plain_one(phantoms: Path, tmp_path: Path) -> None:
    overrides = ["stage1.epochs=1", "stage2.epochs=1", "stage2.net.deep_supervision=true"]
    run_training(discover_dataset(phantoms), tmp_path / "run", resolve_config("tiny", overrides=overrides))
    content = torch.load(tmp_path / "run" / "stage2" / "last.pt", weights_only=True)
    assert content["net"]["deep_supervision"] is True
    assert any(name.startswith("deep_heads.") for name in content["model"])
    image = read_image(phantoms / "imagesTs" / "phantom_t001_0000.nii.gz")
    labels = open_segmenter(tmp_path / "run", device="cpu").predict(image)
    assert labels.array.shape == image.array.shape


@pytest.mark.parametrize(
    "settings",
    [
        [],
        ["stage1.lr_schedule=poly", "stage1.net.deep_supervision=true"],
        ["precision=fp16"],
        ["workers=2"],
        ["stage1.weight_average=0.9"],
    ],
    ids=["halving", "poly-deep-supervision", "fp16-loss-scaling", "loader-workers", "weight-average"],
)
def test_resumed_training_ends_where_an_uninterrupted_one_does(
    phantoms: Path, tmp_path: Path, monkeypatch, settings: list[str]
) -> None:
    config = resolve_config("tiny", overrides=["stage1.epochs=3", *settings])
    dataset = discover_dataset(phantoms)
    run_training(dataset, tmp_path / "straight", config, stages=("stage1",))

    real_end_epoch = train_module._end_epoch

    def stop_after_first_epoch(run, state, *args, **kwargs):
        row = real_end_epoch(run, state, *args, **kwargs)
        if state.epoch == 1:
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(train_module, "_end_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_training(dataset, tmp_path / "broken", config, stages=("stage1",))
    monkeypatch.setattr(train_module, "_end_epoch", real_end_epoch)
    run_training(dataset, tmp_path / "broken", None, stages=("stage1",))

    straight = torch.load(tmp_path / "straight" / "stage1" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "broken" / "stage1" / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 3
    assert resumed["optimizer"]["param_groups"][0]["lr"] == straight["optimizer"]["param_groups"][0]["lr"]
    for weights in ("model", "trained_model"):  # the average and the trained weights alike
        for name, tensor in straight.get(weights, {}).items():
            assert torch.equal(tensor, resumed[weights][name]), (weights, name)
    assert resumed.get("averaged_steps") == straight.get("averaged_steps")
    assert ("scaler" in straight) == ("precision=fp16" in settings)  # fp16 resumes with its loss scale
    assert resumed.get("scaler") == straight.get("scaler")


def test_train_cli_with_overrides_and_unknown_keys(phantoms: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "cli_run"
    args = ["train", str(phantoms), str(run_dir), "--preset", "tiny", "--set", "stage1.epochs=1", "--stage", "1"]
    assert main(args) == 0
    assert (run_dir / "stage1" / "best.pt").is_file() and not (run_dir / "stage2").exists()
    assert main(["train", str(phantoms), str(tmp_path / "other"), "--preset", "tiny", "--set", "stage1.epoks=1"]) == 2
    assert "unknown setting 'stage1.epoks'" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_stage1_can_learn_the_organs_as_one_foreground_class(phantoms: Path, tmp_path: Path) -> None:
    config = resolve_config("tiny", overrides=["stage1_target=foreground", "stage1.epochs=1", "stage2.epochs=1"])
    run_training(discover_dataset(phantoms), tmp_path / "run", config)
    stage1 = torch.load(tmp_path / "run" / "stage1" / "best.pt", weights_only=True)
    assert stage1["net"]["num_classes"] == 2
    row = json.loads((tmp_path / "run" / "stage1" / "log.jsonl").read_text().splitlines()[-1])
    assert list(row["val_dice_per_organ"]) == ["1"]
    image = read_image(phantoms / "imagesTs" / "phantom_t001_0000.nii.gz")
    labels = open_segmenter(tmp_path / "run", device="cpu").predict(image)
    assert labels.array.shape == image.array.shape and labels.array.max() <= 13
