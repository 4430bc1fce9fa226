"""One synthetic case: sample the header, draw the anatomy, add scanner effects, reorient."""

from __future__ import annotations

import numpy as np

from organseg.geometry import Geometry
from organseg.io import Volume
from organseg.phantom import body as anatomy
from organseg.phantom.canvas import NO_ORGAN, Canvas, SmoothField
from organseg.phantom.implants import ARTEFACTS, NO_ARTEFACTS, choose_implants, paint_implants
from organseg.phantom.organs import paint_organs
from organseg.phantom.pelvis import Hips, paint_pelvis
from organseg.phantom.streaks import metal_streaks
from organseg.phantom.thorax import TOP_Z_MM as THORAX_TOP_Z_MM
from organseg.phantom.thorax import paint_thoracic_organs, paint_thorax
from organseg.phantom.tones import APPEARANCES, PORTAL_VENOUS, REALISTIC, random_tones, sample_tones, scanner_image
from organseg.preprocess.orientation import AxisTransform, all_axis_transforms

# Default size: small, so a CPU demo can train on it.
DEFAULT_IN_PLANE = (96, 128)
DEFAULT_SLICES = (40, 64)
# Model z range of the field of view: lung bases at the top to below the kidneys. The random
# top can cut the liver dome (apex near z = 125) and the bottom the lower kidney poles (z = -55).
TOP_Z_MM = (115, 175)
BOTTOM_Z_MM = (-165, -75)
# The bottom of each field of view: an abdomen-pelvis scan reaches 170-240 mm below the
# kidneys (to the femoral heads), where no organ of the 13 lies. Its top, where it is not
# TOP_Z_MM: a thorax-abdomen scan starts at the lung apices (organseg.phantom.thorax).
UPPER_ABDOMEN = "upper-abdomen"
THORAX_ABDOMEN = "thorax-abdomen"
FIELDS_OF_VIEW = {UPPER_ABDOMEN: BOTTOM_Z_MM, "abdomen-pelvis": (-330, -260), THORAX_ABDOMEN: BOTTOM_Z_MM}
TOPS_Z_MM = {THORAX_ABDOMEN: THORAX_TOP_Z_MM}
MIN_SIZE = 8


def generate_case(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    *,
    reorient: bool = True,
    drop_organs: bool = True,
    phase: str = PORTAL_VENOUS,
    field_of_view: str = UPPER_ABDOMEN,
    appearance: str = REALISTIC,
    artefacts: str = NO_ARTEFACTS,
) -> tuple[Volume, Volume]:
    """One synthetic CT (int16 HU) and its label map (uint8, FLARE22 ids) on the same Geometry.

    Args:
        seed: non-negative integer; the same seed always gives the same case.
        shape: voxels along the patient's right-left, front-back and foot-head axes (e.g.
            (512, 512, 100)); the stored arrays hold them in the header's axis order. None
            picks a small size per case (96-128 in-plane, 40-64 slices).
        reorient: store the arrays in one of the 48 axis orders and flips, at random; the
            anatomy stays where it is in world space.
        drop_organs: leave out organs as real patients do (gallbladder in about 1 case in 5).
        phase: the contrast phase, one of organseg.phantom.tones.PHASES; the anatomy and the
            header of a seed are the same in every phase.
        field_of_view: one of FIELDS_OF_VIEW: "upper-abdomen" (lung bases to below the
            kidneys), "abdomen-pelvis" (down to the femoral heads) or "thorax-abdomen" (from
            the lung apices); the default small size has as thick slices in each.
        appearance: "realistic" (intensities of `phase`) or "random" (every tissue's mean
            HU drawn at random, `phase` then only names the case; organseg.phantom.tones).
        artefacts: "none", or "metal": a spinal fixation or hip prostheses and the streaks
            they cause (organseg.phantom.implants, .streaks); the labels are those of the same seed without.
    """
    _check_arguments(seed, field_of_view, appearance, artefacts)
    header_rng, anatomy_rng, scanner_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    shape = _case_shape(header_rng, shape, field_of_view)
    body = anatomy.sample_body(anatomy_rng)
    canvas = _make_canvas(
        anatomy_rng, shape, body, FIELDS_OF_VIEW[field_of_view], TOPS_Z_MM.get(field_of_view, TOP_Z_MM)
    )
    tones = sample_tones(anatomy_rng, phase)
    if appearance != REALISTIC:  # drawn after the phase's, so the anatomy stays that of the seed
        tones = random_tones(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,))))
    labels = _paint_case(canvas, seed, anatomy_rng, body, tones, field_of_view, artefacts, drop_organs)
    image = scanner_image(canvas.hu, scanner_rng)
    geometry = _sample_geometry(header_rng, shape, canvas.step_mm)
    transforms = all_axis_transforms()
    transform = transforms[header_rng.integers(len(transforms))] if reorient else AxisTransform()
    stored = transform.apply_geometry(geometry)
    return (
        Volume(np.ascontiguousarray(transform.apply(image)), stored),
        Volume(np.ascontiguousarray(transform.apply(labels)), stored),
    )


def _check_arguments(seed, field_of_view: str, appearance: str, artefacts: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if field_of_view not in FIELDS_OF_VIEW:
        raise ValueError(f"unknown field of view {field_of_view!r}; choose one of {', '.join(FIELDS_OF_VIEW)}")
    if appearance not in APPEARANCES:
        raise ValueError(f"unknown appearance {appearance!r}; choose one of {', '.join(APPEARANCES)}")
    if artefacts not in ARTEFACTS:
        raise ValueError(f"unknown artefacts {artefacts!r}; choose one of {', '.join(ARTEFACTS)}")


def _paint_case(
    canvas: Canvas, seed: int, rng: np.random.Generator, body, tones, field_of_view: str, artefacts: str, drop_organs
) -> np.ndarray:
    """Paint the ideal HU image on `canvas`; returns the label map (organ ids, 0 elsewhere)."""
    # The pelvis, the metal and the chest draw from streams of their own: the rest of a
    # seed's anatomy is the same in every field of view, with and without metal.
    streams = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,))) for key in (5, 6, 7)]
    pelvis_rng, metal_rng, thorax_rng = streams
    pelvis_rng = pelvis_rng if field_of_view == "abdomen-pelvis" else None
    spine, hips = _paint_background(canvas, rng, body, tones, pelvis_rng)
    if field_of_view == THORAX_ABDOMEN:
        paint_thorax(canvas, thorax_rng, body, tones)
    paint_organs(canvas, rng, body, tones, drop_organs)
    if field_of_view == THORAX_ABDOMEN:
        paint_thoracic_organs(canvas, thorax_rng, body, tones)
    if artefacts != NO_ARTEFACTS:
        implants = choose_implants(metal_rng, hips, float(canvas.first_mm[2]))
        paint_implants(canvas, metal_rng, body, implants, spine, hips)
    labels = canvas.labels
    labels[np.isin(labels, NO_ORGAN)] = 0
    if artefacts != NO_ARTEFACTS:
        canvas.hu += metal_streaks(canvas.hu, canvas.step_mm, metal_rng)
    return labels


def _case_shape(rng: np.random.Generator, shape, field_of_view: str = UPPER_ABDOMEN) -> tuple[int, int, int]:
    in_plane = int(rng.integers(DEFAULT_IN_PLANE[0], DEFAULT_IN_PLANE[1] + 1))
    slices = int(rng.integers(DEFAULT_SLICES[0], DEFAULT_SLICES[1] + 1))
    if shape is None:  # slices as thick in every field of view: more of them in a longer one
        return (in_plane, in_plane, round(slices * _mean_length_mm(field_of_view) / _mean_length_mm(UPPER_ABDOMEN)))
    if len(shape) != 3 or any(int(n) != n or n < MIN_SIZE for n in shape):
        raise ValueError(f"shape must be three whole numbers of at least {MIN_SIZE} voxels, got {shape}")
    return tuple(int(n) for n in shape)


def _mean_length_mm(field_of_view: str) -> float:
    return float(np.mean(TOPS_Z_MM.get(field_of_view, TOP_Z_MM)) - np.mean(FIELDS_OF_VIEW[field_of_view]))


def _make_canvas(
    rng: np.random.Generator, shape, body: anatomy.Body, bottom_z_mm=BOTTOM_Z_MM, top_z_mm=TOP_Z_MM
) -> Canvas:
    """Map the grid onto model space: the body fills 80-90% of the width, z spans a random crop."""
    step_in_plane = 2 * body.half_width_mm / rng.uniform(0.8, 0.9) / shape[0]
    top, bottom = rng.uniform(*top_z_mm), rng.uniform(*bottom_z_mm)
    step = np.array([step_in_plane, step_in_plane, (top - bottom) / shape[2]])
    # The body lies near the centre of the field of view, a little forward of it (the table is behind).
    centre = np.array([rng.uniform(-10, 10), rng.uniform(0, 15), (top + bottom) / 2])
    first = centre - step * (np.asarray(shape) - 1) / 2
    # Low-frequency bending of the whole anatomy, a few mm typical, up to about 15 mm.
    displacement = [SmoothField(rng, shape, (4, 4, 4)) for _ in range(3)]
    amplitude = rng.uniform(2.5, 5.0, 3)
    texture = SmoothField(rng, shape, (24, 24, 16))
    return Canvas(shape, first, step, displacement, amplitude, texture)


def _paint_background(
    canvas: Canvas, rng: np.random.Generator, body: anatomy.Body, tones, pelvis_rng: np.random.Generator | None
) -> tuple[anatomy.Spine, Hips | None]:
    """Body wall, bones, chest, table, pelvis (with `pelvis_rng`) and bowel, in the order in which they may
    overwrite each other; where the vertebrae and (if the pelvis is drawn) the hips are."""
    anatomy.paint_wall(canvas, body, tones)
    anatomy.paint_back_muscles(canvas, body, tones)
    spine = anatomy.paint_spine(canvas, rng, body, tones)
    anatomy.paint_ribs(canvas, rng, body, tones)
    anatomy.paint_chest(canvas, rng, body, tones)
    anatomy.paint_table(canvas, body, tones)
    hips = None if pelvis_rng is None else paint_pelvis(canvas, pelvis_rng, body, tones)
    anatomy.paint_bowel(canvas, rng, body, tones)
    return spine, hips


def _sample_geometry(rng: np.random.Generator, shape, step_mm: np.ndarray) -> Geometry:
    """Canonical (identity direction) header with a random origin.

    The spacing is the canvas step, so organs have their real size in mm: the field of view
    (311-450 mm wide, 190-340 mm long) divided by the voxel counts. A full-size 512x512x100
    case thus has 0.61-0.88 mm pixels and 1.9-3.4 mm slices; the small default cases are the
    same anatomy on a coarser grid (2.4-4.7 mm pixels, 3-8.5 mm slices).
    """
    spacing = np.asarray(step_mm, dtype=np.float64)
    # Scanners put the origin at the first voxel, roughly centring the field of view on the table axis.
    origin = -spacing * np.asarray(shape) / 2 + np.array([rng.uniform(-30, 30), rng.uniform(-30, 30), 0.0])
    origin[2] = rng.uniform(-700, 100)
    return Geometry(shape, tuple(spacing), tuple(np.round(origin, 3)), (1, 0, 0, 0, 1, 0, 0, 0, 1))
