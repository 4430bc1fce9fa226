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
import shutil
import warnings
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
from tqdm import tqdm

from organseg.atomic import atomic_write
from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.evaluate import EvaluationResult, label_files, run_evaluation
from organseg.io import Volume, read_image, read_label
from organseg.labels import FLARE22, LabelSet
from organseg.metrics import organ_volumes_ml
from organseg.report import PALETTE, save_comparison_png, save_overlay_png
from organseg.train import read_log

STAGES = ("stage1", "stage2")
LOG_ROWS = 5  # last rows of each stage's training log shown
BLANK_HU = -1000.0  # the background drawn under label maps when no CT is given: air, black in the window


@dataclass(frozen=True)
class ReportCase:
    """One predicted label map and what it is shown with."""

    case_id: str
    prediction: Path
    image: Path | None = None
    ground_truth: Path | None = None


@dataclass
class CaseResult:
    """What a case's page shows; picture paths are relative to OUT_DIR."""

    case: ReportCase
    overlay: str
    comparison: str | None
    volumes_ml: dict[int, float]
    gt_volumes_ml: dict[int, float] | None
    scores: dict[int, tuple[float, float]] = field(default_factory=dict)  # label -> (DSC, NSD)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StageLog:
    name: str
    curve: str | None  # relative to OUT_DIR
    rows: tuple[dict, ...]  # the log's last rows


def run_qa_report(
    pred_dir: Path,
    out_dir: Path,
    images_dir: Path | None = None,
    gt_dir: Path | None = None,
    run_dir: Path | None = None,
    label_set: LabelSet | None = None,
    workers: int | None = None,
    progress: bool = True,
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
        evaluation = run_evaluation(
            pred_dir, gt_dir, out_dir / "evaluation", label_set, workers=workers, progress=progress
        )
        for message in evaluation.warnings:
            warnings.warn(message, stacklevel=2)
    (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    results = [_draw_case(case, out_dir, label_set) for case in tqdm(cases, desc="drawing", disable=not progress)]
    _add_scores(results, evaluation)
    stages = _copy_run(Path(run_dir), out_dir) if run_dir is not None else []
    for index, result in enumerate(results):
        neighbours = (results[index - 1] if index else None, results[index + 1] if index + 1 < len(results) else None)
        _write_text(out_dir / _case_page(result.case.case_id), _case_html(result, label_set, neighbours))
    sources = {"predictions": pred_dir, "images": images_dir, "ground truth": gt_dir, "run": run_dir}
    index = out_dir / "index.html"
    _write_text(index, _index_html(results, label_set, evaluation, stages, sources))
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
        stages.append(StageLog(stage, curve, tuple(read_log(log)[-LOG_ROWS:])))
    return stages


# ---- HTML ----------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
img.picture { max-width: 100%; border: 1px solid #ccc; } img.thumb { width: 320px; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; border: 1px solid #888; }
ul.legend { list-style: none; padding: 0; columns: 3; } .note { color: #a33; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _link(href: str, text: str) -> str:
    return f'<a href="{escape(quote(href))}">{escape(text)}</a>'


def _image(src: str, alt: str, css: str = "picture") -> str:
    return f'<img class="{css}" src="{escape(quote(src))}" alt="{escape(alt)}" loading="lazy">'


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """An HTML table; cells are HTML already (escape text first); the first `text_columns` align left."""

    def cells(tag: str, values: list[str]) -> str:
        classes = [' class="text"' if i < text_columns else "" for i in range(len(values))]
        return "".join(f"<{tag}{css}>{value}</{tag}>" for css, value in zip(classes, values))

    lines = [f"<tr>{cells('th', [escape(h) for h in header])}</tr>"] + [f"<tr>{cells('td', row)}</tr>" for row in rows]
    return "<table>\n" + "\n".join(lines) + "\n</table>"


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _swatch(label: int) -> str:
    return f'<span class="swatch" style="background:{PALETTE[(label - 1) % len(PALETTE)]}"></span>'


def _case_page(case: str) -> str:
    return f"cases/{case}.html"


def _legend_html(label_set: LabelSet) -> str:
    items = "".join(f"<li>{_swatch(label)}{label} {escape(name)}</li>" for label, name in sorted(label_set.names))
    return f'<h2 id="legend">Organ colours</h2>\n<ul class="legend">{items}</ul>'


def _index_html(
    results: list[CaseResult],
    label_set: LabelSet,
    evaluation: EvaluationResult | None,
    stages: list[StageLog],
    sources: dict[str, Path | None],
) -> str:
    given = [f"{escape(name)}: <code>{escape(str(path))}</code>" for name, path in sources.items() if path is not None]
    contents = [("legend", "Organ colours"), ("cases", "Cases"), ("volumes", "Volumes")]
    contents += [("metrics", "Metrics")] if evaluation else []
    contents += [("training", "Training")] if stages else []
    parts = [
        f"<h1>Segmentation report: {len(results)} case(s)</h1>",
        "<p>" + "<br>".join(given) + "</p>",
        "<p>" + " · ".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in contents) + "</p>",
        _legend_html(label_set),
        _cases_html(results),
        _volumes_html(results, label_set),
    ]
    if evaluation:
        parts.append(_metrics_html(evaluation))
    if stages:
        parts.append(_training_html(stages))
    return _page("organseg report", "\n".join(parts))


def _cases_html(results: list[CaseResult]) -> str:
    rows = []
    for result in results:
        case = result.case.case_id
        scores = list(result.scores.values())
        rows.append(
            [
                _link(_case_page(case), case),
                f'<a href="{escape(quote(_case_page(case)))}">{_image(result.overlay, case, "thumb")}</a>',
                str(sum(volume > 0 for volume in result.volumes_ml.values())),
                _number(sum(result.volumes_ml.values()), 1),
                _number(_finite_mean([s[0] for s in scores]), 4),
                _number(_finite_mean([s[1] for s in scores]), 4),
            ]
        )
    header = ["case", "picture", "organs found", "all organs (mL)", "mean DSC", "mean NSD"]
    return '<h2 id="cases">Cases</h2>\n' + _table(header, rows, text_columns=2)


def _volumes_html(results: list[CaseResult], label_set: LabelSet) -> str:
    ids = label_set.ids
    rows = []
    for result in results:
        cells = [_link(_case_page(result.case.case_id), result.case.case_id)]
        for label in ids:
            text = _number(result.volumes_ml[label], 1)
            if result.gt_volumes_ml is not None:
                text += f" / {_number(result.gt_volumes_ml[label], 1)}"
            cells.append(text)
        rows.append(cells)
    header = ["case", *(label_set.name(label) for label in ids)]
    note = "<p>Predicted volume in mL; with ground truth: predicted / ground truth.</p>"
    return '<h2 id="volumes">Organ volumes</h2>\n' + note + "\n" + _table(header, rows)


def _metrics_html(evaluation: EvaluationResult) -> str:
    summary = evaluation.summary

    def mean_std(statistics: dict) -> str:
        return "–" if not statistics["n"] else f"{statistics['mean']:.4f} ± {statistics['std']:.4f}"

    rows = [
        [
            f"{_swatch(organ['label'])}{escape(name)}",
            str(organ["dsc"]["n"]),
            mean_std(organ["dsc"]),
            mean_std(organ["nsd"]),
        ]
        for name, organ in summary["organs"].items()
    ]
    overall = summary["overall"]
    rows.append(["<b>mean</b>", str(overall["dsc"]["n"]), mean_std(overall["dsc"]), mean_std(overall["nsd"])])
    files = " · ".join(_link(f"evaluation/{name}", name) for name in ("metrics.csv", "summary.json", "volumes.csv"))
    return "\n".join(
        [
            '<h2 id="metrics">Metrics</h2>',
            f"<p>FLARE22 DSC and NSD, mean ± std over cases; z rule: {escape(summary['settings']['flare_z_rule'])}. "
            f"Files: {files}</p>",
            _table(["organ", "n", "DSC", "NSD"], rows),
            _image("evaluation/boxplot.png", "DSC and NSD per organ"),
        ]
    )


def _training_html(stages: list[StageLog]) -> str:
    parts = ['<h2 id="training">Training</h2>']
    for stage in stages:
        parts.append(f"<h3>{escape(stage.name)}</h3>")
        parts.append(_image(stage.curve, f"{stage.name} training curve") if stage.curve else "<p>no curve.png</p>")
        columns = list(dict.fromkeys(k for row in stage.rows for k, v in row.items() if isinstance(v, int | float)))
        rows = [[escape(_log_value(row.get(column))) for column in columns] for row in stage.rows]
        parts.append(f"<p>Last {len(rows)} row(s) of log.jsonl:</p>\n" + _table(columns, rows, text_columns=0))
    return "\n".join(parts)


def _log_value(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _case_html(result: CaseResult, label_set: LabelSet, neighbours: tuple[CaseResult | None, ...]) -> str:
    case = result.case.case_id
    links = [_link("../index.html", "index")]
    for word, other in zip(("previous", "next"), neighbours):
        if other is not None:
            links.append(_link(f"{other.case.case_id}.html", f"{word}: {other.case.case_id}"))
    parts = [f"<p>{' · '.join(links)}</p>", f"<h1>{escape(case)}</h1>"]
    parts += [f'<p class="note">{escape(note)}</p>' for note in result.notes]
    parts.append(f"<p>Prediction: <code>{escape(str(result.case.prediction))}</code></p>")
    parts.append(_image(Path(result.overlay).name, f"{case}: prediction"))
    if result.comparison:
        parts.append("<h2>Prediction (top) and ground truth (bottom)</h2>")
        parts.append(_image(Path(result.comparison).name, f"{case}: prediction and ground truth"))
    parts.append("<h2>Organs</h2>\n" + _organ_table(result, label_set))
    return _page(f"{case} - organseg report", "\n".join(parts))


def _organ_table(result: CaseResult, label_set: LabelSet) -> str:
    header = ["organ", "volume (mL)"]
    header += ["ground truth (mL)"] if result.gt_volumes_ml is not None else []
    header += ["DSC", "NSD"] if result.scores else []
    rows = []
    for label, name in sorted(label_set.names):
        row = [f"{_swatch(label)}{escape(name)}", _number(result.volumes_ml[label], 1)]
        if result.gt_volumes_ml is not None:
            row.append(_number(result.gt_volumes_ml[label], 1))
        if result.scores:
            dsc, nsd = result.scores.get(label, (None, None))
            row += [_number(dsc, 4), _number(nsd, 4)]
        rows.append(row)
    return _table(header, rows)


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
