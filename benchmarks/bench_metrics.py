"""Speed of organseg's FLARE evaluation against DeepMind's `surface-distance` (not part of the tests).

Builds a realistic 512x512x100 pair at 0.8x0.8x2.5 mm with 13 organs: the real ts_abdomen
label map (../shared/data/real) resampled to that grid as ground truth, and a perturbed copy
(organs shifted, eroded or dilated by a voxel or two) as prediction. Times:

1. one case, 13 organs, DSC + NSD: `organseg.metrics.evaluate_case` against surface-distance
   doing the same work the way FLARE's official script does (masks per organ, then
   compute_surface_distances, compute_dice_coefficient, compute_surface_dice_at_tolerance);
   median of 3 runs each, and their ratio; the largest NSD difference between the two;
2. a folder of 8 such cases (files read included) with `run_evaluation`, workers=1 and 2.

Run: .venv/bin/python benchmarks/bench_metrics.py   (needs `pip install surface-distance`)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

np.Inf = np.inf  # surface-distance 0.1 still uses np.Inf, which NumPy 2 removed

from surface_distance import metrics as deepmind  # noqa: E402

from organseg.evaluate import run_evaluation  # noqa: E402
from organseg.geometry import Geometry  # noqa: E402
from organseg.io import Volume, read_label, write_label  # noqa: E402
from organseg.labels import FLARE22  # noqa: E402
from organseg.metrics import default_tolerances_mm, evaluate_case  # noqa: E402
from organseg.preprocess.resample import resample_labels  # noqa: E402

REAL_LABEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ts_abdomen" / "label_flare13.nii.gz"
SHAPE = (512, 512, 100)
SPACING_MM = (0.8, 0.8, 2.5)


def make_pair(seed: int) -> tuple[Volume, Volume]:
    """Ground truth (the real labels on a 512x512x100 grid, plus a synthetic esophagus) and a perturbed prediction."""
    source = read_label(REAL_LABEL)
    gt = resample_labels(source.array.astype(np.int64), SHAPE).astype(np.uint8)
    # ts_abdomen has no esophagus: add a tube above the aorta so that all 13 organs are scored.
    aorta = np.argwhere(gt == 5).mean(axis=0).astype(int)
    grid_x, grid_y = np.ogrid[: SHAPE[0], : SHAPE[1]]
    tube = (grid_x - aorta[0] - 25) ** 2 + (grid_y - aorta[1] + 20) ** 2 < 64
    gt[:, :, 60:][np.broadcast_to(tube[..., None], (*SHAPE[:2], 40)) & (gt[:, :, 60:] == 0)] = 10
    rng = np.random.default_rng(seed)
    pred = np.zeros_like(gt)
    for label in FLARE22.ids:
        mask = gt == label
        change = rng.integers(3)
        if change == 0:
            mask = np.roll(mask, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
        elif change == 1:
            mask = ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 3)))
        else:
            mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)))
        pred[mask & (pred == 0)] = label
    geometry = Geometry(SHAPE, SPACING_MM, source.geometry.origin_mm, source.geometry.direction)
    return Volume(pred, geometry), Volume(gt, geometry)


def deepmind_case(pred: Volume, gt: Volume) -> list[tuple[float, float]]:
    """DSC and NSD per organ as FLARE's official script computes them (no z rule)."""
    tolerances = default_tolerances_mm(FLARE22)
    scores = []
    for label in FLARE22.ids:
        gt_mask, pred_mask = gt.array == label, pred.array == label
        distances = deepmind.compute_surface_distances(gt_mask, pred_mask, gt.geometry.spacing_mm)
        dsc = deepmind.compute_dice_coefficient(gt_mask, pred_mask)
        scores.append((dsc, deepmind.compute_surface_dice_at_tolerance(distances, tolerances[label])))
    return scores


def median_seconds(function, repeats: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    pred, gt = make_pair(seed=0)
    ours_s, rows = median_seconds(lambda: evaluate_case(pred, gt, FLARE22, flare_z_rule="none"))
    theirs_s, scores = median_seconds(lambda: deepmind_case(pred, gt))
    nsd_gap = max(abs(row["nsd"] - nsd) for row, (_, nsd) in zip(rows, scores))
    dsc_gap = max(abs(row["dsc"] - dsc) for row, (dsc, _) in zip(rows, scores))
    print(f"one case {SHAPE}, 13 organs (median of 3):")
    print(f"  organseg evaluate_case   {ours_s:6.2f} s")
    print(f"  surface-distance         {theirs_s:6.2f} s")
    print(f"  ratio organseg / surface-distance: {ours_s / theirs_s:.2f}")
    print(f"  largest difference: NSD {nsd_gap:.2e}, DSC {dsc_gap:.2e}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "pred").mkdir(), (root / "gt").mkdir()
        for case in range(8):
            pred, gt = make_pair(seed=case)
            write_label(pred.array, pred.geometry, root / "pred" / f"case_{case:02d}.nii.gz")
            write_label(gt.array, gt.geometry, root / "gt" / f"case_{case:02d}.nii.gz")
        print("folder of 8 cases (reading files included):")
        for workers in (1, 2):
            started = time.perf_counter()
            run_evaluation(root / "pred", root / "gt", root / f"out{workers}", workers=workers)
            print(f"  run_evaluation workers={workers}: {time.perf_counter() - started:6.2f} s")


if __name__ == "__main__":
    sys.exit(main())
