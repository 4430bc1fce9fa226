"""The body's box on stage 1's grid (crop.width=body: stage 2's region is as wide as the body)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from organseg.config import CT_WINDOW_HU, Config, resolve_config, saved_config, to_dict
from organseg.errors import InputError
from organseg.io import read_image, read_label
from organseg.phantom import generate_case
from organseg.preprocess.body import body_box
from organseg.preprocess.crop import Box
from organseg.preprocess.orientation import canonical_transform
from organseg.preprocess.stage_input import ScanView, stage_input

GRID = (48, 48, 32)


def _body_and_organs(image, label, window_hu=CT_WINDOW_HU):
    """The body box found on stage 1's grid, the organs' voxels, the body's voxels (canonical)."""
    transform = canonical_transform(image.geometry)
    scan = ScanView.of(image.array, transform, window_hu)
    grid_image = stage_input(scan, Box.whole(scan.shape), GRID)
    box = body_box(grid_image, scan.mean, scan.std, window_hu, scan.shape, Box.whole(scan.shape))
    organs = np.argwhere(transform.apply(label.array) > 0)
    return box, organs, transform.apply(image.array) > -150


def _contains(box: Box, points: np.ndarray) -> bool:
    return bool((points[:, :2] >= box.start[:2]).all() and (points[:, :2] < box.stop[:2]).all())


@pytest.mark.parametrize("seed", [1, 4, 9])
def test_the_body_box_holds_every_organ_and_leaves_out_the_air_around(seed: int) -> None:
    image, label = generate_case(seed)
    box, organs, _ = _body_and_organs(image, label)
    assert _contains(box, organs)
    shape = canonical_transform(image.geometry).apply_geometry(image.geometry).shape
    assert box.start[2] == 0 and box.shape[2] == shape[2], "every slice"
    # The phantom's body fills 80-90% of the field's width: the box is narrower than the field.
    assert box.shape[0] < 0.97 * shape[0]


def test_the_body_box_of_real_ct_holds_its_organs_and_not_the_table(real_data: Path) -> None:
    image = read_image(real_data / "ts_abdomen" / "image.nii.gz")
    label = read_label(real_data / "ts_abdomen" / "label_flare13.nii.gz")
    box, organs, dense = _body_and_organs(image, label)
    assert _contains(box, organs)
    # The table lies behind the patient's back: the box ends before the field's back edge,
    # at most a coarse cell (about 8 mm here) behind the body's own outline.
    back_of_body = np.flatnonzero(dense[box.start[0] : box.stop[0]].any(axis=(0, 2)))
    assert box.stop[1] < dense.shape[1]
    assert box.stop[1] <= back_of_body[back_of_body < box.stop[1]].max() + 4


def test_a_window_that_hides_fat_from_air_finds_no_body() -> None:
    image, label = generate_case(2)
    box, _, _ = _body_and_organs(image, label, window_hu=(-100.0, 400.0))
    assert box is None


def test_runs_saved_before_the_setting_keep_cropping_to_their_organs() -> None:
    assert Config().crop.width == "body" and resolve_config("cpu").crop.width == "body"
    old = to_dict(Config())
    del old["crop"]["width"]
    assert saved_config(old, source="old run").crop.width == "organs"
    assert saved_config(to_dict(Config()), source="new run").crop.width == "body"
    with pytest.raises(InputError, match="crop.width"):
        resolve_config("cpu", overrides=["crop.width=skin"])


def test_only_the_region_s_slices_count(real_data: Path) -> None:
    """The real CT's pelvis and lower belly reach further forward than the abdomen at the organs."""
    image = read_image(real_data / "ts_abdomen" / "image.nii.gz")
    scan = ScanView.of(image.array, canonical_transform(image.geometry), CT_WINDOW_HU)
    grid_image = stage_input(scan, Box.whole(scan.shape), GRID)
    every_slice = body_box(grid_image, scan.mean, scan.std, CT_WINDOW_HU, scan.shape, Box.whole(scan.shape))
    upper = Box((0, 0, scan.shape[2] // 2), scan.shape)
    upper_half = body_box(grid_image, scan.mean, scan.std, CT_WINDOW_HU, scan.shape, upper)
    assert upper_half.start[2] == upper.start[2] and upper_half.stop[2] == scan.shape[2]
    assert upper_half.shape[1] < every_slice.shape[1]
