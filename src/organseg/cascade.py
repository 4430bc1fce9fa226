"""Coarse to fine: the two-stage predictor.

read -> canonical orientation -> clip to the window -> stage 1 on the whole volume (coarse
grid) -> organs' bounding box + margin (whole volume if stage 1 finds nothing) -> stage 2
on the region (fine grid) -> the winning class of the logits brought back to the region ->
largest component per organ -> pasted into the input's own axis order: a label map on the
input's exact grid.

Built for a full-size CT on a CPU: no float copy of the whole volume is made (a stage's
input is z-scored on its grid: organseg.preprocess.stage_input), only the class that wins at each voxel is
brought back to full resolution (`resampled_argmax`), and clean-up and pasting touch only
the box. `Segmenter.clock` records the seconds spent in each phase.

A stage is any `Predictor`: a callable from a `StageInput` to logits, NumPy in and out.
The engines are two: PyTorch on a run's checkpoints (organseg.network_stage) and ONNX
Runtime on an exported model (organseg.onnx_stage); organseg.open_model picks one for a
folder. This module never imports torch, so both engines share every step around the
networks. Tests plug in ground-truth oracles to check every index and affine of the path
without training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from organseg.config import Config
from organseg.io import Volume
from organseg.labels import LabelSet
from organseg.phases import PhaseClock
from organseg.postprocess import keep_largest_component
from organseg.preprocess.body import body_box, width_from
from organseg.preprocess.crop import Box, bounding_box, grid_box_to_volume, grow_box, paste
from organseg.preprocess.orientation import AxisTransform, canonical_transform
from organseg.preprocess.resample import resample_image, resample_labels, resampled_argmax
from organseg.preprocess.stage_input import ScanView, stage_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageInput:
    """What a stage is asked to segment."""

    image: np.ndarray  # (1, 1, G...) float32, normalised CT on the stage's grid
    box: Box  # the region of the canonical volume it shows
    volume_shape: tuple[int, int, int]  # the canonical volume's shape


Predictor = Callable[[StageInput], np.ndarray]  # -> float32 logits (1, C, G...)

# The logit of a class that must not win: finite, since interpolating logits multiplies
# them by weights that may be 0 (and 0 * -inf is NaN); its probability is still 0.
NEVER_LOGIT = -1e9
# The second, looser box of the crop-agreement score: this much more margin on every face.
LOOSE_BOX_MM = 10.0


@dataclass(frozen=True)
class Segmentation:
    """A label map and, when asked for, the model's own evidence about it.

    evidence (each in [0, 1], higher is more trustworthy):
      confidence       mean top softmax probability of stage 2 over the voxels it calls organ;
      stage_agreement  Dice between stage 1's organs and the final organs, on stage 1's grid;
      crop_agreement   Dice between stage 2's labels in its box and in a box LOOSE_BOX_MM larger.
    """

    labels: Volume
    evidence: dict[str, float]
    # With evidence: stage 2's top softmax probability per voxel (float16, the labels' grid).
    confidence: np.ndarray | None = None


class Segmenter:
    """Two stages and the settings that join them; `predict` maps a CT Volume to its label Volume."""

    def __init__(
        self,
        stage1: Predictor,
        stage2: Predictor,
        config: Config,
        label_set: LabelSet,
        unlearnt: tuple[int, ...] = (),
        device: str = "cpu",
        engine: str = "pytorch",
    ):
        self.stage1 = stage1
        self.stage2 = stage2
        self.config = config
        self.label_set = label_set
        # Classes no training case annotated (partial labels): their outputs were never taught, so
        # they are merged into background rather than predicted from nothing.
        self.unlearnt = tuple(unlearnt)
        self.device = device  # where the stages run ("cpu", "cuda:0"), for profiling
        self.engine = engine  # what runs them ("pytorch", "onnxruntime"), for profiling
        self.clock = PhaseClock()  # seconds spent in each phase, for profiling

    def predict(self, image: Volume) -> Volume:
        """The label map of `image` on exactly its grid (shape, spacing, origin, direction)."""
        return self.segment(image).labels

    def segment(self, image: Volume, evidence: bool = False) -> Segmentation:
        """`predict`, and with `evidence` the scores that say how far to trust the result (see `Segmentation`)."""
        with self.clock.phase("normalise"):
            transform = canonical_transform(image.geometry)
            geometry = transform.apply_geometry(image.geometry)
            ct = ScanView.of(image.array, transform, self.config.window_hu)
        grid1_image, coarse = self.coarse_labels(ct)
        with self.clock.phase("locate"):
            box = self.box_from_coarse(coarse, ct.shape, geometry.spacing_mm)
            if self.config.crop.width == "body":
                box = width_from(box, body_box(grid1_image, ct.mean, ct.std, ct.window_hu, ct.shape, box))
        logits = self.region_logits(ct, box)
        region = self.logits_to_region(logits, box)
        with self.clock.phase("clean_up"):
            # Outside the box every voxel is background, so the region holds every component.
            if self.config.largest_component:
                region = keep_largest_component(region)
        with self.clock.phase("restore_orientation"):
            result = Volume(_paste_in_input_order(region, box, transform, image.array.shape), image.geometry)
        if not evidence:
            return Segmentation(result, {})
        labels = paste(region, box, ct.shape)
        scores = self._evidence(ct, geometry.spacing_mm, coarse, box, logits, labels)
        # Stage 2's top probability at every voxel; outside its box stage 1 found no organ.
        top = softmax(logits, axis=0).max(axis=0)
        top_region = resample_image(top[None], box.shape, shrink="nearest")[0].astype(np.float16)
        top_volume = paste(top_region, box, ct.shape, fill=1.0)
        return Segmentation(result, scores, np.ascontiguousarray(transform.inverse().apply(top_volume)))

    def coarse_labels(self, ct: ScanView) -> tuple[np.ndarray, np.ndarray]:
        """The whole canonical volume on stage 1's grid as it sees it (1, G1...), and its label map there."""
        whole = Box.whole(ct.shape)
        with self.clock.phase("resample_1"):
            request = StageInput(stage_input(ct, whole, self.config.stage1.grid)[None], whole, ct.shape)
        with self.clock.phase("stage_1"):
            logits = self.stage1(request)[0]
            if self.config.stage1_target != "foreground":
                logits = merge_unlearnt(logits, self.unlearnt)
            return request.image[0], logits.argmax(0).astype(np.uint8)

    def box_from_coarse(
        self, coarse: np.ndarray, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]
    ) -> Box:
        """The box of stage 1's largest organ blob on the volume, grown by the margin; the whole volume if none."""
        box = organ_box_from_coarse(coarse, shape)
        if box is None:
            log.warning("stage 1 found no organ; stage 2 segments the whole volume")
            return Box.whole(shape)
        margins = np.full((2, 3), self.config.crop.margin_mm)
        return grow_box(box, spacing_mm, margins, np.zeros(3), shape)

    def segment_region(self, ct: ScanView, box: Box) -> np.ndarray:
        """Stage 2 on `box`: labels (uint8/uint16) on the region's own voxels."""
        return self.logits_to_region(self.region_logits(ct, box), box)

    def region_logits(self, ct: ScanView, box: Box) -> np.ndarray:
        """Stage 2's logits (C, G2...) for the region `box` of the canonical volume."""
        with self.clock.phase("resample_2"):
            request = StageInput(stage_input(ct, box, self.config.stage2.grid)[None], box, ct.shape)
        with self.clock.phase("stage_2"):
            return merge_unlearnt(self.stage2(request)[0], self.unlearnt)

    def logits_to_region(self, logits: np.ndarray, box: Box) -> np.ndarray:
        """Stage 2's logits taken back to the region's voxels and turned into labels."""
        # Linear where the region has more voxels than the grid; where it has fewer, the
        # logits at each voxel's centre, so a grid finer than the image loses nothing.
        # Only the winning class is kept, computed without full-resolution logits.
        with self.clock.phase("resample_back"):
            return resampled_argmax(logits, box.shape)

    def _evidence(
        self,
        ct: ScanView,
        spacing_mm: tuple[float, float, float],
        coarse: np.ndarray,
        box: Box,
        logits: np.ndarray,
        labels: np.ndarray,
    ) -> dict[str, float]:
        """Three views of how sure the model is; each in [0, 1], 1 the most trustworthy."""
        from organseg.metrics import mean_dice  # with scipy, which plain prediction never imports (start-up time)

        probabilities = softmax(logits, axis=0)
        confidence, organs = probabilities.max(axis=0), probabilities.argmax(axis=0) > 0
        # Stage 1 and stage 2 are separate networks: where both see the same organs, they agree.
        final_on_grid1 = resample_labels(labels, coarse.shape, "nearest")
        if self.config.stage1_target == "foreground" or coarse.max() <= 1:
            stage_agreement = mean_dice((final_on_grid1 > 0).astype(np.uint8), (coarse > 0).astype(np.uint8))
        else:
            stage_agreement = mean_dice(final_on_grid1, coarse)
        # Stage 2 was trained on loose and tight boxes; a looser box should not change its answer.
        loose = grow_box(box, spacing_mm, np.full((2, 3), LOOSE_BOX_MM), np.zeros(3), ct.shape)
        in_loose = self.segment_region(ct, loose)
        offset = tuple(slice(a - b, a - b + n) for a, b, n in zip(box.start, loose.start, box.shape))
        crop_agreement = mean_dice(self.logits_to_region(logits, box), in_loose[offset])
        return {
            "confidence": float(confidence[organs].mean()) if organs.any() else 0.0,
            "stage_agreement": stage_agreement,
            "crop_agreement": crop_agreement,
        }


def organ_box_from_coarse(coarse: np.ndarray, shape: tuple[int, int, int]) -> Box | None:
    """The volume's box (no margin) of stage 1's largest organ blob on its grid; None if it found none."""
    largest = keep_largest_component(coarse)  # a stray blob must not stretch the box
    if not largest.any():
        return None
    return grid_box_to_volume(bounding_box(largest > 0, spacing_mm=(1.0, 1.0, 1.0)), coarse.shape, shape)


def merge_unlearnt(logits: np.ndarray, unlearnt: tuple[int, ...]) -> np.ndarray:
    """Logits (C, ...) in which the classes `unlearnt` count as background: their probability joins it."""
    if not unlearnt:
        return logits
    merged = np.array(logits, dtype=np.float32)
    merged[0] = logsumexp(merged[[0, *unlearnt]], axis=0)
    merged[list(unlearnt)] = NEVER_LOGIT
    return merged


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Probabilities from logits along `axis`, float32."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True), dtype=np.float32)
    return shifted / shifted.sum(axis=axis, keepdims=True)


def logsumexp(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """log(sum(exp(values))) along `axis`, without overflow."""
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _paste_in_input_order(
    region: np.ndarray, box: Box, transform: AxisTransform, shape: tuple[int, int, int]
) -> np.ndarray:
    """The full label map in the input's own axis order: `region` at `box` of the canonical volume.

    Written through a canonical view of the output, so only the box's voxels are copied.
    In Fortran order, as images are read and written (organseg.io): writing it then makes
    no transposed copy of the whole volume.
    """
    labels = np.zeros(shape, region.dtype, order="F")
    transform.apply(labels)[box.slices] = region
    return labels
