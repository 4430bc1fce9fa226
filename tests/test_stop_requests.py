"""Checkpoints on request (SIGUSR1), stops on SIGTERM, `checkpoint_every`, and exact resumes mid-epoch."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from organseg import train as train_module
from organseg import train_step as step_module
from organseg.atomic import read_jsonl
from organseg.cli import EXIT_PREEMPTED, main
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.errors import Preempted
from organseg.phantom import write_dataset
from organseg.runs import run_training

# Two epochs of three steps: a signal at step 2 lands mid-epoch.
SETTINGS = ["stage1.epochs=2", "stage1.iterations_per_epoch=3", "stage1.val_every=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("data") / "phantoms", labeled=3, unlabeled=0, test=0, seed=5, shape=(40, 40, 20)
    )


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory) -> dict:
    """The same training run without interruptions, with and without loader workers."""
    runs = {}
    for workers in (0, 2):
        run_dir = tmp_path_factory.mktemp("straight") / f"workers{workers}"
        run_training(discover_dataset(data), run_dir, _config(workers), stages=("stage1",))
        runs[workers] = _weights(run_dir)
    return runs


def _config(workers: int, *more: str):
    return resolve_config("tiny", overrides=[*SETTINGS, f"workers={workers}", *more])


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "stage1" / "last.pt", weights_only=True)["model"]


def _assert_same(weights: dict, reference: dict) -> None:
    for name, tensor in reference.items():
        assert torch.equal(tensor, weights[name]), name


def _signal_at(monkeypatch, step: int, number: int, copies: list | None = None, folder: Path | None = None) -> None:
    """Send `number` to this process during training step `step` (counted from 1 over the run).

    `copies`: the mid-epoch checkpoints written, copied to `folder` once complete.
    """
    real_step, real_write = step_module._step, train_module._write_mid_epoch
    done = []

    def signalling_step(run, state, batch):
        done.append(1)
        if len(done) == step:
            os.kill(os.getpid(), number)  # delivered before the next bytecode: inside the step, as in real life
        return real_step(run, state, batch)

    def copying_write(run, state, writer):
        real_write(run, state, writer)
        writer.wait()
        if copies is not None:
            copy = folder / f"mid{len(copies)}.pt"
            shutil.copyfile(run.stage_dir / "last.pt", copy)
            copies.append(copy)

    monkeypatch.setattr(step_module, "_step", signalling_step)
    monkeypatch.setattr(train_module, "_write_mid_epoch", copying_write)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "loader-workers"])
def test_sigusr1_writes_a_checkpoint_and_training_goes_on_unchanged(
    data: Path, tmp_path: Path, monkeypatch, straight: dict, workers: int
) -> None:
    copies: list[Path] = []
    _signal_at(monkeypatch, 2, signal.SIGUSR1, copies, tmp_path)
    run_dir = tmp_path / "run"
    run_training(discover_dataset(data), run_dir, _config(workers), stages=("stage1",))

    assert len(copies) == 1
    checkpoint = torch.load(copies[0], weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == (0, 2)  # mid-epoch: no epoch done, two steps
    assert len(checkpoint["epoch_losses"][0]) == 2
    _assert_same(_weights(run_dir), straight[workers])  # the checkpoint did not disturb training

    # A kill right after that checkpoint (the run folder as it was then) resumes exactly.
    monkeypatch.undo()
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.copyfile(copies[0], resumed / "stage1" / "last.pt")
    run_training(discover_dataset(data), resumed, None, stages=("stage1",))
    _assert_same(_weights(resumed), straight[workers])
    assert [row["epoch"] for row in read_jsonl(resumed / "stage1" / "log.jsonl")] == [1, 2]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "loader-workers"])
def test_sigterm_checkpoints_stops_and_the_resumed_run_ends_where_a_straight_one_does(
    data: Path, tmp_path: Path, monkeypatch, straight: dict, workers: int
) -> None:
    _signal_at(monkeypatch, 5, signal.SIGTERM)  # epoch 2, step 2
    run_dir = tmp_path / "run"
    with pytest.raises(Preempted, match=r"SIGTERM after 1 epoch\(s\) and 2 step\(s\).*--resume"):
        run_training(discover_dataset(data), run_dir, _config(workers), stages=("stage1",))
    checkpoint = torch.load(run_dir / "stage1" / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers only while a stage trains

    monkeypatch.undo()
    run_training(discover_dataset(data), run_dir, None, stages=("stage1",))
    _assert_same(_weights(run_dir), straight[workers])


def test_sigterm_at_the_command_line_ends_with_the_status_of_a_terminated_process(
    data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    _signal_at(monkeypatch, 1, signal.SIGTERM)
    args = ["train", str(data), str(tmp_path / "run"), "--preset", "tiny", "--stage", "1", "-q"]
    assert main([*args, *(f"--set={setting}" for setting in SETTINGS)]) == EXIT_PREEMPTED
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("organseg: stage1: stopped on SIGTERM")


def test_checkpoint_every_k_epochs_and_a_kill_repeats_the_epochs_since(data: Path, tmp_path: Path, monkeypatch) -> None:
    config = resolve_config("tiny", overrides=["stage1.epochs=3", "stage1.checkpoint_every=2", "stage1.val_every=1"])
    straight = tmp_path / "straight"
    run_training(discover_dataset(data), straight, config, stages=("stage1",))

    written = []
    real_write = train_module.CheckpointWriter.write

    def recording_write(writer, content, *paths):
        written.append((content["epoch"], sorted(path.name for path in paths)))
        real_write(writer, content, *paths)

    monkeypatch.setattr(train_module.CheckpointWriter, "write", recording_write)
    real_end_epoch = train_module._end_epoch

    def killed_in_epoch_3(run, state, *args, **kwargs):
        if state.epoch == 2:
            raise KeyboardInterrupt
        return real_end_epoch(run, state, *args, **kwargs)

    monkeypatch.setattr(train_module, "_end_epoch", killed_in_epoch_3)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        run_training(discover_dataset(data), broken, config, stages=("stage1",))
    assert [epoch for epoch, paths in written if "last.pt" in paths] == [2]  # not after epoch 1

    monkeypatch.setattr(train_module, "_end_epoch", real_end_epoch)
    run_training(discover_dataset(data), broken, None, stages=("stage1",))
    _assert_same(_weights(broken), _weights(straight))
    assert [row["epoch"] for row in read_jsonl(broken / "stage1" / "log.jsonl")] == [1, 2, 3]
