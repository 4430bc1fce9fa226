"""The pelvis below the abdomen: iliac wings, hip joints, pubic rami, gluteal muscles, bladder.

An abdomen-pelvis CT shows them under the organs; without them a network meets pelvic
bone and the water-filled bladder as something it never saw, and may call them organs.
Positions are model mm of the nominal body (see body.py); the iliac crests lie 25-55 mm
below the lower kidney poles (the fourth lumbar vertebra), the femoral heads 120-145 mm
below the crests.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from organseg.phantom.body import Body
from organseg.phantom.canvas import PROTECTED, Canvas
from organseg.phantom.shapes import ellipsoid, segment_distance

CREST_Z_MM = (-145.0, -115.0)
CREST_TO_HIP_MM = (120.0, 145.0)
HEAD_RADIUS_MM = (21.0, 25.0)
SIDES = (-1, 1)  # the patient's right (x < 0) and left


class Hips(NamedTuple):
    """Where a pelvis has its hip joints: model z of the femoral heads' centres, and their radius."""

    z_mm: float
    head_radius_mm: float


def paint_pelvis(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> Hips:
    """Muscles, bones and bladder of the pelvis, where the field of view reaches below the crests."""
    crest = rng.uniform(*CREST_Z_MM)
    hip = crest - rng.uniform(*CREST_TO_HIP_MM)
    head_radius = rng.uniform(*HEAD_RADIUS_MM)
    hips = Hips(hip, head_radius)
    block = canvas.block((-np.inf, -np.inf, -np.inf), (np.inf, np.inf, crest + 10))
    if block is None:
        return hips
    x, y = body.nominal_xy(block)
    z = block.z
    within_wall = body.level(block, body.fat_mm) < 1
    for side in SIDES:
        glute = ellipsoid(rng, body.place([side * 95, 70, (crest + hip) / 2 - 15]), [45, 32, 90]).level(block) < 1
        canvas.paint(block, glute & within_wall, tones["muscle"], PROTECTED, free_only=False)
    bladder = ellipsoid(
        rng, body.place([0, -45, hip + rng.uniform(5, 35)]), rng.uniform((30, 25, 22), (55, 40, 45))
    ).level(block)
    canvas.paint(block, (bladder < 1.12) & within_wall, tones["muscle"], PROTECTED, free_only=False, texture_hu=3)
    # Urine is water, as the spinal canal's fluid is: the same tone (and the same random one).
    canvas.paint(block, (bladder < 1) & within_wall, tones["csf"], PROTECTED, free_only=False, texture_hu=2)
    distance = np.full(x.shape, np.inf, np.float32)
    for side in SIDES:
        distance = np.minimum(distance, _bone_distance(x * side, y, z, crest, hip, head_radius))
    bone = within_wall & (distance < 0)
    canvas.paint(block, bone & (distance < -2.5), tones["cancellous bone"], PROTECTED, free_only=False, texture_hu=25)
    canvas.paint(block, bone & (distance >= -2.5), tones["cortical bone"], PROTECTED, free_only=False, texture_hu=40)
    return hips


def _bone_distance(x, y, z, crest: float, hip: float, head_radius: float) -> np.ndarray:
    """Signed distance (mm, < 0 inside) to the bones of the left half-pelvis; x mirrored for the right."""
    # The iliac wing: a curved plate around the pelvic cavity, wider towards the crest.
    height = np.clip((z - hip) / (crest - hip), 0, 1)
    radius = 45 + 50 * height
    off_x, off_y = x - 35, y - 20
    angle = np.arctan2(off_y, off_x)  # 0 lateral, > 0 towards the back
    wing = np.abs(np.hypot(off_x, off_y) - radius) - (4 + 3 * (1 - height))
    wing = np.where((angle > -0.9) & (angle < 1.7) & (z > hip + 12) & (z < crest), wing, np.inf)
    head_centre = np.array([88.0, 5.0, hip])
    head = np.sqrt((x - 88) ** 2 + (y - 5) ** 2 + (z - hip) ** 2) - head_radius
    # The acetabulum cups the head from above and inside.
    cup = np.abs(head + head_radius - (head_radius + 6)) - 3.5
    cup = np.where((z > hip - 5) & (x < 95), cup, np.inf)
    neck = segment_distance(x, y, z, head_centre, head_centre + [32, 5, -35]) - 14
    shaft = segment_distance(x, y, z, head_centre + [32, 5, -35], head_centre + [36, 8, -200]) - 13
    ramus = segment_distance(x, y, z, head_centre + [-8, -20, -10], np.array([12.0, -58.0, hip - 28])) - 8
    return np.minimum.reduce([wing, head, cup, neck, shaft, ramus]).astype(np.float32)
