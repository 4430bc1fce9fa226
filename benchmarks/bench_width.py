"""Stage 2's region as wide as stage 1's organs or as the body (crop.width), on the same trained models.

    python benchmarks/bench_width.py RUN_DIR [RUN_DIR ...]

Training does not depend on crop.width, so each run is scored twice: with
`crop.width=organs` (stage 1's box in all three axes) and `crop.width=body`. Scores: the
shared real `ts_abdomen` (mean DSC over its 12 organs), the liver of the real
`dcmqi_3slice`, and, for runs made by bench_synthetic.py, the mean DSC of the test
phantoms of each contrast phase beside the run (RUN_DIR/../test_PHASE). Prints one line per
run and the paired differences (body minus organs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from bench_phases import _mean_dsc, _test_pairs, real_ct_scores

from organseg.network_stage import segmenter_from_run
from organseg.phantom.tones import PHASES

WIDTHS = ("organs", "body")


def scores(segmenter, run_dir: Path) -> dict[str, float]:
    real = real_ct_scores(segmenter)
    found = {"ts_abdomen": real["ts_abdomen"], "dcmqi liver": real["dcmqi liver"]}
    for phase in PHASES:
        test = run_dir.parent / f"test_{phase}"
        if test.is_dir():
            found[phase] = _mean_dsc(segmenter, _test_pairs(test))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    differences: dict[str, list[float]] = {}
    for run_dir in parser.parse_args().runs:
        segmenter = segmenter_from_run(run_dir, device="cpu")
        found = {}
        for width in WIDTHS:
            crop = dataclasses.replace(segmenter.config.crop, width=width)
            segmenter.config = dataclasses.replace(segmenter.config, crop=crop)
            found[width] = scores(segmenter, run_dir)
        print(json.dumps({"run": str(run_dir), **found}), flush=True)
        for name, value in found["body"].items():
            differences.setdefault(name, []).append(value - found["organs"][name])
    print("\nbody minus organs, per run; mean +- sd:")
    for name, values in differences.items():
        spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
        listed = ", ".join(f"{v:+.3f}" for v in values)
        print(f"- {name}: {listed}; {np.mean(values):+.3f} +- {spread:.3f} (higher on {sum(v > 0 for v in values)})")


if __name__ == "__main__":
    main()
