"""The slice orientations a phantom can be stored in as a DICOM series.

Each is reached from the canonical orientation (index axes towards patient Left,
Posterior, Superior) by permuting and flipping axes, so no voxel is interpolated; the
oblique one also tilts the grid in the patient, as a tilted gantry does. Every result is
right-handed (slices step along the normal of their rows and columns), as a series read
back by position is.
"""

from __future__ import annotations

import numpy as np

from organseg.geometry import Geometry
from organseg.io import Volume
from organseg.preprocess.orientation import AxisTransform, canonical_transform

# From canonical: rows and columns of each slice, and the slice axis.
TRANSFORMS = {
    "axial": AxisTransform((0, 1, 2), (False, False, False)),  # columns L, rows P, slices foot to head
    "axial-reversed": AxisTransform((0, 1, 2), (False, False, False)),  # the same, files numbered head to foot
    "coronal": AxisTransform((0, 2, 1), (False, True, False)),  # columns L, rows head to foot, slices P
    "sagittal": AxisTransform((1, 2, 0), (False, True, True)),  # columns P, rows head to foot, slices R
    "oblique": AxisTransform((0, 1, 2), (False, False, False)),  # axial, tilted by OBLIQUE_TILT_DEG
}
ORIENTATIONS = tuple(TRANSFORMS)
OBLIQUE_TILT_DEG = 12.0  # about the patient's left-right axis, as a gantry tilts


def orient(volume: Volume, orientation: str) -> Volume:
    """`volume` re-stored in `orientation` (see TRANSFORMS); the same voxels, except the oblique tilt."""
    transform = _compose(canonical_transform(volume.geometry), TRANSFORMS[orientation])
    array = np.ascontiguousarray(transform.apply(volume.array))
    geometry = transform.apply_geometry(volume.geometry)
    if orientation == "oblique":
        geometry = _tilted(geometry, np.deg2rad(OBLIQUE_TILT_DEG))
    return Volume(array, _rounded(geometry))


def _compose(first: AxisTransform, second: AxisTransform) -> AxisTransform:
    """The transform applying `first`, then `second`."""
    permutation = tuple(first.permutation[p] for p in second.permutation)
    flipped = tuple(first.flipped[p] != f for p, f in zip(second.permutation, second.flipped))
    return AxisTransform(permutation, flipped)


def _tilted(geometry: Geometry, angle: float) -> Geometry:
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    return Geometry(
        geometry.shape,
        geometry.spacing_mm,
        tuple(rotation @ np.asarray(geometry.origin_mm)),
        tuple((rotation @ geometry.direction_matrix).ravel()),
    )


def _rounded(geometry: Geometry) -> Geometry:
    """Geometry at the precision DICOM headers carry (1 micrometre, cosines to 1e-6): NIfTI and DICOM then agree."""
    return Geometry(
        geometry.shape,
        tuple(np.round(geometry.spacing_mm, 6)),
        tuple(np.round(geometry.origin_mm, 6)),
        tuple(np.round(geometry.direction, 6)),
    )
