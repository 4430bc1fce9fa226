"""The streaks metal throws across a CT, simulated through the scanner's projections.

Metal absorbs so much of the beam that the rays through it arrive hardened (the low
energies gone, so the metal looks thinner than it is) and starved of photons (so their
measurement is noisy). Filtered back-projection spreads both errors along those rays: dark
bands between metal parts, bright and dark streaks fanning out over the organs nearby.
Each axial slice with metal is projected (scikit-image's Radon transform), the rays through
the metal get the two errors, and what they change is back-projected onto the ideal image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

METAL_MIN_HU = 4000.0  # above any tissue, bone included: what the projections treat as metal
# Linear attenuation of water at about 70 keV, an abdominal CT's mean beam energy (NIST XCOM: 0.193 cm2/g).
MU_WATER_PER_MM = 0.0193
# Beam hardening: the log-attenuation a ray through metal reports falls short of the true one
# by this coefficient times its square (a polychromatic beam's first-order error).
HARDENING = (0.01, 0.04)
# Dose: unattenuated photons per mm2 of detector (at the isocentre) per view, a scan having
# REFERENCE_VIEWS views; fewer simulated views each gather the photons of several.
PHOTONS_PER_MM2 = (1e5, 1e6)
REFERENCE_VIEWS = 1000
MAX_SIDE = 256  # slices are projected on a grid at most this wide; streaks are broad enough for it


def metal_streaks(hu: np.ndarray, step_mm, rng: np.random.Generator) -> np.ndarray:
    """HU to add to the ideal image `hu` (x, y, z; square pixels, steps `step_mm`): zero on slices without metal."""
    streaks = np.zeros(hu.shape, np.float32)
    metal = hu > METAL_MIN_HU
    hardening, photons = rng.uniform(*HARDENING), rng.uniform(*PHOTONS_PER_MM2) * float(step_mm[2])
    for k in np.flatnonzero(metal.any(axis=(0, 1))):
        streaks[:, :, k] = slice_streaks(hu[:, :, k], metal[:, :, k], float(step_mm[0]), hardening, photons, rng)
    return streaks


def slice_streaks(
    hu: np.ndarray, metal: np.ndarray, pixel_mm: float, hardening: float, photons_per_mm: float, rng
) -> np.ndarray:
    """The streaks of one axial slice: its rays through `metal` hardened and noisy, the change back-projected.

    `photons_per_mm`: unattenuated photons per view and mm of detector width, for this slice's thickness.
    """
    from skimage.transform import iradon, radon  # scikit-image: only for phantoms with metal

    side = max(hu.shape)
    factor = min(1.0, MAX_SIDE / side)
    square = np.full((side, side), -1000.0, np.float32)  # air around a slice that is not square
    square[: hu.shape[0], : hu.shape[1]] = hu
    square_metal = np.zeros((side, side), np.float32)
    square_metal[: hu.shape[0], : hu.shape[1]] = metal
    if factor < 1:
        square = ndimage.zoom(square, factor, order=1)
        square_metal = ndimage.zoom(square_metal, factor, order=1)
    pixel = pixel_mm / factor
    mu = np.maximum(MU_WATER_PER_MM * (1 + square / 1000.0), 0) * pixel  # per pixel crossed
    angles = np.linspace(0.0, 180.0, max(180, square.shape[0]), endpoint=False)
    total = radon(mu, angles, circle=False)
    through_metal = radon(mu * square_metal, angles, circle=False)
    error = -hardening * through_metal**2
    # The log of a count of N photons is uncertain by about 1 / sqrt(N).
    photons = photons_per_mm * pixel * REFERENCE_VIEWS / len(angles)
    counts = np.maximum(photons * np.exp(-(total + error)), 1.0)
    error += np.where(through_metal > 0.05, rng.standard_normal(total.shape) / np.sqrt(counts), 0.0)
    change = iradon(error, angles, circle=False, output_size=square.shape[0], filter_name="ramp")
    change_hu = (change / (MU_WATER_PER_MM * pixel) * 1000.0).astype(np.float32)
    if factor < 1:
        change_hu = ndimage.zoom(change_hu, side / change_hu.shape[0], order=1)
    return change_hu[: hu.shape[0], : hu.shape[1]]
