"""Label map clean-up by connected components: largest component, small pieces, holes.

Works on the whole multi-label map at once: connected-components-3d labels the
components of every organ in one pass (a component never spans two labels), so the cost
does not grow with the number of organs.
"""

from __future__ import annotations

from collections.abc import Iterable

import cc3d
import numpy as np

CONNECTIVITY = 26  # voxels touching by a face, an edge or a corner belong together


def keep_largest_component(labels: np.ndarray, label_ids: Iterable[int] | None = None) -> np.ndarray:
    """Keep only the largest connected component of each label in `label_ids` (all when None)."""
    components, sizes, owner = _components(labels)
    # The labels present are those that own a component (component 0 is the background).
    chosen = set(np.flatnonzero(np.bincount(owner[1:])).tolist() if label_ids is None else label_ids) - {0}
    keep = np.ones(len(sizes), bool)
    for label in chosen:
        mine = np.flatnonzero(owner == label)
        if mine.size > 1:
            keep[mine] = False
            keep[mine[np.argmax(sizes[mine])]] = True
    keep[0] = True
    return np.where(keep[components], labels, 0).astype(labels.dtype, copy=False)


def remove_small_components(labels: np.ndarray, spacing_mm: tuple[float, float, float], min_ml: float) -> np.ndarray:
    """Remove every component smaller than `min_ml` millilitres."""
    components, sizes, _ = _components(labels)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    keep = sizes * voxel_ml >= min_ml
    keep[0] = True
    return np.where(keep[components], labels, 0).astype(labels.dtype, copy=False)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background cavities fully enclosed by one organ with that organ's label.

    Only background is filled: an organ enclosed by another (e.g. a vessel inside the
    liver) stays as it is.
    """
    from scipy import ndimage  # here, not at the top: prediction never fills holes, and scipy slows its start

    filled = labels.copy()
    boxes = ndimage.find_objects(labels)
    for index, box in enumerate(boxes):
        if box is None:
            continue
        label = index + 1
        region = filled[box]
        holes = ndimage.binary_fill_holes(region == label) & (region == 0)
        region[holes] = label
    return filled


def _components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Component ids (0 = background), voxel count of each id, and the label each id belongs to."""
    components = cc3d.connected_components(labels, connectivity=CONNECTIVITY)
    count = int(components.max()) + 1
    sizes = np.bincount(components.ravel(), minlength=count)
    owner = np.zeros(count, labels.dtype)
    owner[components.ravel()] = labels.ravel()
    return components, sizes, owner
