"""The phantom's drawing surface: a voxel grid, its deformed model coordinates, smooth random fields.

Anatomy is drawn in *model* coordinates, in mm of a nominal adult: x towards the patient's
left, y towards posterior, z towards superior (the canonical LPS axes), x = y = 0 at the
body centre. The grid maps canonical voxel indices linearly onto model space, so a small
grid is a low-resolution view of the same anatomy; a smooth random displacement field
then bends the anatomy as a whole.

Everything is computed block by block (the bounding box of one structure), so a full-size
512x512x100 volume never needs more than a few full-size arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Label for tissue that organs may not grow into (bone, lung, body wall); cleared at the end.
PROTECTED = 255
FREE = 0
# Label for the diaphragm: protected from organs, except the tubes that pass through its
# hiatuses (aorta, inferior vena cava, esophagus); cleared at the end.
DIAPHRAGM = 254
NO_ORGAN = (FREE, DIAPHRAGM, PROTECTED)  # the labels of voxels that no organ holds


class SmoothField:
    """Smooth random field on a voxel grid: coarse Gaussian noise, cubic B-spline upsampled.

    `cells` coarse cells span the whole grid along each axis, so the field has the same
    shape in model space whatever the voxel count. Values are scaled to about unit standard
    deviation; `bound` is a hard upper limit of their magnitude.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], cells: tuple[int, int, int]):
        coarse = rng.standard_normal(tuple(c + 3 for c in cells))
        # A cubic B-spline average of unit noise has a standard deviation of about 0.69.
        self.coarse = (coarse / 0.69).astype(np.float32)
        self.bound = float(np.abs(self.coarse).max())
        self.weights = [_bspline_weights(n, c) for n, c in zip(shape, cells)]

    def block(self, slices: tuple[slice, slice, slice]) -> np.ndarray:
        """The field on the voxels `slices` of the grid (float32)."""
        wx, wy, wz = (w[s] for w, s in zip(self.weights, slices))
        out = np.tensordot(self.coarse, wz, axes=([2], [1]))
        out = np.tensordot(out, wy, axes=([1], [1]))
        return np.tensordot(wx, out, axes=([1], [0])).transpose(0, 2, 1)


def _bspline_weights(n: int, cells: int) -> np.ndarray:
    """(n, cells + 3) cubic B-spline interpolation weights from coarse nodes to voxel centres."""
    t = (np.arange(n) + 0.5) / n * cells + 1.0
    base = np.floor(t).astype(int)
    f = t - base
    columns = (
        (1 - f) ** 3 / 6,
        (3 * f**3 - 6 * f**2 + 4) / 6,
        (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
        f**3 / 6,
    )
    weights = np.zeros((n, cells + 3), np.float32)
    for offset, column in enumerate(columns):
        weights[np.arange(n), base - 1 + offset] = column
    return weights


@dataclass
class Block:
    """A box of voxels and the deformed model position (mm) of each of its voxels."""

    slices: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    texture: np.ndarray | None = None  # the canvas texture on this block, computed when first needed


class Canvas:
    """Label map and HU image being painted, on a grid with a smooth deformation.

    Args:
        shape: canonical voxel counts (left-right, anterior-posterior, inferior-superior).
        first_mm: model position of voxel (0, 0, 0) before deformation.
        step_mm: model mm per voxel along each axis.
        displacement: one SmoothField per axis and its amplitude in mm.
        texture: a SmoothField for low-frequency intensity texture.
    """

    def __init__(self, shape, first_mm, step_mm, displacement, amplitude_mm, texture: SmoothField):
        self.shape = tuple(shape)
        self.first_mm = np.asarray(first_mm, np.float32)
        self.step_mm = np.asarray(step_mm, np.float32)
        self.displacement = displacement
        self.amplitude_mm = np.asarray(amplitude_mm, np.float32)
        self.texture = texture
        # Everything starts protected; painting the abdominal cavity frees the space organs may use.
        self.labels = np.full(self.shape, PROTECTED, np.uint8)
        self.hu = np.full(self.shape, -1000.0, np.float32)

    def block(self, low_mm, high_mm) -> Block | None:
        """The voxels whose deformed model position may fall in the box [low_mm, high_mm]."""
        # A voxel shows the anatomy at its grid position plus at most `reach` of displacement.
        reach = np.array([a * f.bound for a, f in zip(self.amplitude_mm, self.displacement)])
        start = np.floor((np.asarray(low_mm) - reach - self.first_mm) / self.step_mm)
        stop = np.ceil((np.asarray(high_mm) + reach - self.first_mm) / self.step_mm) + 1
        start = np.clip(np.nan_to_num(start, posinf=0, neginf=0), 0, self.shape).astype(int)
        stop = np.clip(np.nan_to_num(stop, posinf=1e9, neginf=0), 0, self.shape).astype(int)
        if np.any(stop <= start):
            return None
        slices = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        axes = []
        for axis, s in enumerate(slices):
            grid = self.first_mm[axis] + self.step_mm[axis] * np.arange(s.start, s.stop, dtype=np.float32)
            moved = self.amplitude_mm[axis] * self.displacement[axis].block(slices)
            axes.append(np.ascontiguousarray(moved + grid.reshape([-1 if a == axis else 1 for a in range(3)])))
        return Block(slices, *axes)

    def everywhere(self) -> Block:
        return self.block((-np.inf,) * 3, (np.inf,) * 3)

    def paint(
        self, block: Block, mask: np.ndarray, hu, label: int, *, free_only: bool, texture_hu: float = 5.0, crossing=()
    ):
        """Set label and HU where `mask`; `free_only` keeps voxels already claimed by others.

        `hu` is a number or an array of the block's shape; `texture_hu` adds smooth
        low-frequency texture of that standard deviation. With `free_only`, voxels labeled
        one of `crossing` are taken too (a tube through the diaphragm).
        """
        labels = self.labels[block.slices]
        if free_only:
            claimable = labels == FREE
            for label_crossed in crossing:
                claimable |= labels == label_crossed
            mask = mask & claimable
        values = np.broadcast_to(np.asarray(hu, np.float32), mask.shape)[mask]
        if texture_hu:
            if block.texture is None:
                block.texture = self.texture.block(block.slices)
            values = values + texture_hu * block.texture[mask]
        labels[mask] = label
        self.hu[block.slices][mask] = values
