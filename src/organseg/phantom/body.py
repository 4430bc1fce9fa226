"""Everything that is not one of the 13 organs: body wall, spine, ribs, lung bases, bowel, table.

Positions are model mm for a nominal body 320 mm wide and 230 mm deep (see canvas.py for
the axes) and scale with each case's body size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from organseg.phantom.canvas import DIAPHRAGM, FREE, PROTECTED, Canvas, SmoothField
from organseg.phantom.shapes import ellipsoid

# Inner size of the nominal abdominal cavity (half width, front and back half depths); organs scale with it.
NOMINAL_CAVITY_MM = (133.0, 88.0, 80.0)
# The heart's back wall (nominal y, mm): in front of the esophagus (y >= 5 at its front), which it would cut.
HEART_BACK_Y_MM = 0.0
# The back rests on the table, so it is flatter and shallower than the belly.
BACK_DEPTH = 0.93
# Exponent of the outline behind the spine's front (a superellipse; 2 is an ellipse). The
# squarer back leaves the paravertebral gutters beside the spine their depth: the kidneys
# and the spleen lie there, and an elliptic back would cut them short.
BACK_EXPONENT = 2.6


@dataclass(frozen=True)
class Body:
    """Outline and wall of one case's body; `harmonics` rows are (order, relative amplitude, phase)."""

    half_width_mm: float
    half_depth_mm: float
    fat_mm: float
    muscle_mm: float
    harmonics: np.ndarray

    @property
    def wall_mm(self) -> float:
        return self.fat_mm + self.muscle_mm

    @property
    def scale(self) -> tuple[float, float, float]:
        """Factors from nominal to this case's cavity: (x, front y, back y); a thick wall leaves organs less room."""
        front = self.half_depth_mm - self.wall_mm
        back = BACK_DEPTH * self.half_depth_mm - self.wall_mm
        return (
            (self.half_width_mm - self.wall_mm) / NOMINAL_CAVITY_MM[0],
            front / NOMINAL_CAVITY_MM[1],
            back / NOMINAL_CAVITY_MM[2],
        )

    @property
    def size(self) -> float:
        """Factor from nominal to this case's organ sizes."""
        return float(np.mean(self.scale))

    def place(self, nominal_mm) -> np.ndarray:
        """Nominal model positions (..., 3) moved to this body's size."""
        position = np.array(nominal_mm, float)
        x_scale, front, back = self.scale
        position[..., 0] *= x_scale
        position[..., 1] *= np.where(position[..., 1] > 0, back, front)
        return position

    def nominal_xy(self, block) -> tuple[np.ndarray, np.ndarray]:
        """Undo `place` on a block's x and y: positions in the nominal body."""
        x_scale, front, back = self.scale
        return block.x / x_scale, block.y / np.where(block.y > 0, np.float32(back), np.float32(front))

    def levels(self, block, *insets_mm: float) -> list[np.ndarray]:
        """Outline level (< 1 inside) of the body shrunk by each of `insets_mm` all round."""
        # The outline's irregularity depends on the angle only: look it up in a table.
        table_angle = np.linspace(-np.pi, np.pi, 721)
        table = (1 + sum(a * np.cos(k * table_angle + p) for k, a, p in self.harmonics)).astype(np.float32)
        wobble = table[((np.arctan2(block.y, block.x) + np.pi) * (720 / (2 * np.pi))).astype(np.int32)]
        back = block.y > 0
        depth = np.where(back, np.float32(BACK_DEPTH * self.half_depth_mm), np.float32(self.half_depth_mm))
        exponent = np.where(back, np.float32(BACK_EXPONENT), np.float32(2.0))
        levels = []
        for inset in insets_mm:
            across = np.abs(block.x / (self.half_width_mm * wobble - inset)) ** exponent
            along = np.abs(block.y / (depth * wobble - inset)) ** exponent
            levels.append((across + along) ** (1 / exponent))
        return levels

    def level(self, block, inset_mm: float = 0.0) -> np.ndarray:
        return self.levels(block, inset_mm)[0]


def sample_body(rng: np.random.Generator) -> Body:
    half_width = rng.uniform(140, 180)
    harmonics = np.column_stack([np.arange(2, 6), rng.uniform(0, 0.025, 4), rng.uniform(0, 2 * np.pi, 4)])
    fat, muscle = rng.uniform(8, 30), rng.uniform(8, 14)
    return Body(half_width, half_width * rng.uniform(0.66, 0.78), fat, muscle, harmonics)


def paint_wall(canvas: Canvas, body: Body, tones: dict[str, float]) -> None:
    """Skin-deep fat, the muscle wall, and the fat-filled cavity inside it."""
    block = canvas.everywhere()
    skin, fascia, cavity = body.levels(block, 0.0, body.fat_mm, body.wall_mm)
    canvas.paint(block, skin < 1, tones["fat"], PROTECTED, free_only=False, texture_hu=8)
    canvas.paint(block, fascia < 1, tones["muscle"], PROTECTED, free_only=False)
    canvas.paint(block, cavity < 1, tones["fat"], FREE, free_only=False, texture_hu=8)


def paint_back_muscles(canvas: Canvas, body: Body, tones: dict[str, float]) -> None:
    """Paraspinal muscles behind the spine, and the psoas muscles that widen downwards beside it."""
    block = canvas.block(body.place([-90, 0, -np.inf]), body.place([90, 130, np.inf]))
    if block is None:
        return
    x, y = body.nominal_xy(block)
    x, z = np.abs(x), block.z
    paraspinal = np.hypot((x - 36) / 26, (y - 92) / 22) < 1
    psoas_radius = np.clip(4 + (30 - z) * 0.14, 0, 24)
    psoas = np.hypot(x - 28 - 0.8 * psoas_radius, y - 50) < psoas_radius
    # The back muscles end where the subcutaneous fat begins.
    paraspinal &= body.level(block, body.fat_mm) < 1
    canvas.paint(block, paraspinal | psoas, tones["muscle"], PROTECTED, free_only=False)


class Spine(NamedTuple):
    """Where the vertebrae lie: one vertebra and disc every `period_mm`, shifted by `offset` of a period."""

    period_mm: float
    offset: float

    def body_centres_mm(self, low_mm: float, high_mm: float) -> np.ndarray:
        """Heights of the vertebral bodies' centres between `low_mm` and `high_mm`."""
        first, last = np.ceil(low_mm / self.period_mm) - 1, np.floor(high_mm / self.period_mm) + 1
        centres = (np.arange(first, last + 1) + VERTEBRA_MIDDLE - self.offset) * self.period_mm
        return centres[(centres >= low_mm) & (centres <= high_mm)]


# The first 22% of each period is disc; a vertebral body's middle lies at 61% of it.
DISC = 0.22
VERTEBRA_MIDDLE = (1 + DISC) / 2


def paint_spine(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> Spine:
    """Vertebrae (cortical shell, cancellous core, discs between them) and the spinal canal."""
    spine = Spine(rng.uniform(30, 36), rng.uniform(0, 1))
    block = canvas.block(body.place([-60, 25, -np.inf]), body.place([60, 120, np.inf]))
    if block is None:
        return spine
    x, y = body.nominal_xy(block)
    period = spine.period_mm
    # Position within one vertebra + disc period.
    phase = (block.z / period + spine.offset) % 1.0
    disc = phase < DISC
    vertebral_body = np.hypot(x / 22, (y - 50) / 17)
    canal = np.hypot(x, y - 76) / 8
    arch = (canal > 1) & (canal < 1.7) & (y > 70)
    spinous = (np.abs(x) < 4) & (y > 80) & (y < 104) & (phase > 0.35) & (phase < 0.95)
    # Transverse processes are thin plates near the middle of each vertebra's height.
    transverse = (np.abs(y - 72) < 4) & (np.abs(x) < 40) & (np.abs(phase - 0.6) < 0.12)
    posterior = (arch | spinous | transverse) & ~disc
    canvas.paint(block, (vertebral_body < 1) & disc, tones["disc"], PROTECTED, free_only=False)
    core = (vertebral_body < 0.82) & ~disc
    canvas.paint(block, core, tones["cancellous bone"], PROTECTED, free_only=False, texture_hu=25)
    shell = ((vertebral_body >= 0.82) & (vertebral_body < 1) & ~disc) | posterior
    canvas.paint(block, shell, tones["cortical bone"], PROTECTED, free_only=False, texture_hu=40)
    canvas.paint(block, canal < 1, tones["csf"], PROTECTED, free_only=False)
    return spine


# Heights (model mm) where the ribs leave the spine: the 7th to 12th; the last two float (short).
LOWER_RIBS_MM = (178, 152, 126, 100, 76, 54)
RIB, FLOATING_RIB = (2.0, 2.5), (1.2, 1.6)  # how far round the body a rib reaches, radians from the spine
RIB_DROP_MM = 35.0  # ribs descend about this much per radian as they wrap round to the front
RIB_RADIUS_MM = 5.5


def paint_ribs(
    canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float], heights=LOWER_RIBS_MM, floating=2
) -> None:
    """Ribs leaving the spine at `heights`: rods along the inner body wall that run down towards the front."""
    # A rib wraps round up to its length in radians, descending RIB_DROP_MM per radian, give or
    # take 3 sd of its height and its radius.
    lengths = [FLOATING_RIB if index >= len(heights) - floating else RIB for index in range(len(heights))]
    lowest = min(z - RIB_DROP_MM * length[1] for z, length in zip(heights, lengths)) - 12 - RIB_RADIUS_MM
    block = canvas.block((-np.inf, -np.inf, lowest), (np.inf, np.inf, np.inf))
    if block is None:
        return
    level = body.level(block, body.fat_mm + 0.6 * body.muscle_mm)
    from_wall_mm = np.hypot(block.x, block.y) * (1 - 1 / level)
    # Only voxels near the wall can be rib: work on those alone.
    near = np.flatnonzero(np.abs(from_wall_mm) < 6)
    x, y, z, from_wall_mm = (a.ravel()[near] for a in (block.x, block.y, block.z, from_wall_mm))
    # Angle from the spine: 0 at the back, pi/2 at the side, pi at the front.
    around = np.arctan2(np.abs(x) / body.half_width_mm, y / body.half_depth_mm)
    distances = np.full(near.shape, np.inf, np.float32)
    for z_back, lengths_range in zip(heights, lengths):
        for side in (x > 0, x <= 0):
            length = rng.uniform(*lengths_range)
            height = z_back + rng.normal(0, 4) - RIB_DROP_MM * around
            on_rib = side & (around > 0.35) & (around < length)
            distances = np.where(on_rib, np.minimum(distances, np.hypot(from_wall_mm, z - height)), distances)
    shell = (distances >= 3) & (distances < RIB_RADIUS_MM)
    for inner, tissue in ((distances < 3, "cancellous bone"), (shell, "cortical bone")):
        mask = np.zeros(block.x.shape, bool)
        mask.ravel()[near[inner]] = True
        canvas.paint(block, mask, tones[tissue], PROTECTED, free_only=False)


def paint_chest(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Diaphragm domes, the lung bases above them, and the bottom of the heart."""
    block = canvas.block((-np.inf, -np.inf, 20), (np.inf, np.inf, np.inf))
    if block is None:
        return
    x, y = body.nominal_xy(block)
    domes = []
    for side, apex in ((-1, rng.uniform(118, 132)), (1, rng.uniform(105, 120))):
        # The lung's posterior recess reaches lower than its front.
        depth = np.where(y > 10, 0.008, 0.004) * (y - 10) ** 2
        domes.append(apex - 0.008 * (x - 70 * side) ** 2 - depth)
    dome = np.maximum(*domes)
    inside = body.level(block, body.wall_mm) < 1
    mediastinum = (np.abs(x - 8) < 34) & (y > -10)
    # The heart rests on the central part of the diaphragm, in front and to the left; its
    # back wall stops in front of the esophagus and the aorta.
    heart = (ellipsoid(rng, body.place([20, -40, 150]), [80, 55, 58]).level(block) < 1) & (y < HEART_BACK_Y_MM)
    above = inside & (block.z > dome)
    canvas.paint(block, inside & (block.z > dome - 5) & ~above, tones["muscle"], DIAPHRAGM, free_only=False)
    canvas.paint(block, above & heart, tones["heart"], PROTECTED, free_only=False, texture_hu=10)
    lung = above & ~heart & ~mediastinum
    canvas.paint(block, lung, tones["lung"], PROTECTED, free_only=False, texture_hu=15)


def paint_table(canvas: Canvas, body: Body, tones: dict[str, float]) -> None:
    """The scanner table under the patient's back: a thin slab curving up at the sides."""
    # The table rises by up to about 60 mm at the sides of the field of view.
    block = canvas.block((-np.inf, BACK_DEPTH * body.half_depth_mm - 60, -np.inf), (np.inf, np.inf, np.inf))
    if block is None:
        return
    top = BACK_DEPTH * body.half_depth_mm + 6 - 0.0012 * block.x**2
    slab = (block.y > top) & (block.y < top + 8) & (np.abs(block.x) < 220) & (body.level(block) >= 1)
    canvas.paint(block, slab, tones["table"], PROTECTED, free_only=False, texture_hu=0)


def paint_bowel(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Small bowel and colon in the lower abdomen: loops of wall, fluid and gas pockets in fat."""
    # About 20 coarse cells across the field of view: loops some 25 mm wide.
    loops = SmoothField(rng, canvas.shape, (20, 20, 12))
    gas = SmoothField(rng, canvas.shape, (20, 20, 12))
    block = canvas.block((-np.inf, -np.inf, -np.inf), body.place([np.inf, 45, 70]))
    if block is None:
        return
    x, y = body.nominal_xy(block)
    # Bowel fills the lower abdomen, rising at the sides (colic flexures) and under the stomach.
    zone = (block.z < 5 + 0.35 * np.abs(x)) | ((y < -45) & (block.z < 30))
    zone &= (y < 45) & (body.level(block, body.wall_mm) < 1)
    loop = loops.block(block.slices)
    wall = zone & (np.abs(loop) < 0.25)
    lumen = zone & (loop >= 0.25)
    pocket = lumen & (gas.block(block.slices) > 0.9)
    canvas.paint(block, wall, tones["bowel wall"], FREE, free_only=True)
    canvas.paint(block, lumen & ~pocket, tones["bowel content"], FREE, free_only=True, texture_hu=12)
    canvas.paint(block, pocket, tones["air"], FREE, free_only=True, texture_hu=0)
