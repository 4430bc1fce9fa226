"""Write phantom cases as an nnU-Net v2 raw dataset folder, images as NIfTI files or DICOM series."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from organseg.atomic import write_json
from organseg.dicom.ct_series import write_ct_series
from organseg.errors import InputError
from organseg.io import write_label, write_volume
from organseg.labels import FLARE22
from organseg.phantom.case import generate_case
from organseg.phantom.orientations import ORIENTATIONS, orient
from organseg.progress import progress_bar

# split: (image folder, label folder or None, case name pattern); the order fixes each split's seed key.
SPLITS = {
    "train": ("imagesTr", "labelsTr", "phantom_{:03d}"),
    "unlabeled": ("imagesUnlabeled", None, "phantom_u{:03d}"),
    "test": ("imagesTs", "labelsTs", "phantom_t{:03d}"),
}


def case_seed(seed: int, split: str, index: int) -> int:
    """The seed of case `index` (from 1) of `split`: independent of how many cases the other splits have."""
    key = list(SPLITS).index(split)
    return int(np.random.SeedSequence(seed, spawn_key=(key, index)).generate_state(1, np.uint64)[0])


def write_dataset(
    out: Path,
    labeled: int,
    unlabeled: int,
    test: int,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    dicom: str | None = None,
) -> Path:
    """Write an nnU-Net v2 raw dataset; returns the folder.

    The folder appears complete or not at all: cases are written to a hidden folder beside
    `out`, which is renamed when everything is written.

    Args:
        out: folder to create; it may exist only if empty.
        labeled, unlabeled, test: number of cases in imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs.
        seed: non-negative; the same seed gives byte-identical cases.
        shape: voxels per case (see generate_case); None for small, varied sizes.
        dicom: None for NIfTI images; else write each image as a DICOM series folder
            (imagesTr/phantom_001/...) in this orientation (organseg.phantom.orientations),
            or "mixed" for the orientations in turn, case by case; label maps stay NIfTI,
            on the series' grid.
    """
    out = Path(out)
    counts = {"train": labeled, "unlabeled": unlabeled, "test": test}
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not empty; choose a new folder or empty this one")
    if dicom is not None and dicom not in (*ORIENTATIONS, "mixed"):
        raise InputError(f"unknown DICOM orientation {dicom!r}; choose one of {', '.join(ORIENTATIONS)} or mixed")
    if seed < 0 or min(counts.values()) < 0:
        raise InputError(f"seed and case counts must be >= 0, got seed {seed}, counts {counts}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_cases(staging, counts, seed, shape, dicom)
        _write_dataset_json(staging, counts, seed)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_cases(root: Path, counts: dict[str, int], seed: int, shape, dicom: str | None) -> None:
    jobs = [(split, index) for split, count in counts.items() for index in range(1, count + 1)]
    for split, count in counts.items():
        for folder in SPLITS[split][:2]:
            if folder and count:
                (root / folder).mkdir()
    for split, index in progress_bar(jobs, desc="phantom cases", unit="case"):
        images, labels, pattern = SPLITS[split]
        name = pattern.format(index)
        image, label_map = generate_case(case_seed(seed, split, index), shape)
        if dicom:
            orientation = ORIENTATIONS[(index - 1) % len(ORIENTATIONS)] if dicom == "mixed" else dicom
            image, label_map = orient(image, orientation), orient(label_map, orientation)
            uid_seed = f"organseg phantom {seed} {split} {index}"
            write_ct_series(image, root / images / name, uid_seed, name, reverse_files=orientation == "axial-reversed")
        else:
            write_volume(image, root / images / f"{name}_0000.nii.gz")
        if labels:
            write_label(label_map.array, label_map.geometry, root / labels / f"{name}.nii.gz")


def _write_dataset_json(root: Path, counts: dict[str, int], seed: int) -> None:
    meta = {
        "name": "organseg_phantom",
        "description": f"Synthetic abdominal CT phantoms with the 13 FLARE22 organs (organseg, seed {seed})",
        "channel_names": {"0": "CT"},
        "labels": FLARE22.to_json(),
        "numTraining": counts["train"],
        "file_ending": ".nii.gz",
        "numUnlabeled": counts["unlabeled"],
        "numTest": counts["test"],
    }
    write_json(root / "dataset.json", meta)
