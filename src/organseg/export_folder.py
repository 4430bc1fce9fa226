"""The exported model folder: two ONNX networks and the manifest that makes them a pipeline.

    OUT/
      model.json    what the pipeline needs around the networks, and how to trust them
      stage1.onnx   stage 1, float32, input (1, 1, *grid1), output (1, C, *grid1)
      stage2.onnx   stage 2, likewise on grid2 (deep-supervision heads left out)

model.json holds the format tag, the organseg version that wrote it, the run's full
settings (grids, CT window, crop margin, stage-1 target, clean-up: everything that
organseg.cascade reads), the label set with its codes, the classes no training case
annotated, and per stage the file's SHA-256, its input and output names and shapes, its
parameter count and the largest logit difference from PyTorch measured at export.

Reading it (`read_manifest`) refuses a folder of another format or organseg version
(pre- and post-processing may differ between versions: re-export instead) and a stage
file whose checksum does not match. This module needs neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from organseg import __version__
from organseg.config import STAGES
from organseg.errors import InputError

FORMAT = "organseg-export-1"
MANIFEST = "model.json"
CHUNK_BYTES = 1 << 22


def is_export(folder: Path) -> bool:
    """Whether `folder` looks like an exported model (it has a manifest)."""
    return (Path(folder) / MANIFEST).is_file()


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The manifest of an exported model, after checking its format, version and checksums."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable export manifest ({error}); export the run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not an organseg export ({FORMAT}); export the run with organseg export")
    problem = _structure_problem(manifest)
    if problem:
        raise InputError(f"{path}: {problem}; export the run again")
    version = manifest.get("organseg_version")
    if version != __version__:
        raise InputError(
            f"{folder}: exported by organseg {version}, this is organseg {__version__}; pre- and post-processing "
            "may differ between versions, so export the run again with this version (organseg export RUN OUT)"
        )
    for stage in STAGES:
        entry = manifest["stages"][stage]
        file = folder / entry["file"]
        if not file.is_file():
            raise InputError(f"{file}: missing from the exported model; export the run again")
        if sha256(file) != entry["sha256"]:
            raise InputError(
                f"{file}: checksum does not match {MANIFEST}; the file was changed or damaged, export the run again"
            )
    return manifest


def _structure_problem(manifest: dict) -> str | None:
    """What is missing or malformed in a manifest of the right format; None when it is whole."""
    for key in ("config", "labels", "stages"):
        if not isinstance(manifest.get(key), dict):
            return f"no {key!r} section"
    for stage in STAGES:
        entry = manifest["stages"].get(stage)
        if not isinstance(entry, dict) or not all(key in entry for key in ("file", "sha256", "input", "output")):
            return f"no complete {stage!r} entry"
        if Path(str(entry["file"])).name != entry["file"]:
            return f"{stage} file {entry['file']!r} is not a name inside the folder"
        shape = entry["input"].get("shape") if isinstance(entry["input"], dict) else None
        if not isinstance(shape, list) or len(shape) != 5:
            return f"{stage} input shape {shape!r} is not (1, 1, X, Y, Z)"
    return None
