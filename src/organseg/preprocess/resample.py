"""Resampling to a fixed grid size, in PyTorch so it runs fast on CPU and GPU.

Voxels are cells: resampling keeps the outer faces of the field of view
(`Geometry.resized` gives the new geometry), PyTorch's `align_corners=False` convention.

Resampling is separable: one small weight matrix per axis (`axis_weights`), applied with
three matrix products. Along an axis that shrinks, each output cell is the exact average
of the input cells it overlaps (so noise and thin structures average instead of
aliasing); along an axis that grows, weights are linear interpolation. On a 512x512x100
CT to 160^3 this takes ~0.15 s on 2 cores, less than trilinear interpolation after a
Gaussian low-pass (1.4-2.9 s per axis with PyTorch convolutions).

- Images: `resample_image`, the weights above.
- Labels, "nearest": each output voxel takes the label of the input voxel under its
  centre, in integer arithmetic. Up-sampling then down-sampling back returns the
  original labels exactly.
- Labels, "linear": each label's indicator is resampled like an image and each voxel
  takes the label with the highest value (one-hot resampling then argmax). When
  shrinking, this is an area-weighted majority vote over the cell, so one stray voxel
  under a cell's centre does not decide its label as it does with nearest picking.
  Every label is resampled inside its own bounding box only, which the separable form
  makes exact.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import torch
from scipy import ndimage

Shape3 = tuple[int, int, int]


def axis_weights(size_in: int, size_out: int, shrink: str = "area") -> np.ndarray:
    """(size_out, size_in) weights resampling one axis; every row sums to 1.

    shrink: how an axis that gets fewer voxels is sampled: "area" averages the input cells
    each output cell covers; "nearest" takes the input voxel under the output voxel's
    centre (the exact inverse of nearest up-sampling).
    """
    if size_out == size_in:
        return np.eye(size_in)
    if size_out < size_in and shrink == "nearest":
        weights = np.zeros((size_out, size_in))
        weights[np.arange(size_out), nearest_indices(size_in, size_out)] = 1.0
        return weights
    if size_out < size_in:
        edges = np.arange(size_out + 1) * (size_in / size_out)
        cells = np.arange(size_in)
        overlap = np.minimum(edges[1:, None], cells[None, :] + 1) - np.maximum(edges[:-1, None], cells[None, :])
        weights = np.clip(overlap, 0, None)
        return weights / weights.sum(axis=1, keepdims=True)
    lower, upper, fraction = _linear_neighbours(size_in, size_out)
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), lower), 1 - fraction)
    np.add.at(weights, (np.arange(size_out), upper), fraction)
    return weights


def _linear_neighbours(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output voxel of a growing axis: the input voxels either side of its centre and the upper's weight."""
    centres = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    lower = np.floor(centres).astype(np.int64)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, centres - lower


def resample_image(image: np.ndarray | torch.Tensor, shape: Shape3, shrink: str = "area") -> torch.Tensor:
    """Resample an image (X, Y, Z) or channels (C, X, Y, Z) to `shape`; returns float32.

    shrink: "area" (average, the default for images) or "nearest" along axes that shrink;
    see `axis_weights`.
    """
    if shrink not in ("area", "nearest"):
        raise ValueError(f"unknown shrink mode {shrink!r}; use 'area' or 'nearest'")
    tensor = _as_tensor(image).float()
    sizes = tuple(tensor.shape[-3:])
    if sizes == tuple(shape):
        return tensor
    matrices = [_weights_tensor(axis_weights(n_in, n_out, shrink), tensor) for n_in, n_out in zip(sizes, shape)]
    return _apply_separable(tensor, matrices)


def resampled_argmax(logits: torch.Tensor, shape: Shape3, chunk_voxels: int = 1 << 20) -> torch.Tensor:
    """The class with the highest logit at every voxel of `resample_image(logits, shape, "nearest")`.

    Without making that (C, *shape) float array: along each axis an output voxel reads at
    most two input voxels (linear weights when growing, the voxel under its centre when
    shrinking), so at most 8 in all. Where one class wins at all 8, it wins their convex
    combination too, and the answer is read off the input's own argmax; only the other
    voxels, along the borders between classes, are interpolated. Time then follows the
    borders rather than classes x voxels, and memory the slab of about `chunk_voxels`
    output voxels done at a time, however ragged the borders.

    Returns uint8 labels (int16 past 256 classes) of `shape`.
    """
    logits = logits.float()
    sizes = tuple(logits.shape[-3:])
    dtype = torch.uint8 if logits.shape[0] <= 256 else torch.int16
    neighbours = [_neighbours(n_in, n_out) for n_in, n_out in zip(sizes, shape)]
    winners = logits.argmax(0).to(dtype)
    agree = _winner_agrees(winners, [int((upper != lower).any()) for lower, upper, _ in neighbours])
    lowers = [torch.from_numpy(lower) for lower, _, _ in neighbours]
    labels = _take_grid(winners, lowers)
    by_voxel = logits.reshape(logits.shape[0], -1).T.contiguous()  # (voxels, C): one voxel's logits together
    rows = max(1, chunk_voxels // (shape[1] * shape[2]))
    for start in range(0, shape[0], rows):
        slab = torch.arange(start, min(start + rows, shape[0]))
        border = torch.nonzero(~_take_grid(agree, [lowers[0][slab], *lowers[1:]]))  # (N, 3) within the slab
        border[:, 0] += start
        winner = _interpolate_at(by_voxel, sizes, neighbours, border).argmax(1).to(dtype)
        labels[tuple(border.T)] = winner
    return labels


def _neighbours(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, upper's weight) per output voxel of one axis, as `axis_weights(..., "nearest")` reads them."""
    if size_out >= size_in and size_out != size_in:
        return _linear_neighbours(size_in, size_out)
    index = np.arange(size_in) if size_out == size_in else nearest_indices(size_in, size_out)
    return index, index, np.zeros(size_out)


def _winner_agrees(winners: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """True at (i, j, k) where the winner is the same at every (i + a, j + b, k + c), a, b, c in {0, step}."""
    agree = torch.ones(winners.shape, dtype=torch.bool)
    for offsets in np.ndindex(*(step + 1 for step in steps)):
        shifted = winners
        for axis, offset in enumerate(offsets):
            if offset:
                size = winners.shape[axis]
                shifted = shifted.index_select(axis, torch.clamp(torch.arange(size) + 1, max=size - 1))
        agree &= shifted == winners
    return agree


def _take_grid(values: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
    """values[indices[0]][:, indices[1]][:, :, indices[2]]."""
    for axis, index in enumerate(indices):
        values = values.index_select(axis, index)
    return values


def _interpolate_at(
    by_voxel: torch.Tensor, sizes: Shape3, neighbours: list[tuple[np.ndarray, ...]], voxels: torch.Tensor
) -> torch.Tensor:
    """(N, C) logits at output voxels `voxels` (N, 3): the trilinear sum over their 8 input neighbours."""
    total = torch.zeros(len(voxels), by_voxel.shape[1])
    parts = []
    for axis, (lower, upper, fraction) in enumerate(neighbours):
        at = voxels[:, axis].numpy()
        weight = torch.from_numpy(fraction[at]).float()
        parts.append(((torch.from_numpy(lower[at]), 1 - weight), (torch.from_numpy(upper[at]), weight)))
    for (i, wi), (j, wj), (k, wk) in itertools.product(*parts):
        total += by_voxel[(i * sizes[1] + j) * sizes[2] + k] * (wi * wj * wk)[:, None]
    return total


def resample_labels(labels: np.ndarray | torch.Tensor, shape: Shape3, method: str = "nearest") -> torch.Tensor:
    """Resample a label map (X, Y, Z) to `shape` without inventing label values."""
    tensor = _as_tensor(labels)
    if tensor.dtype.is_floating_point:
        raise ValueError("resample_labels takes an integer label map")
    if method == "nearest":
        return _nearest(tensor, shape)
    if method == "linear":
        return _linear_argmax(tensor, shape)
    raise ValueError(f"unknown label resampling method {method!r}; use 'nearest' or 'linear'")


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Input index under the centre of each output voxel: floor((o + 1/2) * in / out), exactly."""
    out = np.arange(size_out, dtype=np.int64)
    return ((2 * out + 1) * size_in) // (2 * size_out)


def _nearest(labels: torch.Tensor, shape: Shape3) -> torch.Tensor:
    result = labels
    for axis, size_out in enumerate(shape):
        size_in = labels.shape[axis]
        if size_in != size_out:
            index = torch.from_numpy(nearest_indices(size_in, size_out)).to(labels.device)
            result = result.index_select(axis, index)
    return result


def _linear_argmax(labels: torch.Tensor, shape: Shape3) -> torch.Tensor:
    """One-hot resampling and argmax, each label inside its own bounding box.

    Background is never resampled: since every row of the weights sums to one, its
    score is one minus the sum of the foreground scores.
    """
    weights = [axis_weights(n_in, n_out) for n_in, n_out in zip(labels.shape, shape)]
    best_score = torch.zeros(shape, device=labels.device)
    best_label = torch.zeros(shape, dtype=labels.dtype, device=labels.device)
    foreground_sum = torch.zeros(shape, device=labels.device)
    # One pass over the volume finds every label's bounding box.
    boxes = ndimage.find_objects(labels.cpu().numpy().astype(np.int64, copy=False))
    for index, box_in in enumerate(boxes):
        if box_in is None:
            continue
        label = index + 1
        rows = [_nonzero_range(w[:, box.start : box.stop].sum(axis=1) > 0) for w, box in zip(weights, box_in)]
        box_out = tuple(slice(lo, hi) for lo, hi in rows)
        sub_weights = [_weights_tensor(w[o, i], foreground_sum) for w, o, i in zip(weights, box_out, box_in)]
        score = _apply_separable((labels[box_in] == label).float(), sub_weights)
        foreground_sum[box_out] += score
        better = score > best_score[box_out]
        best_score[box_out] = torch.where(better, score, best_score[box_out])
        best_label[box_out][better] = label
    best_label[(1 - foreground_sum) >= best_score] = 0
    return best_label


def _nonzero_range(flags: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) index of the True entries of a 1D array."""
    where = np.flatnonzero(flags)
    return int(where[0]), int(where[-1]) + 1


def _apply_separable(tensor: torch.Tensor, matrices: list[torch.Tensor]) -> torch.Tensor:
    """Apply one (out, in) matrix to each of the last three axes of `tensor`."""
    lead = tensor.ndim - 3
    # The last axis first: it is contiguous in memory, so its product needs no transposed
    # copy of a full-size input; then the axis that shrinks most, so the last runs on fewest.
    order = [2, *sorted((0, 1), key=lambda axis: matrices[axis].shape[0] / matrices[axis].shape[1])]
    for axis in order:
        matrix = matrices[axis]
        position = lead + axis
        # tensordot puts the new axis last; move it back to where the old one was.
        tensor = torch.tensordot(tensor, matrix, dims=([position], [1])).movedim(-1, position)
    return tensor.contiguous()


def _weights_tensor(weights: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(weights, dtype=torch.float32, device=like.device)


def _as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    if array.dtype == np.uint16:
        array = array.astype(np.int32)  # torch has no uint16 arithmetic on all versions
    with warnings.catch_warnings():
        # Read-only inputs (memory maps, image views) are only ever read here: no copy needed.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))
