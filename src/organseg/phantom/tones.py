"""CT intensities (HU) of each tissue in a portal-venous contrast phase, and scanner effects."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# (low, high) mean HU per tissue; each case draws its means from these ranges.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000, -1000),
    "lung": (-870, -830),
    "fat": (-115, -85),
    "muscle": (40, 60),
    "cortical bone": (700, 1000),
    "cancellous bone": (200, 300),
    "disc": (70, 100),
    "csf": (5, 15),
    "table": (150, 300),
    "heart": (130, 170),
    "bowel wall": (40, 70),
    "bowel content": (0, 30),
    "vein": (140, 170),
    "artery": (160, 240),
    "liver": (100, 130),
    "spleen": (110, 130),
    "kidney cortex": (170, 200),
    "kidney medulla": (130, 160),
    "pancreas": (80, 110),
    "aorta": (150, 250),
    "inferior vena cava": (120, 160),
    "adrenal gland": (40, 70),
    "gallbladder": (0, 20),
    "stomach wall": (60, 90),
    "stomach content": (0, 30),
    "duodenum": (60, 90),
    "esophagus": (40, 60),
}

# Tissues whose value depends on contrast uptake and patient: shifted by up to +-15 HU per
# case, so intensity alone never separates neighbouring organs.
SHIFTED = {
    "liver",
    "spleen",
    "kidney cortex",
    "kidney medulla",
    "pancreas",
    "aorta",
    "inferior vena cava",
    "adrenal gland",
    "gallbladder",
    "stomach wall",
    "duodenum",
    "esophagus",
    "vein",
    "artery",
    "heart",
}


def sample_tones(rng: np.random.Generator) -> dict[str, float]:
    """Mean HU of every tissue for one case."""
    tones = {}
    for name, (low, high) in HU_RANGES.items():
        offset = rng.uniform(-15, 15) if name in SHIFTED else 0.0
        tones[name] = float(rng.uniform(low, high) + offset)
    return tones


def scanner_image(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (partial volume) and correlated noise of a CT scanner; int16 HU clipped to [-1024, 3071].

    Args:
        hu: ideal HU image (float32), modified in place to save memory on large volumes.
    """
    # Partial volume: the slice profile is wider than the in-plane point spread (in voxels).
    blur = (rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.5))
    ndimage.gaussian_filter(hu, blur, output=hu)
    noise_hu = rng.uniform(10, 25)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    # CT noise is grainy rather than white: smooth it a little, then restore its level.
    ndimage.gaussian_filter(noise, 0.6, output=noise)
    noise *= noise_hu / max(float(noise[:: max(1, noise.shape[0] // 32)].std()), 1e-6)
    hu += noise
    np.clip(np.rint(hu, out=hu), -1024, 3071, out=hu)
    return hu.astype(np.int16)
