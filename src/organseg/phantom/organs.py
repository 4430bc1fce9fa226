"""The 13 FLARE22 organs, and the unlabeled vessels between them.

Nominal positions are model mm (x to the patient's left, y posterior, z superior; see
canvas.py) for a body 320 mm wide. Organs are painted one after the other and each keeps
only voxels nobody claimed before it (`free_only`), so the painting order settles who wins
where shapes overlap: small and tubular structures first, the large liver last, which
wraps round them. Nominal shapes overlap slightly where organs touch in real anatomy, so
the earlier organ leaves its imprint on the later one.
"""

from __future__ import annotations

import numpy as np

from organseg.labels import FLARE22
from organseg.phantom.body import Body
from organseg.phantom.canvas import DIAPHRAGM, FREE, Canvas, SmoothField
from organseg.phantom.shapes import Tube, ellipsoid, pointing, tube, union_bounds, union_level

ID = {name: label for label, name in FLARE22.names}


def _points(rng: np.random.Generator, body: Body, nominal_mm, shift_mm: float = 5.0) -> np.ndarray:
    """Nominal points moved to this body's size and shifted together by a random offset."""
    return body.place(nominal_mm) + rng.normal(0, shift_mm, 3)


def _size(rng: np.random.Generator, body: Body, nominal_mm, spread: float = 0.1) -> np.ndarray:
    """Nominal sizes scaled with the body's in-plane size and a random factor."""
    return np.asarray(nominal_mm, float) * body.size * rng.uniform(1 - spread, 1 + spread)


def _paint_solid(canvas: Canvas, shapes, label: int, hu: float, texture_hu: float = 5.0, keep=None) -> None:
    """Paint the union of `shapes`; `keep(block)` may veto voxels (a boolean mask)."""
    block = canvas.block(*union_bounds(shapes))
    if block is None:
        return
    inside = union_level(shapes, block) < 1
    if keep is not None:
        inside &= keep(block)
    canvas.paint(block, inside, hu, label, free_only=True, texture_hu=texture_hu)


def paint_tube(canvas: Canvas, shape: Tube, label: int, hu: float, texture_hu: float = 5.0, crossing=()) -> None:
    block = canvas.block(*shape.bounds())
    if block is not None:
        canvas.paint(block, shape.level(block) < 1, hu, label, free_only=True, texture_hu=texture_hu, crossing=crossing)


def paint_vessels(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Aorta, inferior vena cava and esophagus: tubes along the spine."""
    tubes = {
        "aorta": ([(20, 38, 230), (13, 24, 110), (10, 20, 0), (8, 22, -118)], [12, 11, 10, 9]),
        "inferior vena cava": ([(-24, 20, 135), (-24, 18, 90), (-22, 20, 20), (-18, 24, -125)], [13, 12, 11, 10]),
        "esophagus": ([(4, 24, 235), (8, 13, 140), (22, 4, 100), (42, 2, 84)], [8, 8, 9, 10]),
    }
    for name, (nominal, radii) in tubes.items():
        shape = tube(_points(rng, body, nominal, 3), _size(rng, body, radii))
        paint_tube(canvas, shape, ID[name], tones[name], crossing=(DIAPHRAGM,))


def paint_adrenals(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float], absent) -> None:
    """Adrenal glands: thin inverted-V plates just above and medial to each kidney's upper pole."""
    limbs = {
        "right adrenal gland": [(-38, 60, 47), (-36, 40, 65), (-52, 54, 47)],
        "left adrenal gland": [(40, 56, 52), (36, 38, 72), (54, 48, 54)],
    }
    for name, nominal in limbs.items():
        shape = tube(_points(rng, body, nominal, 3), _size(rng, body, [4.5, 5, 4.5]))
        if ID[name] not in absent:
            paint_tube(canvas, shape, ID[name], tones["adrenal gland"], texture_hu=3)


def paint_kidneys(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Kidneys either side of the spine: bean-shaped, bright cortex round a darker medulla.

    Heights from Gray's Anatomy (S. Standring, 41st ed., 2016, chapter 74): the hila lie near
    the transpyloric plane (L1; the 12th rib meets the spine here at z = 54, and vertebrae are
    about 33 mm apart), the upper poles reach T11-T12, and the liver keeps the right kidney
    about 15 mm lower than the left. Their upper halves thus lie beside the spleen and under
    the liver, the neighbours a network must learn them among.
    """
    for name, side, centre_z in (("right kidney", -1, -5), ("left kidney", 1, 10)):
        centre = _points(rng, body, [68 * side, 55, centre_z], 6)
        # Upper poles lean medially and backwards; the hilum faces front and middle.
        rotation = pointing(2, [-0.25 * side, 0.2, 1])
        kidney = ellipsoid(rng, centre, _size(rng, body, [24, 28, 52]), rotation, ripple=0.03)
        sinus = ellipsoid(rng, centre + body.place([-18 * side, -10, 0]), [14, 10, 22], rotation, ripple=0.1)
        block = canvas.block(*kidney.bounds())
        if block is None:
            continue
        level = kidney.level(block)
        parenchyma = (level < 1) & (sinus.level(block) > 1)
        cortex = np.where(level > 0.75, tones["kidney cortex"], tones["kidney medulla"])
        canvas.paint(block, parenchyma, cortex, ID[name], free_only=True, texture_hu=6)


def paint_gallbladder(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float], absent) -> None:
    """Gallbladder: a pear of bile under the liver, its fundus pointing forwards and down."""
    rotation = pointing(2, [rng.normal(0, 0.15), -0.45, -0.9])
    shape = ellipsoid(rng, _points(rng, body, [-48, -52, 2], 6), _size(rng, body, [16, 16, 36], 0.2), rotation)
    block = canvas.block(*shape.bounds())
    if ID["gallbladder"] in absent or block is None:
        return
    level = shape.level(block)
    # The thin wall enhances; the bile does not.
    hu = np.where(level > 0.9, tones["gallbladder"] + 40, tones["gallbladder"])
    canvas.paint(block, level < 1, hu, ID["gallbladder"], free_only=True, texture_hu=2)


def _paint_hollow(canvas: Canvas, shape: Tube, label: int, wall_hu: float, content_hu: float, *, wall_mm, gas) -> None:
    """A hollow organ: enhancing wall, fluid inside, gas floating at the front (the patient lies supine)."""
    block = canvas.block(*shape.bounds())
    if block is None:
        return
    level, nearest = shape.nearest(block)
    radius = shape.radii_mm[nearest]
    lumen = level * radius < radius - wall_mm
    # Gas collects anteriorly, i.e. at low y relative to the centreline.
    floating = (block.y - shape.points[nearest, 1]) < -gas * radius
    hu = np.where(lumen, np.where(floating, -1000.0, content_hu), wall_hu)
    canvas.paint(block, level < 1, hu, label, free_only=True, texture_hu=6)


def paint_duodenum(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Duodenum: a C-shaped tube from the pylorus round the pancreatic head, crossing the midline low."""
    nominal = [(-15, -50, 15), (-40, -36, 14), (-55, -12, 2), (-57, 0, -22), (-45, 5, -42)]
    nominal += [(-15, 2, -50), (15, -2, -48), (30, -8, -35), (32, -12, -22)]
    radii = _size(rng, body, [11, 12, 12, 12, 11, 10, 10, 9, 9], 0.15)
    shape = tube(_points(rng, body, nominal, 4), radii)
    _paint_hollow(
        canvas, shape, ID["duodenum"], tones["duodenum"], tones["bowel content"], wall_mm=0.55 * radii.mean(), gas=0.8
    )


def paint_pancreas(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Pancreas: head in the duodenal C, neck and body across the vessels, tail towards the spleen."""
    nominal = [(-30, 6, -30), (-33, -6, -10), (-8, -18, 4), (28, -14, 14), (62, 8, 24), (82, 30, 30)]
    shape = tube(_points(rng, body, nominal, 4), _size(rng, body, [12, 17, 11, 11, 10, 8], 0.15))
    # Lobulated glandular tissue: more texture than other organs.
    paint_tube(canvas, shape, ID["pancreas"], tones["pancreas"], texture_hu=10)


def paint_stomach(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Stomach: fundus under the left dome, body curving forwards, antrum to the pylorus on the right."""
    nominal = [(58, 30, 114), (63, 0, 92), (60, -35, 62), (40, -55, 36), (10, -60, 21), (-15, -50, 15)]
    # Distension varies a lot from patient to patient, from a collapsed stomach with thick
    # folds after fasting to a full one some ten times its volume.
    distension = rng.uniform(0.55, 1.05)
    radii = _size(rng, body, [30, 36, 36, 28, 20, 11], 0.2) * distension
    shape = tube(_points(rng, body, nominal, 5), radii)
    gas = rng.uniform(0.3, 0.9)
    wall_mm = 4 + 6 * (1.05 - distension)
    _paint_hollow(
        canvas, shape, ID["stomach"], tones["stomach wall"], tones["stomach content"], wall_mm=wall_mm, gas=gas
    )


def paint_spleen(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Spleen: along the left lower ribs, behind the stomach, its long axis running forwards and down.

    Its long axis follows the curve of the posterolateral wall, so the wall and the diaphragm
    dome trim only its rim, and its painted volume comes nearer the adult mean of 215 +- 87 ml
    on CT (P. Prassopoulos et al., Eur Radiol 7 (1997) 246-248).
    """
    rotation = pointing(1, [0.7, -0.65, -0.3])
    shape = ellipsoid(rng, _points(rng, body, [88, 40, 68], 6), _size(rng, body, [25, 58, 45], 0.15), rotation)
    _paint_solid(canvas, [shape], ID["spleen"], tones["spleen"])


def paint_liver(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Liver: right lobe filling the right upper abdomen under the dome, left lobe in front of the stomach."""
    nominal = {"right": ([-62, 5, 68], [78, 82, 66]), "left": ([12, -42, 88], [58, 38, 36])}
    nominal["tip"] = ([-92, 0, 18], [42, 58, 40])
    shift = rng.normal(0, 5, 3)
    lobes = [ellipsoid(rng, body.place(c) + shift, _size(rng, body, s), ripple=0.04) for c, s in nominal.values()]
    cells = canvas.texture.weights[0].shape[1] - 3
    veins = [SmoothField(rng, canvas.shape, (2 * cells, 2 * cells, 24)) for _ in range(2)]
    block = canvas.block(*union_bounds(lobes))
    if block is None:
        return
    # The diaphragmatic crura keep the liver off the aorta behind the caudate lobe.
    behind = (block.x > body.place([-8, 0, 0])[0]) & (block.y > body.place([0, 12, 0])[1])
    inside = (union_level(lobes, block) < 1) & ~behind
    # Portal and hepatic veins: where two smooth fields both cross zero, a branching tube network.
    vessel = (np.abs(veins[0].block(block.slices)) < 0.12) & (np.abs(veins[1].block(block.slices)) < 0.12)
    hu = np.where(vessel, tones["vein"], tones["liver"])
    canvas.paint(block, inside, hu, ID["liver"], free_only=True, texture_hu=6)


def paint_other_vessels(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float]) -> None:
    """Unlabeled vessels that look like organs: portal, splenic, mesenteric and renal veins, iliac arteries."""
    veins = [
        ([(82, 34, 30), (45, 8, 18), (5, 2, 8), (-20, -2, 25), (-38, -4, 48)], [5, 5, 6, 7, 7]),
        ([(5, 0, 8), (2, -12, -20), (0, -16, -60)], [6, 5, 5]),
        ([(50, 45, 6), (30, 15, -2), (10, 5, -6), (-20, 16, -6)], [5, 6, 5, 5]),
        ([(-48, 45, -6), (-30, 28, -2), (-22, 20, 0)], [5, 5, 5]),
    ]
    arteries = [
        ([(10, 12, 5), (8, -4, -10), (6, -8, -60)], [4, 4, 3.5]),
        ([(8, 22, -115), (40, 30, -175), (60, 35, -230)], [7, 7, 6]),
        ([(8, 22, -115), (-40, 30, -175), (-60, 35, -230)], [7, 7, 6]),
    ]
    for tissue, paths in (("vein", veins), ("artery", arteries)):
        for nominal, radii in paths:
            paint_tube(canvas, tube(_points(rng, body, nominal, 3), _size(rng, body, radii)), FREE, tones[tissue])


def absent_organs(rng: np.random.Generator, drop_organs: bool) -> set[int]:
    """Organs missing in this case: no gallbladder in about 1 in 5 (cholecystectomy), rarely an adrenal."""
    draws = {ID["gallbladder"]: 0.2, ID["right adrenal gland"]: 0.05, ID["left adrenal gland"]: 0.05}
    # Draw even when nothing is dropped, so drop_organs changes nothing else in the case.
    absent = {label for label, chance in draws.items() if rng.random() < chance}
    return absent if drop_organs else set()


def paint_organs(canvas: Canvas, rng: np.random.Generator, body: Body, tones: dict[str, float], drop_organs: bool):
    """All organs in priority order (earlier ones win overlaps), then the vessels between them."""
    absent = absent_organs(rng, drop_organs)
    paint_vessels(canvas, rng, body, tones)
    paint_adrenals(canvas, rng, body, tones, absent)
    paint_kidneys(canvas, rng, body, tones)
    paint_gallbladder(canvas, rng, body, tones, absent)
    paint_duodenum(canvas, rng, body, tones)
    paint_pancreas(canvas, rng, body, tones)
    paint_stomach(canvas, rng, body, tones)
    paint_spleen(canvas, rng, body, tones)
    paint_liver(canvas, rng, body, tones)
    paint_other_vessels(canvas, rng, body, tones)
