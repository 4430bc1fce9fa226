"""The chest above the abdomen, for thorax-abdomen fields of view.

A staging CT often runs from the lung apices down: a network that has only seen the lung
bases meets the upper lungs, the trachea, the great vessels and the aortic arch as
something new. Above the diaphragm the abdomen's painting already fills the chest with lung
beside the heart and a posterior mediastinum (body.py's paint_chest). Above the heart this
narrows the lungs towards their apices, opens the upper mediastinum in front of the spine,
adds the upper ribs, the trachea and its bronchi and the superior vena cava, and continues
two of the 13 organs through the chest: the aorta (ascending aorta, arch and descending
thoracic aorta, all labeled aorta, as TotalSegmentator labels it) and the esophagus up to
the thoracic inlet; the lungs then close in round the mediastinum.

Positions are model mm of the nominal body (see body.py); the lung apices lie 300-360 mm
above the kidneys' hila, some twelve vertebrae up, the tracheal carina near the fifth
thoracic vertebra, the arch's top one or two vertebrae higher.
"""

from __future__ import annotations

import numpy as np

from organseg.phantom.body import Body, paint_ribs
from organseg.phantom.canvas import FREE, PROTECTED, Canvas
from organseg.phantom.organs import ID, paint_tube
from organseg.phantom.shapes import Tube, tube

TOP_Z_MM = (300.0, 360.0)
UPPER_RIBS_MM = (334, 308, 282, 256, 230, 204)  # where the 1st to 6th ribs leave the spine
# Above the heart the mediastinum is opened in front of the spine (OPENED_MM: nominal centre
# and semi-axes, mm; only in front of y = 30) for the great vessels; what MEDIASTINUM_MM
# leaves free of them and of the airways becomes lung.
MEDIASTINUM_FROM_Z_MM = 205.0
OPENED_FROM_Z_MM = 215.0
OPENED_MM = ((0.0, -5.0), (50.0, 38.0))
MEDIASTINUM_MM = ((0.0, 2.0), (32.0, 44.0))
# The lungs narrow towards their apices: the chest wall thickens inwards by this many mm per mm of height.
APEX_TAPER_FROM_Z_MM, APEX_TAPER_PER_MM, APEX_TAPER_MAX_MM = 260.0, 0.9, 60.0
ABOVE_MM = 420  # the tubes run on past the top of any field of view
# The thoracic aorta starts inside the abdominal one's top, so the two join whatever their random shifts.
AORTA = (
    [(18, 30, 200), (26, 28, 250), (20, 12, 288), (4, -16, 282), (-4, -28, 250), (0, -26, 205)],
    [11, 12, 13, 13, 14, 14],
)
ESOPHAGUS = ([(4, 24, 220), (2, 22, 300), (0, 20, ABOVE_MM)], [8, 8, 8])
SUPERIOR_VENA_CAVA = ([(-32, -14, ABOVE_MM), (-32, -16, 260), (-28, -20, 200)], [10, 11, 11])
TRACHEA = ([(0, 4, ABOVE_MM), (1, 5, 300), (2, 6, 255)], [9, 9, 9])
BRONCHI = (
    ([(2, 6, 258), (-20, 8, 240), (-40, 12, 225)], [6, 6, 5]),
    ([(2, 6, 258), (22, 10, 238), (44, 16, 220)], [6, 6, 5]),
)


def paint_thorax(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """The upper chest's wall, an open upper mediastinum, upper ribs, airways and superior vena cava."""
    _narrow_towards_the_apices(canvas, body, tones)
    _open_the_upper_mediastinum(canvas, body, tones)
    paint_ribs(canvas, rng, body, tones, UPPER_RIBS_MM, floating=0)
    for nominal, radii in (TRACHEA, *BRONCHI):
        airway = _tube(rng, body, nominal, radii)
        block = canvas.block(*airway.bounds())
        if block is not None:
            level = airway.level(block)
            canvas.paint(block, level < 1.3, tones["muscle"], PROTECTED, free_only=False)  # the cartilage rings
            canvas.paint(block, level < 1, tones["air"], PROTECTED, free_only=False, texture_hu=0)
    # Claimed (protected), so that the lungs' filling leaves it.
    paint_tube(canvas, _tube(rng, body, *SUPERIOR_VENA_CAVA), PROTECTED, tones["vein"])


def paint_thoracic_organs(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """The aorta and the esophagus through the chest, then lung beside the upper mediastinum."""
    paint_tube(canvas, _tube(rng, body, *AORTA), ID["aorta"], tones["aorta"])
    paint_tube(canvas, _tube(rng, body, *ESOPHAGUS), ID["esophagus"], tones["esophagus"])
    # Below the heart's top the abdomen's chest is right; above it the lungs close in round
    # the trachea, esophagus and great vessels: what the mediastinum leaves free is lung.
    block = canvas.block((-np.inf, -np.inf, MEDIASTINUM_FROM_Z_MM), (np.inf, np.inf, np.inf))
    if block is None:
        return
    x, y = body.nominal_xy(block)
    centre, semi_axes = MEDIASTINUM_MM
    outside = np.hypot((x - centre[0]) / semi_axes[0], (y - centre[1]) / semi_axes[1]) > 1
    inside_ribs = body.level(block, body.wall_mm) < 1
    canvas.paint(block, outside & inside_ribs, tones["lung"], PROTECTED, free_only=True, texture_hu=15)


def _narrow_towards_the_apices(canvas: Canvas, body: Body, tones: dict[str, float]) -> None:
    block = canvas.block((-np.inf, -np.inf, APEX_TAPER_FROM_Z_MM), (np.inf, np.inf, np.inf))
    if block is not None:
        taper = np.clip((block.z - APEX_TAPER_FROM_Z_MM) * APEX_TAPER_PER_MM, 0, APEX_TAPER_MAX_MM)
        wall = (body.level(block, body.wall_mm) < 1) & (body.level(block, body.wall_mm + taper) >= 1)
        canvas.paint(block, wall, tones["muscle"], PROTECTED, free_only=False)


def _open_the_upper_mediastinum(canvas: Canvas, body: Body, tones: dict[str, float]) -> None:
    block = canvas.block((-np.inf, -np.inf, OPENED_FROM_Z_MM), (np.inf, np.inf, np.inf))
    if block is not None:
        x, y = body.nominal_xy(block)
        (cx, cy), (ax, ay) = OPENED_MM
        opened = (np.hypot((x - cx) / ax, (y - cy) / ay) < 1) & (y < 30)
        canvas.paint(block, opened, tones["fat"], FREE, free_only=False, texture_hu=8)


def _tube(rng: np.random.Generator, body: Body, nominal, radii) -> Tube:
    return tube(body.place(nominal) + rng.normal(0, 3, 3), np.asarray(radii, float) * body.size)
