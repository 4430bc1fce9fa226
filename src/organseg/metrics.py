"""Segmentation metrics with FLARE22's rules: Dice, Normalized Surface Dice (NSD), organ volumes.

NSD is computed as DeepMind's `surface-distance` package computes
`compute_surface_dice_at_tolerance(compute_surface_distances(gt, pred, spacing), tolerance)`,
which FLARE's official evaluation uses (a copy of it, `SurfaceDice.py`):

- Surface elements live on voxel corners. The 2x2x2 voxels around a corner form an 8-bit
  neighbourhood code; a corner whose code is neither all-outside nor all-inside is on the
  surface. Outside the array counts as outside, so an organ cut by the field of view is
  closed by a cap.
- Each code has a surface area: the marching-cubes triangles of that code, each a normal
  vector (components in 1/8 of a unit cube face) scaled per axis by the voxel spacing.
- A surface element counts as matched when the Euclidean distance (mm) from its corner to
  the nearest corner of the other surface is <= the tolerance; NSD is the matched area of
  both surfaces over their total area.

Everything is cropped to the union bounding box of both masks (+1 voxel), and distances
are only read at surface corners, so no full-volume distance map is made.

FLARE rules: both masks empty -> DSC = NSD = 1; one empty, the other not -> 0. Aorta,
inferior vena cava and esophagus are scored only on the axial slices where the ground
truth has them (`flare_z_rule`, see `evaluate_case`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import Volume
from organseg.labels import FLARE22, LabelSet

# FLARE22's NSD tolerances (mm), by organ name (ids 1..13 of the FLARE22 label set).
FLARE22_TOLERANCES_MM: dict[str, float] = {
    "liver": 5.0,
    "right kidney": 3.0,
    "spleen": 3.0,
    "pancreas": 5.0,
    "aorta": 2.0,
    "inferior vena cava": 2.0,
    "right adrenal gland": 2.0,
    "left adrenal gland": 2.0,
    "gallbladder": 2.0,
    "esophagus": 3.0,
    "stomach": 5.0,
    "duodenum": 7.0,
    "left kidney": 3.0,
}
# Tolerance for organs FLARE22 does not name (other label sets); override per label id.
DEFAULT_TOLERANCE_MM = 2.0
# Tubular organs whose annotated length varies between annotators: FLARE scores them only on
# the ground truth's axial slices. Matched by organ name, so other label sets can use the rule.
Z_RESTRICTED_ORGANS = frozenset({"aorta", "inferior vena cava", "esophagus"})
# "inclusive": all slices from the gt's first to its last; "flare": as FLARE22's official
# DSC_NSD_eval.py (`gt[:, :, z_lower:z_upper]`), which drops the gt's last slice; "none": off.
Z_RULES = ("inclusive", "flare", "none")

# Marching-cubes surface triangles of the 256 corner codes (bit 7 = corner (0,0,0) ... bit 0 =
# corner (1,1,1)), as in `surface-distance`'s lookup table (Apache-2.0, DeepMind), re-encoded:
# each triangle is its normal's absolute components in eighths ("400" = area 1/2 facing axis 0).
# The table is symmetric under swapping inside and outside, so only codes 0..127 are stored.
_TRIANGLES = (
    "", "111", "111", "220.220", "111", "202.202", "111.111", "400.222.111", "111", "111.111", "202.202",
    "400.222.111", "220.220", "400.222.111", "400.222.111", "400.400", "111", "022.022", "111.111", "222.111.040",
    "111.111", "222.111.004", "111.111.111", "222.222.111.111", "111.111", "111.022.022", "202.202.111",
    "333.202.111.022", "220.220.111", "333.220.111.022", "400.222.111.111", "400.222.111", "111", "111.111",
    "022.022", "222.111.040", "111.111", "202.202.111", "111.022.022", "333.202.111.022", "111.111", "111.111.111",
    "222.111.004", "222.222.111.111", "220.220.111", "400.222.111.111", "333.220.111.022", "400.222.111", "220.220",
    "222.111.040", "222.111.040", "040.040", "220.220.111", "333.220.202.111", "222.111.111.040", "222.111.040",
    "220.220.111", "222.111.111.040", "333.220.202.111", "222.111.040", "220.220.220.220", "220.220.111",
    "220.220.111", "220.220", "111", "111.111", "111.111", "220.220.111", "022.022", "222.111.004", "111.022.022",
    "333.220.111.022", "111.111", "111.111.111", "202.202.111", "400.222.111.111", "222.111.040", "222.222.111.111",
    "333.202.111.022", "400.222.111", "202.202", "222.111.004", "202.202.111", "333.220.202.111", "222.111.004",
    "004.004", "222.111.111.004", "222.111.004", "202.202.111", "222.111.111.004", "202.202.202.202", "202.202.111",
    "333.220.202.111", "222.111.004", "202.202.111", "202.202", "111.111", "111.111.111", "111.022.022",
    "222.111.111.040", "111.022.022", "222.111.111.004", "022.022.022.022", "111.022.022", "111.111.111",
    "111.111.111.111", "222.111.111.004", "111.111.111", "222.111.111.040", "111.111.111", "111.022.022", "111.111",
    "400.222.111", "222.222.111.111", "333.202.111.022", "222.111.040", "333.220.111.022", "222.111.004",
    "111.022.022", "022.022", "400.222.111.111", "111.111.111", "202.202.111", "111.111", "220.220.111", "111.111",
    "111.111", "111",
)  # fmt: skip


@functools.lru_cache(maxsize=32)
def surface_area_table(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(256,) surface area in mm^2 of each corner code for voxels of `spacing_mm`."""
    s0, s1, s2 = (float(s) for s in spacing_mm)
    # A normal's component along axis a is an area in the plane of the two other axes.
    face_mm2 = (s1 * s2, s0 * s2, s0 * s1)
    half = []
    for triangles in _TRIANGLES:
        area = 0.0
        for triangle in filter(None, triangles.split(".")):
            area += math.sqrt(sum((int(n) / 8 * face) ** 2 for n, face in zip(triangle, face_mm2)))
        half.append(area)
    return np.asarray(half + half[::-1])


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice of two boolean masks of one shape; FLARE rules for empty masks.

    Both empty -> 1.0; ground truth empty and prediction not (or the reverse) -> 0.0.
    """
    pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
    _check_shapes(pred_mask, gt_mask)
    total = int(np.count_nonzero(pred_mask)) + int(np.count_nonzero(gt_mask))
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(pred_mask & gt_mask) / total)


def surface_dice(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing_mm: tuple[float, float, float], tolerance_mm: float
) -> float:
    """Normalized Surface Dice of two boolean 3D masks (X, Y, Z) at `tolerance_mm`.

    Equal (to rounding) to surface-distance's compute_surface_dice_at_tolerance. Both empty
    -> 1.0; exactly one empty -> 0.0. `spacing_mm` is the voxel size along the array axes.
    """
    pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
    _check_shapes(pred_mask, gt_mask)
    if pred_mask.ndim != 3:
        raise ValueError(f"surface_dice takes 3D masks, got {pred_mask.ndim}D")
    box = ndimage.find_objects((pred_mask | gt_mask).astype(np.uint8))
    if not box:
        return 1.0
    return _surface_dice_in_box(gt_mask[box[0]], pred_mask[box[0]], spacing_mm, tolerance_mm)


def _surface_dice_in_box(
    gt_box: np.ndarray, pred_box: np.ndarray, spacing_mm: tuple[float, float, float], tolerance_mm: float
) -> float:
    """NSD of two boolean masks that hold all of both organs (e.g. cropped to their union box)."""
    gt_border, gt_codes = _surface_corners(gt_box)
    pred_border, pred_codes = _surface_corners(pred_box)
    gt_found, pred_found = gt_border[0].size > 0, pred_border[0].size > 0
    if not (gt_found or pred_found):
        return 1.0
    if not (gt_found and pred_found):
        return 0.0
    table = surface_area_table(tuple(float(s) for s in spacing_mm))
    gt_area, pred_area = table[gt_codes], table[pred_codes]
    gt_matched = _within_tolerance(gt_border, pred_border, spacing_mm, tolerance_mm)
    pred_matched = _within_tolerance(pred_border, gt_border, spacing_mm, tolerance_mm)
    matched = gt_area[gt_matched].sum() + pred_area[pred_matched].sum()
    return float(matched / (gt_area.sum() + pred_area.sum()))


def _surface_corners(mask: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Indices (on the (n+1)^3 corner grid) and codes of the surface corners of a 3D mask.

    Corner c sits between voxels c-1 and c on each axis; its code has bit 7 for voxel
    c-(1,1,1) ... bit 0 for voxel c, with voxels outside the array counted as outside.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    codes = np.zeros(tuple(n + 1 for n in mask.shape), np.uint8)
    shifted = np.empty_like(codes)
    for bit in range(8):
        offset = [(7 - bit) >> 2 & 1, (7 - bit) >> 1 & 1, (7 - bit) & 1]
        view = padded[tuple(slice(o, o + n) for o, n in zip(offset, codes.shape))]
        np.left_shift(view, bit, out=shifted)
        codes |= shifted
    border = np.nonzero((codes != 0) & (codes != 255))
    return border, codes[border]


def _within_tolerance(
    sources: tuple[np.ndarray, ...],
    targets: tuple[np.ndarray, ...],
    spacing_mm: tuple[float, float, float],
    tolerance_mm: float,
) -> np.ndarray:
    """Whether each source corner has a target corner within `tolerance_mm` (boolean, one per source).

    A k-d tree over the target corners finds candidates: it costs in surface size, where a
    distance transform costs in box volume (~10x more here). The distance to the candidate is
    then recomputed exactly as scipy's EDT computes it in surface-distance (offset in voxels
    times spacing, squared, summed over axes in order, square root), so comparisons at the
    tolerance agree with the package to the last bit.
    """
    spacing = np.asarray(spacing_mm, np.float64)
    source_index, target_index = np.stack(sources, axis=1), np.stack(targets, axis=1)
    tree = cKDTree(target_index * spacing, balanced_tree=False, compact_nodes=False)
    # The bound only needs to admit every corner within the tolerance: the exact test is below.
    bound = tolerance_mm * (1 + 1e-9) + 1e-9
    _, nearest = tree.query(source_index * spacing, k=1, distance_upper_bound=bound)
    found = nearest < len(target_index)
    offset = target_index[nearest[found]] - source_index[found]
    squared = np.zeros(offset.shape[0], np.float64)
    for axis in range(3):
        offset_mm = offset[:, axis].astype(np.float64) * spacing[axis]
        squared += offset_mm * offset_mm
    within = np.zeros(len(source_index), bool)
    within[found] = np.sqrt(squared) <= tolerance_mm
    return within


def _check_shapes(pred_mask: np.ndarray, gt_mask: np.ndarray) -> None:
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"prediction shape {pred_mask.shape} differs from ground truth shape {gt_mask.shape}")


def default_tolerances_mm(label_set: LabelSet = FLARE22, fallback_mm: float = DEFAULT_TOLERANCE_MM) -> dict[int, float]:
    """NSD tolerance (mm) per label id: FLARE22's by organ name, `fallback_mm` for other organs."""
    return {label: FLARE22_TOLERANCES_MM.get(name.lower(), fallback_mm) for label, name in label_set.names}


def axial_axis(geometry: Geometry) -> int:
    """The array axis closest to the patient's superior-inferior (world z) axis."""
    return int(np.argmax(np.abs(geometry.direction_matrix[2])))


def check_same_grid(pred: Geometry, gt: Geometry, pred_name: str = "prediction", gt_name: str = "ground truth") -> None:
    """Raise InputError naming both inputs and what differs unless they share one voxel grid."""
    found = pred.differences(gt)
    if found:
        raise InputError(
            f"{pred_name} and {gt_name} are on different voxel grids ({'; '.join(found)}); "
            "resample the prediction onto the ground truth's grid"
        )


def organ_volumes_ml(labels: Volume, label_set: LabelSet = FLARE22) -> dict[int, float]:
    """Volume (mL) of every organ of `label_set` in a label map: voxel count x voxel volume."""
    # order="K": label maps read from files are transposed views; a C-order ravel would copy them.
    counts = np.bincount(np.asarray(labels.array).ravel(order="K"), minlength=label_set.max_id + 1)
    voxel_ml = float(np.prod(labels.geometry.spacing_mm)) / 1000.0
    return {label: float(counts[label]) * voxel_ml for label in label_set.ids}


def evaluate_case(
    pred: Volume,
    gt: Volume,
    label_set: LabelSet = FLARE22,
    tolerances_mm: dict[int, float] | None = None,
    flare_z_rule: str = "inclusive",
) -> list[dict]:
    """DSC and NSD of every organ of `label_set`: rows {label, organ, dsc, nsd}.

    Args:
        pred, gt: label maps (X, Y, Z) on one voxel grid (else InputError); spacing from `gt`.
        tolerances_mm: NSD tolerance (mm) per label id; missing ids get `default_tolerances_mm`.
        flare_z_rule: how aorta, IVC and esophagus are restricted to the ground truth's axial
            slices (the array axis nearest world z): "inclusive" (default) keeps all of them;
            "flare" reproduces FLARE22's official code, which drops the last one (and gives NaN
            when the ground truth has a single slice); "none" scores the whole volume.
    """
    if flare_z_rule not in Z_RULES:
        raise ValueError(f"flare_z_rule must be one of {Z_RULES}, got {flare_z_rule!r}")
    check_same_grid(pred.geometry, gt.geometry)
    tolerances = {**default_tolerances_mm(label_set), **(tolerances_mm or {})}
    gt_boxes, pred_boxes = _boxes(gt.array, label_set.max_id), _boxes(pred.array, label_set.max_id)
    rows = []
    for label, name in sorted(label_set.names):
        gt_box, pred_box = gt_boxes[label - 1], pred_boxes[label - 1]
        if gt_box is None:
            # FLARE: an organ absent from the ground truth scores 1 if also absent, else 0.
            score = 1.0 if pred_box is None else 0.0
            rows.append({"label": label, "organ": name, "dsc": score, "nsd": score})
            continue
        rule = flare_z_rule if name.lower() in Z_RESTRICTED_ORGANS else "none"
        box = _scoring_box(gt_box, pred_box, axial_axis(gt.geometry), rule)
        if box is None:
            dsc = nsd = float("nan")  # FLARE's empty slab: its Dice is NaN and its NSD 0/0
        else:
            # Label maps read from files are transposed views (Fortran order); C order is ~1.5x faster below.
            gt_mask = np.ascontiguousarray(gt.array[box] == label)
            pred_mask = np.ascontiguousarray(pred.array[box] == label)
            dsc = dice(pred_mask, gt_mask)
            nsd = _surface_dice_in_box(gt_mask, pred_mask, gt.geometry.spacing_mm, tolerances[label])
        rows.append({"label": label, "organ": name, "dsc": dsc, "nsd": nsd})
    return rows


def _boxes(labels: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each label 1..max_label (None if absent), in one pass over the array."""
    labels = np.asarray(labels)
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        # Label maps read from files are transposed views: scanning in memory order is ~5x faster.
        return [None if box is None else box[::-1] for box in ndimage.find_objects(labels.T, max_label)]
    return ndimage.find_objects(labels, max_label)


def _scoring_box(gt_box: tuple[slice, ...], pred_box: tuple[slice, ...] | None, z_axis: int, rule: str):
    """The union box of both organs, cut to the gt's axial slices under `rule`; None if empty."""
    boxes = [gt_box] if pred_box is None else [gt_box, pred_box]
    box = [slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)]
    if rule != "none":
        # The official code slices gt[:, :, z_min:z_max] with z_max the gt's last slice, so
        # that slice is left out; "inclusive" keeps it.
        stop = gt_box[z_axis].stop - (1 if rule == "flare" else 0)
        if stop <= gt_box[z_axis].start:
            return None
        box[z_axis] = slice(gt_box[z_axis].start, stop)
    return tuple(box)


def dice_per_class(prediction: np.ndarray, target: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Hard Dice of each label between two label maps, FLARE convention.

    Args:
        prediction, target: (X, Y, Z) non-negative integer label maps of the same shape.
        labels: the label ids to score.

    Returns {label: Dice}; a label absent from both maps scores 1.0, one absent from the
    target but present in the prediction scores 0.0.
    """
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {prediction.shape} vs {target.shape}")
    if not (np.issubdtype(prediction.dtype, np.integer) and np.issubdtype(target.dtype, np.integer)):
        raise ValueError(f"label maps must be integer arrays, got {prediction.dtype} and {target.dtype}")
    labels = [int(label) for label in labels]
    if any(label < 0 for label in labels) or (prediction.size and min(prediction.min(), target.min()) < 0):
        raise ValueError("label ids must be non-negative")
    # Values above the largest label scored all fall into one extra bin: the matrix stays small.
    bins = max(labels, default=0) + 2
    truth = np.minimum(target.ravel(), bins - 1).astype(np.int64)
    guess = np.minimum(prediction.ravel(), bins - 1).astype(np.int64)
    confusion = np.bincount(truth * bins + guess, minlength=bins * bins).reshape(bins, bins)
    scores = {}
    for label in labels:
        overlap, in_target, in_prediction = confusion[label, label], confusion[label].sum(), confusion[:, label].sum()
        total = in_target + in_prediction
        scores[label] = 1.0 if total == 0 else float(2 * overlap / total)
    return scores


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels present in either map (1 when both are empty)."""
    present = np.union1d(np.unique(a), np.unique(b))
    present = present[present > 0]
    if present.size == 0:
        return 1.0
    scores = dice_per_class(np.asarray(a), np.asarray(b), [int(label) for label in present])
    return float(np.mean(list(scores.values())))


def finite_mean(values: list[float | None]) -> float | None:
    """The mean of the finite values; None when there are none."""
    finite = [value for value in values if value is not None and np.isfinite(value)]
    return float(np.mean(finite)) if finite else None
