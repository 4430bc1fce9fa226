"""Metal implants in phantoms and the streaks simulated through the scanner's projections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from organseg.cli import main
from organseg.config import resolve_config
from organseg.errors import InputError
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.body import paint_spine, paint_wall, sample_body
from organseg.phantom.case import FIELDS_OF_VIEW, _make_canvas
from organseg.phantom.implants import choose_implants, paint_implants
from organseg.phantom.pelvis import Hips, paint_pelvis
from organseg.phantom.streaks import METAL_MIN_HU, slice_streaks
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
    unhardened = slice_streaks(hu, metal, 1.0, 0.0, 1e15, rng)
    assert np.abs(unhardened).max() < 1.0  # an exact monochromatic scan shows no artefact


def test_wide_and_oblong_slices_are_projected_on_a_coarser_square_grid_with_the_same_streaks() -> None:
    hu, metal = _water_slice([(40, 64), (88, 64)])
    reference = slice_streaks(hu, metal, 1.0, 0.03, 1e15, np.random.default_rng(0))
    # The same slice on a grid of 384 pixels of 1/3 mm (projected at 256 pixels of 1/2 mm) ...
    fine_hu, fine_metal = (np.kron(a, np.ones((3, 3))) for a in (hu, metal.astype(np.uint8)))
    fine = slice_streaks(fine_hu, fine_metal.astype(bool), 1 / 3, 0.03, 1e15, np.random.default_rng(0))
    assert fine.shape == (384, 384)
    band, fine_band = reference[61:68, 50:79].mean(), fine[183:204, 150:237].mean()
    assert fine_band == pytest.approx(band, rel=0.25), (band, fine_band)
    # ... and cut to 128 x 110 pixels (padded with air to a square, cropped back).
    oblong = slice_streaks(hu[:, :110], metal[:, :110], 1.0, 0.03, 1e15, np.random.default_rng(0))
    assert oblong.shape == (128, 110) and oblong[61:68, 50:79].mean() < -30


def test_few_photons_add_streaks_that_fan_out_from_the_metal() -> None:
    hu, metal = _water_slice([(64, 64)])
    quiet = slice_streaks(hu, metal, 1.0, 0.0, 1e15, np.random.default_rng(0))
    starved = slice_streaks(hu, metal, 1.0, 0.0, 1e3, np.random.default_rng(0))
    ring = np.hypot(*(np.mgrid[:128, :128] - 63.5)) > 30
    assert np.abs(quiet[ring]).max() < 1.0 and starved[ring].std() > 20


CASES = [(field, seed, SHAPE) for field in ("upper-abdomen", "abdomen-pelvis") for seed in range(3)]


@pytest.mark.parametrize("field, seed, shape", [*CASES, ("upper-abdomen", 7, (96, 96, 48))])
def test_metal_keeps_the_labels_of_its_seed_and_leaves_slices_away_from_it_alone(field, seed, shape) -> None:
    plain, labels = generate_case(seed, shape, reorient=False, field_of_view=field)
    image, metal_labels = generate_case(seed, shape, reorient=False, field_of_view=field, artefacts="metal")
    again, _ = generate_case(seed, shape, reorient=False, field_of_view=field, artefacts="metal")
    assert np.array_equal(labels.array, metal_labels.array) and labels.geometry == metal_labels.geometry
    assert np.array_equal(image.array, again.array)
    with_metal = np.flatnonzero((image.array > 2500).any(axis=(0, 1)))
    assert len(with_metal)
    # Scanner blur reaches two slices; beyond it the image is that of the plain case.
    far = np.abs(np.arange(shape[2])[:, None] - with_metal[None]).min(axis=1) > 2
    assert np.array_equal(image.array[:, :, far], plain.array[:, :, far])
    changed = np.abs(image.array.astype(int) - plain.array)
    assert (changed[image.array < 1500] > 100).sum() > 50  # streaks beyond the metal


def _metal_positions(implants, seed: int = 3):
    """Model positions (mm) of the metal of `implants`, painted on one abdomen-pelvis canvas; its spine and hips."""
    rng = np.random.default_rng(seed)
    body = sample_body(rng)
    canvas = _make_canvas(rng, (64, 64, 120), body, FIELDS_OF_VIEW["abdomen-pelvis"])
    tones = sample_tones(rng)
    paint_wall(canvas, body, tones)
    spine = paint_spine(canvas, rng, body, tones)
    hips = paint_pelvis(canvas, rng, body, tones)
    paint_implants(canvas, np.random.default_rng(0), body, implants, spine, hips)
    # The displacement field moves the anatomy by a few mm; the grid's positions are close enough here.
    return canvas.first_mm + canvas.step_mm * np.argwhere(canvas.hu > METAL_MIN_HU), spine, hips


def test_implants_lie_where_they_belong() -> None:
    metal, spine, hips = _metal_positions(("spine",))
    assert len(metal) and np.abs(metal[:, 0]).max() < 45 and metal[:, 1].min() > 15  # behind the cavity, midline
    # The screws' tips lie in vertebral bodies, not discs: the deepest metal is near a body's middle height.
    tips = metal[metal[:, 1] < metal[:, 1].min() + 8]
    centres = spine.body_centres_mm(-200, 100)
    assert np.abs(tips[:, 2][:, None] - centres[None]).min(axis=1).max() < 0.3 * spine.period_mm
    for side, implant in ((-1, "right hip"), (1, "left hip")):
        metal, _, hips = _metal_positions((implant,))
        head = metal[np.abs(metal[:, 2] - hips.z_mm) < hips.head_radius_mm / 2]
        assert len(head) and np.all(side * head[:, 0] > 50)  # the femoral head, on the patient's `side`
        assert abs(np.median(side * head[:, 0]) - 88 * 0.9) < 25 and metal[:, 2].max() < hips.z_mm + 30
    assert all(choose_implants(np.random.default_rng(s), None, -300.0) == ("spine",) for s in range(5))
    below = Hips(-310.0, 23.0)  # the hips below the field of view: no prosthesis to see
    assert all(choose_implants(np.random.default_rng(s), below, -300.0) == ("spine",) for s in range(5))
    seen = {i for s in range(30) for i in choose_implants(np.random.default_rng(s), Hips(-270.0, 23.0), -300.0)}
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
