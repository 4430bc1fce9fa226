"""Metal implants and the streaks they throw across a CT, simulated through the scanner's projections.

A spinal fixation or a hip prosthesis absorbs so much of the beam that the rays through it
arrive hardened (the low energies gone, so the metal looks thinner than it is) and starved
of photons (so their measurement is noisy). Filtered back-projection spreads both errors
along those rays: dark bands between metal parts, bright and dark streaks fanning out over
the organs nearby. Each axial slice with metal is projected (scikit-image's Radon
transform), the rays through the metal get the two errors, and what they change is
back-projected onto the ideal image. The labels stay as they are: a network must find the
organs through the streaks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from organseg.config_checks import PHANTOM_ARTEFACTS
from organseg.errors import InputError
from organseg.phantom.body import Body
from organseg.phantom.canvas import PROTECTED, Canvas
from organseg.phantom.pelvis import Hips
from organseg.phantom.shapes import segment_distance

ARTEFACTS = PHANTOM_ARTEFACTS
NO_ARTEFACTS = "none"
# Linear attenuation of water at about 70 keV, an abdominal CT's mean beam energy (NIST XCOM: 0.193 cm2/g).
MU_WATER_PER_MM = 0.0193
# Ideal HU of implant metal at about 70 keV, from NIST XCOM attenuation times density: titanium
# alloy about +7000, cobalt-chrome and steel several times more. Stored images clip at +3071.
METAL_HU = (7000.0, 30000.0)
METAL_MIN_HU = 4000.0  # above any tissue, bone included: what the projections treat as metal
# Beam hardening: the log-attenuation a ray through metal reports falls short of the true one
# by this coefficient times its square (a polychromatic beam's first-order error).
HARDENING = (0.01, 0.04)
PHOTONS_PER_RAY = (1e5, 1e6)  # dose: unattenuated photons a detector element counts per view
MAX_SIDE = 256  # slices are projected on a grid at most this wide; streaks are broad enough for it


def choose_implants(rng: np.random.Generator, hips: Hips | None) -> tuple[str, ...]:
    """Which implants a case with metal has: a spinal fixation, hip prostheses (where the hips are seen), or both."""
    if hips is None:
        return ("spine",)
    options = (("spine",), ("right hip",), ("left hip",), ("right hip", "left hip"), ("spine", "right hip"))
    return options[int(rng.integers(len(options)))]


def paint_implants(canvas: Canvas, rng: np.random.Generator, body: Body, implants, hips: Hips | None) -> None:
    """Paint `implants` (from choose_implants) in metal; they claim their voxels for no organ."""
    metal_hu = rng.uniform(*METAL_HU)
    for implant in implants:
        if implant == "spine":
            _paint_spinal_fixation(canvas, rng, body, metal_hu)
        else:
            _paint_hip_prosthesis(canvas, body, hips, -1 if implant == "right hip" else 1, metal_hu)


def _paint_spinal_fixation(canvas: Canvas, rng: np.random.Generator, body: Body, metal_hu: float) -> None:
    """Two rods behind the spine over 2-4 vertebrae, with a pedicle screw into each vertebral body."""
    levels = int(rng.integers(2, 5))
    period = rng.uniform(30, 36)
    top = rng.uniform(-120 + levels * period, 60)
    heights = top - period * np.arange(levels + 1)
    block = canvas.block(body.place([-40, 30, heights[-1] - 10]), body.place([40, 100, top + 10]))
    if block is None:
        return
    x, y = body.nominal_xy(block)
    distance = np.full(x.shape, np.inf, np.float32)
    for side in (-1, 1):
        rod = segment_distance(x, y, block.z, (side * 24, 86, heights[-1]), (side * 24, 86, top)) - 3
        screws = [segment_distance(x, y, block.z, (side * 24, 86, h), (side * 8, 42, h)) - 2.5 for h in heights]
        distance = np.minimum.reduce([distance, rod, *screws])
    canvas.paint(block, distance < 0, metal_hu, PROTECTED, free_only=False, texture_hu=0)


def _paint_hip_prosthesis(canvas: Canvas, body: Body, hips: Hips, side: int, metal_hu: float) -> None:
    """A femoral head and a stem down the femur's neck and shaft, where the pelvis put that hip."""
    head = np.array([88.0 * side, 5.0, hips.z_mm])
    neck = head + [32 * side, 5, -35]
    block = canvas.block(
        body.place([head[0] - 60, -40, hips.z_mm - 180]), body.place([head[0] + 60, 50, hips.z_mm + 40])
    )
    if block is None:
        return
    x, y = body.nominal_xy(block)
    ball = np.sqrt((x - head[0]) ** 2 + (y - head[1]) ** 2 + (block.z - head[2]) ** 2) - hips.head_radius_mm
    stem = np.minimum(
        segment_distance(x, y, block.z, head, neck) - 8,
        segment_distance(x, y, block.z, neck, head + [36 * side, 8, -160]) - 6,
    )
    canvas.paint(block, np.minimum(ball, stem) < 0, metal_hu, PROTECTED, free_only=False, texture_hu=0)


def metal_streaks(hu: np.ndarray, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """HU to add to the ideal image `hu` (x, y, z; square pixels of `pixel_mm`): zero on slices without metal."""
    streaks = np.zeros(hu.shape, np.float32)
    metal = hu > METAL_MIN_HU
    hardening, photons = rng.uniform(*HARDENING), rng.uniform(*PHOTONS_PER_RAY)
    for k in np.flatnonzero(metal.any(axis=(0, 1))):
        streaks[:, :, k] = slice_streaks(hu[:, :, k], metal[:, :, k], pixel_mm, hardening, photons, rng)
    return streaks


def slice_streaks(
    hu: np.ndarray, metal: np.ndarray, pixel_mm: float, hardening: float, photons: float, rng: np.random.Generator
) -> np.ndarray:
    """The streaks of one axial slice: its rays through `metal` hardened and noisy, the change back-projected."""
    try:  # scikit-image: only for phantoms with metal
        from skimage.transform import iradon, radon
    except ImportError as error:
        raise InputError("phantoms with metal artefacts need scikit-image: pip install scikit-image") from error
    side = max(hu.shape)
    factor = min(1.0, MAX_SIDE / side)
    square = np.full((side, side), -1000.0, np.float32)
    square[: hu.shape[0], : hu.shape[1]] = hu
    square_metal = np.zeros((side, side), np.float32)
    square_metal[: hu.shape[0], : hu.shape[1]] = metal
    if factor < 1:
        square = ndimage.zoom(square, factor, order=1)
        square_metal = ndimage.zoom(square_metal, factor, order=1)
    pixel = pixel_mm / factor
    mu = np.maximum(MU_WATER_PER_MM * (1 + square / 1000.0), 0) * pixel
    angles = np.linspace(0.0, 180.0, max(180, square.shape[0]), endpoint=False)
    total = radon(mu, angles, circle=False)
    through_metal = radon(mu * square_metal, angles, circle=False)
    error = -hardening * through_metal**2
    # The log of a count of N photons is uncertain by about 1 / sqrt(N).
    counts = np.maximum(photons * np.exp(-(total + error)), 1.0)
    error += np.where(through_metal > 0.05, rng.standard_normal(total.shape) / np.sqrt(counts), 0.0)
    change = iradon(error, angles, circle=False, output_size=square.shape[0], filter_name="ramp")
    change_hu = (change / (MU_WATER_PER_MM * pixel) * 1000.0).astype(np.float32)
    if factor < 1:
        change_hu = ndimage.zoom(change_hu, side / change_hu.shape[0], order=1)
    return change_hu[: hu.shape[0], : hu.shape[1]]
