"""Dataset discovery and validation: good layouts pass, every broken file is named in one pass."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_volume
from organseg.cli import main
from organseg.dataset import discover_dataset
from organseg.dataset_checks import _label_values, check_dataset, describe_dataset
from organseg.errors import InputError
from organseg.io import write_label, write_volume
from organseg.labels import FLARE22

ORGANS = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3}


def write_image(path: Path, seed: int = 0, **geometry) -> None:
    """A tiny CT-like image with some air, so that it looks like HU."""
    volume = make_volume(seed=seed, **geometry)
    volume.array[:2] = -1000
    write_volume(volume, path)


def write_labels(path: Path, seed: int = 0, **geometry) -> None:
    volume = make_volume(seed=seed, labels=3, **geometry)
    write_label(volume.array, volume.geometry, path)


def make_nnunet(root: Path, train: int = 3, unlabeled: int = 1, test: int = 1) -> Path:
    """An nnU-Net v2 raw dataset with 3 organs: case{i} in imagesTr/labelsTr, u{i}, t{i}."""
    for folder in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": ORGANS, "file_ending": ".nii.gz"}))
    for index in range(train):
        write_image(root / f"imagesTr/case{index}_0000.nii.gz", seed=index)
        write_labels(root / f"labelsTr/case{index}.nii.gz", seed=index)
    for index in range(unlabeled):
        write_image(root / f"imagesUnlabeled/u{index}_0000.nii.gz", seed=10 + index)
    for index in range(test):
        write_image(root / f"imagesTs/t{index}_0000.nii.gz", seed=20 + index)
        write_labels(root / f"labelsTs/t{index}.nii.gz", seed=20 + index)
    return root


def check(root: Path | None = None, **folders) -> list[str]:
    return check_dataset(discover_dataset(root, **folders)).problems


def test_valid_nnunet_layout_passes_with_counts(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Tiny", train=3, unlabeled=2, test=1)
    dataset = discover_dataset(root)
    report = check_dataset(dataset)
    assert report.problems == []
    assert report.warnings == []
    assert [case.case_id for case in dataset.labeled] == ["case0", "case1", "case2"]
    assert all(case.label == root / f"labelsTr/{case.case_id}.nii.gz" for case in dataset.labeled)
    assert [case.case_id for case in dataset.unlabeled] == ["u0", "u1"]
    assert [(case.case_id, case.label is not None) for case in dataset.test] == [("t0", True)]
    assert dataset.label_set.ids == (1, 2, 3)
    assert len(report.stats) == 6
    assert report.stats[0].geometry.is_close(make_volume().geometry)
    summary = describe_dataset(dataset, report)
    assert "3 labeled, 2 unlabeled, 1 test (1 with labels)" in summary
    assert "3 organs" in summary and "spacing mm" in summary and "no problems found" in summary
    assert "liver" in summary and "intensity: -1000 to" in summary


@pytest.mark.parametrize("suffix", ["_0000", ""])
def test_explicit_flare_folders_without_root(tmp_path, suffix):
    images, labels, unlabeled_a, unlabeled_b = (tmp_path / n for n in ("images", "labels", "unl_a", "unl_b"))
    for folder in (images, labels, unlabeled_a, unlabeled_b):
        folder.mkdir()
    for index in (1, 2):
        write_image(images / f"FLARE22_Tr_000{index}{suffix}.nii.gz", seed=index)
        write_labels(labels / f"FLARE22_Tr_000{index}.nii.gz", seed=index)
    write_image(unlabeled_a / f"Case_00001{suffix}.nii.gz", seed=5)
    write_image(unlabeled_b / f"Case_00002{suffix}.nii.gz", seed=6)
    dataset = discover_dataset(None, images=images, labels=labels, unlabeled=[unlabeled_a, unlabeled_b])
    report = check_dataset(dataset)
    assert report.problems == []
    assert [case.case_id for case in dataset.labeled] == ["FLARE22_Tr_0001", "FLARE22_Tr_0002"]
    assert all(case.label is not None for case in dataset.labeled)
    assert [case.case_id for case in dataset.unlabeled] == ["Case_00001", "Case_00002"]
    assert dataset.label_set == FLARE22
    assert any("no dataset.json" in warning for warning in report.warnings)
    assert any("absent from all labeled cases" in warning for warning in report.warnings)


def test_explicit_folders_override_root_defaults(tmp_path):
    root = make_nnunet(tmp_path / "ds", train=2)
    other = tmp_path / "more"
    other.mkdir()
    write_image(other / "extra.nii.gz")
    dataset = discover_dataset(root, unlabeled=[other])
    assert [case.case_id for case in dataset.unlabeled] == ["extra"]
    assert check_dataset(dataset).problems == []


def test_dicom_series_folder_is_one_case(tmp_path, real_data):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    (unlabeled / "patient7").symlink_to(real_data / "dcmqi_3slice" / "dicom", target_is_directory=True)
    dataset = discover_dataset(None, unlabeled=[unlabeled])
    assert [(case.case_id, case.image.name) for case in dataset.unlabeled] == [("patient7", "patient7")]
    report = check_dataset(dataset, require_labels=False)
    assert report.problems == []
    assert report.stats[0].geometry.shape == (512, 512, 3)


def _truncate(root: Path) -> None:
    path = root / "imagesTr/case0_0000.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _relabel(root: Path, name: str = "case0", **geometry) -> None:
    write_labels(root / f"labelsTr/{name}.nii.gz", **geometry)


def _undeclared(root: Path) -> None:
    volume = make_volume(labels=3)
    volume.array[0, 0, :2] = (7, 9)
    write_label(volume.array, volume.geometry, root / "labelsTr/case0.nii.gz")


BROKEN = {
    "truncated": (_truncate, "imagesTr/case0_0000.nii.gz", "truncated"),
    "not an image": (
        lambda root: (root / "imagesTr/case0_0000.nii.gz").write_text("not an image"),
        "imagesTr/case0_0000.nii.gz",
        "gzip",  # io.py words it; the file must be named
    ),
    "shape": (
        lambda root: _relabel(root, shape=(32, 28, 18)),
        "labelsTr/case0.nii.gz",
        "shape (32, 28, 20) vs (32, 28, 18)",
    ),
    "spacing": (lambda root: _relabel(root, spacing_mm=(0.8, 0.9, 3.0)), "labelsTr/case0.nii.gz", "spacing"),
    "origin": (lambda root: _relabel(root, origin_mm=(-12.5, 30.0, 9.0)), "labelsTr/case0.nii.gz", "origin"),
    "direction": (
        lambda root: _relabel(root, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
        "labelsTr/case0.nii.gz",
        "direction",
    ),
    "undeclared labels": (_undeclared, "labelsTr/case0.nii.gz", "label values [7, 9] are not declared"),
    "duplicate id": (
        lambda root: shutil.copy(root / "imagesTr/case1_0000.nii.gz", root / "imagesUnlabeled/case1_0000.nii.gz"),
        "imagesUnlabeled/case1_0000.nii.gz",
        "duplicate case id 'case1'",
    ),
    "image without label": (
        lambda root: (root / "labelsTr/case1.nii.gz").unlink(),
        "imagesTr/case1_0000.nii.gz",
        "image without a label map",
    ),
    "label without image": (
        lambda root: _relabel(root, "case9"),
        "labelsTr/case9.nii.gz",
        "label map without an image",
    ),
    "empty imagesTr": (
        lambda root: [path.unlink() for path in (root / "imagesTr").iterdir()],
        "imagesTr",
        "no images found",
    ),
    "missing imagesTr": (lambda root: shutil.rmtree(root / "imagesTr"), "imagesTr", "folder not found"),
    "missing labelsTr": (lambda root: shutil.rmtree(root / "labelsTr"), "labelsTr", "label folder not found"),
    "multi-channel": (
        lambda root: write_image(root / "imagesTr/case0_0001.nii.gz"),
        "imagesTr/case0_0001.nii.gz",
        "multi-channel datasets are not supported",
    ),
    "no channel suffix": (
        lambda root: write_image(root / "imagesUnlabeled/u5.nii.gz"),
        "imagesUnlabeled/u5.nii.gz",
        "rename it to u5_0000.nii.gz",
    ),
    "other file ending": (
        lambda root: write_image(root / "imagesTr/case7_0000.nii"),
        "imagesTr/case7_0000.nii",
        "file ending is not the dataset's '.nii.gz'",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_each_problem_is_reported_naming_the_file(tmp_path, name):
    mutate, culprit, expected = BROKEN[name]
    root = make_nnunet(tmp_path / "ds", train=2)
    mutate(root)
    problems = check(root)
    matching = [line for line in problems if line.startswith(f"{root / culprit}: ")]
    assert matching, problems
    assert expected in matching[0]
    assert all("\n" not in line and "; " in line for line in problems)


def test_non_image_with_image_suffix_in_explicit_folder(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "notes.mha").write_text("not an image")
    problems = check(None, unlabeled=[folder])
    assert problems[0] == "no labeled training images given; give a dataset folder with imagesTr or --images FOLDER"
    assert problems[1].startswith(f"{folder / 'notes.mha'}: not a readable image (")
    assert len(problems) == 2


def test_duplicate_ids_in_one_explicit_folder_and_across_unlabeled_folders(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    write_image(first / "scan.nii.gz")
    write_image(first / "scan.nii")
    write_image(second / "scan_0000.nii.gz")
    problems = check(None, unlabeled=[first, second])
    assert problems == [
        f"{first / 'scan.nii.gz'}: duplicate case id 'scan' (also {first / 'scan.nii'}); rename one",
        f"{second / 'scan_0000.nii.gz'}: duplicate case id 'scan' (also {first / 'scan.nii'}); rename one",
        "no labeled training images given; give a dataset folder with imagesTr or --images FOLDER",
    ]


def test_channel_suffix_is_a_case_id_outside_nnunet_folders_unless_channel_0_exists(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "FLARE22_Tr_0001.nii.gz")
    write_image(folder / "ct_0000.nii.gz")
    write_image(folder / "ct_0001.nii.gz")
    dataset = discover_dataset(None, unlabeled=[folder])
    assert [case.case_id for case in dataset.unlabeled] == ["FLARE22_Tr_0001", "ct"]
    assert len(dataset.problems) == 1 and "ct_0001.nii.gz: image channel 0001" in dataset.problems[0]


def test_missing_dataset_folder_is_an_input_error(tmp_path, capsys):
    with pytest.raises(InputError, match="dataset folder not found"):
        discover_dataset(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no dataset given"):
        discover_dataset(None)
    with_folders = discover_dataset(tmp_path / "nowhere", unlabeled=[tmp_path])
    assert with_folders.problems[0].startswith(f"{tmp_path / 'nowhere'}: dataset folder not found; ")
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    assert (
        capsys.readouterr().err
        == f"organseg: error: {tmp_path / 'nowhere'}: dataset folder not found; check the path\n"
    )


def test_malformed_dataset_json_is_an_input_error(tmp_path):
    root = make_nnunet(tmp_path / "ds", train=1)
    (root / "dataset.json").write_text('{"labels": {"liver": 1,')
    with pytest.raises(InputError, match="dataset.json: not valid JSON"):
        discover_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"labels": ORGANS, "channel_names": {"0": "CT", "1": "PET"}}))
    assert any("2 image channels" in line for line in check(root))


def test_all_problems_are_reported_in_one_pass(tmp_path):
    root = make_nnunet(tmp_path / "ds", train=4)
    _truncate(root)
    _relabel(root, "case1", shape=(30, 28, 20))
    volume = make_volume(labels=2, seed=2)
    volume.array[0, 0, 0] = 42
    write_label(volume.array, volume.geometry, root / "labelsTr/case2.nii.gz")
    (root / "labelsTr/case3.nii.gz").unlink()
    write_image(root / "imagesTr/case1_0001.nii.gz")
    _relabel(root, "orphan")
    problems = check(root)
    culprits = ["imagesTr/case1_0001", "labelsTr/orphan", "imagesTr/case3_0000", "imagesTr/case0_0000"]
    culprits += ["labelsTr/case1", "labelsTr/case2"]
    assert len(problems) == len(culprits), problems
    for problem, culprit in zip(sorted(problems), sorted(culprits)):
        assert problem.startswith(str(root / culprit)), problem


def test_cli_check_good_dataset_prints_summary(tmp_path, capsys):
    root = make_nnunet(tmp_path / "ds", train=2)
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {root}" in out
    assert "2 labeled, 1 unlabeled, 1 test" in out and "no problems found" in out


def test_cli_check_broken_dataset_prints_one_error_line_per_problem(tmp_path, capsys):
    root = make_nnunet(tmp_path / "ds", train=3)
    _truncate(root)
    _relabel(root, "case1", spacing_mm=(1, 1, 1))
    (root / "labelsTr/case2.nii.gz").unlink()
    expected = check(root)
    assert len(expected) == 3
    assert main(["check", str(root)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("organseg: error: ")]
    assert errors == [f"organseg: error: {problem}" for problem in expected]
    assert "Traceback" not in captured.err
    assert "3 problems found" in captured.out


def test_real_ct_validates_including_the_case_with_an_inconsistent_origin(tmp_path, real_data):
    root = tmp_path / "Dataset002_Real"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": FLARE22.to_json(), "file_ending": ".nii.gz"}))
    for case_id, folder in (("abdomen", "ts_abdomen"), ("upper", "ts_upper_abdomen_bad_origin")):
        (root / f"imagesTr/{case_id}_0000.nii.gz").symlink_to(real_data / folder / "image.nii.gz")
        (root / f"labelsTr/{case_id}.nii.gz").symlink_to(real_data / folder / "label_flare13.nii.gz")
    dataset = discover_dataset(root)
    report = check_dataset(dataset)
    assert report.problems == []
    assert [stats.geometry.shape for stats in report.stats] == [(122, 101, 112), (122, 101, 30)]
    assert all(len(stats.labels_present) == 12 for stats in report.stats)
    assert report.warnings == ["organs declared but absent from all labeled cases: esophagus"]
    assert "10 esophagus" in describe_dataset(dataset, report)


def test_label_values_finds_large_ids_and_ignores_background():
    array = np.zeros((40, 40, 40), np.int32)
    array[1, 2, 3], array[-1, -1, -1] = 70000, 5
    assert _label_values(array) == {5, 70000}
    assert _label_values(np.asfortranarray(array[:, :, :20] * 0)) == set()


def test_warnings_are_not_problems_and_labels_can_be_optional(tmp_path):
    root = make_nnunet(tmp_path / "ds", train=2, unlabeled=0, test=0)
    (root / "imagesUnlabeled").rmdir()
    (root / "labelsTr/case1.nii.gz").unlink()
    far = tmp_path / "far"
    far.mkdir()
    write_volume(make_volume(spacing_mm=(0.8, 0.9, 8.0)), far / "thick.nii.gz")  # no air, thick slices
    report = check_dataset(discover_dataset(root, unlabeled=[far]), require_labels=False)
    assert report.problems == []
    assert len(report.warnings) == 2
    assert report.warnings[0].startswith(f"{far / 'thick.nii.gz'}: lowest intensity")
    assert report.warnings[1].startswith("unlabeled case 'thick': spacing (0.8, 0.9, 8.0) mm is far outside")
    assert "image without a label map" in check(root)[0]


def test_cli_check_with_explicit_folders(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    write_image(images / "FLARE22_Tr_0001_0000.nii.gz")
    write_labels(labels / "FLARE22_Tr_0001.nii.gz")
    assert main(["check", "--images", str(images), "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "dataset: (explicit folders)" in out and "labels: 13 organs (ids 1-13)" in out
    assert re.search(r"^ +10 esophagus +0$", out, re.MULTILINE) and "no dataset.json" in out
    assert main(["check", "--images", str(tmp_path / "missing")]) == 2
    assert f"organseg: error: {tmp_path / 'missing'}: training image folder not found" in capsys.readouterr().err
