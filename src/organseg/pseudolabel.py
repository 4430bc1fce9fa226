"""Pseudo-labels: a trained cascade on unlabeled images, cleaned, scored and filtered.

`organseg pseudo-label RUN_DIR IMAGES_DIR OUT_DIR` writes into OUT_DIR:

  {case}.nii.gz   the cleaned label map of each image, on exactly its grid
  scores.jsonl    one line per finished case, appended after its label map is in place;
                  a rerun skips the cases listed here, so a killed run resumes
  source.json     the model that made them (a rerun with another model is refused)
  manifest.csv    case, quality score and its parts, organ volumes (mL), kept, reason
  manifest.json   the same, with the filter rule that decided `kept`

Split over workers (`--shard I/N`, or torchrun's ranks; see organseg.shards), each worker
labels its own cases and appends to its own `scores.shard-I-of-N.jsonl`, since appends
from several processes to one file could interleave. Every worker reads the union of all
scores files, so a rerun of any worker, sharded or not, skips whatever any worker finished.
The manifest needs every case: the worker that finds all of them scored when its own are
done writes it (the last to finish; two finishing together write the same file), and a
rerun of any worker once all are done writes it again. Do not run an unsharded worker
beside sharded ones in one folder: it would take up their cases too.

Clean-up (after the cascade's largest component per organ): pieces under
`ssl.min_component_ml` removed, cavities enclosed by one organ filled. Then, with
`ssl.min_voxel_confidence` > 0, voxels where the teacher's top probability is lower are
set to IGNORE_LABEL (255, "unknown"), which the student's loss leaves out: an undertrained
teacher under-segments, and its doubtful borders would otherwise teach the student to shrink
organs. An organ's threshold is lowered so that at most `ssl.max_unsure_share` of its
voxels become unknown: a small organ the teacher doubts everywhere is not erased.

Quality score: the mean of the model's own evidence (organseg.cascade.Segmentation):
stage 2's confidence, stage 1 / stage 2 agreement, agreement between two crops, and, from
the second round on, agreement with the previous round's pseudo-label. A case where no
organ was found is always rejected; the filter (`ssl.filter`) keeps all others, those above
a threshold, or the best fraction.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organseg.atomic import append_line, create_once, read_jsonl, sweep_partials, write_json, write_text
from organseg.cascade import Segmenter
from organseg.config import SelfTrainingConfig
from organseg.dataset import Case, folder_cases
from organseg.errors import InputError
from organseg.io import Volume, read_image, read_label, write_label
from organseg.labels import IGNORE_LABEL, LabelSet
from organseg.memory import release_free_memory
from organseg.metrics import mean_dice, organ_volumes_ml
from organseg.open_model import open_segmenter
from organseg.postprocess import fill_holes, keep_largest_component, remove_small_components
from organseg.progress import progress_bar
from organseg.shards import WHOLE, Shard

LABEL_SUFFIX = ".nii.gz"
SCORES = "scores.jsonl"
SOURCE = "source.json"
MANIFEST = "manifest.csv"
EVIDENCE_KEYS = {"confidence", "stage_agreement", "crop_agreement", "previous_agreement"}


@dataclass(frozen=True)
class PseudoLabel:
    """One row of the manifest."""

    case_id: str
    image: Path
    label: Path
    score: float
    kept: bool
    reason: str  # why it was rejected ("" when kept)


def run_pseudo_labeling(
    run_dir: Path,
    images: Path | list[Case],
    out_dir: Path,
    settings: SelfTrainingConfig | None = None,
    previous_dir: Path | None = None,
    device: str = "auto",
    shard: Shard = WHOLE,
) -> list[PseudoLabel] | None:
    """Pseudo-label every image (a folder or a list of cases) with the run's model; returns the manifest.

    `settings` defaults to the run's own `ssl` settings. `previous_dir` holds the previous
    round's pseudo-labels, whose agreement then joins the quality score. With `shard`,
    only that shard's cases are labeled; None is returned while other shards still have
    cases to finish (the manifest is then theirs to write).
    """
    out_dir = Path(out_dir)
    cases = _image_cases(images) if isinstance(images, Path) else list(images)
    segmenter = open_segmenter(run_dir, device)
    settings = settings or segmenter.config.ssl
    _claim(out_dir, Path(run_dir))
    mine = shard.select(cases, key=lambda case: case.case_id)
    # What a killed run of this worker was writing; its case is redone below. Other
    # workers' temporary files are theirs: they may be writing them right now.
    sweep_partials(out_dir, None if shard.is_whole else [case.case_id for case in mine])
    done = read_scores(out_dir)
    todo = [case for case in mine if not _finished(out_dir, case, done)]
    scores = scores_path(out_dir, shard)
    for case in progress_bar(todo, desc="pseudo-labeling", unit="case"):
        _pseudo_label_case(segmenter, case, out_dir, settings, previous_dir, scores)
        release_free_memory()  # flat over thousands of cases (organseg.memory)
    done = read_scores(out_dir)  # with the rows other workers appended meanwhile
    if not all(_finished(out_dir, case, done) for case in cases):
        return None
    rows = [done[case.case_id] for case in cases]
    return write_manifest(out_dir, cases, rows, settings, segmenter.label_set)


def _finished(out_dir: Path, case: Case, done: dict[str, dict]) -> bool:
    return case.case_id in done and _label_path(out_dir, case).is_file()


def _image_cases(folder: Path) -> list[Case]:
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; give the folder of unlabeled images")
    return folder_cases(folder)


def _claim(out_dir: Path, run_dir: Path) -> None:
    """Record which model writes here; refuse to mix two models' pseudo-labels in one folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SOURCE
    source = {"run_dir": str(run_dir.resolve())}
    # Workers may start together: one of them creates the file, the others compare with it.
    if not create_once(path, json.dumps(source) + "\n") and json.loads(path.read_text()) != source:
        raise InputError(f"{out_dir}: holds pseudo-labels of another model ({path}); choose a new OUT_DIR")


def _label_path(out_dir: Path, case: Case) -> Path:
    return out_dir / f"{case.case_id}{LABEL_SUFFIX}"


def _pseudo_label_case(
    segmenter: Segmenter,
    case: Case,
    out_dir: Path,
    settings: SelfTrainingConfig,
    previous_dir: Path | None,
    scores: Path,
) -> dict:
    image = read_image(case.image)
    segmentation = segmenter.segment(image, evidence=True)
    labels = clean_pseudo_label(segmentation.labels, settings)
    evidence = dict(segmentation.evidence)
    previous = previous_dir / f"{case.case_id}{LABEL_SUFFIX}" if previous_dir else None
    if previous is not None and previous.is_file():
        evidence["previous_agreement"] = mean_dice(labels.array, _known(read_label(previous).array))
    volumes = organ_volumes_ml(labels, segmenter.label_set)
    unsure = unsure_voxels(segmentation.confidence, labels.array, settings, segmenter.label_set)
    labels = Volume(np.where(unsure, IGNORE_LABEL, labels.array).astype(labels.array.dtype), labels.geometry)
    row = {
        "case": case.case_id,
        "image": str(case.image),
        "score": float(np.mean(list(evidence.values()))),
        "organs_found": sum(volume > 0 for volume in volumes.values()),
        "unsure_percent": round(100 * float(unsure.mean()), 3),
        **{name: round(value, 6) for name, value in evidence.items()},
        "volumes_ml": {segmenter.label_set.name(label): round(volume, 3) for label, volume in volumes.items()},
    }
    write_label(labels.array, labels.geometry, _label_path(out_dir, case))
    append_line(scores, json.dumps(row))  # a torn line is ignored by read_scores, its case redone
    return row


def unsure_voxels(
    confidence: np.ndarray, labels: np.ndarray, settings: SelfTrainingConfig, label_set: LabelSet
) -> np.ndarray:
    """Voxels to mark unknown: the teacher's top probability below its label's threshold.

    Background's threshold is `min_voxel_confidence`; an organ's is lower where needed so
    that at most `max_unsure_share` of its voxels become unknown.
    """
    if settings.min_voxel_confidence <= 0 or label_set.max_id >= IGNORE_LABEL:
        return np.zeros(confidence.shape, bool)
    thresholds = np.full(label_set.max_id + 1, settings.min_voxel_confidence, np.float32)
    if settings.max_unsure_share < 1:
        for label in np.unique(labels[labels > 0]):
            inside = confidence[labels == label]
            # A value of the organ's own ("lower", not interpolated): strictly below it lie
            # at most that share of its voxels, ties included.
            share = float(np.quantile(inside, settings.max_unsure_share, method="lower"))
            thresholds[label] = min(thresholds[label], share)
    return confidence < thresholds[labels]


def _known(labels: np.ndarray) -> np.ndarray:
    """A pseudo-label with its unknown voxels as background, for comparisons."""
    return np.where(labels == IGNORE_LABEL, 0, labels)


def clean_pseudo_label(labels: Volume, settings: SelfTrainingConfig) -> Volume:
    """Largest component per organ, small pieces removed, enclosed holes filled."""
    array = keep_largest_component(labels.array)
    if settings.min_component_ml > 0:
        array = remove_small_components(array, labels.geometry.spacing_mm, settings.min_component_ml)
    if settings.fill_holes:
        array = fill_holes(array)
    return Volume(array, labels.geometry)


def scores_path(out_dir: Path, shard: Shard = WHOLE) -> Path:
    """The scores file a worker appends to: scores.jsonl, or scores.shard-I-of-N.jsonl for a shard."""
    return Path(out_dir) / (SCORES if shard.is_whole else f"scores.{shard.tag}.jsonl")


def scores_files(out_dir: Path) -> list[Path]:
    """Every worker's scores file in `out_dir`, the least recently written first."""
    paths = [Path(out_dir) / SCORES, *Path(out_dir).glob("scores.shard-*-of-*.jsonl")]
    return sorted((path for path in paths if path.is_file()), key=lambda path: (path.stat().st_mtime_ns, path.name))


def read_scores(out_dir: Path) -> dict[str, dict]:
    """The finished cases' rows, by case id, from all scores files (the last row wins, the newest file last)."""
    rows = {}
    for path in scores_files(out_dir):
        rows.update((row["case"], row) for row in read_jsonl(path))
    return rows


def decide(rows: list[dict], settings: SelfTrainingConfig) -> list[tuple[bool, str]]:
    """(kept, reason) for each row under the filter rule."""
    usable = [row for row in rows if row["organs_found"] > 0]
    cut = -math.inf
    if settings.filter == "threshold":
        cut = settings.min_score
    elif settings.filter == "fraction" and usable:
        ranked = sorted((row["score"] for row in usable), reverse=True)
        cut = ranked[max(1, math.ceil(settings.keep_fraction * len(ranked))) - 1]
    decisions = []
    for row in rows:
        if row["organs_found"] == 0:
            decisions.append((False, "no organ found"))
        elif row["score"] < cut:
            rule = (
                f"below the threshold {settings.min_score:g}"
                if settings.filter == "threshold"
                else f"not in the best {settings.keep_fraction:.0%}"
            )
            decisions.append((False, f"score {row['score']:.3f} {rule}"))
        else:
            decisions.append((True, ""))
    return decisions


def write_manifest(
    out_dir: Path, cases: list[Case], rows: list[dict], settings: SelfTrainingConfig, label_set: LabelSet
) -> list[PseudoLabel]:
    """manifest.csv and manifest.json (atomically); returns the manifest."""
    decisions = decide(rows, settings)
    manifest = [
        PseudoLabel(case.case_id, case.image, _label_path(out_dir, case), row["score"], kept, reason)
        for case, row, (kept, reason) in zip(cases, rows, decisions)
    ]
    records = [{**row, "kept": kept, "reason": reason} for row, (kept, reason) in zip(rows, decisions)]
    rule = {"filter": settings.filter, "min_score": settings.min_score, "keep_fraction": settings.keep_fraction}
    write_json(out_dir / "manifest.json", {"rule": rule, "cases": records})
    write_text(out_dir / MANIFEST, _manifest_csv(records, label_set))
    return manifest


def _manifest_csv(records: list[dict], label_set: LabelSet) -> str:
    evidence = sorted({key for record in records for key in record} & EVIDENCE_KEYS)
    organs = [name for _, name in sorted(label_set.names)]
    header = ["case", "kept", "reason", "score", *evidence, "organs_found", "unsure_percent"]
    header += [f"{name} (mL)" for name in organs]
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        values = [record["case"], record["kept"], record["reason"], f"{record['score']:.4f}"]
        values += [f"{record[key]:.4f}" if key in record else "" for key in evidence]
        values += [record["organs_found"], record.get("unsure_percent", 0.0)]
        values += [record["volumes_ml"].get(name, 0.0) for name in organs]
        writer.writerow(values)
    return buffer.getvalue()
