"""Reliability as a user meets it, mostly through the real command line in a subprocess.

- Bad inputs: exit status 2, one `organseg: error:` line naming the culprit, no traceback,
  no label map (finished or partial) left under a final name.
- Unusual but valid inputs: exit 0 and a label map on exactly the input's grid.
- Training killed with SIGKILL resumes with no gap in its log and the right schedule.
- A checkpoint crafted to run code on load is refused without running it.
- Fuzzed NIfTI files give a sane Volume or an InputError, nothing else.
- Memory stays flat over a 50-case batch.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from conftest import REAL_DATA, make_volume
from organseg import predict as predict_module
from organseg.checkpoint import FORMAT, load_checkpoint
from organseg.cli import main
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.io import SANE_SPACING_MM, Volume, read_image, read_label, write_label, write_volume
from organseg.phantom import write_dataset
from organseg.predict import run_prediction
from organseg.runs import run_training

ORGANS = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3}
# Small grids keep the tiny run fast: these tests need labels on the right grid, not good ones.
TINY = [
    "stage1.epochs=1",
    "stage2.epochs=1",
    "stage1.grid=[16, 16, 16]",
    "stage2.grid=[16, 16, 16]",
    "validation_cases=0",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # here and in every subprocess (one_thread_env)


def one_thread_env() -> dict[str, str]:
    """The environment for subprocesses: on a shared machine, thread pools oversubscribe the cores
    and make the tiny networks many times slower; no result depends on the thread count."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "phantoms"
    return write_dataset(root, labeled=2, unlabeled=0, test=0, seed=7, shape=(32, 32, 16))


@pytest.fixture(scope="module")
def tiny_run(phantoms: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = resolve_config("tiny", overrides=TINY)
    run_training(discover_dataset(phantoms), run_dir, config, device="cpu")
    return run_dir


def organseg(*args) -> subprocess.CompletedProcess:
    """Run the command line as a user does, in its own process."""
    command = [sys.executable, "-m", "organseg", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=one_thread_env())


def assert_refused(result: subprocess.CompletedProcess, culprit, *words: str) -> None:
    """Exit status 2, one `organseg: error:` line naming `culprit` (and `words`), no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("organseg: error: ")]
    assert len(errors) == 1, result.stderr
    assert str(culprit) in errors[0], errors[0]
    for word in words:
        assert word in errors[0], errors[0]


def files_in(folder: Path) -> list[str]:
    """Every file name in `folder`, hidden partial files included; [] for no folder."""
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def ct_volume(**geometry) -> Volume:
    """A small CT-like image (int16 HU) with air, so that it looks like CT; see make_volume."""
    volume = make_volume(**geometry)
    volume.array[:2] = -1000
    return volume


def make_dataset(root: Path) -> Path:
    """A valid nnU-Net dataset: one labeled case with 3 organs, and an empty imagesTs."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": ORGANS, "file_ending": ".nii.gz"}))
    write_volume(ct_volume(), root / "imagesTr" / "case0_0000.nii.gz")
    write_labels(root, make_volume(labels=3))
    return root


def write_labels(root: Path, volume: Volume) -> Path:
    path = root / "labelsTr" / "case0.nii.gz"
    if volume.array.dtype.kind == "f":  # kept as floats, as some tools write label maps
        write_volume(volume, path)
    else:
        write_label(volume.array, volume.geometry, path)
    return path


def plain_nifti(volume: Volume, folder: Path) -> bytearray:
    """The bytes of `volume` as an uncompressed NIfTI-1 file."""
    scratch = folder / ".scratch.nii"
    write_volume(volume, scratch, compress=False)
    data = bytearray(scratch.read_bytes())
    scratch.unlink()
    return data


# --- bad images: `organseg check` names each one -------------------------------------------------


def _text(path: Path) -> None:
    path.write_text("this is a text file, not an image\n")


def _truncated(path: Path) -> None:
    write_volume(ct_volume(shape=(40, 36, 24)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt(path: Path) -> None:
    write_volume(ct_volume(shape=(40, 36, 24)), path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 32] = bytes(byte ^ 0xFF for byte in data[middle : middle + 32])
    path.write_bytes(bytes(data))


def _impossible_dimensions(path: Path) -> None:
    data = plain_nifti(ct_volume(), path.parent)
    struct.pack_into("<h", data, 42, -5)  # dim[1] of the NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(data)))


def _with_value(value: float):
    def write(path: Path) -> None:
        volume = ct_volume()
        array = volume.array.astype(np.float32)
        array[3, 4, 5] = value
        write_volume(Volume(array, volume.geometry), path)

    return write


def _with_spacing(spacing_mm):
    return lambda path: write_volume(ct_volume(spacing_mm=spacing_mm), path)


def _dicom_series(folder: Path, slices: int = 5) -> list[Path]:
    """A series of 1 mm-spaced slices made from one real CT slice."""
    template_path = REAL_DATA / "dcmqi_3slice" / "dicom" / "01.dcm"
    if not template_path.is_file():
        pytest.skip(f"real DICOM slice not found at {template_path}")
    template = pydicom.dcmread(template_path)
    folder.mkdir()
    paths = []
    for index in range(slices):
        template.ImagePositionPatient[2] = -100.0 + index
        template.InstanceNumber = index + 1
        template.SOPInstanceUID = pydicom.uid.generate_uid()
        paths.append(folder / f"{index:03d}.dcm")
        template.save_as(paths[-1])
    return paths


def _dicom_mixed_series(folder: Path) -> None:
    first = _dicom_series(folder)[0]
    other = pydicom.dcmread(first)
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.save_as(first)


def _dicom_missing_slice(folder: Path) -> None:
    _dicom_series(folder)[2].unlink()


# name: (writes the bad image at the path it is given, words its error line must hold)
BAD_IMAGES = {
    "not an image": (_text, ("corrupt",)),
    "empty file": (lambda path: path.write_bytes(b""), ("empty",)),
    "truncated": (_truncated, ("truncated",)),
    "corrupt gzip stream": (_corrupt, ("corrupt",)),
    "impossible dimensions": (_impossible_dimensions, ("impossible dimensions",)),
    "2D image": (lambda path: sitk.WriteImage(sitk.Image(20, 20, sitk.sitkInt16), str(path)), ("2D image",)),
    "4D image": (lambda path: sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(path)), ("4D image",)),
    "NaN intensity": (_with_value(np.nan), ("NaN",)),
    "infinite intensity": (_with_value(np.inf), ("infinite",)),
    "spacing 0.01 mm": (_with_spacing((0.01, 0.8, 2.5)), ("spacing",)),
    "spacing 50 mm": (_with_spacing((0.8, 0.8, 50.0)), ("spacing",)),
    "DICOM folder of two series": (_dicom_mixed_series, ("2 DICOM series",)),
    "DICOM series missing a slice": (_dicom_missing_slice, ("slice is missing",)),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_check_refuses_a_bad_image_naming_it(name: str, tmp_path: Path) -> None:
    write, words = BAD_IMAGES[name]
    root = make_dataset(tmp_path / "ds")
    bad = root / "imagesTs" / ("bad" if name.startswith("DICOM") else "bad_0000.nii.gz")
    write(bad)
    assert_refused(organseg("check", root), bad, *words)


# --- bad datasets: `organseg check` ----------------------------------------------------------------


def _label_on_other_grid(**geometry):
    def mutate(root: Path):
        return [root], write_labels(root, make_volume(labels=3, **geometry)), ("label grid differs",)

    return mutate


def _label_value_42(root: Path):
    volume = make_volume(labels=3)
    volume.array[0, 0, 0] = 42
    return [root], write_labels(root, volume), ("label values [42] are not declared",)


def _fractional_labels(root: Path):
    volume = make_volume(labels=3)
    fractional = Volume(volume.array.astype(np.float32) * 0.5, volume.geometry)
    return [root], write_labels(root, fractional), ("non-integer",)


def _emptied(root: Path):
    shutil.rmtree(root)
    root.mkdir()
    return [root], root / "imagesTr", ("not found",)


def _empty_folders(root: Path):
    for path in [*root.glob("imagesTr/*"), *root.glob("labelsTr/*")]:
        path.unlink()
    return [root], root / "imagesTr", ("no images found",)


def _duplicate_case(root: Path):
    (root / "imagesUnlabeled").mkdir()
    duplicate = root / "imagesUnlabeled" / "case0_0000.nii.gz"
    write_volume(ct_volume(seed=1), duplicate)
    return [root], duplicate, ("duplicate case id 'case0'",)


def _dataset_json(text: str, words: tuple[str, ...]):
    def mutate(root: Path):
        (root / "dataset.json").write_text(text)
        return [root], root / "dataset.json", words

    return mutate


def _absent_dataset_json(root: Path):
    absent = root / "labels.json"
    return [root, "--dataset-json", absent], absent, ("not found",)


# name: mutate(root) -> (check's arguments, the culprit its error line names, words it holds)
BAD_DATASETS = {
    "missing dataset folder": lambda root: ([root / "absent"], root / "absent", ("not found",)),
    "label shape differs": _label_on_other_grid(shape=(30, 28, 20)),
    "label spacing differs": _label_on_other_grid(spacing_mm=(1.0, 1.0, 1.0)),
    "label origin differs": _label_on_other_grid(origin_mm=(0.0, 0.0, 0.0)),
    "label direction differs": _label_on_other_grid(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
    "label value not in the label set": _label_value_42,
    "float labels with fractions": _fractional_labels,
    "empty dataset folder": _emptied,
    "empty image and label folders": _empty_folders,
    "duplicate case id": _duplicate_case,
    "dataset.json missing": _absent_dataset_json,
    "dataset.json not JSON": _dataset_json('{"labels": {"liver": 1,', ("not valid JSON",)),
    "dataset.json without labels": _dataset_json('{"file_ending": ".nii.gz"}', ("no 'labels' entry",)),
    "dataset.json with a text id": _dataset_json('{"labels": {"liver": "one"}}', ("must be an integer id",)),
}


@pytest.mark.parametrize("name", BAD_DATASETS)
def test_check_refuses_a_bad_dataset_naming_the_culprit(name: str, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    args, culprit, words = BAD_DATASETS[name](root)
    result = organseg("check", *args)
    assert_refused(result, culprit, *words)
    if "differs" in name:  # the line says what differs
        assert name.split()[1] in result.stderr


def test_check_without_dataset_json_uses_flare22_labels_and_says_so(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").unlink()
    result = organseg("check", root)
    assert result.returncode == 0, result.stderr
    assert "no dataset.json: using the 13 FLARE22 organ labels" in result.stdout


# --- bad training requests: `organseg train` -------------------------------------------------------


# name: (arguments after DATASET RUN_DIR, culprit, words); the dataset is an empty folder
BAD_TRAINING = {
    "empty dataset folder": (["--preset", "tiny"], "imagesTr", ("training image folder not found",)),
    "unknown setting": (["--preset", "tiny", "--set", "stage1.epoks=3"], "stage1.epoks", ("unknown setting",)),
    "settings out of range": (
        ["--preset", "tiny", "--set", "stage1.epochs=-1", "--set", "stage2.learning_rate=2"],
        "stage1.epochs must be >= 1, got -1",
        ("stage2.learning_rate must be in (0, 1), got 2.0",),
    ),
}


@pytest.mark.parametrize("name", BAD_TRAINING)
def test_train_refuses_bad_requests_before_training(name: str, tmp_path: Path) -> None:
    args, culprit, words = BAD_TRAINING[name]
    dataset, run_dir = tmp_path / "ds", tmp_path / "run"
    dataset.mkdir()
    result = organseg("train", dataset, run_dir, *args)
    assert_refused(result, dataset / culprit if culprit == "imagesTr" else culprit, *words)
    assert not list(run_dir.rglob("*.pt")), "a refused training must leave no model"
    if name != "empty dataset folder":  # settings are refused before the run folder is made
        assert not run_dir.exists()


# --- bad prediction requests: `organseg predict` ---------------------------------------------------


def _missing_input(tmp_path: Path, run_dir: Path):
    absent, out = tmp_path / "absent.nii.gz", tmp_path / "out"
    out.mkdir()
    return [run_dir, absent, out / "label.nii.gz"], absent, ("no such file",), out, []


def _empty_input_folder(tmp_path: Path, run_dir: Path):
    (tmp_path / "in").mkdir()
    return [run_dir, tmp_path / "in", tmp_path / "out"], tmp_path / "in", ("no images found",), tmp_path / "out", []


def _run_without_model(tmp_path: Path, run_dir: Path):
    empty_run, image, out = tmp_path / "run", tmp_path / "ct.nii.gz", tmp_path / "out"
    empty_run.mkdir(), out.mkdir()
    write_volume(ct_volume(), image)
    return [empty_run, image, out / "label.nii.gz"], empty_run, ("no trained model",), out, []


def _output_under_a_file(tmp_path: Path, run_dir: Path):
    image, blocker = tmp_path / "ct.nii.gz", tmp_path / "notes.txt"
    write_volume(ct_volume(), image)
    blocker.write_text("a file where a folder should be")
    output = blocker / "sub" / "label.nii.gz"
    return [run_dir, image, output], output.parent, ("does not exist",), output.parent, []


def _bad_image_in_a_batch(tmp_path: Path, run_dir: Path):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    write_volume(ct_volume(), images / "a_0000.nii.gz")
    _truncated(images / "b_0000.nii.gz")
    return [run_dir, images, out], images / "b_0000.nii.gz", ("truncated",), out, ["a.nii.gz"]


# name: setup(tmp_path, run_dir) -> (predict's arguments, culprit, words, output folder, files it may hold)
BAD_PREDICTIONS = {
    "missing input": _missing_input,
    "empty input folder": _empty_input_folder,
    "run folder without a model": _run_without_model,
    "output under a file": _output_under_a_file,
    "bad image in a batch": _bad_image_in_a_batch,
}


@pytest.mark.parametrize("name", BAD_PREDICTIONS)
def test_predict_refuses_bad_requests_and_leaves_no_partial_output(name: str, tiny_run: Path, tmp_path: Path) -> None:
    args, culprit, words, output, allowed = BAD_PREDICTIONS[name](tmp_path, tiny_run)
    assert_refused(organseg("predict", *args), culprit, *words)
    assert files_in(output) == allowed  # a batch keeps the cases finished before the bad one


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_into_a_read_only_folder_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    image, out = tmp_path / "ct.nii.gz", tmp_path / "out"
    write_volume(ct_volume(), image)
    out.mkdir()
    out.chmod(0o500)
    try:
        result = organseg("predict", tiny_run, image, out / "label.nii.gz")
        assert_refused(result, out / "label.nii.gz")
        assert files_in(out) == []
    finally:
        out.chmod(0o700)


@pytest.mark.parametrize("failure", ["ITK write error", "OSError ENOSPC"])
def test_disk_full_while_writing_leaves_no_label_map_and_the_batch_resumes(
    failure: str, tiny_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    for name in ("a", "b"):
        write_volume(ct_volume(), images / f"{name}_0000.nii.gz")
    real_write = sitk.WriteImage

    def disk_fills_on_b(image, path, *args, **kwargs):
        if Path(path).name.startswith(".b."):  # atomic_write's temporary file for b.nii.gz
            Path(path).write_bytes(b"the first bytes of a label map")
            if failure == "ITK write error":  # what SimpleITK raises
                raise RuntimeError("ITK ERROR: NiftiImageIO: No space left on device")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", disk_fills_on_b)
    assert main(["predict", str(tiny_run), str(images), str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("organseg: error: ")]
    assert len(errors) == 1 and str(out) in errors[0] and "No space left on device" in errors[0], errors
    assert files_in(out) == ["a.nii.gz"]

    monkeypatch.setattr(sitk, "WriteImage", real_write)  # space freed: the rerun does only b
    finished = (out / "a.nii.gz").stat().st_mtime_ns
    assert main(["predict", str(tiny_run), str(images), str(out)]) == 0
    assert files_in(out) == ["a.nii.gz", "b.nii.gz"]
    assert (out / "a.nii.gz").stat().st_mtime_ns == finished


# --- unusual but valid inputs: a label map on the exact input grid --------------------------------


def _rotated(degrees: float) -> tuple[float, ...]:
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)], [0, np.sin(angle / 2), np.cos(angle / 2)]])
    return tuple((rotation @ tilt).ravel())


def _as_dtype(dtype, offset: float = 0.0):
    def build() -> Volume:
        volume = ct_volume()
        return Volume((volume.array.astype(np.float64) + offset).astype(dtype), volume.geometry)

    return build


def _constant() -> Volume:
    geometry = make_volume(shape=(20, 18, 12)).geometry
    return Volume(np.full(geometry.shape, 40, np.int16), geometry)


# file name: (builds the volume, the dtype it must read back as)
ACCEPTED = {
    "oblique.nii.gz": (lambda: ct_volume(direction=_rotated(17.0)), np.int16),
    "permuted_flipped.nii.gz": (lambda: ct_volume(direction=(0, 0, 1, -1, 0, 0, 0, -1, 0)), np.int16),
    "float32.nii.gz": (_as_dtype(np.float32), np.float32),
    "uint16.nii.gz": (_as_dtype(np.uint16, offset=1024.0), np.uint16),
    "nrrd_input.nrrd": (ct_volume, np.int16),
    "mha_input.mha": (ct_volume, np.int16),
    "smaller_than_the_grid.nii.gz": (lambda: ct_volume(shape=(8, 8, 6)), np.int16),
    "constant.nii.gz": (_constant, None),
}


@pytest.fixture(scope="module")
def accepted_batch(tiny_run: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One `organseg predict` over a folder holding every unusual input (one model load for all)."""
    images = tmp_path_factory.mktemp("unusual") / "in"
    images.mkdir()
    for name, (build, _) in ACCEPTED.items():
        write_volume(build(), images / name)
    out = images.parent / "out"
    return organseg("predict", tiny_run, images, out), images, out


@pytest.mark.parametrize("name", ACCEPTED)
def test_unusual_valid_input_gets_a_label_map_on_its_exact_grid(name: str, accepted_batch) -> None:
    result, images, out = accepted_batch
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "organseg: error" not in result.stderr
    image = read_image(images / name)
    _, dtype = ACCEPTED[name]
    assert dtype is None or image.array.dtype == dtype
    labels = read_label(out / f"{name.split('.')[0]}.nii.gz")
    assert labels.array.shape == image.array.shape
    assert labels.geometry.is_close(image.geometry, tolerance_mm=1e-5, tolerance_cos=1e-6)
    assert labels.array.max() <= 13


def test_constant_image_gives_an_empty_label_map_and_a_warning(accepted_batch) -> None:
    result, images, out = accepted_batch
    assert not read_label(out / "constant.nii.gz").array.any()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("organseg: warning: ")]
    assert any(str(images / "constant.nii.gz") in line and "constant" in line for line in warnings), result.stderr


# --- a malicious checkpoint -----------------------------------------------------------------------


class _RunsCodeOnLoad:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.command,)


def test_checkpoint_crafted_to_run_code_is_refused_without_running_it(tiny_run: Path, tmp_path: Path) -> None:
    marker, run_dir = tmp_path / "code_ran", tmp_path / "run"
    for stage in ("stage1", "stage2"):
        (run_dir / stage).mkdir(parents=True)
        torch.save({"format": FORMAT, "model": _RunsCodeOnLoad(marker)}, run_dir / stage / "best.pt")
    shutil.copy(tiny_run / "config.json", run_dir / "config.json")
    torch.load(run_dir / "stage1" / "best.pt", weights_only=False)  # the payload works where loading is unsafe
    assert marker.exists()
    marker.unlink()

    image, out = tmp_path / "ct.nii.gz", tmp_path / "out"
    write_volume(ct_volume(), image)
    out.mkdir()
    result = organseg("predict", run_dir, image, out / "label.nii.gz")
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert_refused(result, run_dir / "stage1" / "best.pt", "refused")
    assert files_in(out) == []


# --- SIGKILL in the middle of training, then --resume ---------------------------------------------


def _log_rows(log: Path) -> list[str]:
    """The complete lines of a log.jsonl (a line being written has no newline yet)."""
    if not log.is_file():
        return []
    return [line for line in log.read_text().splitlines(keepends=True) if line.endswith("\n")]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX only")
def test_training_killed_with_sigkill_resumes_without_a_gap(phantoms: Path, tmp_path: Path) -> None:
    epochs, halving, run_dir = 20, 6, tmp_path / "run"
    settings = [f"stage1.epochs={epochs}", f"stage1.lr_halving_epochs={halving}", "stage1.iterations_per_epoch=2"]
    settings += ["stage1.grid=[16, 16, 16]", f"stage1.val_every={epochs}", "validation_cases=0"]
    command = [sys.executable, "-m", "organseg", "train", str(phantoms), str(run_dir), "--stage", "1"]
    overrides = [item for setting in settings for item in ("--set", setting)]
    log = run_dir / "stage1" / "log.jsonl"
    with open(tmp_path / "killed.txt", "w") as output:
        arguments = [*command, "--preset", "tiny", *overrides]
        process = subprocess.Popen(arguments, stdout=output, stderr=output, env=one_thread_env())
        try:
            deadline = time.monotonic() + 90
            while len(_log_rows(log)) < 2:
                assert process.poll() is None, (tmp_path / "killed.txt").read_text()
                assert time.monotonic() < deadline, "training wrote no log"
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    logged_at_kill = len(_log_rows(log))
    assert logged_at_kill < epochs, "the run finished before it was killed"

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120, env=one_thread_env())
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(rf"stage1: resuming after epoch (\d+) of {epochs}", resumed.stdout)
    # An epoch's log row is written just before its checkpoint: at most one epoch is lost.
    assert match and int(match[1]) >= max(1, logged_at_kill - 1), resumed.stdout

    rows = [json.loads(line) for line in log.read_text().splitlines()]
    logged = [row["epoch"] for row in rows]
    assert sorted(set(logged)) == list(range(1, epochs + 1)), logged  # no gap
    assert len(logged) <= epochs + 1 and logged == sorted(logged), logged  # at most one epoch repeated
    checkpoint = load_checkpoint(run_dir / "stage1" / "last.pt")
    stage = checkpoint["config"]["stage1"]
    assert checkpoint["epoch"] == epochs and stage["lr_halving_epochs"] == halving
    lr0 = stage["learning_rate"]
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr0 * 0.5 ** (epochs // halving))
    for row in rows:  # the schedule carried on across the kill
        assert row["lr"] == pytest.approx(lr0 * 0.5 ** ((row["epoch"] - 1) // halving)), row


# --- fuzzing the NIfTI reader ---------------------------------------------------------------------

# NIfTI-1 header fields: (byte offset, struct format), from the NIfTI-1 specification.
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "i"),
    "dim": (40, "8h"),
    "datatype": (70, "h"),
    "bitpix": (72, "h"),
    "pixdim": (76, "8f"),
    "vox_offset": (108, "f"),
    "scl_slope": (112, "f"),
    "scl_inter": (116, "f"),
    "qform_code": (252, "h"),
    "sform_code": (254, "h"),
    "quatern_and_offset": (256, "6f"),
    "srow": (280, "12f"),
    "magic": (344, "4s"),
}
FUZZ_VARIANTS = 150  # about a second
TRICKY = {
    "h": [-32768, -1, 0, 1, 2, 3, 4, 7, 8, 16, 64, 255, 512, 768, 2304, 32767],
    "f": [0.0, -1.0, 1e-9, 0.5, 3.0, 352.0, 1e9, 1e30, float("nan"), float("inf"), float("-inf")],
    "i": [-1, 0, 348, 540, 1 << 30],
}


def _fuzz(plain: bytes, rng: np.random.Generator) -> tuple[bytes, bool, str]:
    """A corrupted copy of an uncompressed NIfTI: (file bytes, gzip-compressed, what was done)."""
    data, compress = bytearray(plain), bool(rng.integers(2))
    kind = rng.choice(["field", "header bytes", "any bytes", "cut", "gzip bytes"], p=[0.4, 0.2, 0.15, 0.1, 0.15])
    if kind == "field":
        name = rng.choice(list(NIFTI_FIELDS))
        offset, fmt = NIFTI_FIELDS[name]
        values = list(struct.unpack_from("<" + fmt, data, offset))
        index = int(rng.integers(len(values)))
        pool = TRICKY.get(fmt[-1])
        values[index] = pool[int(rng.integers(len(pool)))] if pool else rng.bytes(4)
        struct.pack_into("<" + fmt, data, offset, *values)
        kind = f"{name}[{index}] = {values[index]!r}"
    elif kind in ("header bytes", "any bytes"):
        end = 352 if kind == "header bytes" else len(data)
        for position in rng.integers(0, end, int(rng.integers(1, 9))):
            data[position] = int(rng.integers(256))
    elif kind == "cut":
        del data[int(rng.integers(len(data))) :]
    data = gzip.compress(bytes(data), mtime=0) if compress or kind == "gzip bytes" else data
    if kind == "gzip bytes":
        data, compress = bytearray(data), True
        for position in rng.integers(10, len(data), int(rng.integers(1, 9))):
            data[position] ^= 1 << int(rng.integers(8))
    return bytes(data), compress, kind


def _read_outcome(path: Path) -> str:
    """'read' for a sane Volume, 'refused' for a one-line InputError naming the file; anything else fails."""
    try:
        volume = read_image(path)
    except InputError as error:
        assert str(path) in str(error) and "\n" not in str(error), str(error)
        return "refused"
    geometry, (low, high) = volume.geometry, SANE_SPACING_MM
    assert len(geometry.shape) == 3 and min(geometry.shape) > 0 and volume.array.shape == geometry.shape
    assert all(low <= s <= high for s in geometry.spacing_mm), geometry
    assert np.isfinite(geometry.origin_mm).all() and np.isfinite(geometry.direction).all(), geometry
    direction = geometry.direction_matrix
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-4), geometry
    return "read"


def test_fuzzed_nifti_files_give_a_sane_volume_or_one_input_error(tmp_path: Path) -> None:
    plain = bytes(plain_nifti(ct_volume(shape=(12, 10, 8)), tmp_path))
    rng = np.random.default_rng(20240611)
    outcomes = Counter()
    for index in range(FUZZ_VARIANTS):
        data, compress, what = _fuzz(plain, rng)
        path = tmp_path / f"fuzz{index}.nii{'.gz' if compress else ''}"
        path.write_bytes(data)
        try:
            outcomes[_read_outcome(path)] += 1
        except Exception as error:  # noqa: BLE001 - report which corruption broke the reader
            pytest.fail(f"{path.name} ({what}): {type(error).__name__}: {error}")
    assert outcomes["read"] and outcomes["refused"], outcomes  # the fuzz reached both outcomes


def _edited(**fields):
    def edit(data: bytearray) -> bytearray:
        for name, (index, value) in fields.items():
            offset, fmt = NIFTI_FIELDS[name]
            values = list(struct.unpack_from("<" + fmt, data, offset))
            values[index] = value
            struct.pack_into("<" + fmt, data, offset, *values)
        return data

    return edit


def _bitpix_too_small_and_cut(data: bytearray) -> bytearray:
    """bitpix says 8 bits, the datatype int16: a file cut to half its data looked complete."""
    data = _edited(bitpix=(0, 8))(data)
    return data[: 352 + (len(data) - 352) // 2]


# Files that crashed the reader or read wrongly before organseg.io checked for them.
FUZZ_FINDINGS = {
    "infinite vox_offset": (_edited(vox_offset=(0, float("inf"))), "data offset"),  # was OverflowError
    "NaN vox_offset": (_edited(vox_offset=(0, float("nan"))), "data offset"),  # was ValueError
    "NaN in the sform's offset": (_edited(srow=(3, float("nan"))), "orientation"),  # read with a NaN origin
    "infinite qform offset": (_edited(sform_code=(0, 0), quatern_and_offset=(3, float("inf"))), "orientation"),  # as 0
    "zero pixdim": (_edited(pixdim=(1, 0.0)), "spacing"),  # read as 1 mm
    "bitpix smaller than the datatype": (_bitpix_too_small_and_cut, "truncated"),  # read, zero-filled
}


# An infinite entry in the sform's rotation made SimpleITK loop forever: read it in a
# subprocess, so that a regression fails instead of hanging the test run.
HANGING = _edited(srow=(5, float("-inf")))


def test_infinite_sform_entry_is_refused_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "hang.nii"
    path.write_bytes(bytes(HANGING(plain_nifti(ct_volume(shape=(12, 10, 8)), tmp_path))))
    code = "import sys; from organseg.io import read_image; read_image(sys.argv[1])"
    try:
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a NIfTI with an infinite sform entry hangs")
    assert f"InputError: {path}: " in result.stderr and "orientation" in result.stderr, result.stderr


@pytest.mark.parametrize("name", FUZZ_FINDINGS)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_fuzz_findings_are_input_errors(name: str, suffix: str, tmp_path: Path) -> None:
    edit, word = FUZZ_FINDINGS[name]
    data = bytes(edit(plain_nifti(ct_volume(shape=(12, 10, 8)), tmp_path)))
    path = tmp_path / f"finding{suffix}"
    path.write_bytes(gzip.compress(data) if suffix == ".nii.gz" else data)
    with pytest.raises(InputError, match=re.escape(str(path))) as caught:
        read_image(path)
    assert word in str(caught.value) and "\n" not in str(caught.value)


def test_fuzzed_files_through_check_are_each_named_or_accepted(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    plain = bytes(plain_nifti(ct_volume(shape=(12, 10, 8)), tmp_path))
    rng = np.random.default_rng(7)
    for index in range(8):
        data, compress, _ = _fuzz(plain, rng)
        (root / "imagesTs" / f"fuzz{index}_0000.nii.gz").write_bytes(data if compress else gzip.compress(data))
    edits = [edit for edit, _ in FUZZ_FINDINGS.values()] + [HANGING]
    findings = [root / "imagesTs" / f"finding{index}_0000.nii.gz" for index in range(len(edits))]
    for path, edit in zip(findings, edits):
        path.write_bytes(gzip.compress(bytes(edit(bytearray(plain)))))
    result = organseg("check", root)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("organseg: error: ")]
    assert all(f"{root / 'imagesTs'}/" in line for line in errors), errors  # each names a file
    for path in findings:
        assert sum(f"error: {path}: " in line for line in errors) == 1, (path, errors)


# --- memory over a batch ----------------------------------------------------------------------------


def _resident_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads resident memory from /proc (Linux)")
def test_memory_stays_flat_over_a_50_case_batch(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shapes = [(24, 20, 12), (20, 22, 14), (26, 18, 10)]
    for index in range(50):
        write_volume(ct_volume(shape=shapes[index % 3], seed=index), images / f"case{index:02d}.nii.gz")
    resident_mb = []
    real_write = predict_module.write_outputs

    def write_and_measure(*args, **kwargs) -> list[Path]:
        written = real_write(*args, **kwargs)
        resident_mb.append(_resident_mb())
        return written

    monkeypatch.setattr(predict_module, "write_outputs", write_and_measure)
    written = run_prediction(tiny_run, images, tmp_path / "out", device="cpu")
    assert len(written) == len(resident_mb) == 50
    growth = resident_mb[49] - resident_mb[9]
    assert growth < 50, f"resident memory grew {growth:.1f} MB from case 10 to case 50: {resident_mb}"
