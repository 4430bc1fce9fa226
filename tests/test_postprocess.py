"""Connected-component clean-up on hand-made volumes: two blobs, holes, organs touching."""

from __future__ import annotations

import numpy as np

from organseg.postprocess import fill_holes, keep_largest_component, remove_small_components


def _two_blobs() -> np.ndarray:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # 512 voxels
    labels[14:17, 14:17, 14:17] = 1  # 27 voxels, a separate piece of the same organ
    labels[12:14, 2:4, 2:4] = 2  # 8 voxels, another organ
    return labels


def test_largest_component_keeps_the_big_blob_and_other_organs() -> None:
    labels = _two_blobs()
    cleaned = keep_largest_component(labels)
    assert (cleaned == 1).sum() == 512 and (cleaned[14:17, 14:17, 14:17] == 0).all()
    assert (cleaned == 2).sum() == 8
    assert cleaned.dtype == labels.dtype


def test_largest_component_only_for_chosen_labels() -> None:
    labels = _two_blobs()
    labels[18, 18, 18] = 2  # a second piece of organ 2
    cleaned = keep_largest_component(labels, label_ids=[2])
    assert (cleaned == 1).sum() == 512 + 27
    assert cleaned[18, 18, 18] == 0 and (cleaned == 2).sum() == 8


def test_touching_organs_are_separate_components() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:9, 1:9] = 1
    labels[5:9, 1:9, 1:9] = 2  # touches organ 1 face to face: both stay whole
    assert np.array_equal(keep_largest_component(labels), labels)
    island = labels.copy()
    island[7:9, 6:8, 6:8] = 1  # a piece of organ 1 enclosed by organ 2, not touching organ 1
    cleaned = keep_largest_component(island)
    assert (cleaned[7:9, 6:8, 6:8] == 0).all()
    assert (cleaned == 1).sum() == (labels == 1).sum() and (cleaned == 2).sum() == (labels == 2).sum() - 8


def test_diagonal_neighbours_are_connected() -> None:
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1, 1, 1] = labels[2, 2, 2] = labels[4, 4, 4] = 3
    cleaned = keep_largest_component(labels)
    assert cleaned[1, 1, 1] == cleaned[2, 2, 2] == 3 and cleaned[4, 4, 4] == 0


def test_small_components_removed_by_volume_in_ml() -> None:
    labels = _two_blobs()
    # 2 mm isotropic voxels: 8 ml per 1000 voxels; the 27-voxel piece is 0.216 ml, organ 2 is 0.064 ml
    cleaned = remove_small_components(labels, spacing_mm=(2.0, 2.0, 2.0), min_ml=0.1)
    assert (cleaned == 1).sum() == 512 + 27 and (cleaned == 2).sum() == 0
    cleaned = remove_small_components(labels, spacing_mm=(2.0, 2.0, 2.0), min_ml=0.5)
    assert (cleaned == 1).sum() == 512


def test_holes_filled_but_enclosed_organs_kept() -> None:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:11, 1:11, 1:11] = 1
    labels[4:6, 4:6, 4:6] = 0  # a cavity: filled
    labels[7:9, 7:9, 7:9] = 6  # a vessel inside the liver: kept
    filled = fill_holes(labels)
    assert (filled[4:6, 4:6, 4:6] == 1).all()
    assert (filled[7:9, 7:9, 7:9] == 6).all()
    opened = labels.copy()
    opened[0:6, 4:6, 4:6] = 0  # a channel from the outside makes the cavity a notch, not a hole
    assert (fill_holes(opened)[0:6, 4:6, 4:6] == 0).all()


def _largest_per_label(labels: np.ndarray) -> np.ndarray:
    """An independent reference: scipy's labelling organ by organ over the whole volume."""
    from scipy import ndimage

    result = np.zeros_like(labels)
    for label in np.unique(labels[labels > 0]):
        pieces, count = ndimage.label(labels == label, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(pieces.ravel())[1:]
        result[pieces == 1 + int(np.argmax(sizes))] = label
    return result


def test_clean_up_of_organs_anywhere_in_the_volume_matches_organ_by_organ_labelling() -> None:
    # Only the box around the organs is labelled: organs touching any face, scattered
    # specks and an empty volume must give what labelling the whole volume gives.
    rng = np.random.default_rng(7)
    for trial in range(20):
        shape = tuple(int(n) for n in rng.integers(4, 24, size=3))
        labels = np.zeros(shape, np.uint8)
        for _ in range(int(rng.integers(0, 12))):
            start = [int(rng.integers(0, n)) for n in shape]
            size = [int(rng.integers(1, 6)) for _ in shape]
            labels[tuple(slice(s, s + k) for s, k in zip(start, size))] = rng.integers(1, 5)
        if trial % 3 == 0:
            labels = labels.transpose(2, 0, 1)  # not C-ordered, as the predictor's regions are
        # Ties between equal pieces differ between the two labellings, so compare kept voxel counts too.
        cleaned, reference = keep_largest_component(labels), _largest_per_label(labels)
        for label in range(1, 5):
            assert (cleaned == label).sum() == (reference == label).sum()
        assert cleaned.dtype == labels.dtype and cleaned.shape == labels.shape
        assert ((cleaned == labels) | (cleaned == 0)).all()
        assert np.array_equal(remove_small_components(labels, (1.0, 1.0, 1.0), 0.0), labels)
