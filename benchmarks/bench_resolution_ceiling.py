"""The resolution ceiling of the two-stage method: what resampling alone costs.

Both stages are replaced by oracles that return the true labels on their grids (as in
tests/test_cascade.py), so every Dice below 1 is lost to the grids' resolution, not to a
network. Run from the repository root:

    python benchmarks/bench_resolution_ceiling.py [--full-size N] [--real PATH]

Prints a Markdown table per preset grid: DSC per organ, mean over cases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from organseg.config import resolve_config  # noqa: E402
from organseg.io import read_image, read_label  # noqa: E402
from organseg.labels import FLARE22  # noqa: E402
from organseg.phantom import generate_case  # noqa: E402
from test_cascade import oracle_segmenter, organ_dice  # noqa: E402


def cases(args) -> dict[str, list]:
    sets = {"phantom, default size (8 cases)": [generate_case(seed) for seed in range(100, 108)]}
    if args.full_size:
        sets[f"phantom, 512x512x100 ({args.full_size} cases)"] = [
            generate_case(200 + seed, (512, 512, 100)) for seed in range(args.full_size)
        ]
    real = Path(args.real)
    if (real / "image.nii.gz").is_file():
        sets["real ts_abdomen (3 mm)"] = [
            (read_image(real / "image.nii.gz"), read_label(real / "label_flare13.nii.gz"))
        ]
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full-size", type=int, default=0, help="also this many 512x512x100 phantoms")
    parser.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared/data/real/ts_abdomen"))
    args = parser.parse_args()
    data = cases(args)
    for preset in ("tiny", "cpu", "paper"):
        config = resolve_config(preset)
        grids = f"stage 1 {config.stage1.grid}, stage 2 {config.stage2.grid}, margin {config.crop.margin_mm} mm"
        print(f"\n### preset `{preset}`: {grids}\n")
        print("| data | " + " | ".join(FLARE22.name(i) for i in FLARE22.ids) + " | mean |")
        print("|---" * (len(FLARE22.ids) + 2) + "|")
        for name, pairs in data.items():
            per_organ = {label: [] for label in FLARE22.ids}
            for image, truth in pairs:
                segmenter = oracle_segmenter(truth, config.stage1.grid, config.stage2.grid, config.crop.margin_mm)
                for label, value in organ_dice(segmenter.predict(image).array, truth.array).items():
                    per_organ[label].append(value)
            means = [np.mean(v) if v else float("nan") for v in per_organ.values()]
            cells = " | ".join("-" if np.isnan(m) else f"{m:.3f}" for m in means)
            print(f"| {name} | {cells} | {np.nanmean(means):.3f} |")


if __name__ == "__main__":
    main()
