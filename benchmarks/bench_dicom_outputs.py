"""Cost of writing DICOM SEG and RTSTRUCT for a 512x512x100 series (not part of the tests).

Writes one phantom CT of 512x512x100 voxels as an axial DICOM series with its 13-organ
label map, then times, median of 3 runs each: reading and checking the series' headers
(`read_source_series`, needed once for either DICOM output), writing the NIfTI label map,
the DICOM SEG and the RTSTRUCT. Reports seconds, peak extra memory of one more run
(tracemalloc: Python and NumPy buffers, not SimpleITK's) and file size. Prints a Markdown
table. The first SEG of a process also pays ~0.5 s for highdicom's code tables (not timed
here: the median skips it).

Run: .venv/bin/python benchmarks/bench_dicom_outputs.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from organseg.dicom.rtstruct import write_rtstruct
from organseg.dicom.seg import write_seg
from organseg.dicom.source import read_source_series
from organseg.io import read_label, write_label
from organseg.labels import FLARE22
from organseg.phantom import write_dataset

SHAPE = (512, 512, 100)
RUNS = 3


def measure(step) -> tuple[float, float]:
    """(median seconds of RUNS calls, peak MB of one more call under tracemalloc, which slows it)."""
    seconds = []
    for _ in range(RUNS):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(seconds), peak


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = write_dataset(Path(scratch) / "data", labeled=0, unlabeled=0, test=1, seed=0, shape=SHAPE, dicom="axial")
        series, label_map = root / "imagesTs" / "phantom_t001", root / "labelsTs" / "phantom_t001.nii.gz"
        labels = read_label(label_map)
        source = read_source_series(series, labels.geometry)
        out = Path(scratch)
        steps = {
            "read series headers": (lambda: read_source_series(series, labels.geometry), None),
            "NIfTI label map": (lambda: write_label(labels.array, labels.geometry, out / "c.nii.gz"), out / "c.nii.gz"),
            "DICOM SEG": (lambda: write_seg(labels, source, FLARE22, out / "c.seg.dcm", "bench"), out / "c.seg.dcm"),
            "RTSTRUCT": (lambda: write_rtstruct(labels, source, FLARE22, out / "c.rt.dcm", "bench"), out / "c.rt.dcm"),
        }
        print(f"series {labels.geometry.shape} voxels, {len(source.slices)} slices, organs {len(FLARE22.ids)}")
        print("| step | seconds (median of 3) | peak extra memory MB | file MB |")
        print("|---|---|---|---|")
        for name, (step, path) in steps.items():
            seconds, peak = measure(step)
            size = f"{path.stat().st_size / 2**20:.2f}" if path else "-"
            print(f"| {name} | {seconds:.2f} | {peak:.0f} | {size} |")


if __name__ == "__main__":
    main()
