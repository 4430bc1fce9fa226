"""How a trained model fares on phantoms of every look: fields of view and metal artefacts.

    python benchmarks/bench_looks.py MODEL_DIR OUT [--cases 6] [--seed 100]

Writes one test set of `--cases` phantoms per look in LOOKS (the same anatomies in each,
from `--seed`), scores the model (a training or self-training round's run folder) on
each with the FLARE22 DSC (mean over the organs present in each ground truth), prints a
table and writes OUT/results.json. A model trained on upper-abdominal phantoms without
metal shows here what the looks it never saw cost it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_cpu_inference import machine
from bench_phases import _mean_dsc, _test_pairs

from organseg.network_stage import segmenter_from_run
from organseg.phantom import write_dataset

# name -> (field of view, artefacts), as `organseg phantom --fov --artefacts` takes them; portal-venous.
LOOKS = {
    "upper abdomen": ("upper-abdomen", "none"),
    "thorax-abdomen": ("thorax-abdomen", "none"),
    "upper abdomen, metal": ("upper-abdomen", "metal"),
    "abdomen-pelvis": ("abdomen-pelvis", "none"),
    "abdomen-pelvis, metal": ("abdomen-pelvis", "metal"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    segmenter = segmenter_from_run(args.model_dir, device="cpu")
    scores = {}
    for look, (field_of_view, artefacts) in LOOKS.items():
        folder = args.out / look.replace(", ", "_").replace(" ", "_")
        if not (folder / "dataset.json").exists():
            write_dataset(folder, 0, 0, args.cases, args.seed, field_of_view=field_of_view, artefacts=artefacts)
        scores[look] = _mean_dsc(segmenter, _test_pairs(folder))
        print(f"{look}: mean DSC {scores[look]:.3f}", flush=True)
    results = {"machine": machine(), "model_dir": str(args.model_dir), "cases": args.cases, "seed": args.seed}
    (args.out / "results.json").write_text(json.dumps({**results, "mean_dsc": scores}, indent=1))
    print("| " + " | ".join(LOOKS) + " |\n" + "|---" * len(LOOKS) + "|")
    print("| " + " | ".join(f"{scores[look]:.3f}" for look in LOOKS) + " |")


if __name__ == "__main__":
    main()
