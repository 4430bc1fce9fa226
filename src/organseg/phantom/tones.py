"""CT intensities (HU) of each tissue in each contrast phase, and scanner effects."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from organseg.config_checks import PHANTOM_APPEARANCES, PHANTOM_PHASES

# The contrast phases a phantom can show. A model that has seen one phase only meets the
# others' unenhanced vessels and corticomedullary kidneys as something new.
PHASES = PHANTOM_PHASES
PORTAL_VENOUS = "portal-venous"
# "realistic": each tissue's HU from its phase's range; "random": every tissue but air gets
# a mean drawn anywhere in RANDOM_HU, independently, as SynthSeg randomises its synthetic
# MRI: a network that cannot rely on intensities must learn shapes and context, which
# transfer to scans whose contrast it never saw.
APPEARANCES = PHANTOM_APPEARANCES
REALISTIC = "realistic"
# The soft-tissue window the networks see (organseg.config.CT_WINDOW_HU), a little inside it.
RANDOM_HU = (-180.0, 380.0)

# (low, high) mean HU per tissue in the portal-venous phase (about 70 s after injection);
# each case draws its means from these ranges.
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

# The tissues that contrast changes, in the other phases; the rest keep HU_RANGES.
# Sources:
# [P] M. Prokop, M. Galanski: Spiral and Multislice Computed Tomography of the Body, Thieme
#     2003, table of attenuation values: unenhanced liver 45-65, spleen 35-55, kidney 20-40,
#     blood 45-65 HU.
# [K] Y. Kodama et al., AJR 188 (2007) 1307-1312: without fat, the unenhanced liver measures
#     above the spleen (the liver-spleen difference is a fat index).
# [R] Radiopaedia, "Late arterial phase" (rev. 2023-03-23): peak aortic attenuation 290-360 HU,
#     liver 20-30 HU above its unenhanced value, portal vein 145 +- 20 HU.
# [Y] B. I. Yuh, R. H. Cohan, AJR 173 (1999) 747-755: corticomedullary phase with the cortex
#     far brighter than the medulla; nephrographic phase homogeneous at about 80-120 s.
# [L] D. S. Lu et al., Radiology 199 (1996) 697-701: the pancreas enhances most at about 40 s
#     (pancreatic phase), more than in the later hepatic phase.
# [B] K. T. Bae, Radiology 256 (2010) 32-61: after the bolus, aortic and hepatic enhancement
#     fall towards each other (equilibrium phase, a few minutes after injection).
# Walls of the gut and the adrenal glands follow soft tissue: muscle-like unenhanced [P],
# mucosal enhancement early. Bile, fat, air, bone and bowel content do not change.
PHASE_HU_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "non-contrast": {
        # Blood: [P] gives 45-65; its attenuation follows the haematocrit, lower in the anaemic patients
        # common among those scanned, so 40-55 here.
        "heart": (40, 55),
        "vein": (40, 55),
        "artery": (40, 55),
        "aorta": (40, 55),
        "inferior vena cava": (40, 55),
        "liver": (52, 65),  # [P], [K]
        "spleen": (42, 55),  # [P], [K]
        "kidney cortex": (25, 40),  # [P]; no corticomedullary difference
        "kidney medulla": (25, 40),
        "pancreas": (35, 50),
        "adrenal gland": (25, 40),
        "stomach wall": (35, 50),
        "duodenum": (35, 50),
        "esophagus": (35, 50),
        "bowel wall": (35, 50),
    },
    "arterial": {
        "heart": (220, 320),
        "vein": (125, 165),  # portal and splenic veins [R]
        "artery": (250, 350),
        "aorta": (290, 360),  # [R]
        "inferior vena cava": (70, 120),  # mixing of opacified renal and unopacified infrarenal blood
        "liver": (75, 95),  # unenhanced + 20-30 [R]
        "spleen": (110, 160),
        "kidney cortex": (160, 230),  # [Y]
        "kidney medulla": (60, 100),  # [Y]
        "pancreas": (110, 150),  # [L]
        "adrenal gland": (60, 90),
        "stomach wall": (80, 120),
        "duodenum": (80, 120),
        "esophagus": (50, 70),
        "bowel wall": (70, 110),
    },
    "delayed": {
        "heart": (110, 150),  # [B]
        "vein": (110, 145),
        "artery": (110, 150),
        "aorta": (110, 150),  # [B]
        "inferior vena cava": (110, 145),
        "liver": (80, 105),  # [B]
        "spleen": (85, 105),
        "kidney cortex": (140, 190),  # homogeneous, nephrographic [Y]
        "kidney medulla": (140, 190),
        "pancreas": (70, 95),  # [L]: washes out after its early peak
        "adrenal gland": (50, 75),
        "stomach wall": (60, 85),
        "duodenum": (60, 85),
        "esophagus": (45, 60),
        "bowel wall": (50, 80),
    },
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


def hu_ranges(phase: str = PORTAL_VENOUS) -> dict[str, tuple[float, float]]:
    """(low, high) mean HU of every tissue in `phase`, one of PHASES."""
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; choose one of {', '.join(PHASES)}")
    return {**HU_RANGES, **PHASE_HU_RANGES.get(phase, {})}


def sample_tones(rng: np.random.Generator, phase: str = PORTAL_VENOUS) -> dict[str, float]:
    """Mean HU of every tissue for one case in `phase` (the same draws in every phase, tissue by tissue)."""
    tones = {}
    for name, (low, high) in hu_ranges(phase).items():
        offset = rng.uniform(-15, 15) if name in SHIFTED else 0.0
        tones[name] = float(rng.uniform(low, high) + offset)
    return tones


def random_tones(rng: np.random.Generator) -> dict[str, float]:
    """Mean HU of every tissue drawn independently in RANDOM_HU (air stays air): the random appearance."""
    return {name: -1000.0 if name == "air" else float(rng.uniform(*RANDOM_HU)) for name in HU_RANGES}


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
