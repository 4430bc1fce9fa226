"""`organseg predict`: one image, one DICOM series or a folder of images, with the model loaded once.

Each label map is written atomically on exactly its input's grid. In folder mode, label
maps already present are skipped, so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from organseg.cascade import Segmenter
from organseg.dataset import Case, discover_dataset, is_dicom_series
from organseg.errors import InputError
from organseg.io import case_id, is_image_path, read_image, write_label

OUTPUT_SUFFIX = ".nii.gz"


def run_prediction(
    run_dir: Path, source: Path, output: Path, device: str = "auto", progress: bool = True
) -> list[Path]:
    """Segment `source` into `output`; returns the label maps written."""
    source, output = Path(source), Path(output)
    jobs = _jobs(source, output)
    segmenter = Segmenter.from_run(run_dir, device)
    written = []
    for case, target in tqdm(jobs, desc="predicting", unit="case", disable=not progress):
        image = read_image(case.image)
        labels = segmenter.predict(image)
        write_label(labels.array, labels.geometry, target)
        written.append(target)
    return written


def _jobs(source: Path, output: Path) -> list[tuple[Case, Path]]:
    """(case, label map path) pairs; in folder mode the ones already written are left out."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder; check the path")
    if source.is_file() or is_dicom_series(source):
        case = Case(_case_id(source), source, None)
        if output.is_dir():
            return [(case, output / f"{case.case_id}{OUTPUT_SUFFIX}")]
        if not is_image_path(output):
            raise InputError(f"{output}: give a label map file name ending in .nii.gz (or .nrrd, .mha), or a folder")
        return [(case, output)]
    cases = _folder_cases(source)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: is a file; a folder of images needs an output folder")
    output.mkdir(parents=True, exist_ok=True)
    pairs = [(case, output / f"{case.case_id}{OUTPUT_SUFFIX}") for case in cases]
    return [(case, target) for case, target in pairs if not target.exists()]


def _folder_cases(folder: Path) -> list[Case]:
    dataset = discover_dataset(None, images=folder)
    if dataset.problems:
        raise InputError("\n".join(dataset.problems))
    if not dataset.labeled:
        raise InputError(f"{folder}: no images found; give an image file, a DICOM series folder or a folder of images")
    return list(dataset.labeled)


def _case_id(path: Path) -> str:
    return case_id(path) if path.is_file() else path.name
