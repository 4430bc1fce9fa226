"""Training cases prepared once: normalisation statistics, canonical labels, stage-1 grids.

Each case is read once and stored under `RUN_DIR/cache/` as .npy files that are
memory-mapped afterwards, so training never re-reads NIfTI files and memory stays flat
however many cases there are (nnU-Net preprocesses the same way):

- `{case}_hu.npy`: the image (HU) at native resolution, its axes in the order the file
  keeps them in memory: exactly the `ScanView` inference builds from the same file, so
  stage 2's crops go through `stage_input` as at inference;
- `{case}_labels.npy`: the label map at native resolution, canonical;
- `{case}_grid1_image.npy` (float32, `stage_input` of the whole volume) and
  `{case}_grid1_labels.npy`: the whole volume on stage 1's grid;
- `{case}.json`: the transform to canonical, spacing, normalisation statistics, the organs'
  bounding box, and the settings the files were made with (a change of them remakes the files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from organseg.atomic import atomic_write, write_text
from organseg.config import Config
from organseg.dataset import Case
from organseg.io import read_image, read_label
from organseg.labels import IGNORE_LABEL
from organseg.preprocess.crop import Box, bounding_box
from organseg.preprocess.orientation import AxisTransform, canonical_transform
from organseg.preprocess.resample import resample_labels
from organseg.preprocess.stage_input import ScanView, stage_input
from organseg.progress import progress_bar


@dataclass(frozen=True)
class PreparedCase:
    """One training case in canonical orientation; arrays are memory-mapped."""

    case_id: str
    scan: ScanView  # the image, memory-mapped in its file's memory order
    labels: np.ndarray  # (X, Y, Z) canonical, uint8/uint16
    spacing_mm: tuple[float, float, float]  # canonical axes
    organ_box: Box  # all organs, no margin (the whole volume when there are none)
    grid1_image: np.ndarray  # (1, G1...) float32, stage 1's input
    grid1_labels: np.ndarray  # (G1...)
    weight: float = 1.0  # loss weight of this case's samples (pseudo-labels weigh less)
    pseudo: bool = False  # labeled by a model, not a person
    annotated: tuple[int, ...] | None = None  # label ids its labels annotate (partial labels); None: all
    synthetic: bool = False  # a generated phantom (organseg.synthetic), not a scan


def prepare_cases(
    cases: list[Case], cache_dir: Path, config: Config, pseudo: bool = False, synthetic: bool = False
) -> list[PreparedCase]:
    """Prepare (or reuse from `cache_dir`) every case; `pseudo` marks pseudo-labeled ones, `synthetic` phantoms."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(config)
    prepared = []
    for case in progress_bar(cases, desc="preparing cases", unit="case"):
        meta_path = cache_dir / f"{case.case_id}.json"
        if not _is_current(meta_path, settings, case):
            _write_case(case, cache_dir, config, settings)
        weight = config.ssl.pseudo_weight if pseudo else config.synthetic.weight if synthetic else 1.0
        prepared.append(
            replace(_load_case(cache_dir, case.case_id, weight, pseudo, case.annotated), synthetic=synthetic)
        )
    return prepared


def _settings(config: Config) -> dict:
    """What the cached files depend on."""
    return {
        "window_hu": list(config.window_hu),
        "grid1": list(config.stage1.grid),
        "label_resampling": config.label_resampling,
        "version": 2,
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
    scan = ScanView.of(image.array, transform, config.window_hu)
    hu = np.ascontiguousarray(scan.voxels)
    if hu.dtype.kind in "iu" and hu.min() >= -32768 and hu.max() <= 32767:
        hu = hu.astype(np.int16)
    labels = np.ascontiguousarray(transform.apply(label.array))
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    grid = config.stage1.grid
    arrays = {
        "hu": hu,
        "labels": labels,
        "grid1_image": stage_input(scan, Box.whole(scan.shape), grid),
        "grid1_labels": resample_labels(labels, grid, config.label_resampling),
    }
    for name, array in arrays.items():
        with atomic_write(cache_dir / f"{case.case_id}_{name}.npy") as temporary:
            np.save(temporary, array)
    organs = (labels > 0) & (labels != IGNORE_LABEL)  # a pseudo-label's unknown voxels are no organ
    box = bounding_box(organs, geometry.spacing_mm) or Box.whole(labels.shape)
    meta = {
        "settings": settings,
        "sources": {"image": str(case.image), "label": str(case.label)},
        "transform": {"permutation": list(scan.transform.permutation), "flipped": list(scan.transform.flipped)},
        "spacing_mm": list(geometry.spacing_mm),
        "mean": scan.mean,
        "std": scan.std,
        "organ_box": [list(box.start), list(box.stop)],
    }
    # The json is written last: its presence says the case is complete.
    write_text(cache_dir / f"{case.case_id}.json", json.dumps(meta))


def _load_case(
    cache_dir: Path, case_id: str, weight: float, pseudo: bool, annotated: tuple[int, ...] | None
) -> PreparedCase:
    meta = json.loads((cache_dir / f"{case_id}.json").read_text())

    def array(name: str) -> np.ndarray:
        return np.load(cache_dir / f"{case_id}_{name}.npy", mmap_mode="r")

    transform = AxisTransform(tuple(meta["transform"]["permutation"]), tuple(meta["transform"]["flipped"]))
    window = tuple(meta["settings"]["window_hu"])
    return PreparedCase(
        case_id=case_id,
        scan=ScanView(array("hu"), transform, window, meta["mean"], meta["std"]),
        labels=array("labels"),
        spacing_mm=tuple(meta["spacing_mm"]),
        organ_box=Box(*meta["organ_box"]),
        grid1_image=array("grid1_image"),
        grid1_labels=array("grid1_labels"),
        weight=weight,
        pseudo=pseudo,
        annotated=annotated,
    )
