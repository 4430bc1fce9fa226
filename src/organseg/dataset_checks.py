"""Checking a dataset before any work starts: read every file once, report every problem.

Each problem is one line that names the file, says what is wrong and what to do. Nothing is
refused at the first problem: the user fixes them all in one go, as with nnU-Net's
integrity check. `describe_dataset` turns the result into the text `organseg check` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organseg.dataset import DEFAULT_FILE_ENDING, Case, Dataset
from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import image_stem, read_image, read_label
from organseg.labels import LabelSet
from organseg.preprocess.orientation import canonical_transform
from organseg.progress import progress_bar

# Legal but unusual CT voxel sizes (mm): worth a warning, not a refusal.
USUAL_SPACING_MM = (0.3, 10.0)
# An abdominal CT in HU always holds air (about -1000 HU) in the bowel or around the body.
AIR_HU = -500.0
# Unlabeled or test cases whose spacing lies this factor outside the labeled range are mentioned.
SPACING_FACTOR = 2.0
# Label values are counted in chunks of this many voxels, so memory stays flat on large scans.
CHUNK_VOXELS = 1 << 22


@dataclass(frozen=True)
class CaseStats:
    """What the checks learnt about one case with a readable image (no arrays kept)."""

    case_id: str
    subset: str  # "labeled", "unlabeled" or "test"
    geometry: Geometry
    intensity_range: tuple[float, float]
    labels_present: tuple[int, ...] | None  # declared label ids found; None without a readable label
    annotated: tuple[int, ...] | None = None  # the ids its label map annotates (partial labels); None: all


@dataclass
class DatasetReport:
    """Problems (the dataset cannot be used as is), warnings, and per-case statistics."""

    problems: list[str] = field(default_factory=list)  # '<file>: <what is wrong>; <what to do>'
    warnings: list[str] = field(default_factory=list)
    stats: list[CaseStats] = field(default_factory=list)


def check_dataset(dataset: Dataset, *, require_labels: bool = True) -> DatasetReport:
    """Read every image and label once and report every problem found, one line each.

    require_labels: the training set must exist and every training image needs a label map
    (off e.g. for folders to predict).
    """
    report = DatasetReport(list(dataset.problems), list(dataset.warnings))
    _check_training_folders(dataset, require_labels, report)
    if not (dataset.labeled or dataset.unlabeled or dataset.test) and not require_labels:
        report.problems.append(f"{dataset.root or 'dataset'}: no images found in any folder; add images")
    jobs = [(subset, case) for subset in ("labeled", "unlabeled", "test") for case in getattr(dataset, subset)]
    for subset, case in progress_bar(jobs, desc="checking", unit="case"):
        stats = _check_case(case, subset, dataset.label_set, report)
        report.stats += [stats] if stats is not None else []
    _warn_about_dataset(dataset.label_set, report)
    return report


def _check_training_folders(dataset: Dataset, require_labels: bool, report: DatasetReport) -> None:
    """Folder-level problems of the labeled set: missing or empty folders, missing label maps."""
    images, labels, problems = dataset.images_folder, dataset.labels_folder, report.problems
    if images is not None and images.exists() and not images.is_dir():
        problems.append(f"{images}: is not a folder; give the folder of training images")
    elif require_labels and images is None:
        problems.append("no labeled training images given; give a dataset folder with imagesTr or --images FOLDER")
    elif require_labels and not images.is_dir():
        problems.append(f"{images}: training image folder not found; create it or give --images FOLDER")
    elif images is not None and images.is_dir() and not dataset.labeled:
        problems.append(f"{images}: no images found; add the labeled training images (e.g. case_0000.nii.gz)")
    if not require_labels or not dataset.labeled:
        return
    if labels is None or not labels.is_dir():
        problems.append(f"{labels or 'training labels'}: label folder not found; create it or give --labels FOLDER")
        return
    for case in dataset.labeled:
        if case.label is None:
            name = case.case_id + (case.image.name[len(image_stem(case.image)) :] or DEFAULT_FILE_ENDING)
            problems.append(
                f"{case.image}: image without a label map (no {labels / name}); add it or unlabel the image"
            )


def _check_case(case: Case, subset: str, label_set: LabelSet, report: DatasetReport) -> CaseStats | None:
    """Read a case's image, then its label; problems go to `report`; stats if the image is readable."""
    geometry = intensity_range = None
    try:
        image = read_image(case.image)
    except (InputError, OSError) as error:
        report.problems.append(_one_line(error, case.image))
    else:
        geometry = image.geometry
        intensity_range = (float(image.array.min()), float(image.array.max()))
        del image  # keep memory flat: the label is read only after the image is freed
        _warn_about_image(case.image, geometry, intensity_range, report)
    present = _check_label(case, geometry, label_set, report) if case.label is not None else None
    if geometry is None:
        return None
    return CaseStats(case.case_id, subset, geometry, intensity_range, present, case.annotated)


def _check_label(
    case: Case, image_geometry: Geometry | None, label_set: LabelSet, report: DatasetReport
) -> tuple[int, ...] | None:
    """Problems of a label map (unreadable, not on its image's grid, undeclared values); the ids present."""
    try:
        label = read_label(case.label)
    except (InputError, OSError) as error:
        report.problems.append(_one_line(error, case.label))
        return None
    if image_geometry is not None and (differences := image_geometry.differences(label.geometry)):
        report.problems.append(
            f"{case.label}: label grid differs from its image {case.image.name} (image vs label: "
            f"{', '.join(differences)}); resample the label onto the image grid or fix the header"
        )
    present = _label_values(label.array)
    if undeclared := sorted(present - set(label_set.ids)):
        report.problems.append(
            f"{case.label}: label values {undeclared} are not declared in the label set (ids "
            f"{_id_ranges(label_set.ids)}); fix the label map or declare them in dataset.json"
        )
    if case.annotated is not None and (contradicting := sorted(present & set(label_set.ids) - set(case.annotated))):
        names = ", ".join(label_set.name(label) for label in contradicting)
        report.problems.append(
            f"{case.label}: holds {names} (ids {contradicting}), which its partial labels declare unannotated; "
            "add them to the case's list or remove them from the label map"
        )
    return tuple(sorted(present & set(label_set.ids)))


def _label_values(array: np.ndarray) -> set[int]:
    """The non-zero values of a label map, counted chunk by chunk (bincount beats unique for small ids)."""
    values: set[int] = set()
    flat = array.ravel(order="K")  # a view: organseg.io's arrays are transposed C arrays
    for start in range(0, flat.size, CHUNK_VOXELS):
        chunk = flat[start : start + CHUNK_VOXELS]
        values.update((np.flatnonzero(np.bincount(chunk)) if chunk.max() < 1 << 16 else np.unique(chunk)).tolist())
    return values - {0}


def _one_line(error: Exception, path: Path) -> str:
    """An error as one report line that names the file."""
    if isinstance(error, InputError):
        return " ".join(str(error).split())
    return f"{path}: cannot read ({getattr(error, 'strerror', None) or error}); check the file and its permissions"


def _warn_about_image(path: Path, geometry: Geometry, intensity: tuple[float, float], report: DatasetReport) -> None:
    low, high = USUAL_SPACING_MM
    if not all(low <= s <= high for s in geometry.spacing_mm):
        spacing = tuple(round(s, 3) for s in geometry.spacing_mm)
        report.warnings.append(f"{path}: unusual voxel spacing {spacing} mm for CT (usual {low}-{high} mm)")
    if intensity[0] > AIR_HU:
        report.warnings.append(f"{path}: lowest intensity {intensity[0]:g} shows no air; is it CT in Hounsfield units?")


def _warn_about_dataset(label_set: LabelSet, report: DatasetReport) -> None:
    """Organs no labeled case shows; unlabeled or test spacing far outside the labeled range."""
    labeled = [s for s in report.stats if s.subset == "labeled" and s.labels_present is not None]
    if not labeled:
        return
    seen = set().union(*(s.labels_present for s in labeled))
    if absent := [label_set.name(label) for label in label_set.ids if label not in seen]:
        report.warnings.append(f"organs declared but absent from all labeled cases: {', '.join(absent)}")
    spacings = np.array([s.geometry.spacing_mm for s in labeled])
    low, high = spacings.min(axis=0) / SPACING_FACTOR, spacings.max(axis=0) * SPACING_FACTOR
    for stats in report.stats:
        spacing = np.array(stats.geometry.spacing_mm)
        if stats.subset != "labeled" and np.any((spacing < low) | (spacing > high)):
            report.warnings.append(
                f"{stats.subset} case '{stats.case_id}': spacing {tuple(spacing.round(2).tolist())} mm is far "
                "outside the labeled cases' range; results there may be poor"
            )


def _id_ranges(ids: tuple[int, ...]) -> str:
    """'1-13' for consecutive ids, else the list."""
    consecutive = ids and list(ids) == list(range(ids[0], ids[-1] + 1))
    return f"{ids[0]}-{ids[-1]}" if consecutive else ", ".join(map(str, ids))


def describe_dataset(dataset: Dataset, report: DatasetReport) -> str:
    """A compact text summary of a dataset and its check report (like nnU-Net's integrity check)."""
    test_labeled = sum(case.label is not None for case in dataset.test)
    lines = [
        f"dataset: {dataset.root if dataset.root is not None else '(explicit folders)'}",
        f"labels: {len(dataset.label_set.ids)} organs (ids {_id_ranges(dataset.label_set.ids)})",
        f"cases: {len(dataset.labeled)} labeled, {len(dataset.unlabeled)} unlabeled, "
        f"{len(dataset.test)} test ({test_labeled} with labels)",
        *_range_lines(report.stats),
        *_organ_lines(dataset.label_set, report.stats),
        f"{_count(report.problems, 'problem')} found" if report.problems else "no problems found",
    ]
    if report.warnings:
        lines += [f"{_count(report.warnings, 'warning')}:", *(f"  - {warning}" for warning in report.warnings)]
    return "\n".join(lines)


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _range_lines(stats: list[CaseStats]) -> list[str]:
    """Spacing and size (min / median / max per patient axis) and intensity range of the readable cases."""
    if not stats:
        return []
    # Headers order axes differently; compare them in canonical (left, posterior, superior) order.
    canonical = [canonical_transform(s.geometry).apply_geometry(s.geometry) for s in stats]
    spacing = _per_axis([g.spacing_mm for g in canonical], ".2f")
    size = _per_axis([g.shape for g in canonical], ".0f")
    low, high = min(s.intensity_range[0] for s in stats), max(s.intensity_range[1] for s in stats)
    return [
        f"spacing mm (min / median / max, {_count(stats, 'case')}): {spacing}",
        f"size voxels (min / median / max): {size}",
        f"intensity: {low:g} to {high:g}",
    ]


def _per_axis(rows: list, fmt: str) -> str:
    """'L-R min / median / max | A-P ... | S-I ...' over rows of three values in canonical axis order."""
    values = np.asarray(rows, dtype=float)
    columns = zip(("L-R", "A-P", "S-I"), values.min(axis=0), np.median(values, axis=0), values.max(axis=0))
    return " | ".join(f"{axis} {low:{fmt}} / {mid:{fmt}} / {high:{fmt}}" for axis, low, mid, high in columns)


def _organ_lines(label_set: LabelSet, stats: list[CaseStats]) -> list[str]:
    """How many labeled cases contain each organ; with partial labels, also how many annotate it."""
    labeled = [s for s in stats if s.subset == "labeled" and s.labels_present is not None]
    if not labeled:
        return []
    partial = sum(s.annotated is not None for s in labeled)
    if partial:
        lines = [
            f"organs (labeled cases annotating / containing each, of {len(labeled)}; {partial} partially labeled):"
        ]
    else:
        lines = [f"organs (labeled cases containing each, of {len(labeled)}):"]
    for label in label_set.ids:
        containing = sum(label in s.labels_present for s in labeled)
        annotating = sum(s.annotated is None or label in s.annotated for s in labeled)
        lines.append(
            f"  {label:>3} {label_set.name(label):<24} " + (f"{annotating} / " if partial else "") + str(containing)
        )
    return lines
