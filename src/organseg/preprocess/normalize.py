"""CT intensity normalisation: clip to a window, then z-score.

Default window [-200, 400] HU: wide enough for fat (about -100 HU) and for
contrast-enhanced kidneys, aorta and IVC (up to about 350 HU); air, lung and dense bone
are clipped, as their insides carry no organ boundary. The z-score statistics are taken
over the voxels inside the window (clipped air is left out), so they describe the body
rather than how much air the field of view happens to include.
"""

from __future__ import annotations

import numpy as np

CT_WINDOW_HU = (-200.0, 400.0)
MIN_STD = 1e-3  # a constant image must not divide by zero


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
    low, high = window_hu
    if not low < high:
        raise ValueError(f"window_hu must be (low, high) with low < high, got {window_hu}")
    if mean is None or std is None:
        own_mean, own_std = ct_statistics(image_hu, window_hu)
        mean = own_mean if mean is None else mean
        std = own_std if std is None else std
    clipped = np.clip(image_hu.astype(np.float32, copy=False), low, high)
    return (clipped - np.float32(mean)) / np.float32(max(std, MIN_STD))


def ct_statistics(image_hu: np.ndarray, window_hu: tuple[float, float] = CT_WINDOW_HU) -> tuple[float, float]:
    """Mean and standard deviation of the clipped voxels above the window's lower bound.

    Computed once per case, so that crops of it (stage 2) are normalised like the whole.
    """
    low, high = window_hu
    values = image_hu[image_hu > low]
    if values.size == 0:
        return float(low), MIN_STD
    values = np.minimum(values.astype(np.float64), high)
    return float(values.mean()), max(float(values.std()), MIN_STD)
