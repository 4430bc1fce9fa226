"""The pages of `organseg report`: plain HTML and CSS, every text escaped, linking only to files of the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from organseg.evaluate import EvaluationResult
from organseg.labels import LabelSet, label_colour
from organseg.metrics import finite_mean


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
    return f'<span class="swatch" style="background:{label_colour(label)}"></span>'


def case_page(case: str) -> str:
    return f"cases/{case}.html"


def _legend_html(label_set: LabelSet) -> str:
    items = "".join(f"<li>{_swatch(label)}{label} {escape(name)}</li>" for label, name in sorted(label_set.names))
    return f'<h2 id="legend">Organ colours</h2>\n<ul class="legend">{items}</ul>'


def index_html(
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
                _link(case_page(case), case),
                f'<a href="{escape(quote(case_page(case)))}">{_image(result.overlay, case, "thumb")}</a>',
                str(sum(volume > 0 for volume in result.volumes_ml.values())),
                _number(sum(result.volumes_ml.values()), 1),
                _number(finite_mean([s[0] for s in scores]), 4),
                _number(finite_mean([s[1] for s in scores]), 4),
            ]
        )
    header = ["case", "picture", "organs found", "all organs (mL)", "mean DSC", "mean NSD"]
    return '<h2 id="cases">Cases</h2>\n' + _table(header, rows, text_columns=2)


def _volumes_html(results: list[CaseResult], label_set: LabelSet) -> str:
    ids = label_set.ids
    rows = []
    for result in results:
        cells = [_link(case_page(result.case.case_id), result.case.case_id)]
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


def case_html(result: CaseResult, label_set: LabelSet, neighbours: tuple[CaseResult | None, ...]) -> str:
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
