"""Scale-out: torchrun data-parallel training, and pseudo-labeling and prediction split into shards.

The multi-process tests launch the real command line under torchrun (gloo on CPU), one
torch thread per process, with the tiny preset.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from organseg import cores
from organseg import pseudolabel as pseudolabel_module
from organseg.checkpoint import load_checkpoint
from organseg.cli import main
from organseg.distributed import World
from organseg.errors import InputError
from organseg.phantom import write_dataset
from organseg.predict import run_prediction
from organseg.pseudolabel import read_scores, run_pseudo_labeling, scores_files
from organseg.shards import WHOLE, Shard, worker_shard
from organseg.stage_state import stream_seed

SHAPE = (48, 48, 24)
UNLABELED = [f"phantom_u{i:03d}" for i in range(1, 6)]
# Stage 1 of the tiny preset, 2 steps per epoch; stage 2 barely trained (the teacher of the shard tests).
# In float32: the bit-identical comparisons are of the resume, not of bf16 kernels, and every CPU has float32.
TRAIN = ["--preset", "tiny", "--set", "stage1.iterations_per_epoch=2", "--set", "stage2.epochs=1"]
TRAIN += ["--set", "precision=fp32"]


def one_thread_env() -> dict[str, str]:
    """One torch thread per process: the machine has few cores and no result depends on it."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args, processes: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N ...` as a user runs it (a free port of its own)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=one_thread_env())


def organseg(*args) -> subprocess.Popen:
    command = [sys.executable, "-m", "organseg", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread_env())


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # here and in every subprocess (one_thread_env)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "phantoms"
    return write_dataset(root, labeled=3, unlabeled=len(UNLABELED), test=0, seed=4, shape=SHAPE)


@pytest.fixture(scope="module")
def straight(phantoms: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Both stages trained by two processes without a stop: stage 1 for 4 epochs."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = torchrun("-m", "organseg", "train", phantoms, run_dir, *TRAIN, "--set", "stage1.epochs=4")
    assert result.returncode == 0, result.stderr
    return run_dir, result


# --- the world of processes, and shards ----------------------------------------------------------


def test_one_process_without_torchrun_variables() -> None:
    assert World.from_environment({}) == World()
    world = World.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.world_size, world.local_rank) == (3, 4, 1)
    assert world.is_distributed and not world.is_main
    single = World.from_environment({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert not single.is_distributed and single.is_main


@pytest.mark.parametrize(
    "environ, words",
    [
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "not a valid process layout"),
        ({"RANK": "one", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='one': not a whole number"),
    ],
)
def test_a_broken_torchrun_environment_is_refused(environ: dict, words: str) -> None:
    with pytest.raises(InputError, match=words):
        World.from_environment(environ)


def test_each_process_takes_its_own_device() -> None:
    assert World().device("cuda:1") == "cuda:1"  # alone: as asked
    assert World(1, 2, 1).device("cpu") == "cpu"
    with pytest.raises(InputError, match="LOCAL_RANK"):
        World(1, 2, 1).device("cuda:0")
    if not torch.cuda.is_available():
        assert World(1, 2, 1).device("auto") == "auto"  # resolves to the CPU


def test_random_streams_differ_per_rank_and_rank_0_keeps_the_single_process_one() -> None:
    seeds = [stream_seed(7, rank) for rank in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert seeds == [stream_seed(7, rank) for rank in range(4)]


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3"])
def test_bad_shards_are_refused(text: str) -> None:
    with pytest.raises(InputError, match=f"--shard {text}"):
        Shard.parse(text)


def test_shards_are_deterministic_disjoint_covering_and_balanced() -> None:
    ids = [f"case{i:03d}" for i in range(23)]
    for count in range(2, 6):
        shuffled = random.Random(count).sample(ids, len(ids))
        shards = [Shard(index, count).select(shuffled, key=str) for index in range(count)]
        assert shards == [Shard(index, count).select(ids, key=str) for index in range(count)]  # any input order
        assert sorted(item for shard in shards for item in shard) == ids  # each exactly once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert Shard.parse("1/3").select(ids, key=str) == ids[1::3]
    assert WHOLE.select(ids[::-1], key=str) == ids[::-1]  # the whole batch keeps its order


def test_a_worker_takes_its_rank_or_its_shard_option_not_both() -> None:
    assert worker_shard(None) == WHOLE
    assert worker_shard(None, rank=1, world_size=2) == Shard(1, 2)
    assert worker_shard("2/3") == Shard(2, 3)
    with pytest.raises(InputError, match="torchrun already splits"):
        worker_shard("0/2", rank=0, world_size=2)


COLLECTIVES = """
import sys
import torch
from organseg.distributed import World, process_group
from organseg.errors import InputError

world = World.from_environment()
assert world.world_size == 2 and world.local_rank == world.rank
with process_group(world, torch.device("cpu")):
    assert world.broadcast(10 + world.rank) == 10
    assert world.gather(world.rank) == [0, 1]
    assert world.mean(float(world.rank)) == 0.5

    def refuse():
        raise InputError("rank 0 says no")

    try:
        world.on_main(refuse)
        sys.exit("on_main swallowed rank 0's error")
    except InputError as error:
        assert str(error) == "rank 0 says no"
    assert world.on_main(lambda: world.rank) == 0
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    world.assert_replicas_agree(model)
    if world.rank == 1:
        with torch.no_grad():  # one value, off by one unit in the last place
            model.bias[0] = torch.nextafter(model.bias[0], torch.tensor(1.0))
    try:
        world.assert_replicas_agree(model)
        sys.exit("a differing replica went unnoticed")
    except RuntimeError as error:
        print(f"rank {world.rank} caught: {error}")
print(f"rank {world.rank} ok")
"""


def test_collectives_and_the_replica_check_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    result = torchrun(script, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rank 0 ok" in result.stdout and "rank 1 ok" in result.stdout
    assert "rank 1 caught: the model replicas of 1 process(es) differ from rank 0's; differing here" in result.stdout
    assert "rank 0 caught: the model replicas of 1 process(es) differ" in result.stdout


# --- data-parallel training under torchrun -------------------------------------------------------


def test_two_processes_train_one_run_with_one_log_and_one_set_of_checkpoints(straight) -> None:
    run_dir, result = straight
    # Each process checks at the end of each stage that its weights equal rank 0's bit for bit
    # (exit 0 says they did); only rank 0 reports.
    assert result.stdout.count("stage1: 4 epochs") == 1 and result.stdout.count("model in") == 1
    rows = [json.loads(line) for line in (run_dir / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]  # one row per epoch, not one per process
    assert all("val_dice" in row for row in rows)
    checkpoint = load_checkpoint(run_dir / "stage1" / "last.pt")
    streams = checkpoint["rng_ranks"]
    assert len(streams) == 2 and checkpoint["rng"]["numpy"] == streams[0]["numpy"]
    assert streams[0]["numpy"] != streams[1]["numpy"]  # the processes drew different samples
    assert not torch.equal(streams[0]["torch"], streams[1]["torch"])
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "cache",
        "config.json",
        "labels.json",
        "splits.json",
        "stage1",
        "stage2",
    ]
    assert (run_dir / "stage2" / "best.pt").is_file()


def test_a_resumed_two_process_run_ends_bit_identical_to_an_uninterrupted_one(straight, phantoms, tmp_path) -> None:
    run_dir = tmp_path / "stopped"
    first = torchrun("-m", "organseg", "train", phantoms, run_dir, *TRAIN, "--set", "stage1.epochs=2", "--stage", "1")
    assert first.returncode == 0, first.stderr
    # As if stopped after epoch 2 of 4: the saved settings ask for 4.
    config = json.loads((run_dir / "config.json").read_text())
    config["stage1"]["epochs"] = 4
    (run_dir / "config.json").write_text(json.dumps(config))
    resumed = torchrun("-m", "organseg", "train", phantoms, run_dir, "--resume", "--stage", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("stage1: resuming after epoch 2 of 4") == 1
    rows = [json.loads(line) for line in (run_dir / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    expected = load_checkpoint(straight[0] / "stage1" / "last.pt")
    actual = load_checkpoint(run_dir / "stage1" / "last.pt")
    assert actual["epoch"] == 4 and actual["config"] == expected["config"]
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, actual["model"][name]), name  # every process resumed its own random stream
    straight_rows = [json.loads(line) for line in (straight[0] / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in rows] == [row["loss"] for row in straight_rows]


def test_commands_that_do_not_split_their_work_refuse_torchrun(phantoms: Path, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["ssl", str(phantoms), str(tmp_path / "ssl"), "--preset", "tiny"]) == 2
    assert "ssl runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "ssl").exists()


# --- sharded pseudo-labeling and prediction -----------------------------------------------------


def rows_per_case(out: Path) -> Counter:
    """How many complete rows each case has over all scores files."""
    counts = Counter()
    for path in scores_files(out):
        for line in path.read_text().splitlines():
            try:
                counts[json.loads(line)["case"]] += 1
            except json.JSONDecodeError:
                continue
    return counts


def test_two_shard_workers_label_every_case_once_and_one_writes_the_manifest(straight, phantoms, tmp_path) -> None:
    teacher, images, out = straight[0], phantoms / "imagesUnlabeled", tmp_path / "pl"
    workers = [organseg("pseudo-label", teacher, images, out, "--shard", f"{i}/2") for i in (0, 1)]  # at once
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr
    assert any("5 pseudo-label(s)" in stdout for stdout, _ in outputs)  # the last to finish wrote the manifest
    assert sorted(path.name for path in scores_files(out)) == ["scores.shard-0-of-2.jsonl", "scores.shard-1-of-2.jsonl"]
    assert sorted(read_scores_of(out / "scores.shard-0-of-2.jsonl")) == UNLABELED[0::2]
    assert sorted(read_scores_of(out / "scores.shard-1-of-2.jsonl")) == UNLABELED[1::2]
    assert rows_per_case(out) == Counter(UNLABELED)
    records = json.loads((out / "manifest.json").read_text())["cases"]
    assert [record["case"] for record in records] == UNLABELED
    assert len((out / "manifest.csv").read_text().splitlines()) == 1 + len(UNLABELED)
    assert sorted(path.name for path in out.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in UNLABELED]
    assert not list(out.glob(".*partial*"))


def read_scores_of(path: Path) -> list[str]:
    return [json.loads(line)["case"] for line in path.read_text().splitlines()]


def test_a_killed_shard_rerun_completes_the_set_without_doing_a_case_twice(
    straight, phantoms: Path, tmp_path: Path, monkeypatch
) -> None:
    teacher, images, out = straight[0], phantoms / "imagesUnlabeled", tmp_path / "pl"
    first, second = Shard(0, 2), Shard(1, 2)
    assert run_pseudo_labeling(teacher, images, out, device="cpu", shard=first) is None
    assert not (out / "manifest.csv").exists()  # shard 1 has not run: no manifest yet

    real_case = pseudolabel_module._pseudo_label_case
    calls = []

    def killed_after_one_case(*args):
        if calls:
            raise KeyboardInterrupt  # as a kill between two cases
        calls.append(args[1].case_id)
        return real_case(*args)

    monkeypatch.setattr(pseudolabel_module, "_pseudo_label_case", killed_after_one_case)
    with pytest.raises(KeyboardInterrupt):
        run_pseudo_labeling(teacher, images, out, device="cpu", shard=second)
    monkeypatch.setattr(pseudolabel_module, "_pseudo_label_case", real_case)
    assert calls == [UNLABELED[1]] and rows_per_case(out) == Counter(UNLABELED[0::2] + UNLABELED[1:2])
    # Shard 1's kill left a torn line and a temporary file; shard 0 is (as if) writing one right now.
    with open(out / "scores.shard-1-of-2.jsonl", "a") as scores:
        scores.write('{"case": "phantom_u0')
    (out / f".{UNLABELED[3]}.partial-0a1b2c3d.nii.gz").write_bytes(b"half a file")
    in_flight = out / f".{UNLABELED[0]}.partial-0f0f0f0f.nii.gz"
    in_flight.write_bytes(b"shard 0 is writing this")

    manifest = run_pseudo_labeling(teacher, images, out, device="cpu", shard=second)
    assert [row.case_id for row in manifest] == UNLABELED
    assert rows_per_case(out) == Counter(UNLABELED)  # every case once: none redone
    assert list(out.glob(".*partial*")) == [in_flight]  # its own leftovers swept, the other shard's kept

    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir() if path.name != in_flight.name}
    (out / "manifest.csv").unlink()
    again = run_pseudo_labeling(teacher, images, out, device="cpu", shard=first)
    assert [row.case_id for row in again] == UNLABELED and (out / "manifest.csv").is_file()  # written again
    for name in ("scores.shard-0-of-2.jsonl", "scores.shard-1-of-2.jsonl", *(f"{c}.nii.gz" for c in UNLABELED)):
        assert (out / name).stat().st_mtime_ns == stamps[name], name  # nothing redone


def test_an_unsharded_rerun_takes_up_the_cases_a_shard_left(straight, phantoms: Path, tmp_path: Path) -> None:
    teacher, images, out = straight[0], phantoms / "imagesUnlabeled", tmp_path / "pl"
    run_pseudo_labeling(teacher, images, out, device="cpu", shard=Shard(1, 2))
    manifest = run_pseudo_labeling(teacher, images, out, device="cpu")
    assert [row.case_id for row in manifest] == UNLABELED
    assert sorted(read_scores_of(out / "scores.jsonl")) == UNLABELED[0::2]  # only what shard 1 left
    assert rows_per_case(out) == Counter(UNLABELED) and sorted(read_scores(out)) == UNLABELED


def test_sharded_prediction_writes_each_case_once(straight, phantoms: Path, tmp_path: Path, capsys) -> None:
    teacher, images, out = straight[0], phantoms / "imagesUnlabeled", tmp_path / "predictions"
    first = run_prediction(teacher, images, out, "cpu", profile=True, shard=Shard(0, 3))
    assert [path.name for path in first] == [f"{case}.nii.gz" for case in UNLABELED[0::3]]
    assert (out / "profile.shard-0-of-3.csv").is_file() and not (out / "profile.csv").exists()
    assert run_prediction(teacher, images, out, "cpu", shard=Shard(0, 3)) == []  # done: skipped
    rest = [run_prediction(teacher, images, out, "cpu", shard=Shard(i, 3)) for i in (1, 2)]
    written = sorted(path.name for paths in [first, *rest] for path in paths)
    assert written == [f"{case}.nii.gz" for case in UNLABELED]
    single = phantoms / "imagesUnlabeled" / f"{UNLABELED[0]}_0000.nii.gz"
    assert main(["predict", str(teacher), str(single), str(tmp_path / "one.nii.gz"), "--shard", "0/2"]) == 2
    assert "cannot be split over workers" in capsys.readouterr().err


def test_shard_workers_under_torchrun_take_their_rank(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    arguments = ["pseudo-label", str(tmp_path / "run"), str(tmp_path), str(tmp_path / "out"), "--shard", "0/2"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"preset": "tiny"}))
    assert main(arguments) == 2
    assert "torchrun already splits the cases by rank" in capsys.readouterr().err


def test_each_torchrun_process_computes_on_its_share_of_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(cores, "available_cores", lambda: 32)
    assert cores.threads_per_process({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "4"}) == 8  # torchrun's 1
    assert cores.threads_per_process({"LOCAL_WORLD_SIZE": "3"}) == 10
    assert cores.threads_per_process({"OMP_NUM_THREADS": "6", "LOCAL_WORLD_SIZE": "4"}) == 6  # the user's choice
    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    assert cores.threads_per_process({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "4"}) == 1
