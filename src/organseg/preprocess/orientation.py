"""Reorientation to one canonical axis order by permuting and flipping axes only.

Canonical orientation (DICOM's "LPS"): array axis i runs towards the patient's Left,
j towards Posterior, k towards Superior, so the direction matrix of an axis-aligned
image becomes the identity. Only permutations and flips are used, so no voxel value
is interpolated and the step is exactly invertible; an oblique scan keeps its small
residual rotation in the geometry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from organseg.geometry import Geometry


@dataclass(frozen=True)
class AxisTransform:
    """Axis permutation then flips: new axis a is old axis `permutation[a]`, reversed if `flipped[a]`."""

    permutation: tuple[int, int, int] = (0, 1, 2)
    flipped: tuple[bool, bool, bool] = (False, False, False)

    def __post_init__(self) -> None:
        if sorted(self.permutation) != [0, 1, 2] or len(self.flipped) != 3:
            raise ValueError(f"not an axis permutation: {self.permutation}, flips {self.flipped}")
        object.__setattr__(self, "permutation", tuple(int(p) for p in self.permutation))
        object.__setattr__(self, "flipped", tuple(bool(f) for f in self.flipped))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient an array (a view, no copy); extra leading axes (channels) are kept."""
        lead = array.ndim - 3
        moved = array.transpose(*range(lead), *(lead + p for p in self.permutation))
        flips = tuple(slice(None, None, -1 if f else None) for f in self.flipped)
        return moved[(Ellipsis, *flips)]

    def source_slices(
        self, slices: tuple[slice, slice, slice], source_shape: tuple[int, int, int]
    ) -> tuple[slice, ...]:
        """The slices of the source array holding the region `apply(source)[slices]` (unit steps, in range).

        So a region can be cut from the stored array, which is cheaper than copying it out
        of a transposed, reversed view: apply(source)[slices] == apply(source[source_slices]).
        """
        result = [slice(None)] * 3
        for new_axis, (old_axis, flip) in enumerate(zip(self.permutation, self.flipped)):
            start, stop, _ = slices[new_axis].indices(source_shape[old_axis])
            size = source_shape[old_axis]
            result[old_axis] = slice(size - stop, size - start) if flip else slice(start, stop)
        return tuple(result)

    def inverse(self) -> AxisTransform:
        """The transform that undoes this one."""
        inverse_permutation = tuple(int(a) for a in np.argsort(self.permutation))
        # Old axis b became new axis inverse_permutation[b]; undoing flips it back first.
        flipped = tuple(self.flipped[inverse_permutation[b]] for b in range(3))
        return AxisTransform(inverse_permutation, flipped)

    def apply_geometry(self, geometry: Geometry) -> Geometry:
        """The geometry of `apply(array)` for an array with `geometry`."""
        old_shape = np.asarray(geometry.shape)
        first_voxel = np.zeros(3)
        for new_axis, old_axis in enumerate(self.permutation):
            if self.flipped[new_axis]:
                first_voxel[old_axis] = old_shape[old_axis] - 1
        signs = np.where(self.flipped, -1.0, 1.0)
        direction = geometry.direction_matrix[:, list(self.permutation)] * signs
        return Geometry(
            shape=tuple(old_shape[list(self.permutation)]),
            spacing_mm=tuple(np.asarray(geometry.spacing_mm)[list(self.permutation)]),
            origin_mm=tuple(geometry.index_to_world(first_voxel)),
            direction=tuple(direction.ravel()),
        )


def canonical_transform(geometry: Geometry) -> AxisTransform:
    """The permutation and flips that bring `geometry` closest to canonical (LPS) orientation.

    Picks, among the 6 axis permutations, the one whose direction columns line up best with
    the world axes (largest sum of |cosines|), then flips each axis that points backwards.
    """
    direction = geometry.direction_matrix
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(direction[world, perm[world]]) for world in range(3)),
    )
    flipped = tuple(bool(direction[world, best[world]] < 0) for world in range(3))
    return AxisTransform(best, flipped)


def all_axis_transforms() -> list[AxisTransform]:
    """The 48 permutation-and-flip transforms of a 3D grid."""
    return [
        AxisTransform(perm, flips)
        for perm in itertools.permutations(range(3))
        for flips in itertools.product((False, True), repeat=3)
    ]
