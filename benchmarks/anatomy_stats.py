"""Organ volumes and positions in labeled CT: how a set of phantoms compares with real anatomy.

    python benchmarks/anatomy_stats.py LABEL_MAP_OR_DATASET [...]

For each argument (a label map file, or a dataset folder whose labelsTr are read), prints
per organ the median volume (ml, with the 10th and 90th percentiles over the cases) and the
median position of its centroid relative to the aorta's centroid over the same slices:
left-right (+ towards the patient's left), front-back (+ posterior), and its height above
the kidneys' centroid (mm). Label ids are FLARE22's. Positions are in patient millimetres
of the canonical orientation, so any header orientation gives the same figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from organseg.io import read_label
from organseg.labels import FLARE22
from organseg.preprocess.orientation import canonical_transform

AORTA, KIDNEYS = 5, (2, 13)


def organ_rows(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """Organ name -> (volume ml, left-right, front-back from the aorta, height above the kidneys) in mm."""
    label = read_label(path)
    transform = canonical_transform(label.geometry)
    labels, spacing = transform.apply(label.array), np.asarray(transform.apply_geometry(label.geometry).spacing_mm)
    aorta = labels == AORTA
    kidneys = np.isin(labels, KIDNEYS)
    if not aorta.any() or not kidneys.any():  # the reference points are missing
        return {}
    kidney_height = ndimage.center_of_mass(kidneys)[2]
    rows = {}
    for value, name in FLARE22.names:
        mask = labels == value
        if not mask.any():
            continue
        centre = np.array(ndimage.center_of_mass(mask))
        # The aorta over the organ's own slices: it runs obliquely, so its mean elsewhere would mislead.
        level_aorta = aorta & mask.any(axis=(0, 1))[None, None, :]
        reference = np.array(ndimage.center_of_mass(level_aorta if level_aorta.any() else aorta))
        offset = (centre - reference) * spacing
        height = (centre[2] - kidney_height) * spacing[2]
        rows[name] = (float(mask.sum() * spacing.prod() / 1000), *offset[:2], float(height))
    return rows


def label_maps(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in (source / "labelsTr").iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd")))
    return [source]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", type=Path, nargs="+")
    for source in parser.parse_args().sources:
        cases = [organ_rows(path) for path in label_maps(source)]
        print(f"\n{source} ({len(cases)} label maps)")
        print("| organ | volume ml (p10-p90) | left-right | front-back | above kidneys |")
        print("|---|---|---|---|---|")
        for _, name in FLARE22.names:
            values = np.array([case[name] for case in cases if name in case])
            if len(values) == 0:
                continue
            low, high = np.percentile(values[:, 0], [10, 90])
            lateral, back, height = np.median(values[:, 1:], axis=0)
            volume = f"{np.median(values[:, 0]):.0f} ({low:.0f}-{high:.0f})"
            print(f"| {name} | {volume} | {lateral:+.0f} | {back:+.0f} | {height:+.0f} |")


if __name__ == "__main__":
    main()
