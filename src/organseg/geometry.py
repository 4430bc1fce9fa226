"""Where an image's voxels lie in the patient: the Geometry record.

Axis order, stated once for the whole project: arrays are indexed [i, j, k] along the
image's own index axes, numbered as ITK and the NIfTI and DICOM headers number them (x
fastest in the file). `spacing_mm`, `origin_mm` and the columns of `direction` follow the
same order, so the world position (ITK's LPS patient frame, in mm) of the voxel centre at
index p is

    origin_mm + direction @ (spacing_mm * p)

Every step that resamples or crops an array also asks its Geometry for the geometry of
the result, so a label map can always be written where it belongs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Shape, voxel spacing (mm), origin (mm) and direction cosines of a 3D image.

    `direction` is row-major 3x3 (as SimpleITK's GetDirection): column j is the world
    direction of index axis j.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(o) for o in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(d) for d in np.ravel(self.direction)))
        if len(self.shape) != 3 or len(self.spacing_mm) != 3 or len(self.origin_mm) != 3:
            raise ValueError(f"Geometry is 3D: got shape {self.shape}, spacing {self.spacing_mm}")
        if len(self.direction) != 9:
            raise ValueError(f"direction must have 9 entries, got {len(self.direction)}")

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix; column j is the world direction of index axis j."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def affine(self) -> np.ndarray:
        """4x4 matrix taking homogeneous voxel indices to world (LPS) mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)
        matrix[:3, 3] = self.origin_mm
        return matrix

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """World positions (..., 3) in mm of voxel indices (..., 3), fractional allowed."""
        index = np.asarray(index, dtype=np.float64)
        scaled = index * np.asarray(self.spacing_mm)
        return scaled @ self.direction_matrix.T + np.asarray(self.origin_mm)

    def world_to_index(self, world_mm: np.ndarray) -> np.ndarray:
        """Fractional voxel indices (..., 3) of world positions (..., 3) in mm."""
        offset = np.asarray(world_mm, dtype=np.float64) - np.asarray(self.origin_mm)
        return (offset @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing_mm)

    def extent_mm(self) -> tuple[float, float, float]:
        """Field of view along each index axis in mm (voxel count times spacing)."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing_mm))

    def resized(self, shape: tuple[int, int, int]) -> Geometry:
        """The geometry of the same field of view sampled on `shape` voxels.

        Voxels are cells: the outer faces of the first and last voxel stay in place, so
        the spacing scales by old/new size and the first voxel centre moves by half the
        change of spacing.
        """
        new_spacing = np.asarray(self.extent_mm()) / np.asarray(shape, dtype=np.float64)
        half_step = (new_spacing - np.asarray(self.spacing_mm)) / 2
        origin = np.asarray(self.origin_mm) + self.direction_matrix @ half_step
        return Geometry(tuple(shape), tuple(new_spacing), tuple(origin), self.direction)

    def cropped(self, start: tuple[int, int, int], shape: tuple[int, int, int]) -> Geometry:
        """The geometry of the sub-box of `shape` voxels whose first voxel is `start`."""
        origin = self.index_to_world(np.asarray(start, dtype=np.float64))
        return Geometry(tuple(shape), self.spacing_mm, tuple(origin), self.direction)

    def is_close(self, other: Geometry, tolerance_mm: float = 1e-4, tolerance_cos: float = 1e-5) -> bool:
        """Same shape, and spacing, origin and direction equal within tolerances."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, rtol=0, atol=tolerance_mm)
            and np.allclose(self.origin_mm, other.origin_mm, rtol=0, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, rtol=0, atol=tolerance_cos)
        )

    def differences(self, other: Geometry, tolerance_mm: float = 1e-4, tolerance_cos: float = 1e-5) -> list[str]:
        """Human-readable list of what differs from `other` (empty if they match)."""
        found = []
        if self.shape != other.shape:
            found.append(f"shape {self.shape} vs {other.shape}")
        for field, tolerance in (
            ("spacing_mm", tolerance_mm),
            ("origin_mm", tolerance_mm),
            ("direction", tolerance_cos),
        ):
            mine, theirs = getattr(self, field), getattr(other, field)
            if not np.allclose(mine, theirs, rtol=0, atol=tolerance):
                found.append(f"{field.removesuffix('_mm')} {_rounded(mine)} vs {_rounded(theirs)}")
        return found

    def to_dict(self) -> dict:
        """Plain data for JSON."""
        return {
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(tuple(data["shape"]), tuple(data["spacing_mm"]), tuple(data["origin_mm"]), tuple(data["direction"]))


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(v, 4) for v in values)
