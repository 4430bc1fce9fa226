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
