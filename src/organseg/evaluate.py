"""Folder-against-folder evaluation: FLARE DSC and NSD per case and organ, tables, a plot, volumes.

`run_evaluation` pairs predictions with ground-truth label maps by case id, scores every
pair (in parallel processes), and writes, each file atomically and only once every case
has been scored:

- `metrics.csv`: `case,label,organ,dsc,nsd`, one row per case and organ;
- `summary.json`: per organ and overall mean, std (population, ddof=0), median and n, plus
  the settings (tolerances, z rule). "Overall" is over cases, of each case's mean over organs
  (FLARE's ranking score); NaN scores (FLARE's z rule on a one-slice organ) are left out;
- `summary.md`: a Markdown table of DSC and NSD, mean ± std, per organ and a mean row;
- `boxplot.png`: DSC and NSD box plots per organ;
- `volumes.csv`: `case,label,organ,volume_ml` of the predictions.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organseg.atomic import atomic_write
from organseg.errors import InputError
from organseg.io import case_id, is_image_path, read_label
from organseg.labels import FLARE22, LabelSet
from organseg.metrics import (
    Z_RULES,
    check_same_grid,
    default_tolerances_mm,
    evaluate_case,
    finite_mean,
    organ_volumes_ml,
)
from organseg.progress import progress_bar

OUTPUT_NAMES = ("metrics.csv", "summary.json", "summary.md", "boxplot.png", "volumes.csv")


@dataclass(frozen=True)
class EvaluationResult:
    """What `run_evaluation` found and wrote."""

    rows: tuple[dict, ...]  # {case, label, organ, dsc, nsd}, by case then label
    volumes: tuple[dict, ...]  # {case, label, organ, volume_ml} of the predictions
    summary: dict  # the content of summary.json
    outputs: dict[str, Path]  # output name (OUTPUT_NAMES) -> path
    warnings: tuple[str, ...] = ()  # e.g. predictions without ground truth, which were skipped


def run_evaluation(
    pred_dir: Path,
    gt_dir: Path,
    out_dir: Path,
    label_set: LabelSet | None = None,
    tolerances_mm: dict[int, float] | None = None,
    flare_z_rule: str = "inclusive",
    workers: int | None = None,
) -> EvaluationResult:
    """Score every ground-truth case in `gt_dir` against its prediction in `pred_dir`; write to `out_dir`.

    Args:
        label_set: organs to score (default FLARE22's 13).
        tolerances_mm: NSD tolerance (mm) per label id; others get `default_tolerances_mm`.
        flare_z_rule: "inclusive" (default), "flare" (the official code's off-by-one) or
            "none"; see `organseg.metrics.evaluate_case`.
        workers: processes (default: CPU count; 1 runs in this process).
    Raises InputError for missing predictions (all listed), unreadable files, or a prediction
    on another voxel grid than its ground truth (both files named); nothing is written then.
    """
    label_set = label_set or FLARE22
    if flare_z_rule not in Z_RULES:
        raise InputError(f"z rule must be one of {', '.join(Z_RULES)}, got {flare_z_rule!r}")
    tolerances = _resolve_tolerances(label_set, tolerances_mm)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; give an output folder")
    pairs, warnings = pair_cases(Path(pred_dir), Path(gt_dir))
    jobs = [(case, pred, gt, label_set, tolerances, flare_z_rule) for case, pred, gt in pairs]
    results = _run_jobs(jobs, min(workers, len(jobs)))
    rows = tuple(row for case, _, _ in pairs for row in results[case][0])
    volumes = tuple(row for case, _, _ in pairs for row in results[case][1])
    summary = summarize_metrics(rows, label_set, tolerances, flare_z_rule)
    outputs = _write_outputs(out_dir, rows, volumes, summary)
    return EvaluationResult(rows, volumes, summary, outputs, tuple(warnings))


def pair_cases(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(case, prediction, ground truth) for every ground-truth file, and warnings.

    Files match by name without the image suffix; a trailing `_0000` on either side is
    ignored. A ground-truth case without prediction is an error (all are listed); a
    prediction without ground truth is a warning.
    """
    predictions, gts = label_files(pred_dir, "prediction"), label_files(gt_dir, "ground-truth")
    if not gts:
        raise InputError(f"{gt_dir}: no label map files found; give the folder of ground-truth label maps")
    missing = [f"  {case}: no prediction for {path}" for case, path in gts.items() if case not in predictions]
    if missing:
        raise InputError("\n".join([f"{pred_dir}: {len(missing)} ground-truth case(s) have no prediction:", *missing]))
    warnings = [
        f"{path}: prediction without ground truth in {gt_dir}; skipped"
        for case, path in predictions.items()
        if case not in gts
    ]
    pairs = [(case, predictions[case], gt) for case, gt in gts.items()]
    return pairs, warnings


def label_files(folder: Path, role: str) -> dict[str, Path]:
    """Case id -> label map file of a folder (hidden files, e.g. partial writes, are skipped)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder not found; give an existing folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not is_image_path(path):
            continue
        case = case_id(path)  # a prediction named like its image (`case_0000`) still matches `case`
        if case in found:
            raise InputError(f"{path}: same case as {found[case].name} in one folder; keep one of them")
        found[case] = path
    return dict(sorted(found.items()))


def _resolve_tolerances(label_set: LabelSet, tolerances_mm: dict[int, float] | None) -> dict[int, float]:
    tolerances = default_tolerances_mm(label_set)
    for label, tolerance in (tolerances_mm or {}).items():
        if label not in tolerances:
            raise InputError(f"NSD tolerance given for label {label}, which the label set does not have")
        if not tolerance > 0:
            raise InputError(f"NSD tolerance of label {label} must be positive, got {tolerance}")
        tolerances[label] = float(tolerance)
    return tolerances


def evaluate_pair(
    case: str, pred_path: Path, gt_path: Path, label_set: LabelSet, tolerances: dict[int, float], z_rule: str
) -> tuple[list[dict], list[dict]]:
    """Metric rows and prediction volume rows of one case (runs in a worker process)."""
    pred, gt = read_label(pred_path), read_label(gt_path)
    check_same_grid(pred.geometry, gt.geometry, f"prediction {pred_path}", f"ground truth {gt_path}")
    rows = [{"case": case, **row} for row in evaluate_case(pred, gt, label_set, tolerances, z_rule)]
    volumes = [
        {"case": case, "label": label, "organ": label_set.name(label), "volume_ml": volume}
        for label, volume in organ_volumes_ml(pred, label_set).items()
    ]
    return rows, volumes


def _run_jobs(jobs: list[tuple], workers: int) -> dict[str, tuple[list[dict], list[dict]]]:
    """Run `evaluate_pair` on every job; on failure raise one InputError with every error seen."""
    bar = progress_bar(total=len(jobs), desc="evaluating", unit="case")
    results, errors = {}, []
    with bar:
        if workers <= 1:
            for job in jobs:
                results[job[0]] = evaluate_pair(*job)
                bar.update()
            return results
        # 'spawn': no inherited threads or locks from the parent (SimpleITK, BLAS) to deadlock on.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(evaluate_pair, *job): job[0] for job in jobs}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    results[futures[future]] = future.result()
                except InputError as error:
                    errors.append(str(error))
                    # Stop early: cases already running finish, so their errors are reported too.
                    for pending in futures:
                        pending.cancel()
                bar.update()
    if errors:
        raise InputError("\n".join(errors))
    return results


def summarize_metrics(rows: tuple[dict, ...], label_set: LabelSet, tolerances: dict[int, float], z_rule: str) -> dict:
    """Per-organ and overall statistics of metric rows, with the settings that produced them."""
    organs = {}
    for label, name in sorted(label_set.names):
        organ_rows = [row for row in rows if row["label"] == label]
        organs[name] = {
            "label": label,
            "tolerance_mm": tolerances[label],
            "dsc": _statistics([row["dsc"] for row in organ_rows]),
            "nsd": _statistics([row["nsd"] for row in organ_rows]),
        }
    cases = list(dict.fromkeys(row["case"] for row in rows))
    overall = {}
    for metric in ("dsc", "nsd"):
        case_means = [finite_mean([row[metric] for row in rows if row["case"] == case]) for case in cases]
        overall[metric] = _statistics(case_means)
    return {
        "cases": cases,
        "settings": {
            "flare_z_rule": z_rule,
            "tolerances_mm": {label_set.name(label): tolerance for label, tolerance in sorted(tolerances.items())},
            "std": "population (ddof=0)",
            "overall": "over cases, of each case's mean over organs",
        },
        "organs": organs,
        "overall": overall,
    }


def _statistics(values: list[float]) -> dict:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "median": None, "n": 0}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(np.median(finite)),
        "n": int(finite.size),
    }


def _write_outputs(out_dir: Path, rows: tuple[dict, ...], volumes: tuple[dict, ...], summary: dict) -> dict:
    """Write all outputs; each appears complete under its name, and none does if any write fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {name: out_dir / name for name in OUTPUT_NAMES}
    texts = {
        "metrics.csv": _csv_text(("case", "label", "organ", "dsc", "nsd"), rows),
        "volumes.csv": _csv_text(("case", "label", "organ", "volume_ml"), volumes),
        "summary.json": json.dumps(summary, indent=2) + "\n",
        "summary.md": summary_markdown(summary),
    }
    with contextlib.ExitStack() as stack:
        temporaries = {name: stack.enter_context(atomic_write(path)) for name, path in outputs.items()}
        for name, text in texts.items():
            temporaries[name].write_text(text)
        _write_boxplot(rows, summary, temporaries["boxplot.png"])
    return outputs


def _csv_text(header: tuple[str, ...], rows: tuple[dict, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    # repr-exact floats: the summary's means can be recomputed from the CSV to the last digit.
    writer.writerows(
        {key: (repr(float(value)) if isinstance(value, float | np.floating) else value) for key, value in row.items()}
        for row in rows
    )
    return buffer.getvalue()


def summary_markdown(summary: dict) -> str:
    """A Markdown table: DSC and NSD mean ± std per organ, and the overall mean row."""
    lines = [
        f"# Evaluation of {len(summary['cases'])} cases",
        "",
        f"FLARE z rule: {summary['settings']['flare_z_rule']}; std over cases (ddof=0); "
        "mean row: over cases, of each case's mean over organs.",
        "",
        "| organ | label | NSD tolerance (mm) | n | DSC | NSD |",
        "|---|---|---|---|---|---|",
    ]
    for name, organ in summary["organs"].items():
        scores = f"{organ['dsc']['n']} | {_mean_std(organ['dsc'])} | {_mean_std(organ['nsd'])}"
        lines.append(f"| {name} | {organ['label']} | {organ['tolerance_mm']:g} | {scores} |")
    overall = summary["overall"]
    lines.append(
        f"| **mean** | | | {overall['dsc']['n']} | {_mean_std(overall['dsc'])} | {_mean_std(overall['nsd'])} |"
    )
    return "\n".join(lines) + "\n"


def _mean_std(statistics: dict) -> str:
    if statistics["n"] == 0:
        return "–"
    return f"{statistics['mean']:.4f} ± {statistics['std']:.4f}"


def _write_boxplot(rows: tuple[dict, ...], summary: dict, path: Path) -> None:
    """DSC and NSD box plots per organ, drawn on an Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(summary["organs"])
    figure = Figure(figsize=(max(6.0, 0.55 * len(names) + 2), 8), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, metric, title in zip(figure.subplots(2, 1, sharex=True), ("dsc", "nsd"), ("DSC", "NSD")):
        data = [[row[metric] for row in rows if row["organ"] == name and np.isfinite(row[metric])] for name in names]
        axes.boxplot(data)
        axes.set_ylabel(title)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(axis="y", alpha=0.3)
    axes.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right")
    figure.suptitle(f"{len(summary['cases'])} cases, z rule: {summary['settings']['flare_z_rule']}")
    figure.savefig(path, format="png", dpi=100)
