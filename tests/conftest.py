"""Shared fixtures: where the real CT lies, tiny synthetic volumes, one torch thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from organseg.geometry import Geometry
from organseg.io import Volume

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module whose subprocesses share the cores (each also set to one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of small real CT volumes beside the checkout (skips if absent)."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CT folder not found at {REAL_DATA}")
    return REAL_DATA


def make_volume(
    shape=(32, 28, 20),
    spacing_mm=(0.8, 0.9, 2.5),
    origin_mm=(-12.5, 30.0, 7.25),
    direction=(0, -1, 0, 1, 0, 0, 0, 0, -1),
    seed: int = 0,
    labels: int = 0,
) -> Volume:
    """A small anisotropic, non-canonically oriented volume: CT-like noise, or blob labels."""
    rng = np.random.default_rng(seed)
    geometry = Geometry(shape, spacing_mm, origin_mm, direction)
    if not labels:
        return Volume(rng.normal(40, 30, shape).round().astype(np.int16), geometry)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    array = np.zeros(shape, np.uint8)
    for label in range(1, labels + 1):
        centre = rng.uniform(0.2, 0.8, 3) * np.asarray(shape)
        radius = rng.uniform(0.12, 0.25) * min(shape)
        array[np.linalg.norm(grid - centre, axis=-1) < radius] = label
    return Volume(array, geometry)


REAL_INPUTS = ("ts_abdomen/image.nii.gz", "ts_upper_abdomen_bad_origin/image.nii.gz", "dcmqi_3slice/dicom")


def predict_real_inputs(model_dir: Path, real_data: Path, out_dir: Path) -> list[tuple[Volume, Volume]]:
    """`organseg predict MODEL_DIR` on each real CT (two NIfTI headers, one DICOM series); asserts that
    each label map lies on exactly its input's grid. Returns (image, label map) pairs."""
    from organseg.cli import main
    from organseg.io import read_image, read_label

    pairs = []
    for source in REAL_INPUTS:
        image = read_image(real_data / source)
        out = out_dir / (source.replace("/", "_") + ".nii.gz")
        assert main(["predict", str(model_dir), str(real_data / source), str(out)]) == 0
        written = read_label(out)
        assert written.array.shape == image.array.shape
        assert written.geometry.is_close(image.geometry, tolerance_mm=1e-5, tolerance_cos=1e-6)
        pairs.append((image, written))
    return pairs
