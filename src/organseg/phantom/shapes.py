"""Smooth shapes evaluated on a canvas block: deformed ellipsoids and tubes along curves.

Each shape returns a *level*: < 1 inside, 1 on the surface, growing outwards, so callers
can also draw shells (kidney cortex, stomach wall) from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from organseg.phantom.canvas import Block


def pointing(axis: int, direction) -> np.ndarray:
    """Rotation matrix turning local axis `axis` (0, 1, 2) towards the model direction `direction`."""
    local = np.eye(3)[axis]
    rotation, _ = Rotation.align_vectors([np.asarray(direction, float)], [local])
    return rotation.as_matrix()


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with a rippled surface: `bumps` rows are (frequency xyz, phase, amplitude)."""

    centre: np.ndarray
    semi_axes_mm: np.ndarray
    rotation: np.ndarray
    bumps: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        # Half-extent of the rotated ellipsoid along each model axis, widened by the largest ripple.
        reach = np.sqrt(((self.rotation * self.semi_axes_mm) ** 2).sum(axis=1)) * (1 + np.abs(self.bumps[:, 4]).sum())
        return self.centre - reach, self.centre + reach

    def level(self, block: Block) -> np.ndarray:
        low, high = self.bounds()
        near = np.ones(block.x.shape, bool)
        for axis, values in enumerate((block.x, block.y, block.z)):
            near &= (values >= low[axis]) & (values <= high[axis])
        # Only voxels inside the bounding box can be inside: evaluate those alone.
        index = np.flatnonzero(near)
        offset = np.column_stack([a.ravel()[index] - c for a, c in zip((block.x, block.y, block.z), self.centre)])
        local = offset.astype(np.float32) @ self.rotation.astype(np.float32) / self.semi_axes_mm.astype(np.float32)
        ripple = np.ones(len(index), np.float32)
        for *frequency, phase, amplitude in self.bumps:
            ripple += amplitude * np.sin(local @ np.asarray(frequency, np.float32) + np.float32(phase))
        level = np.full(block.x.shape, np.inf, np.float32)
        level.ravel()[index] = np.linalg.norm(local, axis=-1) / ripple
        return level


def ellipsoid(rng: np.random.Generator, centre, semi_axes_mm, rotation=None, ripple: float = 0.05) -> Ellipsoid:
    """An Ellipsoid with four random surface ripples of about `ripple` relative height."""
    bumps = np.column_stack(
        [
            rng.normal(0, 2.0, (4, 3)),
            rng.uniform(0, 2 * np.pi, 4),
            rng.uniform(0.3, 1.0, 4) * ripple,
        ]
    )
    rotation = np.eye(3) if rotation is None else np.asarray(rotation)
    return Ellipsoid(np.asarray(centre, float), np.asarray(semi_axes_mm, float), rotation, bumps)


@dataclass(frozen=True)
class Tube:
    """A tube of varying radius along a centreline sampled every millimetre or so."""

    points: np.ndarray
    radii_mm: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = self.radii_mm.max()
        return self.points.min(axis=0) - reach, self.points.max(axis=0) + reach

    def nearest(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """Level (distance over local radius) and index of the nearest centreline sample."""
        query = np.column_stack([block.x.ravel(), block.y.ravel(), block.z.ravel()])
        distance, index = cKDTree(self.points).query(query, distance_upper_bound=self.radii_mm.max(), workers=-1)
        index = np.minimum(index, len(self.points) - 1).reshape(block.x.shape)
        level = (distance.reshape(block.x.shape) / self.radii_mm[index]).astype(np.float32)
        return level, index

    def level(self, block: Block) -> np.ndarray:
        return self.nearest(block)[0]


def tube(control_points, radii_mm, step_mm: float = 1.0) -> Tube:
    """A Tube through `control_points` (n, 3) with radii interpolated between them."""
    control_points = np.asarray(control_points, float)
    chord = np.r_[0, np.cumsum(np.linalg.norm(np.diff(control_points, axis=0), axis=1))]
    samples = np.linspace(0, chord[-1], max(int(chord[-1] / step_mm), 2))
    # A natural cubic spline keeps the curve smooth through organs that bend (stomach, duodenum).
    points = CubicSpline(chord, control_points, bc_type="natural")(samples)
    return Tube(points, np.interp(samples, chord, np.asarray(radii_mm, float)))


def union_level(shapes, block: Block) -> np.ndarray:
    """Level of the union of several shapes (the smallest level)."""
    return np.minimum.reduce([shape.level(block) for shape in shapes])


def union_bounds(shapes) -> tuple[np.ndarray, np.ndarray]:
    lows, highs = zip(*(shape.bounds() for shape in shapes))
    return np.min(lows, axis=0), np.max(highs, axis=0)


def segment_distance(x, y, z, start, stop) -> np.ndarray:
    """Distance (mm) of every point to the segment from `start` to `stop`."""
    start, stop = np.asarray(start, np.float32), np.asarray(stop, np.float32)
    axis = stop - start
    length2 = float(axis @ axis)
    t = np.clip(((x - start[0]) * axis[0] + (y - start[1]) * axis[1] + (z - start[2]) * axis[2]) / length2, 0, 1)
    return np.sqrt(
        (x - start[0] - t * axis[0]) ** 2 + (y - start[1] - t * axis[1]) ** 2 + (z - start[2] - t * axis[2]) ** 2
    )
