"""`organseg predict`: one image, one DICOM series or a folder of images, with the model loaded once.

Each label map is written atomically on exactly its input's grid; for DICOM series it can
also be written as a DICOM SEG and an RTSTRUCT (organseg.dicom.outputs). In folder mode,
cases whose outputs are all present are skipped, so an interrupted batch resumes where it
stopped.

With `profile`, each case's reading, prediction and writing is profiled (see
`organseg.profiling`): OUTPUT/profile.csv and profile.json when OUTPUT is a folder, else
beside the label map (`case.nii.gz` -> `case.profile.csv`, `case.profile.json`).

A folder can be split over workers (`shard`, see organseg.shards): each writes the label
maps of its own cases, and its profile as profile.shard-I-of-N.csv/.json.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np

from organseg.atomic import split_suffix
from organseg.cascade import Segmenter
from organseg.dataset import Case, folder_cases, is_dicom_series
from organseg.dicom.outputs import DICOM_TYPES, output_paths, source_for, write_outputs
from organseg.errors import InputError
from organseg.io import Volume, case_id, is_image_path, read_image
from organseg.memory import release_free_memory
from organseg.open_model import open_segmenter
from organseg.profiling import Profiler, write_profile
from organseg.progress import progress_bar
from organseg.shards import WHOLE, Shard

log = logging.getLogger(__name__)
OUTPUT_SUFFIX = ".nii.gz"


def run_prediction(
    model_dir: Path,
    source: Path,
    output: Path,
    device: str = "auto",
    profile: bool = False,
    shard: Shard = WHOLE,
    output_types: tuple[str, ...] = ("nifti",),
) -> list[Path]:
    """Segment `source` into `output` with `model_dir` (a run or an exported model); returns the files written.

    With `profile`, also writes the efficiency profile of every case predicted (see the module notes).
    `shard`: of a folder, only this shard's cases. `output_types`: some of organseg.dicom.outputs.OUTPUT_TYPES.
    """
    source, output = Path(source), Path(output)
    jobs = _jobs(source, output, shard, output_types)
    loading = time.perf_counter()
    segmenter = open_segmenter(model_dir, device)
    load_s = time.perf_counter() - loading
    profiler = Profiler.for_device(segmenter.device, segmenter.engine) if profile else None
    model = Path(model_dir).resolve().name
    written = []
    for case, paths in progress_bar(jobs, desc="predicting", unit="case"):
        with profiler.case(case.case_id) if profiler else contextlib.nullcontext():
            with segmenter.clock.phase("read"):
                image = read_image(case.image)
                # Checked before the networks run: a series that DICOM outputs cannot refer to fails early.
                dicom_source = source_for(paths, case.image, image.geometry)
            labels = _segment(segmenter, image, case.image)
            with segmenter.clock.phase("write"):
                written += write_outputs(labels, paths, segmenter.label_set, model, dicom_source)
        release_free_memory()  # a batch of full-size CTs must not grow the process (organseg.memory)
        phases = segmenter.clock.take()
        if profiler:
            profiler.rows[-1].update({f"{phase}_s": seconds for phase, seconds in phases.items()})
            # After every case: an interrupted batch keeps the profile of what it finished.
            write_profile(
                profiler.rows, *profile_paths(output, shard), {**profiler.settings, "model_load_s": round(load_s, 4)}
            )
    return written


def _segment(segmenter: Segmenter, image: Volume, path: Path) -> Volume:
    """The label map of `image`; empty, with a warning, for a constant image (it shows no anatomy)."""
    low, high = image.array.min(), image.array.max()
    if low == high:
        message = f"{path}: image is constant ({low:g} everywhere), so it shows no organs; writing an empty label map"
        log.warning(message)
        return Volume(np.zeros(image.array.shape, np.uint8), image.geometry)
    return segmenter.predict(image)


def profile_paths(output: Path, shard: Shard = WHOLE) -> tuple[Path, Path]:
    """Where `run_prediction` writes the profile (CSV, JSON) for `output`: inside a folder, else beside the file."""
    if output.is_dir():
        # One profile per shard: workers never write the same file.
        stem = "profile" if shard.is_whole else f"profile.{shard.tag}"
        return output / f"{stem}.csv", output / f"{stem}.json"
    stem, _ = split_suffix(output)
    return output.with_name(f"{stem}.profile.csv"), output.with_name(f"{stem}.profile.json")


def _jobs(source: Path, output: Path, shard: Shard, output_types: tuple[str, ...]) -> list[tuple[Case, dict]]:
    """(case, {output type: path}) pairs; in folder mode the shard's, less those with every output written."""
    pairs = _label_map_jobs(source, output, shard)
    jobs = [(case, output_paths(target, output_types)) for case, target in pairs]
    if any(kind in DICOM_TYPES for kind in output_types):
        for case, _ in jobs:
            if not case.image.is_dir():
                raise InputError(
                    f"{case.image}: DICOM outputs (dicom-seg, rtstruct) need a DICOM series as input; "
                    "give the series folder, or ask for --output-type nifti"
                )
    if source.is_file() or is_dicom_series(source):
        return jobs
    output.mkdir(parents=True, exist_ok=True)
    return [(case, paths) for case, paths in jobs if not all(path.exists() for path in paths.values())]


def _label_map_jobs(source: Path, output: Path, shard: Shard) -> list[tuple[Case, Path]]:
    """(case, label map path) pairs; in folder mode the shard's."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder; check the path")
    if (source.is_file() or is_dicom_series(source)) and not shard.is_whole:
        raise InputError(
            f"{source}: one image cannot be split over workers; give a folder, or run without --shard or torchrun"
        )
    if source.is_file() or is_dicom_series(source):
        case = Case(_case_id(source), source, None)
        if output.is_dir():
            return [(case, output / f"{case.case_id}{OUTPUT_SUFFIX}")]
        if not is_image_path(output):
            raise InputError(f"{output}: give a label map file name ending in .nii.gz (or .nrrd, .mha), or a folder")
        return [(case, output)]
    # The shard comes from the whole folder, never from what is left: so workers stay disjoint.
    cases = shard.select(folder_cases(source), key=lambda case: case.case_id)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: is a file; a folder of images needs an output folder")
    return [(case, output / f"{case.case_id}{OUTPUT_SUFFIX}") for case in cases]


def _case_id(path: Path) -> str:
    return case_id(path) if path.is_file() else path.name
