"""`organseg demo`: the main job on built-in synthetic data.

Today it generates a semi-supervised phantom dataset (few labelled, more unlabelled, a
held-out test set), validates it as `organseg check` does and draws one case. Training,
pseudo-labelling and evaluation join here as they arrive.
"""

from __future__ import annotations

import sys
from pathlib import Path

from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.io import read_image, read_label
from organseg.phantom import write_dataset
from organseg.report import save_overlay_png
from organseg.validation import summarize, validate_dataset

FULL = {"labeled": 4, "unlabeled": 12, "test": 4}
QUICK = {"labeled": 2, "unlabeled": 4, "test": 2}


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> None:
    """Generate (or reuse) the demo dataset under `out`, validate it and draw a case."""
    out = Path(out)
    data = out / "dataset"
    if (data / "dataset.json").is_file():
        print(f"reusing the phantom dataset in {data}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_dataset(data, seed=seed, **(QUICK if quick else FULL))
    dataset = discover_dataset(data)
    report = validate_dataset(dataset, progress=sys.stderr.isatty())
    print(summarize(dataset, report))
    if report.problems:
        raise InputError("\n".join(report.problems))
    case = dataset.labeled[0]
    picture = out / f"{case.case_id}.png"
    save_overlay_png(read_image(case.image), read_label(case.label), picture, dataset.label_set, title=case.case_id)
    print(f"picture of {case.case_id} with its labels: {picture}")
