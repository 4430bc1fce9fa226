"""Compare two `organseg demo` results.json files figure by figure (behaviour checks of refactors).

    python benchmarks/compare_demo_results.py BEFORE/results.json AFTER/results.json [--tolerance 0.01]

Prints each model's mean DSC and NSD before and after, every per-organ figure that moved by
more than the tolerance, and the largest difference; exits 1 when it exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS = ("full_supervision", "semi_supervised")


def differences(before: dict, after: dict) -> list[tuple[str, str, float, float]]:
    """(model, figure, before, after) for every DSC/NSD figure of both models."""
    rows = []
    for model in MODELS:
        for metric in ("dsc", "nsd"):
            for organ, value in before[model][metric].items():
                rows.append((model, f"{metric} {organ}", value, after[model][metric][organ]))
            rows.append((model, f"mean {metric}", before[model][f"mean_{metric}"], after[model][f"mean_{metric}"]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args()
    rows = differences(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    worst = 0.0
    for model, figure, old, new in rows:
        change = 0.0 if old is None and new is None else abs((new or 0.0) - (old or 0.0))
        worst = max(worst, change)
        if figure.startswith("mean") or change > args.tolerance:
            print(f"{model:17s} {figure:32s} {old!s:>22} -> {new!s:<22} ({change:.4f})")
    verdict = "bit-identical" if worst == 0 else f"largest difference {worst:.4f}"
    print(f"{len(rows)} figures compared: {verdict}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
