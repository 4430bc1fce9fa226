"""`organseg export` and prediction from an exported model with ONNX Runtime, without torch.

The exported folder must describe itself, predict what the PyTorch engine predicts, run
in a process where torch cannot be imported, and refuse what it cannot trust (another
organseg version, a changed file, a tampered shape, a missing package) in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import predict_real_inputs
from organseg import __version__
from organseg.cascade import StageInput
from organseg.cli import main
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.export_folder import MANIFEST, read_manifest, sha256
from organseg.io import read_image, read_label
from organseg.metrics import dice_per_class
from organseg.network_stage import segmenter_from_run
from organseg.onnx_stage import OnnxPredictor, segmenter_from_export
from organseg.phantom import write_dataset
from organseg.runs import run_training

SHAPE = (40, 40, 24)
TEST_CASES = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export_data") / "phantoms"
    return write_dataset(root, labeled=3, unlabeled=0, test=TEST_CASES, seed=11, shape=SHAPE)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> Path:
    # Deep supervision on stage 2, so the export must leave its heads out.
    overrides = ["stage1.epochs=4", "stage2.epochs=4", "stage2.net.deep_supervision=true"]
    run_dir = tmp_path_factory.mktemp("export_run") / "run"
    run_training(discover_dataset(data), run_dir, resolve_config("tiny", overrides=overrides), device="cpu")
    return run_dir


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", str(run), str(out)]) == 0
    return out


def _fresh_copy(exported: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    copy.mkdir()
    for file in exported.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_the_export_describes_itself(run: Path, exported: Path) -> None:
    assert sorted(path.name for path in exported.iterdir()) == [MANIFEST, "stage1.onnx", "stage2.onnx"]
    manifest = read_manifest(exported)
    config = json.loads((run / "config.json").read_text())
    assert manifest["organseg_version"] == __version__ and manifest["precision"] == "fp32"
    assert manifest["config"]["stage2"]["grid"] == config["stage2"]["grid"]
    assert manifest["config"]["window_hu"] == config["window_hu"]
    assert manifest["config"]["crop"]["margin_mm"] == config["crop"]["margin_mm"]
    assert manifest["labels"]["liver"] == 1 and len(manifest["labels"]) == 14
    for stage in ("stage1", "stage2"):
        entry = manifest["stages"][stage]
        assert entry["sha256"] == sha256(exported / entry["file"])
        assert entry["input"]["shape"] == [1, 1, *config[stage]["grid"]]
        assert entry["output"]["shape"] == [1, 14, *config[stage]["grid"]]
        assert entry["max_logit_difference"] < 1e-3


def test_deep_supervision_heads_are_left_out(run: Path, exported: Path) -> None:
    model = onnx.load(str(exported / "stage2.onnx"))
    assert [output.name for output in model.graph.output] == ["logits"]
    stored = sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer)
    entry = read_manifest(exported)["stages"]["stage2"]
    import torch

    weights = torch.load(run / "stage2" / "best.pt", weights_only=True)["model"]
    heads = sum(value.numel() for name, value in weights.items() if name.startswith("deep_heads."))
    assert heads > 0 and entry["parameters"] == sum(value.numel() for value in weights.values()) - heads
    assert stored <= entry["parameters"]  # constant folding may merge, never add, weights


def test_onnx_runtime_labels_equal_pytorch_labels(run: Path, exported: Path, data: Path, real_data: Path) -> None:
    by_torch = segmenter_from_run(run, "cpu", precision="fp32")
    by_onnx = segmenter_from_export(exported)
    images = sorted((data / "imagesTs").iterdir()) + [real_data / "ts_abdomen" / "image.nii.gz"]
    images.append(real_data / "dcmqi_3slice" / "dicom")
    found = 0
    for path in images:
        image = read_image(path)
        expected, labels = by_torch.predict(image).array, by_onnx.predict(image).array
        assert labels.shape == image.array.shape
        # Organs of 1000 voxels or more: in a smaller one a single near-tie voxel moves Dice by 0.001.
        organs = [label for label in range(1, 14) if (expected == label).sum() >= 1000]
        found += len(organs)
        dice = dice_per_class(labels, expected, organs)
        assert all(value >= 0.999 for value in dice.values()), (path.name, dice)
        assert (labels == expected).mean() >= 0.999  # near-ties of an untrained model may flip a voxel
    assert found >= TEST_CASES, "the tiny model found too few organs for this test to mean anything"


def test_stage_logits_agree_within_float32_rounding(run: Path, exported: Path, data: Path) -> None:
    by_torch = segmenter_from_run(run, "cpu", precision="fp32")
    by_onnx = segmenter_from_export(exported)
    from organseg.preprocess.orientation import canonical_transform
    from organseg.preprocess.stage_input import ScanView

    image = read_image(next((data / "imagesTs").iterdir()))
    scan = ScanView.of(image.array, canonical_transform(image.geometry), by_torch.config.window_hu)
    box = by_torch.box_from_coarse(by_torch.coarse_labels(scan)[1], scan.shape, image.geometry.spacing_mm)
    expected, found = by_torch.region_logits(scan, box), by_onnx.region_logits(scan, box)
    assert np.abs(found - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


RUN_WITHOUT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                ATTEMPTS.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    BLOCKED, ATTEMPTS = set(sys.argv[1].split(",")), []
    sys.meta_path.insert(0, Refuse())
    from organseg.cli import main

    status = main(sys.argv[2:])
    # A command that succeeds never even tried a blocked package (not tried, failed and let go).
    assert status != 0 or not ATTEMPTS, f"tried to import {ATTEMPTS}"
    sys.exit(status)
    """
)


def _organseg_without(blocked: str, *arguments: str) -> subprocess.CompletedProcess:
    """`organseg ARGUMENTS` in a fresh process in which the packages `blocked` cannot be imported."""
    command = [sys.executable, "-c", RUN_WITHOUT, blocked, *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_prediction_from_an_export_never_imports_torch(exported: Path, data: Path, tmp_path: Path) -> None:
    image = next((data / "imagesTs").iterdir())
    done = _organseg_without("torch", "predict", exported, image, tmp_path / "case.nii.gz", "--profile")
    assert done.returncode == 0, done.stderr
    expected = segmenter_from_export(exported).predict(read_image(image)).array
    assert np.array_equal(read_label(tmp_path / "case.nii.gz").array, expected)
    assert json.loads((tmp_path / "case.profile.json").read_text())["engine"] == "onnxruntime"
    # A folder of images too, and the one-line help of every command.
    done = _organseg_without("torch", "predict", exported, data / "imagesTs", tmp_path / "all")
    assert done.returncode == 0 and len(list((tmp_path / "all").iterdir())) == TEST_CASES, done.stderr
    assert _organseg_without("torch", "--help").returncode == 0


def test_missing_packages_are_named_with_the_install_command(exported, run, data, real_data, tmp_path) -> None:
    image, series = next((data / "imagesTs").iterdir()), real_data / "dcmqi_3slice" / "dicom"
    cases = [
        ("onnxruntime", ["predict", exported, image, tmp_path / "a.nii.gz"], "organseg[runtime]"),
        ("torch", ["predict", run, image, tmp_path / "b.nii.gz"], "organseg[train]"),
        ("torch", ["export", run, tmp_path / "c"], "organseg[train]"),
        ("onnxscript", ["export", run, tmp_path / "d"], "organseg[train]"),
        ("pydicom", ["predict", exported, series, tmp_path / "e.nii.gz", "--output-type", "rtstruct"], "[dicom]"),
        ("torch", ["train", data, tmp_path / "f", "--preset", "tiny"], "organseg[train]"),
        ("matplotlib", ["evaluate", data / "labelsTr", data / "labelsTr", "--out", tmp_path / "g"], "organseg[report]"),
        ("pydicom", ["phantom", tmp_path / "h", "--labeled", "1", "--dicom", "--shape", "16", "16", "16"], "[dicom]"),
    ]
    for blocked, arguments, hint in cases:
        done = _organseg_without(blocked, *arguments)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and hint in lines[0], (blocked, done.stderr)
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_an_export_of_another_version_or_with_a_changed_file_is_refused(exported, data, tmp_path, capsys) -> None:
    image = str(next((data / "imagesTs").iterdir()))
    copy = _fresh_copy(exported, tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "organseg_version": "0.0.1"}))
    assert main(["predict", str(copy), image, str(tmp_path / "out.nii.gz")]) == 2
    assert "exported by organseg 0.0.1" in _one_error_line(capsys)

    (copy / MANIFEST).write_text(json.dumps(manifest))
    damaged = bytearray((copy / "stage2.onnx").read_bytes())
    damaged[-10] ^= 0xFF
    (copy / "stage2.onnx").write_bytes(bytes(damaged))
    assert main(["predict", str(copy), image, str(tmp_path / "out.nii.gz")]) == 2
    assert "checksum does not match" in _one_error_line(capsys)
    assert not (tmp_path / "out.nii.gz").exists()


def test_shapes_that_do_not_fit_the_exported_networks_are_refused(exported: Path, data: Path, tmp_path, capsys):
    copy = _fresh_copy(exported, tmp_path)
    pristine = json.loads((copy / MANIFEST).read_text())
    image, out = next((data / "imagesTs").iterdir()), tmp_path / "out" / "case.nii.gz"
    out.parent.mkdir()

    def refusal(edit) -> str:
        manifest = json.loads(json.dumps(pristine))
        edit(manifest)
        (copy / MANIFEST).write_text(json.dumps(manifest))
        assert main(["predict", str(copy), str(image), str(out)]) == 2
        assert not any(out.parent.iterdir())  # refused before any case is written
        return _one_error_line(capsys)

    # Settings asking for another grid than the networks were exported for.
    message = refusal(lambda m: m["config"]["stage2"].update(grid=[48, 48, 48]))
    assert "stage2's grid asks for input (1, 1, 48, 48, 48), its network was exported for (1, 1, 32, 32, 32)" in message

    def both(manifest):  # grid and manifest agree, the network file does not
        manifest["config"]["stage1"]["grid"] = [16, 16, 16]
        manifest["stages"]["stage1"]["input"]["shape"] = [1, 1, 16, 16, 16]

    assert "takes input (1, 1, 32, 32, 32), its manifest says (1, 1, 16, 16, 16)" in refusal(both)
    assert "no 'stages' section" in refusal(lambda m: m.pop("stages"))
    assert "not a name inside the folder" in refusal(lambda m: m["stages"]["stage2"].update(file="../stage2.onnx"))
    assert main(["predict", str(exported), str(image), str(out), "--device", "cuda"]) == 2
    assert "runs on the CPU" in _one_error_line(capsys)
    # Called directly, a stage refuses an input of another shape in one line too.
    entry = pristine["stages"]["stage1"]
    with pytest.raises(InputError, match="exported for input"):
        OnnxPredictor(exported / "stage1.onnx", entry)(StageInput(np.zeros((1, 1, 8, 8, 8), np.float32), None, None))


def test_export_refuses_a_non_run_an_existing_folder_and_a_mismatch(run: Path, tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path), str(tmp_path / "a")]) == 2
    assert "no trained model" in _one_error_line(capsys)
    (tmp_path / "b").mkdir()
    assert main(["export", str(run), str(tmp_path / "b")]) == 2
    assert "already exists" in _one_error_line(capsys)
    from organseg import export

    monkeypatch.setattr(export, "AGREEMENT_TOLERANCE", -1.0)  # no difference is small enough
    assert main(["export", str(run), str(tmp_path / "c")]) == 2
    assert "differ from PyTorch's" in _one_error_line(capsys)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b"]  # nothing left behind


def test_labels_from_an_export_lie_on_the_exact_grid_of_every_real_input(exported, real_data, tmp_path) -> None:
    by_onnx = segmenter_from_export(exported)
    for image, written in predict_real_inputs(exported, real_data, tmp_path):
        assert np.array_equal(written.array, by_onnx.predict(image).array)
