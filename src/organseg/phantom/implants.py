"""Metal implants in phantoms: a spinal fixation, hip prostheses.

They are painted after the organs and only where no organ lies, so a case with metal has
the labels of the same seed without; their streaks across the image are streaks.py's work.
"""

from __future__ import annotations

import numpy as np

from organseg.config_checks import PHANTOM_ARTEFACTS
from organseg.phantom.body import Body, Spine
from organseg.phantom.canvas import NO_ORGAN, PROTECTED, Canvas
from organseg.phantom.pelvis import Hips
from organseg.phantom.shapes import segment_distance

ARTEFACTS = PHANTOM_ARTEFACTS
NO_ARTEFACTS = "none"
# Ideal HU of implant metal at about 70 keV, from NIST XCOM attenuation times density: titanium
# alloy about +7000, cobalt-chrome and steel several times more. Stored images clip at +3071.
METAL_HU = (7000.0, 30000.0)
FIXED_LEVELS = (2, 4)  # vertebrae a spinal fixation holds, each with a pedicle screw a side
ROD_RADIUS_MM, SCREW_RADIUS_MM = 3.0, 2.5
# Nominal x, y (mm) where a rod runs behind the spine, and where its screws end in the vertebral body.
ROD_XY, SCREW_TIP_XY = (24.0, 86.0), (8.0, 42.0)


def choose_implants(rng: np.random.Generator, hips: Hips | None, bottom_z_mm: float) -> tuple[str, ...]:
    """Which implants a case with metal has: a spinal fixation, hip prostheses (where the hips are seen), or both."""
    if hips is None or hips.z_mm < bottom_z_mm:
        return ("spine",)
    options = (("spine",), ("right hip",), ("left hip",), ("right hip", "left hip"), ("spine", "right hip"))
    return options[int(rng.integers(len(options)))]


def paint_implants(
    canvas: Canvas, rng: np.random.Generator, body: Body, implants, spine: Spine, hips: Hips | None
) -> None:
    """Paint `implants` (from choose_implants) in metal, on every voxel that no organ holds."""
    metal_hu = rng.uniform(*METAL_HU)
    for implant in implants:
        if implant == "spine":
            block, distance = _spinal_fixation(canvas, rng, body, spine)
        else:
            block, distance = _hip_prosthesis(canvas, body, hips, -1 if implant == "right hip" else 1)
        if block is not None:
            no_organ = np.isin(canvas.labels[block.slices], NO_ORGAN)
            canvas.paint(block, (distance < 0) & no_organ, metal_hu, PROTECTED, free_only=False, texture_hu=0)


def _spinal_fixation(canvas: Canvas, rng: np.random.Generator, body: Body, spine: Spine):
    """Two rods behind the spine over 2-4 vertebrae, a pedicle screw a side into each vertebral body."""
    levels = int(rng.integers(FIXED_LEVELS[0], FIXED_LEVELS[1] + 1))
    # Fixations sit between the lowest thoracic and the lowest lumbar vertebrae.
    candidates = spine.body_centres_mm(-150.0, 60.0)
    first = int(rng.integers(0, len(candidates) - levels + 1))
    heights = candidates[first : first + levels]
    block = canvas.block(body.place([-40, 30, heights[0] - 10]), body.place([40, 100, heights[-1] + 10]))
    if block is None:
        return None, None
    x, y = body.nominal_xy(block)
    distance = np.full(x.shape, np.inf, np.float32)
    for side in (-1, 1):
        rod_x, rod_y = side * ROD_XY[0], ROD_XY[1]
        rod = segment_distance(x, y, block.z, (rod_x, rod_y, heights[0] - 5), (rod_x, rod_y, heights[-1] + 5))
        tip = (side * SCREW_TIP_XY[0], SCREW_TIP_XY[1])
        screws = [segment_distance(x, y, block.z, (rod_x, rod_y, h), (*tip, h)) - SCREW_RADIUS_MM for h in heights]
        distance = np.minimum.reduce([distance, rod - ROD_RADIUS_MM, *screws])
    return block, distance


def _hip_prosthesis(canvas: Canvas, body: Body, hips: Hips, side: int):
    """A femoral head and a stem down the femur's neck and shaft, where the pelvis put that hip."""
    head = np.array([88.0 * side, 5.0, hips.z_mm])  # pelvis.py's femoral head, mirrored to `side`
    neck = head + [32 * side, 5, -35]
    block = canvas.block(
        body.place([head[0] - 60, -40, hips.z_mm - 180]), body.place([head[0] + 60, 50, hips.z_mm + 40])
    )
    if block is None:
        return None, None
    x, y = body.nominal_xy(block)
    ball = np.sqrt((x - head[0]) ** 2 + (y - head[1]) ** 2 + (block.z - head[2]) ** 2) - hips.head_radius_mm
    stem = np.minimum(
        segment_distance(x, y, block.z, head, neck) - 8,
        segment_distance(x, y, block.z, neck, head + [36 * side, 8, -160]) - 6,
    )
    return block, np.minimum(ball, stem)
