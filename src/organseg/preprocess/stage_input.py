"""A stage's network input from a CT and a box: the one function training, validation,
inference and pseudo-labeling all call, so that no model is served other inputs than it
was trained on.

A `ScanView` is a CT as it lies in memory (its file's axis order, never copied out of a
transposed view), the axis transform that makes it canonical, and its z-score statistics.
`stage_input` cuts the canonical region of a box from it, clips it to the window,
resamples it to the stage's grid, reorients the small result and z-scores it. Resampling
commutes with axis flips and permutations, and clipping and z-scoring act voxel by voxel,
so this equals "normalise, reorient, crop, resample" without a float copy of a full CT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from organseg.preprocess.crop import Box
from organseg.preprocess.normalize import clip_to_window, ct_statistics, zscore
from organseg.preprocess.orientation import AxisTransform
from organseg.preprocess.resample import resample_image


@dataclass(frozen=True)
class ScanView:
    """A CT in memory order with the transform to canonical orientation and its normalisation."""

    voxels: np.ndarray  # HU, axes in the order they lie in memory
    transform: AxisTransform  # voxels' axes -> canonical
    window_hu: tuple[float, float]
    mean: float  # z-score statistics of the whole CT (organseg.preprocess.normalize.ct_statistics)
    std: float

    @classmethod
    def of(cls, image_hu: np.ndarray, transform: AxisTransform, window_hu: tuple[float, float]) -> ScanView:
        """`image_hu` with the transform that makes it canonical; no voxel is copied."""
        mean, std = ct_statistics(image_hu, window_hu)
        # Image arrays are often transposed views (organseg.io): order the axes as memory
        # holds them, so a region is cut from contiguous memory; the transform absorbs it.
        order = [int(axis) for axis in np.argsort([-stride for stride in image_hu.strides], kind="stable")]
        memory_axis = np.argsort(order)  # axis b of `image_hu` is axis memory_axis[b] in memory order
        in_memory = AxisTransform(tuple(int(memory_axis[p]) for p in transform.permutation), transform.flipped)
        return cls(image_hu.transpose(order), in_memory, tuple(window_hu), mean, std)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The canonical volume's shape."""
        return tuple(self.voxels.shape[p] for p in self.transform.permutation)


def stage_input(scan: ScanView, box: Box, grid: tuple[int, int, int]) -> np.ndarray:
    """The canonical region `box` of `scan`, clipped, resampled to `grid` and z-scored: (1, *grid) float32."""
    region = scan.voxels[scan.transform.source_slices(box.slices, scan.voxels.shape)]
    memory_grid = [0, 0, 0]
    for new_axis, old_axis in enumerate(scan.transform.permutation):
        memory_grid[old_axis] = grid[new_axis]
    # Clipped slab by slab as it is resampled: no full-size copy of the region is made.
    resampled = resample_image(region, tuple(memory_grid), prepare=lambda slab: clip_to_window(slab, scan.window_hu))
    canonical = np.ascontiguousarray(scan.transform.apply(resampled))
    return zscore(canonical, scan.mean, scan.std)[None]
