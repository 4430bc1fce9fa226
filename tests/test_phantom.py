"""The synthetic phantom: labels, intensities, anatomy in world space, dataset writing, overlay picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from organseg.cli import main
from organseg.errors import InputError
from organseg.io import read_image, read_label
from organseg.labels import FLARE22
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.body import sample_body
from organseg.phantom.case import _make_canvas
from organseg.pictures import save_overlay_png
from organseg.preprocess.orientation import canonical_transform

ID = {name: label for label, name in FLARE22.names}
SHAPE = (80, 80, 40)
SEEDS = range(6)

# Expected median HU inside each organ: the portal-venous ranges, widened by the per-case
# offset (+-15 HU) and by partial volume with fat at this small test resolution.
MEDIAN_HU = {
    "liver": (80, 150),
    "right kidney": (110, 215),
    "spleen": (80, 150),
    "pancreas": (50, 130),
    "aorta": (120, 270),
    "inferior vena cava": (95, 185),
    "right adrenal gland": (-30, 110),
    "left adrenal gland": (-30, 110),
    "gallbladder": (-20, 60),
    "esophagus": (0, 100),
    "stomach": (-50, 100),
    "duodenum": (30, 110),
    "left kidney": (110, 215),
}


@pytest.fixture(scope="module")
def cases():
    """Six small cases with every organ, in random header orientations."""
    return [generate_case(seed, SHAPE, drop_organs=False) for seed in SEEDS]


def canonical(image, labels):
    """Arrays in canonical orientation (i to the patient's left, j posterior, k superior)."""
    transform = canonical_transform(image.geometry)
    return transform.apply(image.array), transform.apply(labels.array), transform.apply_geometry(image.geometry)


def centroid(label_map, label):
    return np.argwhere(label_map == label).mean(axis=0)


def test_arrays_types_and_geometry(cases):
    for image, labels in cases:
        assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
        assert labels.array.max() <= 13
        assert image.geometry == labels.geometry
        assert image.array.min() >= -1024 and image.array.max() <= 3071
        assert sorted(image.array.shape) == sorted(SHAPE)


def test_every_organ_present_when_nothing_is_dropped(cases):
    for _, labels in cases:
        assert set(np.unique(labels.array)) == set(range(14))


def test_drop_organs_leaves_out_the_gallbladder_in_some_cases():
    present = [ID["gallbladder"] in generate_case(seed, (40, 40, 20))[1].array for seed in range(20)]
    assert 0 < present.count(False) < 10


def test_same_seed_same_case_and_other_seed_other_case():
    first, second, other = (generate_case(seed, (40, 36, 20)) for seed in (7, 7, 8))
    assert np.array_equal(first[0].array, second[0].array) and np.array_equal(first[1].array, second[1].array)
    assert first[0].geometry == second[0].geometry
    assert not np.array_equal(first[1].array, other[1].array)


def test_given_shape_is_used_and_reorientation_keeps_world_space():
    plain_image, plain_labels = generate_case(4, (40, 36, 20), reorient=False)
    assert plain_image.array.shape == (40, 36, 20)
    assert np.allclose(plain_image.geometry.direction_matrix, np.eye(3))
    image, labels = generate_case(4, (40, 36, 20))
    ct, label_map, geometry = canonical(image, labels)
    assert geometry.is_close(plain_image.geometry)
    assert np.array_equal(label_map, plain_labels.array) and np.array_equal(ct, plain_image.array)


def test_bad_shape_and_seed_are_refused():
    with pytest.raises(ValueError, match="shape"):
        generate_case(0, (40, 40, 2))
    with pytest.raises(ValueError, match="seed"):
        generate_case(-1)


def test_header_orientation_and_spacing_vary_and_keep_organs_life_size(cases):
    assert len({image.geometry.direction for image, _ in cases}) >= 3
    spacings = [canonical(image, labels)[2].spacing_mm for image, labels in cases]
    assert len({s[2] for s in spacings}) == len(spacings)
    for image, labels in cases:
        _, label_map, geometry = canonical(image, labels)
        extent_mm = np.asarray(geometry.extent_mm())
        assert 300 <= extent_mm[0] == extent_mm[1] <= 460 and 180 <= extent_mm[2] <= 350
        liver_ml = (label_map == 1).sum() * np.prod(geometry.spacing_mm) / 1000
        assert 600 <= liver_ml <= 3500, "an adult liver holds about 1-2.5 litres"


@pytest.mark.parametrize("seed", range(12))
def test_full_size_spacing_is_that_of_clinical_ct(seed):
    rng = np.random.default_rng(seed)
    canvas = _make_canvas(rng, (512, 512, 100), sample_body(rng))
    in_plane_x, in_plane_y, slice_mm = canvas.step_mm
    assert 0.6 <= in_plane_x == in_plane_y <= 1.0 and 1.5 <= slice_mm <= 5.0


def test_default_shape_is_small_and_varied():
    shapes = [sorted(generate_case(seed, reorient=False)[0].array.shape) for seed in (0, 1)]
    for slices, in_plane, _ in shapes:
        assert 96 <= in_plane <= 128 and 40 <= slices <= 64
    assert shapes[0] != shapes[1]


@pytest.mark.parametrize("organ", list(MEDIAN_HU))
def test_organ_intensities_are_plausible(cases, organ):
    low, high = MEDIAN_HU[organ]
    for image, labels in cases:
        median = np.median(image.array[labels.array == ID[organ]])
        assert low <= median <= high, f"{organ}: median {median} HU"


def test_air_outside_and_bone_inside(cases):
    for image, labels in cases:
        ct, _, _ = canonical(image, labels)
        # Front corners of the field of view lie outside the body.
        corners = np.concatenate([ct[:5, :5].ravel(), ct[-5:, :5].ravel()])
        assert np.median(corners) < -900
        assert (ct > 500).sum() > 50


def test_organs_lie_where_anatomy_puts_them(cases):
    for image, labels in cases:
        ct, label_map, _ = canonical(image, labels)
        at = {name: centroid(label_map, label) for name, label in ID.items()}
        spine_i = np.argwhere(ct > 500)[:, 0].mean()
        # Canonical i runs to the patient's left, j to posterior, k to superior.
        assert at["liver"][0] < at["spleen"][0]
        assert at["right kidney"][0] < spine_i < at["left kidney"][0]
        assert at["aorta"][0] > at["inferior vena cava"][0]
        assert at["esophagus"][2] > max(at["right kidney"][2], at["left kidney"][2])
        assert at["liver"][2] > at["right kidney"][2]
        assert at["stomach"][1] < at["spleen"][1] and at["pancreas"][1] < at["aorta"][1]
        assert at["right adrenal gland"][2] > at["right kidney"][2]


def test_organs_touch_where_real_ones_do(cases):
    touching = [("gallbladder", "liver"), ("duodenum", "pancreas"), ("esophagus", "stomach"), ("liver", "right kidney")]
    for _, labels in cases:
        for first, second in touching:
            grown = ndimage.binary_dilation(labels.array == ID[first], iterations=2)
            assert (grown & (labels.array == ID[second])).any(), f"{first} does not touch {second}"


def test_write_dataset_layout_and_contents(tmp_path):
    root = write_dataset(tmp_path / "ds", labeled=2, unlabeled=1, test=1, seed=3, shape=(40, 36, 20))
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == FLARE22.to_json() and meta["numTraining"] == 2
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*.nii.gz"))
    assert names == [
        "imagesTr/phantom_001_0000.nii.gz",
        "imagesTr/phantom_002_0000.nii.gz",
        "imagesTs/phantom_t001_0000.nii.gz",
        "imagesUnlabeled/phantom_u001_0000.nii.gz",
        "labelsTr/phantom_001.nii.gz",
        "labelsTr/phantom_002.nii.gz",
        "labelsTs/phantom_t001.nii.gz",
    ]
    image, labels = (
        read_image(root / "imagesTr/phantom_002_0000.nii.gz"),
        read_label(root / "labelsTr/phantom_002.nii.gz"),
    )
    assert image.geometry.is_close(labels.geometry) and image.array.dtype == np.int16
    assert 0 < labels.array.max() <= 13
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_write_dataset_is_reproducible_and_splits_are_independent(tmp_path):
    one = write_dataset(tmp_path / "one", labeled=1, unlabeled=0, test=0, seed=5, shape=(32, 32, 16))
    same = write_dataset(tmp_path / "same", labeled=1, unlabeled=0, test=0, seed=5, shape=(32, 32, 16))
    more = write_dataset(tmp_path / "more", labeled=1, unlabeled=2, test=1, seed=5, shape=(32, 32, 16))
    for name in ("imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        assert (one / name).read_bytes() == (same / name).read_bytes()
    assert np.array_equal(
        read_label(one / "labelsTr/phantom_001.nii.gz").array, read_label(more / "labelsTr/phantom_001.nii.gz").array
    )
    assert np.array_equal(
        read_image(one / "imagesTr/phantom_001_0000.nii.gz").array,
        read_image(more / "imagesTr/phantom_001_0000.nii.gz").array,
    )


def test_write_dataset_refuses_a_folder_that_is_not_empty(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_dataset(out, labeled=1, unlabeled=0, test=0, seed=0, shape=(32, 32, 16))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_write_dataset_fills_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    root = write_dataset(tmp_path / "empty", labeled=1, unlabeled=0, test=0, seed=0, shape=(32, 32, 16))
    assert (root / "labelsTr/phantom_001.nii.gz").is_file()


def test_cli_phantom_writes_a_dataset(tmp_path):
    out = tmp_path / "x"
    assert main(["phantom", str(out), "--labeled", "2", "--unlabeled", "1", "--test", "1", "--seed", "3"]) == 0
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == 2
    assert (out / "imagesUnlabeled/phantom_u001_0000.nii.gz").is_file()
    assert (out / "labelsTs/phantom_t001.nii.gz").is_file()


def test_save_overlay_png_writes_a_png(tmp_path, cases):
    image, labels = cases[0]
    save_overlay_png(image, labels, tmp_path / "overlay.png", title="phantom")
    save_overlay_png(image, None, tmp_path / "plain.png")
    for name in ("overlay.png", "plain.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png", "plain.png"]


def test_dicom_phantoms_are_byte_identical_per_seed(tmp_path: Path) -> None:
    first, second = (
        write_dataset(tmp_path / name, labeled=1, unlabeled=0, test=0, seed=3, shape=(24, 20, 16), dicom="coronal")
        for name in ("a", "b")
    )
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert any(p.suffix == ".dcm" for p in files)
    assert all((first / p).read_bytes() == (second / p).read_bytes() for p in files)


def test_unknown_dicom_orientation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown DICOM orientation"):
        write_dataset(tmp_path / "x", labeled=1, unlabeled=0, test=0, seed=3, dicom="diagonal")
