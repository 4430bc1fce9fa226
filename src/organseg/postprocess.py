"""Label map clean-up by connected components: largest component, small pieces, holes.

Works on the whole multi-label map at once: connected-components-3d labels the
components of every organ in one pass (a component never spans two labels), so the cost
does not grow with the number of organs. Only the box around the organ voxels is
labelled: outside it there is no component to keep or remove, and in a full CT the
organs' box is a fraction of the volume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cc3d
import numpy as np

CONNECTIVITY = 26  # voxels touching by a face, an edge or a corner belong together


def keep_largest_component(labels: np.ndarray, label_ids: Iterable[int] | None = None) -> np.ndarray:
    """Keep only the largest connected component of each label in `label_ids` (all when None)."""
    return _within_organs(labels, lambda region: _keep_largest(region, label_ids))


def remove_small_components(labels: np.ndarray, spacing_mm: tuple[float, float, float], min_ml: float) -> np.ndarray:
    """Remove every component smaller than `min_ml` millilitres."""
    return _within_organs(labels, lambda region: _remove_small(region, float(np.prod(spacing_mm)) / 1000.0, min_ml))


def _keep_largest(labels: np.ndarray, label_ids: Iterable[int] | None) -> np.ndarray:
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


def _remove_small(labels: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray:
    components, sizes, _ = _components(labels)
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


def _within_organs(labels: np.ndarray, clean: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`clean` applied to the box around the non-zero voxels of `labels`; background elsewhere."""
    result = np.zeros_like(labels)  # in the layout of `labels`, C or Fortran order
    box = _organ_box(labels)
    if box is not None:
        # A contiguous copy of the box in that same order: every later pass then runs through memory.
        result[box] = clean(np.array(labels[box], order="K"))
    return result


def _organ_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel; None if there is none."""
    organ = labels != 0
    box = []
    for axis in range(organ.ndim):
        present = np.flatnonzero(organ.any(axis=tuple(a for a in range(organ.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
        organ = organ[(slice(None),) * axis + (box[-1],)]  # later axes search the narrowed box only
    return tuple(box)


def _components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Component ids (0 = background), voxel count of each id, and the label each id belongs to."""
    components = cc3d.connected_components(labels, connectivity=CONNECTIVITY)
    count = int(components.max()) + 1
    # Flattened in the components' memory order (cc3d keeps C or Fortran order): no copy of them.
    order = "F" if components.flags.f_contiguous and not components.flags.c_contiguous else "C"
    flat = components.ravel(order)
    sizes = np.bincount(flat, minlength=count)
    owner = np.zeros(count, labels.dtype)
    owner[flat] = labels.ravel(order)
    return components, sizes, owner
