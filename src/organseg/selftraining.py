"""Self-training rounds (`organseg ssl`): teacher, pseudo-labels, student, and again.

RUN_DIR/
  config.json         the settings of every round
  cache/              the labeled cases (and phantoms), prepared once for all rounds
  phantoms/           generated phantoms that train in every round (`synthetic.phantoms`), if any
  round0/             the teacher, trained on the labeled cases alone (full supervision)
  round1/pseudo/      round 0's pseudo-labels of the unlabeled images, with their manifest
  round1/partial/     with partially labeled cases: round 0's pseudo-labels of them (pseudo/)
                      and the cases completed with them (completed/), ground truth first
  round1/             the student, trained on the labeled + kept pseudo-labeled cases, from
                      its teacher's weights (`ssl.student_init`) or from scratch
  round2/ ...         the same with round 1 as the teacher (`ssl.rounds`)
  rounds.json         per round: validation DSC and NSD per organ, pseudo-labels kept; and
                      which round is shipped, and why (`ssl.ship`)
  rounds.md           the same as a table: full supervision against every round

Every round folder is a complete run for `organseg predict`. All rounds validate on the
same held-out labeled cases, so their figures compare, and the best of them by mean
validation DSC is shipped: a round that made the model worse is not the answer. `--resume`
continues where a run stopped: finished rounds are kept, an interrupted training or
pseudo-labeling goes on; with a larger `--rounds` it adds students to a finished run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from organseg.atomic import write_json, write_text
from organseg.checkpoint import load_checkpoint
from organseg.completion import complete_cases
from organseg.config import Config, load_config, save_config
from organseg.dataset import Case, Dataset
from organseg.dataset_checks import check_dataset, describe_dataset
from organseg.errors import InputError
from organseg.io import read_image, read_label
from organseg.labels import LabelSet
from organseg.metrics import evaluate_case, finite_mean
from organseg.open_model import open_segmenter
from organseg.pseudolabel import run_pseudo_labeling
from organseg.runs import TrainingInputs, choose_split, run_training

log = logging.getLogger(__name__)


def round_dir(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"round{index}"


def run_ssl(dataset: Dataset, run_dir: Path, config: Config | None, device: str = "auto") -> dict:
    """Teacher, then `config.ssl.rounds` students; returns the content of rounds.json.

    `config` None resumes the run where it stopped, with its saved settings.
    """
    run_dir = Path(run_dir)
    if not dataset.unlabeled:
        raise InputError(
            f"{dataset.root or dataset.images_folder}: no unlabeled images (imagesUnlabeled or --unlabeled); "
            "self-training needs some, or train with organseg train"
        )
    report = check_dataset(dataset)  # once for all rounds, before anything is written
    log.info("%s", describe_dataset(dataset, report))
    if report.problems:
        raise InputError("\n".join(report.problems))
    config = _ssl_config(run_dir, config)
    # One split for every round, so that all rounds validate on the same cases.
    teacher_split = round_dir(run_dir, 0) / "splits.json"
    split = json.loads(teacher_split.read_text()) if teacher_split.is_file() else choose_split(dataset.labeled, config)
    rounds = []
    for index in range(config.ssl.rounds + 1):
        learnt = teacher_learnt(round_dir(run_dir, index - 1), dataset.label_set) if index else None
        pseudo = _pseudo_cases(run_dir, index, dataset, config, device, learnt)
        start = round_dir(run_dir, index - 1) if index and config.ssl.student_init == "teacher" else None
        inputs = TrainingInputs(
            tuple(pseudo),
            run_dir / "cache",
            split,
            dataset_checked=True,
            init_from=start,
            phantoms_dir=run_dir / "phantoms",
        )
        labeled = _completed(run_dir, index, dataset, split, config, device, learnt)
        _train_round(labeled, run_dir, index, config, inputs, device)
        rounds.append(round_summary(run_dir, index, dataset, pseudo, len(dataset.unlabeled), device))
        _write_summary(run_dir, {"rounds": rounds}, dataset.label_set)
    summary = {"rounds": rounds, "shipped": choose_shipped(rounds, config.ssl.ship)}
    _write_summary(run_dir, summary, dataset.label_set)
    log.info("%s", rounds_table(rounds, dataset.label_set))
    log.info("shipped: %s, %s", summary["shipped"]["model_dir"], summary["shipped"]["reason"])
    return summary


def choose_shipped(rounds: list[dict], rule: str = "validation") -> dict:
    """The round to ship: {"round", "model_dir", "reason"}.

    "validation": the highest mean validation DSC, the earlier round on a tie (a student
    must be better, not as good, to replace its teacher); "last": the last round. Without
    a validation case there is nothing to choose by, and the last round is shipped.
    """
    last = rounds[-1]
    scores = [r["mean"]["dsc"] for r in rounds]
    if rule == "last" or any(score is None for score in scores):
        why = "ssl.ship=last" if rule == "last" else "no validation score to choose by"
        return {"round": last["round"], "model_dir": last["model_dir"], "reason": f"the last round: {why}"}
    best = rounds[scores.index(max(scores))]
    others = ", ".join(f"{_round_name(r['round'])} {r['mean']['dsc']:.3f}" for r in rounds if r is not best)
    reason = f"the highest mean validation DSC, {best['mean']['dsc']:.3f} (against {others})"
    return {"round": best["round"], "model_dir": best["model_dir"], "reason": reason}


def _round_name(index: int) -> str:
    return "the teacher" if index == 0 else f"round {index}"


def _ssl_config(run_dir: Path, config: Config | None) -> Config:
    saved = run_dir / "config.json"
    if config is None:
        if not saved.is_file():
            raise InputError(f"{run_dir}: nothing to resume (no config.json); start without --resume")
        return load_config(saved)
    if saved.is_file():
        raise InputError(f"{run_dir}: already holds a self-training run; use --resume or choose a new RUN_DIR")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    return config


def add_rounds(run_dir: Path, rounds: int) -> None:
    """Let a self-training run go on to `rounds` students: its finished rounds are kept, `--resume` adds the rest."""
    config = _ssl_config(Path(run_dir), None)
    if rounds < config.ssl.rounds:
        raise InputError(
            f"{run_dir}: the run has {config.ssl.rounds} rounds and --rounds can only add some; "
            f"give --rounds {config.ssl.rounds} or more, or start a new RUN_DIR"
        )
    save_config(replace(config, ssl=replace(config.ssl, rounds=rounds)), Path(run_dir) / "config.json")


def _pseudo_cases(
    run_dir: Path, index: int, dataset: Dataset, config: Config, device: str, learnt: tuple[int, ...] | None
) -> list[Case]:
    """Round `index`'s kept pseudo-labeled cases, made by the previous round (none for the teacher).

    `learnt`: what that teacher predicts (`teacher_learnt`); its pseudo-labels annotate only that.
    """
    if index == 0:
        return []
    out = round_dir(run_dir, index) / "pseudo"
    previous = round_dir(run_dir, index - 1) / "pseudo" if index > 1 else None
    teacher = round_dir(run_dir, index - 1)
    manifest = run_pseudo_labeling(teacher, list(dataset.unlabeled), out, config.ssl, previous, device)
    kept = [Case(row.case_id, row.image, row.label, learnt) for row in manifest if row.kept]
    log.info("round %d: %d of %d pseudo-labeled cases kept (%s)", index, len(kept), len(manifest), out / "manifest.csv")
    if not kept:
        raise InputError(f"{out}: every pseudo-label was rejected; loosen ssl.filter / ssl.min_score")
    return kept


def _completed(
    run_dir: Path,
    index: int,
    dataset: Dataset,
    split: dict,
    config: Config,
    device: str,
    learnt: tuple[int, ...] | None,
) -> Dataset:
    """The dataset with round `index`'s teacher completing its partially labeled training cases (none for round 0)."""
    partial = [case for case in dataset.labeled if case.annotated is not None and case.case_id in split["train"]]
    if index == 0 or not partial:
        return dataset
    teacher, folder = round_dir(run_dir, index - 1), round_dir(run_dir, index) / "partial"
    manifest = run_pseudo_labeling(teacher, partial, folder / "pseudo", config.ssl, None, device)
    completed = {c.case_id: c for c in complete_cases(partial, manifest, folder / "completed", learnt)}
    return replace(dataset, labeled=tuple(completed.get(case.case_id, case) for case in dataset.labeled))


def teacher_learnt(teacher: Path, label_set: LabelSet) -> tuple[int, ...] | None:
    """The label ids a trained run predicts; None when it predicts all of its label set."""
    unlearnt = load_checkpoint(Path(teacher) / "stage2" / "best.pt", "cpu").get("unlearnt", [])
    return tuple(label for label in label_set.ids if label not in unlearnt) if unlearnt else None


def _train_round(
    dataset: Dataset, run_dir: Path, index: int, config: Config, inputs: TrainingInputs, device: str
) -> None:
    folder = round_dir(run_dir, index)
    started = (folder / "config.json").is_file()
    log.info("round %d: training the %s in %s", index, "teacher" if index == 0 else "student", folder)
    run_training(dataset, folder, None if started else config, device=device, inputs=inputs)


def round_summary(run_dir: Path, index: int, dataset: Dataset, pseudo: list[Case], unlabeled: int, device: str) -> dict:
    """Round `index`: its model folder, pseudo-labels kept, validation scores."""
    folder = round_dir(run_dir, index)
    return {
        "round": index,
        "model_dir": str(folder),
        "pseudo_labels_kept": len(pseudo),
        "pseudo_labels_made": unlabeled if index else 0,
        **validation_scores(folder, dataset, device),
    }


def validation_scores(model_dir: Path, dataset: Dataset, device: str = "auto") -> dict:
    """DSC and NSD per organ on the run's validation cases: the full cascade, on the original grid."""
    splits = json.loads((Path(model_dir) / "splits.json").read_text())
    by_id = {case.case_id: case for case in dataset.labeled}
    segmenter = open_segmenter(model_dir, device)
    rows = []
    for case_id in splits["validation"]:
        case = by_id[case_id]
        prediction = segmenter.predict(read_image(case.image))
        rows += evaluate_case(prediction, read_label(case.label), dataset.label_set)
    organs = {}
    for label, name in sorted(dataset.label_set.names):
        organ_rows = [row for row in rows if row["label"] == label]
        organs[name] = {metric: finite_mean([row[metric] for row in organ_rows]) for metric in ("dsc", "nsd")}
    return {
        "validation_cases": splits["validation"],
        "organs": organs,
        "mean": {metric: finite_mean([organ[metric] for organ in organs.values()]) for metric in ("dsc", "nsd")},
    }


def _write_summary(run_dir: Path, summary: dict, label_set: LabelSet) -> None:
    write_json(run_dir / "rounds.json", summary)
    text = rounds_table(summary["rounds"], label_set) + "\n"
    if "shipped" in summary:
        shipped = summary["shipped"]
        text += f"\nshipped: {_round_name(shipped['round'])}, {shipped['model_dir']}: {shipped['reason']}\n"
    write_text(run_dir / "rounds.md", text)


def rounds_table(rounds: list[dict], label_set: LabelSet) -> str:
    """Markdown: validation DSC / NSD per organ, full supervision (round 0) against every round."""
    if not rounds or not rounds[0]["validation_cases"]:
        return "no validation case: nothing to compare (set validation_cases >= 1)"
    names = ["full supervision" if r["round"] == 0 else f"round {r['round']}" for r in rounds]
    lines = [
        f"validation DSC / NSD on {len(rounds[0]['validation_cases'])} held-out labeled case(s)",
        "",
        "| organ | " + " | ".join(names) + " |",
        "|---" * (len(rounds) + 1) + "|",
    ]
    for _, organ in sorted(label_set.names):
        cells = [_pair(r["organs"][organ]) for r in rounds]
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(_pair(r["mean"]) for r in rounds) + " |")
    kept = [f"{r['pseudo_labels_kept']}/{r['pseudo_labels_made']}" if r["round"] else "–" for r in rounds]
    lines.append("| pseudo-labels kept | " + " | ".join(kept) + " |")
    return "\n".join(lines)


def _pair(scores: dict) -> str:
    return " / ".join("–" if scores[m] is None else f"{scores[m]:.3f}" for m in ("dsc", "nsd"))
