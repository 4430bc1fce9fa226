"""Organ outlines on one slice, and the mask they enclose.

An outline runs along the organ's outer pixel edges, half a pixel outside the centres of
its boundary pixels: the 0.5 iso-line of the binary mask (marching squares, scikit-image).
Filled back by testing pixel centres, such outlines give the mask exactly, where
outlines through the boundary pixel centres lose a rim of half a pixel all round. Holes
and islands are separate closed outlines; the mask is what an odd number of outlines
encloses (the even-odd rule of DICOM closed planar contours).
"""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as Polygon
from skimage.measure import find_contours


def outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D boolean mask as (N, 2) arrays of fractional indices (first point not repeated).

    The background is taken as 8-connected, so two pixels that touch only at a corner
    get separate outlines rather than one that crosses itself.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)  # so outlines touching the border close
    found = []
    for contour in find_contours(padded, 0.5, fully_connected="low"):
        points = _corners(contour[:-1]) - 1.0
        if len(points) >= 3:
            found.append(points)
    return found


def _corners(ring: np.ndarray) -> np.ndarray:
    """The points of a closed ring where it turns: the inner points of straight runs add nothing.

    Marching-squares points lie on the half-pixel lattice, so collinearity is exact in
    floating point and the ring encloses the same pixel centres without them.
    """
    incoming = ring - np.roll(ring, 1, axis=0)
    outgoing = np.roll(ring, -1, axis=0) - ring
    turn = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    return ring[turn != 0]


def fill(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The boolean mask of `shape` whose pixel centres an odd number of `polygons` enclose."""
    mask = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        low = np.maximum(np.floor(polygon.min(axis=0)).astype(int), 0)
        high = np.minimum(np.ceil(polygon.max(axis=0)).astype(int) + 1, shape)
        if np.any(high <= low):
            continue
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij"), axis=-1)
        inside = Polygon(polygon).contains_points(grid.reshape(-1, 2)).reshape(grid.shape[:2])
        mask[low[0] : high[0], low[1] : high[1]] ^= inside
    return mask
