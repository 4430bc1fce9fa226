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
    clipped = np.clip(image_hu.astype(np.float32, copy=False), low, high)
    if mean is None or std is None:
        inside = clipped[clipped > low]
        sample = inside if inside.size else clipped
        mean = float(sample.mean()) if mean is None else mean
        std = float(sample.std()) if std is None else std
    return (clipped - np.float32(mean)) / np.float32(max(std, 1e-3))
