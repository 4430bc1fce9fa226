"""Completing partially labeled cases with a teacher's pseudo-labels (self-training).

A partially labeled case annotates some organs; the teacher's pseudo-label (cleaned and
confidence-masked as for unlabeled scans) supplies the others. Ground truth always wins
where it exists: its organs stay exactly, and a voxel it calls background stays
background if the teacher calls it one of the annotated organs. Elsewhere the teacher's
organ, background or unknown (its unsure voxels) fills in. A pseudo-label the filter
rejects leaves its case as it was: partially labeled, learnt with the marginal loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from organseg.dataset import Case
from organseg.io import read_label, write_label
from organseg.pseudolabel import PseudoLabel

log = logging.getLogger(__name__)


def complete_labels(truth: np.ndarray, pseudo: np.ndarray, annotated: tuple[int, ...]) -> np.ndarray:
    """The label map of a case annotating `annotated`, its other organs taken from `pseudo`."""
    from_teacher = ~np.isin(pseudo, annotated)  # background, unknown, or an organ the truth does not annotate
    completed = np.where(from_teacher, pseudo, 0).astype(truth.dtype)
    marked = truth > 0
    completed[marked] = truth[marked]
    return completed


def complete_cases(
    cases: list[Case], manifest: list[PseudoLabel], out_dir: Path, learnt: tuple[int, ...] | None
) -> list[Case]:
    """`cases` (partially labeled) completed where the teacher's pseudo-label was kept; written to `out_dir`.

    `learnt`: the label ids the teacher predicts (None: all); a completed case annotates them
    together with its own.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {row.case_id: row for row in manifest}
    completed = []
    for case in cases:
        row = rows.get(case.case_id)
        if row is None or not row.kept:
            completed.append(case)
            continue
        truth, pseudo = read_label(case.label), read_label(row.label)
        target = out_dir / f"{case.case_id}.nii.gz"
        write_label(complete_labels(truth.array, pseudo.array, case.annotated), truth.geometry, target)
        annotated = None if learnt is None else tuple(sorted(set(learnt) | set(case.annotated)))
        completed.append(Case(case.case_id, case.image, target, annotated))
    done = sum(case.label.parent == out_dir for case in completed)
    log.info("%d of %d partially labeled cases completed by the teacher (%s)", done, len(cases), out_dir)
    return completed
