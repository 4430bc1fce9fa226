"""DSC and NSD: hand-computed cases, FLARE's rules, and equality with DeepMind's surface-distance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import Volume, read_label
from organseg.labels import FLARE22, LabelSet
from organseg.metrics import (
    FLARE22_TOLERANCES_MM,
    axial_axis,
    default_tolerances_mm,
    dice,
    evaluate_case,
    organ_volumes_ml,
    surface_area_table,
    surface_dice,
)

# surface-distance 0.1 imports from scipy's deprecated ndimage submodules.
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


@pytest.fixture(scope="module")
def deepmind():
    """DeepMind's surface-distance (test dependency); its 0.1 release still uses np.Inf, gone in NumPy 2."""
    if not hasattr(np, "Inf"):
        np.Inf = np.inf
    return pytest.importorskip("surface_distance")


def _reference_nsd(deepmind, pred: np.ndarray, gt: np.ndarray, spacing_mm, tolerance_mm: float) -> float:
    distances = deepmind.compute_surface_distances(gt, pred, spacing_mm)
    return float(deepmind.compute_surface_dice_at_tolerance(distances, tolerance_mm))


def _voxel(shape, index) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[index] = True
    return mask


def test_identical_masks_score_one():
    mask = np.zeros((12, 10, 8), bool)
    mask[2:9, 3:7, 1:6] = True
    assert dice(mask, mask) == 1.0
    assert surface_dice(mask, mask, (0.8, 0.9, 2.5), 0.1) == 1.0


# Two single voxels sharing a face: 4 of each voxel's 8 surface corners coincide (distance 0)
# and the other 4 lie one voxel step away. All 8 corner codes hold one voxel, so they have
# the same area: NSD = 1/2 below that step and 1 from it on, whatever the spacing.
@pytest.mark.parametrize(
    ("spacing_mm", "axis", "tolerance_mm", "expected"),
    [
        ((1.0, 1.0, 1.0), 0, 1.0, 1.0),
        ((1.0, 1.0, 1.0), 0, 0.5, 0.5),
        ((1.0, 1.0, 3.0), 2, 3.0, 1.0),  # the shift is along the 3 mm axis
        ((1.0, 1.0, 3.0), 2, 2.9, 0.5),
        ((1.0, 1.0, 3.0), 0, 1.0, 1.0),  # the same voxels shifted along a 1 mm axis
        ((1.0, 1.0, 3.0), 0, 0.9, 0.5),
    ],
)
def test_one_voxel_shift(spacing_mm, axis, tolerance_mm, expected):
    gt = _voxel((5, 5, 5), (2, 2, 2))
    shifted = [2, 2, 2]
    shifted[axis] += 1
    pred = _voxel((5, 5, 5), tuple(shifted))
    assert dice(pred, gt) == 0.0
    assert surface_dice(pred, gt, spacing_mm, tolerance_mm) == pytest.approx(expected, abs=1e-12)


def test_cube_shifted_by_one_voxel(deepmind):
    """A 4^3 cube moved one 1 mm voxel: every surface corner is within 1 mm of the other surface."""
    gt = np.zeros((10, 10, 10), bool)
    gt[2:6, 2:6, 2:6] = True
    pred = np.roll(gt, 1, axis=0)
    assert dice(pred, gt) == pytest.approx(2 * 48 / 128)
    assert surface_dice(pred, gt, (1.0, 1.0, 1.0), 1.0) == pytest.approx(1.0, abs=1e-12)
    below = surface_dice(pred, gt, (1.0, 1.0, 1.0), 0.5)
    assert 0.0 < below < 1.0
    assert below == pytest.approx(_reference_nsd(deepmind, pred, gt, (1.0, 1.0, 1.0), 0.5), abs=1e-12)


def test_empty_masks_follow_flare_rules():
    empty, full = np.zeros((6, 6, 6), bool), _voxel((6, 6, 6), (3, 3, 3))
    assert dice(empty, empty) == 1.0 and surface_dice(empty, empty, (1, 1, 1), 2.0) == 1.0
    assert dice(full, empty) == 0.0 and surface_dice(full, empty, (1, 1, 1), 2.0) == 0.0
    assert dice(empty, full) == 0.0 and surface_dice(empty, full, (1, 1, 1), 2.0) == 0.0


def test_area_table_matches_surface_distance(deepmind):
    from surface_distance import lookup_tables

    for spacing in [(1.0, 1.0, 1.0), (0.8, 0.9, 2.5), (3.0, 0.5, 1.7)]:
        expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surface_area_table(spacing), expected, rtol=0, atol=1e-12)


def test_random_blobs_match_surface_distance(deepmind):
    rng = np.random.default_rng(7)
    for trial in range(6):
        shape = tuple(int(n) for n in rng.integers(12, 28, 3))
        spacing = tuple(float(s) for s in rng.uniform(0.6, 3.0, 3))
        gt = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0.03
        pred = gt ^ (rng.random(shape) < 0.04) if trial % 2 else ndimage.binary_dilation(gt)
        for tolerance in (0.5, 1.0, 2.0, 5.0):
            expected = _reference_nsd(deepmind, pred, gt, spacing, tolerance)
            assert surface_dice(pred, gt, spacing, tolerance) == pytest.approx(expected, abs=1e-6)


def _perturbed(labels: np.ndarray) -> np.ndarray:
    """Organs moved, eroded or dilated by a voxel, in turn."""
    pred = np.zeros_like(labels)
    for label in range(1, 14):
        mask = labels == label
        changed = (np.roll(mask, 1, axis=label % 3), ndimage.binary_erosion(mask), ndimage.binary_dilation(mask))
        mask = changed[label % 3]
        pred[mask & (pred == 0)] = label
    return pred


def test_real_labels_match_surface_distance(deepmind, real_data):
    gt = read_label(real_data / "ts_abdomen" / "label_flare13.nii.gz")
    pred = Volume(_perturbed(gt.array), gt.geometry)
    rows = evaluate_case(pred, gt, FLARE22, flare_z_rule="none")
    for row in rows:
        gt_mask, pred_mask = gt.array == row["label"], pred.array == row["label"]
        if not gt_mask.any():
            assert row["dsc"] == row["nsd"] == (0.0 if pred_mask.any() else 1.0)
            continue
        expected = _reference_nsd(
            deepmind, pred_mask, gt_mask, gt.geometry.spacing_mm, FLARE22_TOLERANCES_MM[row["organ"]]
        )
        assert row["nsd"] == pytest.approx(expected, abs=1e-6), row["organ"]
        assert row["dsc"] == pytest.approx(deepmind.compute_dice_coefficient(gt_mask, pred_mask), abs=1e-12)
    assert min(row["nsd"] for row in rows) < 1.0


TUBE_SET = LabelSet(((1, "liver"), (5, "aorta")))


def _tube_case(z_axis: int) -> tuple[Volume, Volume]:
    """An aorta on slices 3..7 in the ground truth; the prediction on 0..10 except slice 7."""
    shape, direction = [8, 8, 8], np.eye(3)
    shape[z_axis] = 12
    if z_axis != 2:
        direction[:, [z_axis, 2]] = direction[:, [2, z_axis]]
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    along = [slice(2, 5), slice(3, 6), slice(2, 5)]
    for labels, slices in ((gt, range(3, 8)), (pred, [*range(0, 7), *range(8, 11)])):
        for z in slices:
            index = list(along)
            index[z_axis] = z
            labels[tuple(index)] = 5
    geometry = Geometry(tuple(shape), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), direction.ravel())
    return Volume(pred, geometry), Volume(gt, geometry)


@pytest.mark.parametrize("z_axis", [2, 0])
def test_z_rule_restricts_tubes_to_ground_truth_slices(z_axis):
    pred, gt = _tube_case(z_axis)
    assert axial_axis(gt.geometry) == z_axis

    def scores(rule):
        row = next(r for r in evaluate_case(pred, gt, TUBE_SET, flare_z_rule=rule) if r["organ"] == "aorta")
        return row["dsc"], row["nsd"]

    def on_slices(start, stop):
        index = [slice(None)] * 3
        index[z_axis] = slice(start, stop)
        p, g = pred.array[tuple(index)] == 5, gt.array[tuple(index)] == 5
        return dice(p, g), surface_dice(p, g, gt.geometry.spacing_mm, 2.0)

    assert scores("inclusive") == pytest.approx(on_slices(3, 8))
    assert scores("inclusive")[0] == pytest.approx(2 * 4 / (5 + 4))
    # FLARE22's official code slices gt[:, :, z_min:z_max]: slice 7, where they differ, drops out.
    assert scores("flare") == pytest.approx(on_slices(3, 7))
    assert scores("flare") == (1.0, 1.0)
    assert scores("none")[0] == pytest.approx(2 * 4 / (5 + 10))


def test_flare_rule_on_a_one_slice_organ_gives_nan_like_the_official_code():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[2:4, 2:4, 3] = 5
    geometry = Geometry((6, 6, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    row = evaluate_case(Volume(gt, geometry), Volume(gt, geometry), TUBE_SET, flare_z_rule="flare")[1]
    assert np.isnan(row["dsc"]) and np.isnan(row["nsd"])
    row = evaluate_case(Volume(gt, geometry), Volume(gt, geometry), TUBE_SET, flare_z_rule="inclusive")[1]
    assert row["dsc"] == row["nsd"] == 1.0


def test_evaluate_case_rows_and_empty_organs():
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[1:5, 1:5, 1:5] = 1
    pred = gt.copy()
    pred[7:9, 7:9, 7:9] = 3  # spleen predicted, absent from the ground truth
    geometry = Geometry((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    rows = evaluate_case(Volume(pred, geometry), Volume(gt, geometry), FLARE22)
    assert [row["label"] for row in rows] == list(range(1, 14))
    assert set(rows[0]) == {"label", "organ", "dsc", "nsd"}
    assert rows[0]["organ"] == "liver" and rows[0]["dsc"] == rows[0]["nsd"] == 1.0
    assert rows[2]["dsc"] == rows[2]["nsd"] == 0.0
    assert all(row["dsc"] == row["nsd"] == 1.0 for row in rows[3:])


def test_grid_mismatch_is_an_input_error():
    labels = np.zeros((6, 6, 6), np.uint8)
    gt = Volume(labels, Geometry((6, 6, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    pred = Volume(labels, Geometry((6, 6, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))
    with pytest.raises(InputError, match=r"different voxel grids \(spacing"):
        evaluate_case(pred, gt)


def test_default_tolerances_and_volumes():
    assert default_tolerances_mm(FLARE22) == {
        1: 5, 2: 3, 3: 3, 4: 5, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 5, 12: 7, 13: 3
    }  # fmt: skip
    assert default_tolerances_mm(LabelSet(((1, "liver"), (2, "tumour"))), fallback_mm=1.5) == {1: 5.0, 2: 1.5}
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5, :4, :2] = 1  # 40 voxels of 2 mm^3
    labels[9, 9, 9] = 13
    volumes = organ_volumes_ml(Volume(labels, Geometry((10, 10, 10), (1.0, 1.0, 2.0), (0, 0, 0))), FLARE22)
    assert volumes[1] == pytest.approx(0.08) and volumes[13] == pytest.approx(0.002) and volumes[2] == 0.0
