"""`organseg report`: a visual quality-assurance report of a folder of predicted label maps.

OUT_DIR/
  index.html               organ colours, the cases, metrics per organ, volumes, training curves
  cases/{case}.html        one page per case: its pictures and a table per organ
  cases/{case}.png         axial, coronal and sagittal planes through the organs, prediction over the CT
  cases/{case}_vs_gt.png   prediction above ground truth on the same planes (with ground truth)
  evaluation/              `organseg evaluate`'s files (with ground truth)
  run/                     the run's training curves (with a run folder)

The pages are plain HTML and CSS that link only to these files, so the folder reads offline
and can be copied elsewhere whole. Every text shown is escaped. Each file is written
atomically and index.html last: a folder without index.html holds an unfinished report.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from organseg.atomic import atomic_write, read_jsonl, write_text
from organseg.config import STAGES
from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.evaluate import EvaluationResult, label_files, run_evaluation
from organseg.io import Volume, read_image, read_label
from organseg.labels import FLARE22, LabelSet
from organseg.metrics import organ_volumes_ml
from organseg.pictures import save_comparison_png, save_overlay_png
from organseg.progress import progress_bar
from organseg.report_html import CaseResult, ReportCase, StageLog, case_html, case_page, index_html

log = logging.getLogger(__name__)
LOG_ROWS = 5  # last rows of each stage's training log shown
BLANK_HU = -1000.0  # the background drawn under label maps when no CT is given: air, black in the window


def run_report(
    pred_dir: Path,
    out_dir: Path,
    images_dir: Path | None = None,
    gt_dir: Path | None = None,
    run_dir: Path | None = None,
    label_set: LabelSet | None = None,
    workers: int | None = None,
) -> Path:
    """Write the report of the label maps in `pred_dir` into `out_dir`; returns index.html.

    Args:
        images_dir: the CT images predicted (matched by case id); without them labels are drawn on black.
        gt_dir: ground-truth label maps: adds DSC and NSD (`run_evaluation`) and comparison pictures.
        run_dir: the training run: adds its curves and the last rows of its logs.
        label_set: organ names (default: the run's labels.json, else FLARE22's 13 organs).
        workers: processes for the evaluation (default: all cores).
    Raises InputError (naming the folder or file) before anything is written for missing
    folders, a folder without label maps, or a run folder without trained stages.
    """
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    cases = find_cases(pred_dir, images_dir, gt_dir)
    run_labels = _run_labels(Path(run_dir)) if run_dir is not None else None  # also checks it is a run
    label_set = label_set or run_labels or FLARE22
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; give an output folder")
    evaluation = None
    if gt_dir is not None:  # first: it checks every pair (and writes nothing) before anything is drawn
        evaluation = run_evaluation(pred_dir, gt_dir, out_dir / "evaluation", label_set, workers=workers)
        for message in evaluation.warnings:
            log.warning(message)
    (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    results = [_draw_case(case, out_dir, label_set) for case in progress_bar(cases, desc="drawing")]
    _add_scores(results, evaluation)
    stages = _copy_run(Path(run_dir), out_dir) if run_dir is not None else []
    for index, result in enumerate(results):
        neighbours = (results[index - 1] if index else None, results[index + 1] if index + 1 < len(results) else None)
        write_text(out_dir / case_page(result.case.case_id), case_html(result, label_set, neighbours))
    sources = {"predictions": pred_dir, "images": images_dir, "ground truth": gt_dir, "run": run_dir}
    index = out_dir / "index.html"
    write_text(index, index_html(results, label_set, evaluation, stages, sources))
    return index


def find_cases(pred_dir: Path, images_dir: Path | None = None, gt_dir: Path | None = None) -> list[ReportCase]:
    """The predicted label maps of `pred_dir` with their images and ground truth, by case id."""
    predictions = label_files(Path(pred_dir), "prediction")
    if not predictions:
        raise InputError(f"{pred_dir}: no label map files found; give the folder organseg predict wrote")
    images = _images(Path(images_dir)) if images_dir is not None else {}
    truths = label_files(Path(gt_dir), "ground-truth") if gt_dir is not None else {}
    return [ReportCase(case, path, images.get(case), truths.get(case)) for case, path in predictions.items()]


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found; give the folder of CT images that was predicted")
    dataset = discover_dataset(None, images=folder)
    if dataset.problems:
        raise InputError(dataset.problems[0])
    return {case.case_id: case.image for case in dataset.labeled}


def _run_labels(run_dir: Path) -> LabelSet:
    """The label set a run was trained with; InputError unless `run_dir` holds a trained stage."""
    if not any((run_dir / stage / "log.jsonl").is_file() for stage in STAGES):
        raise InputError(f"{run_dir}: not a training run (no stage1/ or stage2/ log.jsonl); give the RUN_DIR of train")
    labels = run_dir / "labels.json"
    if not labels.is_file():
        return FLARE22
    try:
        return LabelSet.from_mapping(json.loads(labels.read_text()), source=str(labels))
    except json.JSONDecodeError as error:
        raise InputError(f"{labels}: not valid JSON ({error}); restore it from a checkpoint") from None


def _draw_case(case: ReportCase, out_dir: Path, label_set: LabelSet) -> CaseResult:
    """Read a case, draw its pictures and measure its organ volumes."""
    prediction = read_label(case.prediction)
    notes = []
    if case.image is not None:
        image = read_image(case.image)
        found = prediction.geometry.differences(image.geometry)
        if found:
            raise InputError(
                f"{case.prediction}: not on the grid of its image {case.image} ({'; '.join(found)}); predict it again"
            )
    else:
        image = Volume(np.full(prediction.geometry.shape, BLANK_HU, np.float32), prediction.geometry)
        notes.append("no CT image given: labels drawn on black")
    overlay = f"cases/{case.case_id}.png"
    save_overlay_png(image, prediction, out_dir / overlay, label_set, title=case.case_id)
    comparison, gt_volumes = None, None
    if case.ground_truth is not None:
        truth = read_label(case.ground_truth)
        comparison = f"cases/{case.case_id}_vs_gt.png"
        save_comparison_png(image, prediction, truth, out_dir / comparison, label_set, title=case.case_id)
        gt_volumes = organ_volumes_ml(truth, label_set)
    else:
        notes.append("no ground truth for this case")
    counts = np.bincount(np.asarray(prediction.array).ravel(order="K"))
    unknown = sorted(set(np.flatnonzero(counts).tolist()) - {0, *label_set.ids})
    if unknown:
        notes.append(f"label values not in the label set: {unknown}")
    return CaseResult(case, overlay, comparison, organ_volumes_ml(prediction, label_set), gt_volumes, notes=notes)


def _add_scores(results: list[CaseResult], evaluation: EvaluationResult | None) -> None:
    if evaluation is None:
        return
    by_case = {result.case.case_id: result for result in results}
    for row in evaluation.rows:
        by_case[row["case"]].scores[row["label"]] = (row["dsc"], row["nsd"])


def _copy_run(run_dir: Path, out_dir: Path) -> list[StageLog]:
    """Copy each stage's curve.png into OUT_DIR/run/ and read the last rows of its log."""
    (out_dir / "run").mkdir(exist_ok=True)
    stages = []
    for stage in STAGES:
        log = run_dir / stage / "log.jsonl"
        if not log.is_file():
            continue
        curve = None
        if (run_dir / stage / "curve.png").is_file():
            curve = f"run/{stage}_curve.png"
            with atomic_write(out_dir / curve) as temporary:
                shutil.copyfile(run_dir / stage / "curve.png", temporary)
        stages.append(StageLog(stage, curve, tuple(read_jsonl(log)[-LOG_ROWS:])))
    return stages
