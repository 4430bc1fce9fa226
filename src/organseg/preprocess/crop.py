"""Bounding boxes with a margin in mm, cropping, and pasting back.

A Box is a half-open index range per axis, always inside its volume. `crop` and `paste`
are inverses: pasting a crop into an empty volume of the original shape restores every
voxel inside the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """Voxels start[a] <= index < stop[a] along each axis a."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(v) for v in self.start))
        object.__setattr__(self, "stop", tuple(int(v) for v in self.stop))
        if any(lo < 0 or hi <= lo for lo, hi in zip(self.start, self.stop)):
            raise ValueError(f"empty or negative box {self.start}..{self.stop}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(hi - lo for lo, hi in zip(self.start, self.stop))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(lo, hi) for lo, hi in zip(self.start, self.stop))

    @classmethod
    def whole(cls, shape: tuple[int, int, int]) -> Box:
        """The box covering a whole volume of `shape`."""
        return cls((0, 0, 0), tuple(shape))


def bounding_box(
    mask: np.ndarray, spacing_mm: tuple[float, float, float], margin_mm: float | tuple[float, float, float] = 0.0
) -> Box | None:
    """The smallest box holding every True voxel, grown by `margin_mm` and clipped to the volume.

    Returns None for an empty mask, so callers must decide what "nothing found" means.
    """
    if not mask.any():
        return None
    margins = np.broadcast_to(np.asarray(margin_mm, dtype=np.float64), (3,))
    start, stop = [], []
    for axis in range(3):
        other_axes = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        grow = math.ceil(margins[axis] / spacing_mm[axis] - 1e-9)
        start.append(max(0, int(present[0]) - grow))
        stop.append(min(mask.shape[axis], int(present[-1]) + 1 + grow))
    return Box(tuple(start), tuple(stop))


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The part of `array` inside `box` (a view); leading channel axes are kept."""
    return array[(Ellipsis, *box.slices)]


def paste(values: np.ndarray, box: Box, shape: tuple[int, int, int], fill: int | float = 0) -> np.ndarray:
    """A new array of `shape` (plus leading axes of `values`) holding `values` inside `box`."""
    if tuple(values.shape[-3:]) != box.shape:
        raise ValueError(f"values of shape {values.shape[-3:]} do not fit box of shape {box.shape}")
    canvas = np.full((*values.shape[:-3], *shape), fill, dtype=values.dtype)
    canvas[(Ellipsis, *box.slices)] = values
    return canvas


def grow_box(
    box: Box,
    spacing_mm: tuple[float, float, float],
    margins_mm: np.ndarray,
    shift_mm: np.ndarray,
    shape: tuple[int, int, int],
) -> Box:
    """`box` grown by margins_mm[0] below and margins_mm[1] above on each axis, moved by shift_mm, clipped.

    A box shifted out of the volume keeps at least one voxel, so it never comes back empty.
    """
    spacing = np.asarray(spacing_mm)
    start = np.asarray(box.start) - np.ceil(margins_mm[0] / spacing) + np.round(shift_mm / spacing)
    stop = np.asarray(box.stop) + np.ceil(margins_mm[1] / spacing) + np.round(shift_mm / spacing)
    upper = np.asarray(shape)
    start = np.clip(start, 0, upper - 1).astype(int)
    stop = np.clip(stop, start + 1, upper).astype(int)
    return Box(tuple(start), tuple(stop))


def grid_box_to_volume(box: Box, grid: tuple[int, int, int], shape: tuple[int, int, int]) -> Box:
    """The volume voxels covered by grid cells box.start..box.stop (cells share the field of view)."""
    start = [int(np.floor(s * n / g)) for s, n, g in zip(box.start, shape, grid)]
    stop = [min(n, int(np.ceil(e * n / g))) for e, n, g in zip(box.stop, shape, grid)]
    return Box(tuple(start), tuple(stop))
