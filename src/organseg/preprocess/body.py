"""The patient's body on stage 1's grid: how wide stage 2's region is.

The 13 organs fill the abdomen from the liver at the right wall to the spleen at the left,
so the body's width is a span no organ leaves, found by a threshold rather than by a
network. A stage 1 trained on other scans (phantoms, another hospital) can misjudge where
the organs end and cut off one side of the patient; the body's outline it cannot get
wrong. Only the width: how far the organs lie behind the belly's front depends on the
patient's fat, so depth and height stay stage 1's.
"""

from __future__ import annotations

import cc3d
import numpy as np

from organseg.preprocess.crop import Box, bounding_box, grid_box_to_volume

# Between air (clipped to the window's low end) and fat (about -100 HU and denser).
BODY_HU = -150.0


def body_box(grid_image: np.ndarray, mean: float, std: float, window_hu, shape, within: Box) -> Box | None:
    """The volume box spanning the body's width and depth over the slices of `within`; None if none is found.

    Args:
        grid_image: the whole volume on stage 1's grid, clipped to `window_hu` and z-scored
            with `mean` and `std` ((1, *grid) or grid-shaped), as stage 1 sees it.
        shape: the canonical volume's shape, which the boxes index.
        within: the region whose slices count: a pelvis or shoulders below or above the
            organs may be wider than the abdomen around them.
    """
    if window_hu[0] >= BODY_HU:  # a window that clips fat and air alike shows no outline
        return None
    image = np.asarray(grid_image).reshape(np.shape(grid_image)[-3:])
    cells = image.shape[2]
    low = min(int(np.floor(within.start[2] * cells / shape[2])), cells - 1)
    high = max(int(np.ceil(within.stop[2] * cells / shape[2])), low + 1)
    body = np.zeros(image.shape, bool)
    body[..., low:high] = _opened_in_plane(image[..., low:high] > (BODY_HU - mean) / std)
    if not body.any():
        return None
    largest = cc3d.largest_k(body, k=1, connectivity=26) > 0
    found = grid_box_to_volume(bounding_box(largest, spacing_mm=(1.0, 1.0, 1.0)), image.shape, shape)
    return Box((*found.start[:2], within.start[2]), (*found.stop[:2], within.stop[2]))


def width_from(box: Box, body: Box | None) -> Box:
    """`box` as wide as `body` (left to right), its depth and height kept; `box` itself when there is no body."""
    if body is None:
        return box
    return Box((body.start[0], *box.start[1:]), (body.stop[0], *box.stop[1:]))


def _opened_in_plane(mask: np.ndarray) -> np.ndarray:
    """`mask` eroded, then dilated, by one voxel in-plane: the thin table under the patient goes.

    On a grid this coarse only a few voxels separate the table from the back, and a slab
    a voxel or two thick does not survive. (numpy alone: plain prediction imports no scipy.)
    """
    rows, columns = mask.shape[:2]

    def neighbourhood(array: np.ndarray, fill: bool) -> list[np.ndarray]:
        padded = np.pad(array, ((1, 1), (1, 1), (0, 0)), constant_values=fill)
        return [padded[i : i + rows, j : j + columns] for i in range(3) for j in range(3)]

    eroded = np.logical_and.reduce(neighbourhood(mask, True))
    return np.logical_or.reduce(neighbourhood(eroded, False))
