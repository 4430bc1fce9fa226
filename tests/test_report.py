"""`organseg report`: every link resolves, names and numbers appear escaped, errors are one line."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from organseg.cli import main
from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import read_image, read_label, write_label, write_volume
from organseg.labels import FLARE22
from organseg.phantom import write_dataset
from organseg.pictures import save_training_curve
from organseg.report import LOG_ROWS, run_report

ODD = "odd <b>&amp; case"  # a case id that is HTML if not escaped
SPLEEN = 3


class _Page(HTMLParser):
    """The links (href, src) and the visible text of an HTML page."""

    def __init__(self, path: Path):
        super().__init__()
        self.links: list[str] = []
        self.text: list[str] = []
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs) -> None:
        self.links += [value for name, value in attrs if name in ("href", "src")]

    def handle_data(self, data) -> None:
        self.text.append(data)

    @property
    def joined(self) -> str:
        return " ".join(self.text)


def _local_targets(page_path: Path) -> tuple[_Page, list[Path]]:
    page = _Page(page_path)
    targets = []
    for link in page.links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, f"{page_path.name} links outside the report: {link}"
        if parts.path:
            targets.append((page_path.parent / unquote(parts.path)).resolve())
    return page, targets


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Two phantom cases (one with an awkward name), predictions that miss the spleen in it, a fake run."""
    root = tmp_path_factory.mktemp("qa")
    data = write_dataset(root / "phantoms", labeled=0, unlabeled=0, test=2, seed=7, shape=(40, 36, 24))
    folders = {name: root / name for name in ("images", "gt", "pred")}
    for folder in folders.values():
        folder.mkdir()
    for case, name in (("phantom_t001", "phantom_t001"), ("phantom_t002", ODD)):
        shutil.copyfile(data / "imagesTs" / f"{case}_0000.nii.gz", folders["images"] / f"{name}_0000.nii.gz")
        shutil.copyfile(data / "labelsTs" / f"{case}.nii.gz", folders["gt"] / f"{name}.nii.gz")
        labels = read_label(data / "labelsTs" / f"{case}.nii.gz")
        array = labels.array.copy()
        if name == ODD:
            array[array == SPLEEN] = 0
        write_label(array, labels.geometry, folders["pred"] / f"{name}.nii.gz")
    folders["run"] = _fake_run(root / "run")
    return folders


def _fake_run(run_dir: Path) -> Path:
    for stage in ("stage1", "stage2"):
        (run_dir / stage).mkdir(parents=True)
        rows = [{"epoch": e, "loss": 1.0 / e, "lr": 1e-3, "val_dice": 0.777, "val_dice_per_organ": {}} for e in (1, 2)]
        rows += [{"epoch": e, "loss": 1.0 / e, "lr": 1e-3, "val_dice": 0.01 * e + 0.123} for e in range(3, 9)]
        (run_dir / stage / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        save_training_curve(rows, run_dir / stage / "curve.png", title=stage)
    (run_dir / "labels.json").write_text(json.dumps(FLARE22.to_json()))
    return run_dir


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    index = run_report(inputs["pred"], out, inputs["images"], inputs["gt"], inputs["run"], workers=1)
    assert index == out / "index.html"
    return out


def test_every_link_of_every_page_resolves_to_a_file(report: Path) -> None:
    index, targets = _local_targets(report / "index.html")
    case_pages = [t for t in targets if t.suffix == ".html"]
    assert len(set(case_pages)) == 2
    for page in set(case_pages):
        targets += _local_targets(page)[1]
    for target in targets:
        assert target.is_file(), target
        assert report.resolve() in target.parents  # the folder is self-contained
    pictures = {t.relative_to(report.resolve()).as_posix() for t in targets if t.suffix == ".png"}
    assert {"cases/phantom_t001.png", f"cases/{ODD}_vs_gt.png", "evaluation/boxplot.png"} <= pictures
    assert {"run/stage1_curve.png", "run/stage2_curve.png"} <= pictures
    for picture in pictures:
        assert (report / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(report.rglob(".*partial*"))


def test_curves_are_copied_and_the_logs_last_rows_shown(report: Path, inputs) -> None:
    assert (report / "run" / "stage2_curve.png").read_bytes() == (inputs["run"] / "stage2" / "curve.png").read_bytes()
    text = _Page(report / "index.html").joined
    assert "stage1" in text and "stage2" in text and "val_dice" in text
    assert "0.203" in text  # val_dice of the last epoch, 0.01 * 8 + 0.123
    assert LOG_ROWS <= 6 and "0.777" not in text  # epochs 1-2 are older than the last LOG_ROWS rows
    assert "val_dice_per_organ" not in text  # a mapping, not a column


def test_names_are_escaped_and_organs_listed(report: Path) -> None:
    raw = (report / "index.html").read_text()
    assert ODD not in raw and "odd &lt;b&gt;&amp;amp; case" in raw
    text = _Page(report / "index.html").joined
    assert ODD in text
    for name in FLARE22.to_json():
        if name != "background":
            assert name in text, name


def test_metrics_and_volumes_appear_in_the_pages(report: Path) -> None:
    with open(report / "evaluation" / "metrics.csv", newline="") as stream:
        metrics = list(csv.DictReader(stream))
    pages = {case: _Page(report / "cases" / f"{case}.html").joined for case in ("phantom_t001", ODD)}
    for row in metrics:
        assert f"{float(row['dsc']):.4f}" in pages[row["case"]]
        assert f"{float(row['nsd']):.4f}" in pages[row["case"]]
    spleen = [row for row in metrics if row["case"] == ODD and int(row["label"]) == SPLEEN]
    assert float(spleen[0]["dsc"]) == 0.0
    summary = json.loads((report / "evaluation" / "summary.json").read_text())
    index = _Page(report / "index.html").joined
    assert f"{summary['overall']['dsc']['mean']:.4f}" in index
    assert f"{summary['organs']['spleen']['dsc']['mean']:.4f}" in index
    with open(report / "evaluation" / "volumes.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            assert f"{float(row['volume_ml']):.1f}" in pages[row["case"]]


def test_cli_report_of_predictions_alone(inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plain"
    assert main(["report", str(inputs["pred"]), "--out", str(out)]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    assert not (out / "evaluation").exists() and not (out / "run").exists()
    page = _Page(out / "cases" / "phantom_t001.html").joined
    assert "no CT image given" in page and "DSC" not in page
    for target in _local_targets(out / "index.html")[1]:
        assert target.is_file(), target


def test_missing_prediction_folder_is_one_line(tmp_path: Path, capsys) -> None:
    absent, out = tmp_path / "absent", tmp_path / "out"
    assert main(["report", str(absent), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("organseg: error: ")
    assert str(absent) in lines[0] and "not found" in lines[0]
    assert not out.exists()


def test_a_folder_that_is_not_a_run_is_refused(inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["report", str(inputs["pred"]), "--out", str(out), "--run", str(inputs["images"])]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(inputs["images"]) in error and "not a training run" in error
    assert not out.exists()


def test_a_prediction_off_its_image_grid_is_refused(inputs, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = read_image(inputs["images"] / "phantom_t001_0000.nii.gz")
    geometry = image.geometry
    moved = Geometry(geometry.shape, geometry.spacing_mm, np.add(geometry.origin_mm, 5.0), geometry.direction)
    write_volume(type(image)(image.array, moved), images / "phantom_t001_0000.nii.gz")
    with pytest.raises(InputError, match="not on the grid of its image") as error:
        run_report(inputs["pred"], tmp_path / "out", images)
    assert "phantom_t001" in str(error.value) and "origin" in str(error.value)
    assert not (tmp_path / "out" / "index.html").exists()
