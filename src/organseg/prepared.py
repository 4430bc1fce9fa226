"""Training cases prepared once: canonical orientation, normalisation statistics, stage-1 grids.

Each case is read and reoriented once and stored under `RUN_DIR/cache/` as .npy files that
are memory-mapped afterwards, so training never re-reads NIfTI files and memory stays flat
however many cases there are (nnU-Net preprocesses the same way):

- `{case}_hu.npy`, `{case}_labels.npy`: the canonical image (HU) and label map at native
  resolution, for stage 2's crops;
- `{case}_grid1_image.npy` (float16, normalised) and `{case}_grid1_labels.npy`: the whole
  volume on stage 1's grid;
- `{case}.json`: spacing, normalisation statistics, the organs' bounding box, and the
  settings the files were made with (a change of them remakes the files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organseg.atomic import atomic_write, write_text
from organseg.config import Config
from organseg.dataset import Case
from organseg.io import read_image, read_label
from organseg.labels import IGNORE_LABEL
from organseg.preprocess.crop import Box, bounding_box
from organseg.preprocess.normalize import ct_statistics, normalize_ct
from organseg.preprocess.orientation import canonical_transform
from organseg.preprocess.resample import resample_image, resample_labels
from organseg.progress import progress_bar


@dataclass(frozen=True)
class PreparedCase:
    """One training case in canonical orientation; arrays are memory-mapped."""

    case_id: str
    hu: np.ndarray  # (X, Y, Z) canonical, Hounsfield units
    labels: np.ndarray  # (X, Y, Z) uint8/uint16
    spacing_mm: tuple[float, float, float]
    mean: float  # normalisation statistics of the whole case
    std: float
    organ_box: Box  # all organs, no margin (the whole volume when there are none)
    grid1_image: np.ndarray  # (G1...) float16, normalised
    grid1_labels: np.ndarray  # (G1...)
    weight: float = 1.0  # loss weight of this case's samples (pseudo-labels weigh less)
    pseudo: bool = False  # labeled by a model, not a person


def prepare_cases(cases: list[Case], cache_dir: Path, config: Config, pseudo: bool = False) -> list[PreparedCase]:
    """Prepare (or reuse from `cache_dir`) every case; `pseudo` marks pseudo-labeled ones."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(config)
    prepared = []
    for case in progress_bar(cases, desc="preparing cases", unit="case"):
        meta_path = cache_dir / f"{case.case_id}.json"
        if not _is_current(meta_path, settings, case):
            _write_case(case, cache_dir, config, settings)
        weight = config.ssl.pseudo_weight if pseudo else 1.0
        prepared.append(_load_case(cache_dir, case.case_id, weight, pseudo))
    return prepared


def _settings(config: Config) -> dict:
    """What the cached files depend on."""
    return {
        "window_hu": list(config.window_hu),
        "grid1": list(config.stage1.grid),
        "label_resampling": config.label_resampling,
        "version": 1,
    }


def _is_current(meta_path: Path, settings: dict, case: Case) -> bool:
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    sources = {"image": str(case.image), "label": str(case.label)}
    return meta.get("settings") == settings and meta.get("sources") == sources


def _write_case(case: Case, cache_dir: Path, config: Config, settings: dict) -> None:
    image, label = read_image(case.image), read_label(case.label)
    transform = canonical_transform(image.geometry)
    geometry = transform.apply_geometry(image.geometry)
    hu = np.ascontiguousarray(transform.apply(image.array))
    if hu.dtype.kind in "iu" and hu.min() >= -32768 and hu.max() <= 32767:
        hu = hu.astype(np.int16)
    labels = np.ascontiguousarray(transform.apply(label.array))
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    mean, std = ct_statistics(hu, config.window_hu)
    normalized = normalize_ct(hu, config.window_hu, mean, std)
    grid = config.stage1.grid
    arrays = {
        "hu": hu,
        "labels": labels,
        "grid1_image": resample_image(normalized, grid).numpy().astype(np.float16),
        "grid1_labels": resample_labels(labels, grid, config.label_resampling).numpy(),
    }
    for name, array in arrays.items():
        with atomic_write(cache_dir / f"{case.case_id}_{name}.npy") as temporary:
            np.save(temporary, array)
    organs = (labels > 0) & (labels != IGNORE_LABEL)  # a pseudo-label's unknown voxels are no organ
    box = bounding_box(organs, geometry.spacing_mm) or Box.whole(labels.shape)
    meta = {
        "settings": settings,
        "sources": {"image": str(case.image), "label": str(case.label)},
        "spacing_mm": list(geometry.spacing_mm),
        "mean": mean,
        "std": std,
        "organ_box": [list(box.start), list(box.stop)],
    }
    # The json is written last: its presence says the case is complete.
    write_text(cache_dir / f"{case.case_id}.json", json.dumps(meta))


def _load_case(cache_dir: Path, case_id: str, weight: float, pseudo: bool) -> PreparedCase:
    meta = json.loads((cache_dir / f"{case_id}.json").read_text())

    def array(name: str) -> np.ndarray:
        return np.load(cache_dir / f"{case_id}_{name}.npy", mmap_mode="r")

    return PreparedCase(
        case_id=case_id,
        hu=array("hu"),
        labels=array("labels"),
        spacing_mm=tuple(meta["spacing_mm"]),
        mean=meta["mean"],
        std=meta["std"],
        organ_box=Box(*meta["organ_box"]),
        grid1_image=array("grid1_image"),
        grid1_labels=array("grid1_labels"),
        weight=weight,
        pseudo=pseudo,
    )
