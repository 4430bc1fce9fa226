"""The synthetic phantom: labels, intensities, anatomy in world space, dataset writing, overlay picture."""

from __future__ import annotations

import json
from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from organseg.cli import build_parser, main
from organseg.errors import InputError
from organseg.io import read_image, read_label
from organseg.labels import FLARE22
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.body import sample_body
from organseg.phantom.case import FIELDS_OF_VIEW, _make_canvas
from organseg.phantom.tones import APPEARANCES, HU_RANGES, PHASES, RANDOM_HU, SHIFTED, hu_ranges, sample_tones
from organseg.phantom.writer import MIXED, case_seed
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


# Adult volumes on CT: liver about 1-2 l; spleen 215 +- 87 ml (P. Prassopoulos et al., Eur
# Radiol 7 (1997) 246-248); kidney about 150 ml (E. A. Emamian et al., AJR 160 (1993) 83-86).
ADULT_ML = {"liver": (900, 2200), "spleen": (110, 400), "right kidney": (70, 230), "left kidney": (70, 230)}


@pytest.mark.parametrize("organ", list(ADULT_ML))
def test_organs_have_adult_volumes(cases, organ):
    volumes = []
    for image, labels in cases:
        _, label_map, geometry = canonical(image, labels)
        volumes.append((label_map == ID[organ]).sum() * np.prod(geometry.spacing_mm) / 1000)
    low, high = ADULT_ML[organ]
    assert low <= np.median(volumes) <= high, f"median {organ} volume {np.median(volumes):.0f} ml"


def test_kidneys_upper_parts_lie_beside_the_spleen_and_under_the_liver(cases):
    """The hila lie near L1, so a network meets each kidney among the organs above it, as in real CT."""
    shares = {"left kidney": [], "right kidney": []}
    for image, labels in cases:
        _, label_map, _ = canonical(image, labels)
        slices = {organ: np.flatnonzero((label_map == ID[organ]).any(axis=(0, 1))) for organ in ID}
        for kidney, neighbour in (("left kidney", "spleen"), ("right kidney", "liver")):
            # The share of the kidney's height that the neighbour's height overlaps.
            shares[kidney].append(np.isin(slices[kidney], slices[neighbour]).mean())
    for kidney, values in shares.items():
        assert np.median(values) >= 0.15, f"{kidney} lies below its neighbour: {values}"


def test_organs_touch_where_real_ones_do(cases):
    touching = [("gallbladder", "liver"), ("duodenum", "pancreas"), ("esophagus", "stomach"), ("liver", "right kidney")]
    for _, labels in cases:
        for first, second in touching:
            grown = ndimage.binary_dilation(labels.array == ID[first], iterations=2)
            assert (grown & (labels.array == ID[second])).any(), f"{first} does not touch {second}"


@pytest.mark.parametrize("field_of_view, seed", [("upper-abdomen", 3), ("upper-abdomen", 7), ("thorax-abdomen", 0)])
def test_the_great_vessels_and_the_esophagus_cross_the_diaphragm_and_pass_the_heart_in_one_piece(field_of_view, seed):
    # Through the diaphragm's hiatuses, and the esophagus behind the heart, not through it.
    _, labels = generate_case(seed, (96, 96, 120), field_of_view=field_of_view)
    for name in ("aorta", "inferior vena cava", "esophagus"):
        components = cc3d.connected_components(labels.array == ID[name], connectivity=26)
        sizes = np.bincount(components.ravel())[1:]
        assert sizes.max() > 0.98 * sizes.sum(), (name, sizes)


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


# --- contrast phases -----------------------------------------------------------------------------


def test_each_phase_draws_its_tissues_within_its_cited_ranges() -> None:
    for phase in PHASES:
        ranges = hu_ranges(phase)
        for seed in range(40):
            tones = sample_tones(np.random.default_rng(seed), phase)
            for tissue, (low, high) in ranges.items():
                margin = 15 if tissue in SHIFTED else 0  # the per-case uptake offset
                assert low - margin <= tones[tissue] <= high + margin, (phase, tissue, tones[tissue])
    assert hu_ranges("portal-venous") == HU_RANGES
    with pytest.raises(ValueError, match="unknown contrast phase"):
        hu_ranges("venous")


# Medians inside the organs of the phantoms of each phase (partial volume with fat at this
# small resolution pulls small organs down): what tells the phases apart.
PHASE_MEDIAN_HU = {
    "non-contrast": {"liver": (35, 80), "aorta": (20, 70), "right kidney": (10, 55), "spleen": (25, 70)},
    "arterial": {"liver": (55, 110), "aorta": (250, 380), "pancreas": (75, 165)},
    "portal-venous": {"liver": (80, 150), "aorta": (120, 270)},
    "delayed": {"liver": (60, 120), "aorta": (85, 165), "right kidney": (115, 205)},
}


@pytest.mark.parametrize("phase", PHASES)
def test_organs_of_each_phase_show_its_intensities_and_the_same_anatomy(cases, phase) -> None:
    for seed, (reference_image, reference_labels) in zip(SEEDS[:2], cases, strict=False):
        image, labels = generate_case(seed, SHAPE, drop_organs=False, phase=phase)
        assert np.array_equal(labels.array, reference_labels.array)  # same anatomy and header in every phase
        assert labels.geometry == reference_labels.geometry
        for organ, (low, high) in PHASE_MEDIAN_HU[phase].items():
            median = np.median(image.array[labels.array == ID[organ]])
            assert low <= median <= high, f"{phase} {organ}: median {median} HU"
        if phase == "portal-venous":
            assert np.array_equal(image.array, reference_image.array)  # the default phase


def test_arterial_kidneys_have_a_bright_cortex_and_delayed_ones_do_not() -> None:
    def cortex_minus_medulla(phase: str) -> float:
        tones = [sample_tones(np.random.default_rng(seed), phase) for seed in range(20)]
        return float(np.mean([t["kidney cortex"] - t["kidney medulla"] for t in tones]))

    assert cortex_minus_medulla("arterial") > 60
    assert abs(cortex_minus_medulla("delayed")) < 20 and abs(cortex_minus_medulla("non-contrast")) < 20


def test_mixed_phases_are_drawn_per_case_reproducibly_and_listed(tmp_path) -> None:
    first = write_dataset(tmp_path / "a", labeled=4, unlabeled=4, test=4, seed=3, phase="mixed")
    again = write_dataset(tmp_path / "b", labeled=4, unlabeled=4, test=4, seed=3, phase="mixed")
    phases = json.loads((first / "dataset.json").read_text())["contrast_phases"]
    assert phases == json.loads((again / "dataset.json").read_text())["contrast_phases"]
    assert len(phases) == 12 and set(phases.values()) <= set(PHASES) and len(set(phases.values())) > 1
    for name, phase in phases.items():
        split, folder = (
            ("test", "imagesTs")
            if "_t" in name
            else ("unlabeled", "imagesUnlabeled")
            if "_u" in name
            else ("train", "imagesTr")
        )
        a, b = (read_image(root / folder / f"{name}_0000.nii.gz").array for root in (first, again))
        assert np.array_equal(a, b)
        if name.endswith("001"):  # the case is the generator's in the phase dataset.json names
            expected, _ = generate_case(case_seed(3, split, 1), phase=phase)
            assert np.array_equal(a, expected.array)
    one = write_dataset(tmp_path / "c", labeled=1, unlabeled=0, test=0, seed=3, phase="arterial")
    assert json.loads((one / "dataset.json").read_text())["contrast_phases"] == {"phantom_001": "arterial"}
    default = write_dataset(tmp_path / "d", labeled=1, unlabeled=0, test=0, seed=3)
    assert "contrast_phases" not in json.loads((default / "dataset.json").read_text())


def test_cli_phantom_phase_choices_are_the_generator_s(tmp_path, capsys) -> None:
    # The parser takes them from organseg.config (importing the generator would slow every command's start).
    phantom = build_parser()._subparsers._group_actions[0].choices["phantom"]
    options = {action.dest: action.choices for action in phantom._actions}
    assert tuple(options["phase"]) == (*PHASES, MIXED)
    assert tuple(options["fov"]) == (*FIELDS_OF_VIEW, MIXED)
    assert tuple(options["appearance"]) == (*APPEARANCES, MIXED)
    assert main(["phantom", str(tmp_path / "p"), "--labeled", "1", "--phase", "non-contrast"]) == 0
    meta = json.loads((tmp_path / "p" / "dataset.json").read_text())
    assert meta["contrast_phases"] == {"phantom_001": "non-contrast"}
    with pytest.raises(SystemExit):
        main(["phantom", str(tmp_path / "q"), "--phase", "venous"])
    assert "portal-venous" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown contrast phase"):
        write_dataset(tmp_path / "r", labeled=1, unlabeled=0, test=0, seed=0, phase="venous")


# --- fields of view ------------------------------------------------------------------------------


def _z_length_mm(volume) -> float:
    """World z distance (mm) between the volume's lowest and highest voxel centres."""
    geometry = volume.geometry
    last = np.array(geometry.shape) - 1
    corners = np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])])
    z = (corners * geometry.spacing_mm) @ np.asarray(geometry.direction).reshape(3, 3).T[:, 2]
    return float(z.max() - z.min())


def test_an_abdomen_pelvis_field_reaches_far_below_the_organs_with_as_thick_slices() -> None:
    for seed in range(3):
        upper, upper_labels = generate_case(seed, drop_organs=False)
        pelvis, pelvis_labels = generate_case(seed, drop_organs=False, field_of_view="abdomen-pelvis")
        assert _z_length_mm(pelvis) > 1.35 * _z_length_mm(upper)
        thickness = [max(v.geometry.spacing_mm) for v in (upper, pelvis)]  # the slice axis has the largest step
        assert thickness[1] == pytest.approx(thickness[0], rel=0.3)
        # No organ in the lower 30% of the longer field: it lies below the kidneys.
        array, labels, geometry = canonical(pelvis, pelvis_labels)
        lowest = int(0.3 * labels.shape[2])
        assert not labels[:, :, :lowest].any() and labels.any()
        assert (array[:, :, :lowest] > -500).mean() > 0.2  # body, not air, fills those slices
        assert set(np.unique(upper_labels.array)) == set(np.unique(pelvis_labels.array))


def test_an_abdomen_pelvis_field_shows_hip_bones_and_a_bladder_and_the_upper_abdomen_none() -> None:
    for seed in range(3):
        lower = {}
        for field in FIELDS_OF_VIEW:
            image, labels = generate_case(seed, (96, 96, 120), reorient=False, drop_organs=False, field_of_view=field)
            array, labels, _ = canonical(image, labels)
            organ_slices = np.flatnonzero(labels.any(axis=(0, 1)))
            lower[field] = array[:, :, : organ_slices.min()]  # below every organ
        pelvis, upper = lower["abdomen-pelvis"], lower["upper-abdomen"]
        lateral = np.abs(np.arange(96) - 47.5) > 20  # the spine lies near the midline
        assert (pelvis[lateral] > 400).sum() > 200, seed  # iliac wings, hip joints
        assert not (upper[lateral] > 400).any(), seed  # nothing of the pelvis above the crests


def test_the_bladder_is_water_in_front_of_the_pelvic_cavity_and_the_hips_lie_to_the_sides() -> None:
    from organseg.phantom.body import paint_wall
    from organseg.phantom.pelvis import paint_pelvis

    tones = {**sample_tones(np.random.default_rng(0)), "csf": 1001.0, "cortical bone": 2002.0}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        body = sample_body(rng)
        canvas = _make_canvas(rng, (64, 64, 80), body, FIELDS_OF_VIEW["abdomen-pelvis"])
        paint_wall(canvas, body, tones)
        paint_pelvis(canvas, rng, body, tones)
        position = canvas.first_mm + canvas.step_mm * np.argwhere(np.abs(canvas.hu - 1001) < 30)
        assert len(position) * np.prod(canvas.step_mm) > 30_000  # mm^3: a bladder, not a bowel loop
        x, y, z = position.mean(axis=0)
        assert abs(x) < 20 and y < -15 and z < -200  # midline, in front, deep in the pelvis
        bone = canvas.first_mm + canvas.step_mm * np.argwhere(np.abs(canvas.hu - 2002) < 300)
        assert (bone[:, 0] < -60).any() and (bone[:, 0] > 60).any() and bone[:, 2].max() < -100


def test_fields_of_view_mix_per_case_and_are_listed(tmp_path) -> None:
    root = write_dataset(tmp_path / "a", labeled=6, unlabeled=0, test=0, seed=1, field_of_view="mixed", phase="mixed")
    meta = json.loads((root / "dataset.json").read_text())
    assert set(meta["fields_of_view"].values()) == set(FIELDS_OF_VIEW)
    assert set(meta["contrast_phases"].values()) <= set(PHASES)
    for name, field in meta["fields_of_view"].items():
        index = int(name.rsplit("_", 1)[1])
        image, _ = generate_case(case_seed(1, "train", index), phase=meta["contrast_phases"][name], field_of_view=field)
        assert np.array_equal(read_image(root / "imagesTr" / f"{name}_0000.nii.gz").array, image.array)
    with pytest.raises(ValueError, match="unknown field of view"):
        generate_case(0, field_of_view="pelvis")
    with pytest.raises(InputError, match="unknown field of view"):
        write_dataset(tmp_path / "b", labeled=1, unlabeled=0, test=0, seed=0, field_of_view="pelvis")
    assert main(["phantom", str(tmp_path / "c"), "--labeled", "1", "--fov", "abdomen-pelvis"]) == 0
    assert json.loads((tmp_path / "c" / "dataset.json").read_text())["fields_of_view"] == {
        "phantom_001": "abdomen-pelvis"
    }


# --- random appearance ---------------------------------------------------------------------------


def test_a_random_appearance_keeps_the_anatomy_and_draws_every_tissue_s_intensity_anew(tmp_path) -> None:
    medians = {organ: [] for organ in ("liver", "spleen", "right kidney", "aorta")}
    for seed in range(6):
        realistic, labels = generate_case(seed, SHAPE, drop_organs=False)
        random, random_labels = generate_case(seed, SHAPE, drop_organs=False, appearance="random")
        again, _ = generate_case(seed, SHAPE, drop_organs=False, appearance="random")
        assert np.array_equal(labels.array, random_labels.array) and labels.geometry == random_labels.geometry
        assert np.array_equal(random.array, again.array) and not np.array_equal(random.array, realistic.array)
        for organ in medians:
            medians[organ].append(float(np.median(random.array[labels.array == ID[organ]])))
        outside = random.array[(labels.array == 0)]
        assert (outside < -900).any()  # air stays air
    low, high = RANDOM_HU
    for organ, values in medians.items():
        assert all(low - 60 <= value <= high + 60 for value in values), (organ, values)
        assert np.ptp(values) > 150, (organ, values)  # no organ keeps a typical intensity
    # The liver is brighter than the spleen in some cases and darker in others.
    order = np.sign(np.subtract(medians["liver"], medians["spleen"]))
    assert {-1.0, 1.0} <= set(order)
    with pytest.raises(ValueError, match="unknown appearance"):
        generate_case(0, SHAPE, appearance="synthseg")
    root = write_dataset(tmp_path / "a", labeled=6, unlabeled=0, test=0, seed=2, appearance="mixed")
    appearances = json.loads((root / "dataset.json").read_text())["appearances"]
    assert set(appearances.values()) == set(APPEARANCES)
    assert main(["phantom", str(tmp_path / "b"), "--labeled", "1", "--appearance", "random"]) == 0
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["appearances"] == {"phantom_001": "random"}
