"""Pictures for people: label overlays on CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organseg.atomic import atomic_write
from organseg.io import Volume
from organseg.labels import FLARE22, PALETTE, LabelSet
from organseg.preprocess.crop import bounding_box
from organseg.preprocess.orientation import canonical_transform

# Soft-tissue CT window (HU): abdominal organs are told apart inside it.
DISPLAY_WINDOW_HU = (-160.0, 240.0)
OVERLAY_ALPHA = 0.45


def save_overlay_png(
    image: Volume, labels: Volume | None, path: Path, label_set: LabelSet = FLARE22, title: str | None = None
) -> None:
    """Draw axial, coronal and sagittal planes through the labeled organs' centre, written atomically as PNG.

    Planes are shown in radiological convention whatever the header orientation: the
    patient's right on the image's left, anterior up in the axial plane, superior up in
    the others, with the physical aspect ratio of the voxels.

    Args:
        image: CT volume in HU.
        labels: label map on the same grid as `image`, or None for the CT alone.
        path: PNG file to write; its folder must exist.
        label_set: names of the label ids for the legend.
        title: text above the pictures.
    """
    from matplotlib.figure import Figure

    if labels is not None and labels.geometry.shape != image.geometry.shape:
        raise ValueError(f"label map shape {labels.geometry.shape} does not match image shape {image.geometry.shape}")
    transform = canonical_transform(image.geometry)
    ct = transform.apply(image.array)
    label_map = transform.apply(labels.array) if labels is not None else np.zeros(ct.shape, np.uint8)
    spacing = transform.apply_geometry(image.geometry).spacing_mm
    centre = _centre(label_map)
    panels = _planes(ct, label_map, spacing, centre)
    widths = [panel[3] for panel in panels]
    figure = Figure(figsize=(12, 12 * max(panel[4] for panel in panels) / sum(widths) + 1.4), dpi=120)
    grid = figure.add_gridspec(1, 3, width_ratios=widths, left=0.01, right=0.99, top=0.9, bottom=0.14, wspace=0.04)
    for column, (name, ct_plane, label_plane, width_mm, height_mm, marks) in enumerate(panels):
        axes = figure.add_subplot(grid[0, column])
        axes.imshow(
            ct_plane,
            cmap="gray",
            vmin=DISPLAY_WINDOW_HU[0],
            vmax=DISPLAY_WINDOW_HU[1],
            extent=(0, width_mm, height_mm, 0),
        )
        axes.imshow(_colour(label_plane), extent=(0, width_mm, height_mm, 0), interpolation="nearest")
        axes.set_title(name, fontsize=11)
        axes.set_axis_off()
        for text, (u, v) in zip(marks, ((0.02, 0.5), (0.98, 0.5), (0.5, 0.98), (0.5, 0.02))):
            axes.text(u, v, text, transform=axes.transAxes, color="yellow", ha="center", va="center", fontsize=10)
    _legend(figure, [panel[2] for panel in panels], label_set)
    if title:
        figure.suptitle(title, fontsize=12)
    with atomic_write(path) as temporary:
        figure.savefig(temporary, format="png")


def _centre(label_map: np.ndarray) -> tuple[int, int, int]:
    """Voxel index at the centre of the labeled organs' bounding box, or of the volume when there are none.

    The box centre rather than the centroid: the large liver would pull the centroid away
    from the kidneys and the pancreas.
    """
    box = bounding_box(label_map > 0, spacing_mm=(1.0, 1.0, 1.0))
    if box is None:
        return tuple(n // 2 for n in label_map.shape)
    return tuple((start + stop - 1) // 2 for start, stop in zip(box.start, box.stop))


def _planes(ct: np.ndarray, label_map: np.ndarray, spacing, centre):
    """(name, CT, labels, width mm, height mm, side marks) per view; arrays are canonical [L, P, S]."""
    i, j, k = centre
    n = ct.shape
    # Rows run down the picture: posterior (j) in the axial view, inferior (-k) in the others.
    return [
        ("axial", ct[:, :, k].T, label_map[:, :, k].T, n[0] * spacing[0], n[1] * spacing[1], "RLAP"),
        ("coronal", ct[:, j, ::-1].T, label_map[:, j, ::-1].T, n[0] * spacing[0], n[2] * spacing[2], "RLSI"),
        ("sagittal", ct[i, :, ::-1].T, label_map[i, :, ::-1].T, n[1] * spacing[1], n[2] * spacing[2], "APSI"),
    ]


def _colour(label_plane: np.ndarray) -> np.ndarray:
    """RGBA picture of a label plane: palette colours, transparent background."""
    from matplotlib.colors import to_rgba

    table = np.array([(0, 0, 0, 0)] + [to_rgba(c, OVERLAY_ALPHA) for c in PALETTE])
    ids = np.where(label_plane > 0, (label_plane.astype(np.int64) - 1) % len(PALETTE) + 1, 0)
    return table[ids]


def _legend(figure, label_planes: list[np.ndarray], label_set: LabelSet) -> None:
    """A legend of the organs that appear in the drawn planes."""
    from matplotlib.patches import Patch

    present = sorted({int(v) for plane in label_planes for v in np.unique(plane) if v > 0})
    handles = [Patch(color=PALETTE[(v - 1) % len(PALETTE)], label=_name(label_set, v)) for v in present]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=9, frameon=False)


def _name(label_set: LabelSet, label: int) -> str:
    try:
        return label_set.name(label)
    except KeyError:
        return f"label {label}"


def save_training_curve(rows: list[dict], path: Path, title: str | None = None) -> None:
    """Training loss and validation Dice per epoch, from the rows of a stage's log.jsonl; atomic PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    loss_axes = figure.add_subplot(1, 1, 1)
    epochs = [row["epoch"] for row in rows]
    loss_axes.plot(epochs, [row["loss"] for row in rows], color="#4363d8", label="training loss (Dice + CE)")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    validated = [row for row in rows if "val_dice" in row]
    if validated:
        dice_axes = loss_axes.twinx()
        dice_axes.plot([r["epoch"] for r in validated], [r["val_dice"] for r in validated], "o-", color="#e6194b")
        dice_axes.set_ylabel("validation Dice", color="#e6194b")
        dice_axes.set_ylim(0, 1)
    if title:
        loss_axes.set_title(title)
    figure.tight_layout()
    with atomic_write(path) as temporary:
        figure.savefig(temporary, format="png")


def save_comparison_png(
    image: Volume,
    prediction: Volume,
    ground_truth: Volume,
    path: Path,
    label_set: LabelSet = FLARE22,
    title: str | None = None,
) -> None:
    """Prediction (top row) and ground truth (bottom row) on the same three planes of the CT; atomic PNG.

    The planes pass through the centre of both label maps together, so a missed or extra
    organ shows in the same picture as its counterpart. Conventions as `save_overlay_png`.
    """
    from matplotlib.figure import Figure

    for name, labels in (("prediction", prediction), ("ground truth", ground_truth)):
        if labels.geometry.shape != image.geometry.shape:
            raise ValueError(f"{name} shape {labels.geometry.shape} does not match image shape {image.geometry.shape}")
    transform = canonical_transform(image.geometry)
    ct = transform.apply(image.array)
    maps = [transform.apply(prediction.array), transform.apply(ground_truth.array)]
    spacing = transform.apply_geometry(image.geometry).spacing_mm
    centre = _centre(((maps[0] > 0) | (maps[1] > 0)).astype(np.uint8))
    rows = [_planes(ct, label_map, spacing, centre) for label_map in maps]
    widths = [panel[3] for panel in rows[0]]
    height = max(panel[4] for panel in rows[0])
    figure = Figure(figsize=(12, 2 * 12 * height / sum(widths) + 1.8), dpi=120)
    grid = figure.add_gridspec(2, 3, width_ratios=widths, left=0.05, right=0.99, top=0.92, bottom=0.1, wspace=0.04)
    for row, (row_name, panels) in enumerate(zip(("prediction", "ground truth"), rows)):
        for column, (name, ct_plane, label_plane, width_mm, height_mm, marks) in enumerate(panels):
            axes = figure.add_subplot(grid[row, column])
            extent = (0, width_mm, height_mm, 0)
            axes.imshow(ct_plane, cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1], extent=extent)
            axes.imshow(_colour(label_plane), extent=extent, interpolation="nearest")
            for text, (u, v) in zip(marks, ((0.02, 0.5), (0.98, 0.5), (0.5, 0.98), (0.5, 0.02))):
                axes.text(u, v, text, transform=axes.transAxes, color="yellow", ha="center", va="center", fontsize=10)
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(name, fontsize=11)
            if column == 0:
                axes.set_ylabel(row_name, fontsize=11)
    _legend(figure, [panel[2] for panels in rows for panel in panels], label_set)
    if title:
        figure.suptitle(title, fontsize=12)
    with atomic_write(path) as temporary:
        figure.savefig(temporary, format="png")
