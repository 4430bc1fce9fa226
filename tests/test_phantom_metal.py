"""Metal implants in phantoms and the streaks simulated through the scanner's projections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from organseg.cli import main
from organseg.config import resolve_config
from organseg.errors import InputError
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.body import paint_wall, sample_body
from organseg.phantom.case import FIELDS_OF_VIEW, _make_canvas
from organseg.phantom.metal import METAL_MIN_HU, choose_implants, paint_implants, slice_streaks
from organseg.phantom.pelvis import Hips, paint_pelvis
from organseg.phantom.tones import sample_tones

SHAPE = (64, 64, 40)


def _water_slice(pins) -> tuple[np.ndarray, np.ndarray]:
    """A 160 mm water disc on 1 mm pixels with 5 mm metal pins at `pins` (pixel centres)."""
    y, x = np.mgrid[:128, :128]
    hu = np.where(np.hypot(x - 63.5, y - 63.5) < 80, 0.0, -1000.0)
    metal = np.zeros(hu.shape, bool)
    for px, py in pins:
        metal |= np.hypot(x - px, y - py) < 5
    hu[metal] = 10000.0
    return hu, metal


def test_beam_hardening_darkens_the_band_between_two_pins_and_nothing_without_metal() -> None:
    rng = np.random.default_rng(0)
    hu, metal = _water_slice([(40, 64), (88, 64)])
    # Photons without number: the hardening alone.
    streaks = slice_streaks(hu, metal, 1.0, 0.03, 1e15, rng)
    between = streaks[61:68, 50:79]  # rows = first axis; the pins lie along the second, at row 64
    assert between.mean() < -30, between.mean()  # the classic dark band
    beside = streaks[20:27, 50:79]  # as far from the pins, off their line
    assert abs(beside.mean()) < abs(between.mean()) / 3
    clean = slice_streaks(hu, np.zeros_like(metal), 1.0, 0.03, 1e6, rng)
    assert not clean.any()
    unhardened = slice_streaks(hu, metal, 1.0, 0.0, 1e15, rng)
    assert np.abs(unhardened).max() < 1.0  # an exact monochromatic scan shows no artefact


def test_few_photons_add_streaks_that_fan_out_from_the_metal() -> None:
    hu, metal = _water_slice([(64, 64)])
    quiet = slice_streaks(hu, metal, 1.0, 0.0, 1e15, np.random.default_rng(0))
    starved = slice_streaks(hu, metal, 1.0, 0.0, 1e3, np.random.default_rng(0))
    ring = np.hypot(*(np.mgrid[:128, :128] - 63.5)) > 30
    assert np.abs(quiet[ring]).max() < 1.0 and starved[ring].std() > 20


def test_metal_keeps_the_labels_of_its_seed_and_leaves_slices_away_from_it_alone() -> None:
    for field in FIELDS_OF_VIEW:
        for seed in range(2):
            plain, labels = generate_case(seed, SHAPE, reorient=False, field_of_view=field)
            image, metal_labels = generate_case(seed, SHAPE, reorient=False, field_of_view=field, artefacts="metal")
            again, _ = generate_case(seed, SHAPE, reorient=False, field_of_view=field, artefacts="metal")
            assert np.array_equal(labels.array, metal_labels.array) and labels.geometry == metal_labels.geometry
            assert np.array_equal(image.array, again.array)
            with_metal = np.flatnonzero((image.array > 2500).any(axis=(0, 1)))
            assert len(with_metal), (field, seed)
            # Scanner blur reaches two slices; beyond it the image is that of the plain case.
            far = np.abs(np.arange(SHAPE[2])[:, None] - with_metal[None]).min(axis=1) > 2
            assert np.array_equal(image.array[:, :, far], plain.array[:, :, far])
            changed = np.abs(image.array.astype(int) - plain.array)
            assert (changed[image.array < 1500] > 100).sum() > 50, (field, seed)  # streaks beyond the metal
            if field == "upper-abdomen":  # a spinal fixation's streaks reach the kidneys and vessels in front
                assert (changed[labels.array > 0] > 30).sum() >= 5, (field, seed)


def _implant_positions(implants, hips) -> np.ndarray:
    rng = np.random.default_rng(1)
    body = sample_body(rng)
    canvas = _make_canvas(rng, (64, 64, 90), body, FIELDS_OF_VIEW["abdomen-pelvis"])
    tones = sample_tones(rng)
    paint_wall(canvas, body, tones)
    paint_implants(canvas, rng, body, implants, hips)
    return canvas.first_mm + canvas.step_mm * np.argwhere(canvas.hu > METAL_MIN_HU)


def test_implants_lie_where_they_belong() -> None:
    rng = np.random.default_rng(3)
    body = sample_body(rng)
    canvas = _make_canvas(rng, (48, 48, 90), body, FIELDS_OF_VIEW["abdomen-pelvis"])
    hips = paint_pelvis(canvas, rng, body, sample_tones(rng))
    spine = _implant_positions(("spine",), hips)
    assert len(spine) and np.abs(spine[:, 0]).max() < 45 and spine[:, 1].min() > 15  # behind the cavity, midline
    right = _implant_positions(("right hip",), hips)
    assert len(right) and right[:, 0].max() < -40 and right[:, 2].max() < hips.z_mm + 40  # the patient's right
    left = _implant_positions(("left hip",), hips)
    assert left[:, 0].min() > 40
    assert all(choose_implants(np.random.default_rng(s), None) == ("spine",) for s in range(5))
    seen = {implant for s in range(30) for implant in choose_implants(np.random.default_rng(s), Hips(-270.0, 23.0))}
    assert seen == {"spine", "right hip", "left hip"}


def test_artefacts_mix_per_case_are_listed_and_checked(tmp_path) -> None:
    root = write_dataset(tmp_path / "a", labeled=6, unlabeled=0, test=0, seed=1, artefacts="mixed", shape=(40, 40, 20))
    assert set(json.loads((root / "dataset.json").read_text())["artefacts"].values()) == {"none", "metal"}
    with pytest.raises(ValueError, match="unknown artefacts"):
        generate_case(0, SHAPE, artefacts="rings")
    assert (
        main(["phantom", str(tmp_path / "b"), "--labeled", "1", "--artefacts", "metal", "--shape", "40", "40", "20"])
        == 0
    )
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["artefacts"] == {"phantom_001": "metal"}
    with pytest.raises(InputError, match="synthetic.artefacts must be one of none, metal, mixed"):
        resolve_config("cpu", overrides=["synthetic.artefacts=rings"])
