"""CT intensity normalisation: clip to a window, then z-score.

The window (organseg.config.CT_WINDOW_HU by default) clips air, lung and dense bone, as
their insides carry no organ boundary. The z-score statistics are taken
over the voxels inside the window (clipped air is left out), so they describe the body
rather than how much air the field of view happens to include.
"""

from __future__ import annotations

import math

import numpy as np

from organseg.config import CT_WINDOW_HU

MIN_STD = 1e-3  # a constant image must not divide by zero
STATISTICS_CHUNK = 1 << 20  # voxels per slab when summing the statistics (each makes a few float64 copies)


def normalize_ct(
    image_hu: np.ndarray,
    window_hu: tuple[float, float] = CT_WINDOW_HU,
    mean: float | None = None,
    std: float | None = None,
) -> np.ndarray:
    """Clip HU to `window_hu` and z-score; float32 of the same shape.

    Args:
        image_hu: CT intensities in Hounsfield units, any shape and numeric dtype.
        window_hu: (low, high) clipping window.
        mean, std: fixed statistics (e.g. of a whole training set); when None they are
            computed from this image's voxels above the window's lower bound.
    """
    if mean is None or std is None:
        own_mean, own_std = ct_statistics(image_hu, window_hu)
        mean = own_mean if mean is None else mean
        std = own_std if std is None else std
    return zscore(clip_to_window(image_hu, window_hu).astype(np.float32, copy=False), mean, std)


def clip_to_window(image_hu: np.ndarray, window_hu: tuple[float, float] = CT_WINDOW_HU) -> np.ndarray:
    """`image_hu` clipped to the window: int16 when the input and the window are integers, else float32.

    Kept in int16 where possible: a 512x512x100 CT then takes 50 MB rather than 100 MB, and
    z-scoring can wait until the image is resampled to a small grid (see `zscore`).
    """
    low, high = window_hu
    if not low < high:
        raise ValueError(f"window_hu must be (low, high) with low < high, got {window_hu}")
    integral = image_hu.dtype.kind in "iu" and float(low).is_integer() and float(high).is_integer()
    if integral and np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
        # Clip in a type that holds the window (uint8/uint16 cannot hold -200), then store as int16.
        wide = image_hu if image_hu.dtype.itemsize >= 4 or image_hu.dtype.kind == "i" else image_hu.astype(np.int32)
        return np.clip(wide, int(low), int(high)).astype(np.int16, copy=False)
    return np.clip(image_hu.astype(np.float32, copy=False), np.float32(low), np.float32(high))


def zscore(clipped: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(clipped - mean) / std, float32.

    Affine, so it commutes with resampling whose weights sum to one per output voxel: a
    clipped image resampled then z-scored equals one z-scored then resampled.
    """
    std = np.float32(max(std, MIN_STD))
    return (clipped.astype(np.float32, copy=False) - np.float32(mean)) / std


def ct_statistics(image_hu: np.ndarray, window_hu: tuple[float, float] = CT_WINDOW_HU) -> tuple[float, float]:
    """Mean and standard deviation of the clipped voxels above the window's lower bound.

    Computed once per case, so that crops of it (stage 2) are normalised like the whole.
    Summed slab by slab in float64, so no full-size float copy of the image is made.
    """
    low, high = window_hu
    count, total, squares = 0, 0.0, 0.0
    flat = image_hu.reshape(-1) if image_hu.flags.c_contiguous else image_hu.ravel(order="K")
    for start in range(0, flat.size, STATISTICS_CHUNK):
        values = flat[start : start + STATISTICS_CHUNK]
        values = np.minimum(values[values > low].astype(np.float64), high)
        count += values.size
        total += float(values.sum())
        squares += float(np.square(values).sum())
    if count == 0:
        return float(low), MIN_STD
    mean = total / count
    return mean, max(math.sqrt(max(squares / count - mean * mean, 0.0)), MIN_STD)
