"""The demo's models, trained on phantoms alone, scored on the shared real CT.

    python benchmarks/demo_on_real.py DEMO_OUT [DEMO_OUT ...]

For each `organseg demo` output folder, scores its teacher (full supervision) and its
shipped semi-supervised model on `ts_abdomen` (non-contrast abdomen-pelvis CT; DSC per
organ of its 12, and their mean) and on the liver of `dcmqi_3slice`. Neither case is in any
demo's data. Prints one JSON line per model and a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_phases import real_ct_scores

from organseg.network_stage import segmenter_from_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demos", type=Path, nargs="+")
    rows = []
    for demo in parser.parse_args().demos:
        results = json.loads((demo / "results.json").read_text())
        for model in ("full_supervision", "semi_supervised"):
            scores = real_ct_scores(segmenter_from_run(Path(results[model]["model_dir"]), device="cpu"))
            print(json.dumps({"demo": str(demo), "model": model, **scores}), flush=True)
            rows.append((demo, model, results[model]["mean_dsc"], scores))
    print("\n| demo | model | phantom test DSC | ts_abdomen | dcmqi liver |\n|---|---|---|---|---|")
    for demo, model, test, scores in rows:
        print(f"| {demo} | {model} | {test:.3f} | {scores['ts_abdomen']:.3f} | {scores['dcmqi liver']:.3f} |")


if __name__ == "__main__":
    main()
