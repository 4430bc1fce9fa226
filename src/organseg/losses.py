"""Training loss: soft Dice + cross-entropy.

`dice_ce_loss` follows nnU-Net: per sample, cross-entropy averaged over voxels plus one minus
the mean soft Dice over the foreground classes (background is left out: it is most of the
volume and its Dice would be close to 1 whatever the net does). Per-sample weights let
pseudo-labeled samples count less than labeled ones; optional class weights in the
cross-entropy (`class_weights`) let small organs be learnt within few steps.

The soft Dice never builds a one-hot target: for 14 classes at 160^3 and batch 2 that alone
would take 460 MB. Intersections are summed with `scatter_add` on the true-class probability.

Partially annotated samples (`unannotated`, per sample the classes its label map does not
mark) get the marginal loss: a voxel marked background may really be any unannotated
organ, so its cross-entropy is -log of background's probability plus theirs, and the
unannotated classes leave the Dice mean (their true voxels are unknown). Such a voxel is
then never pushed away from an organ the case does not annotate; a fully annotated sample
gets exactly the loss above.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from organseg.labels import IGNORE_LABEL


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
    smooth: float = 1e-5,
    class_balance: float = 0.0,
    unannotated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Dice loss + cross-entropy, a scalar: the weighted mean over samples.

    Args:
        logits: (B, C, X, Y, Z) raw network outputs, any float dtype (computed in float32).
        target: (B, X, Y, Z) int64 class indices in 0..C-1, or IGNORE_LABEL where unknown.
        sample_weights: (B,) non-negative float weights, None for all 1. The batch loss is
            sum(w_b * loss_b) / sum(w_b), so a weight 0 removes a sample exactly.
        smooth: added to numerator and denominator of each Dice, so a class absent from
            both target and prediction scores 1.
        class_balance: exponent of the cross-entropy's class weights (see `class_weights`);
            0 weighs every voxel alike.
        unannotated: (B, C) bool, True for the classes sample b's labels do not annotate
            (column 0, background, is ignored); None when every sample annotates every class.

    Per sample b: loss_b = mean voxel cross-entropy + 1 - mean over classes 1..C-1 of
    (2 * intersection + smooth) / (sum of probabilities + target voxels + smooth).
    """
    per_sample = dice_ce_per_sample(logits, target, smooth, class_balance, unannotated)
    if sample_weights is None:
        return per_sample.mean()
    if sample_weights.shape != per_sample.shape:
        raise ValueError(f"sample_weights must have shape ({per_sample.shape[0]},), got {tuple(sample_weights.shape)}")
    # Checked where the weights are given (the CPU in training), not on the device: no step waits for it.
    if bool((sample_weights < 0).any()) or not bool(sample_weights.sum() > 0):
        raise ValueError(f"sample_weights must be >= 0 with a positive sum, got {sample_weights.tolist()}")
    weights = sample_weights.to(device=per_sample.device, dtype=per_sample.dtype)
    return (weights * per_sample).sum() / weights.sum()


def deep_supervision_loss(
    logits: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
    class_balance: float = 0.0,
    unannotated: torch.Tensor | None = None,
) -> torch.Tensor:
    """`dice_ce_loss` of a net's output, or of every level of a deeply supervised one.

    Args:
        logits: one (B, C, X, Y, Z) tensor, or a sequence of them with sizes halved from
            one to the next (organseg.nets.unet3d with deep supervision, finest first).
        target: (B, X, Y, Z) at the finest size; level k is compared with every 2**k-th
            voxel of it (nearest neighbour, so no label value is invented and unknown voxels
            stay unknown).

    Level k weighs 2 ** -k, the weights normalised to sum 1 (as nnU-Net): the full-size
    output stays what the net is mostly trained for.
    """
    if isinstance(logits, torch.Tensor):
        return dice_ce_loss(logits, target, sample_weights, class_balance=class_balance, unannotated=unannotated)
    total = 0.0
    for level, level_logits in enumerate(logits):
        step = 2**level  # also the inverse of the level's weight
        level_target = target[:, ::step, ::step, ::step]
        level_loss = dice_ce_loss(
            level_logits, level_target, sample_weights, class_balance=class_balance, unannotated=unannotated
        )
        total = total + level_loss / step
    return total / sum(2.0**-level for level in range(len(logits)))


def dice_ce_per_sample(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1e-5,
    class_balance: float = 0.0,
    unannotated: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) per-sample loss: voxel-mean cross-entropy + 1 - mean foreground soft Dice (see `dice_ce_loss`)."""
    _check_shapes(logits, target)
    partial = unannotated is not None and bool(unannotated[:, 1:].any())
    # bf16 softmax sums and logs lose too much precision over millions of voxels.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        if partial:
            voxel_loss = _marginal_cross_entropy(logits, target, unannotated.to(logits.device)).flatten(1)
        else:
            voxel_loss = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE_LABEL).flatten(1)
        voxel_weight = (target != IGNORE_LABEL).flatten(1).float()
        if class_balance:
            voxel_weight = voxel_weight * class_weights(target, logits.shape[1], class_balance).flatten(1)
        cross_entropy = (voxel_loss * voxel_weight).sum(dim=1) / voxel_weight.sum(dim=1).clamp(min=1e-12)
        dice = soft_dice_per_class(logits, target, smooth)
        if not partial:
            dice_loss = 1 - dice.mean(dim=1) if dice.shape[1] else torch.zeros_like(cross_entropy)
            return cross_entropy + dice_loss
        # Only the classes a sample annotates enter its Dice mean; none annotated, no Dice term.
        counted = (~unannotated[:, 1:]).to(device=dice.device, dtype=dice.dtype)
        dice_loss = (counted * (1 - dice)).sum(dim=1) / counted.sum(dim=1).clamp(min=1)
        return cross_entropy + dice_loss


def _marginal_cross_entropy(logits: torch.Tensor, target: torch.Tensor, unannotated: torch.Tensor) -> torch.Tensor:
    """(B, X, Y, Z) cross-entropy in which a voxel marked background may be any class the sample leaves unannotated.

    Its loss is -log(p_background + sum of the unannotated classes' p); other voxels keep
    -log p_target; unknown voxels (IGNORE_LABEL) get 0.
    """
    log_probabilities = F.log_softmax(logits, dim=1)
    could_be = unannotated.clone()
    could_be[:, 0] = True
    shape = (*could_be.shape, *([1] * (logits.ndim - 2)))
    background = torch.logsumexp(log_probabilities.masked_fill(~could_be.reshape(shape), float("-inf")), dim=1)
    counted = target != IGNORE_LABEL
    own = log_probabilities.gather(1, (target * counted).unsqueeze(1)).squeeze(1)
    return -torch.where(target == 0, background, own) * counted


# A class's cross-entropy weight never exceeds this many times the background's: a few
# voxels of a tiny organ must not outweigh the rest of the volume.
MAX_CLASS_WEIGHT = 30.0


def class_weights(target: torch.Tensor, num_classes: int, power: float) -> torch.Tensor:
    """(B, X, Y, Z) float: each voxel's cross-entropy weight, (f_background / f_class) ** power.

    f is a class's share of the sample's counted voxels. Why: a small organ is a tiny share
    of the voxels, so plain cross-entropy pushes its logit down everywhere before the net
    can tell where it is; its softmax probability then sits near 0, where the soft Dice's
    gradient vanishes too, and the organ appears only after hundreds of steps (or never:
    benchmarks/RESULTS.md). Up-weighting it by its rarity (capped at MAX_CLASS_WEIGHT)
    keeps a gradient on it from the start. Unknown voxels get weight 0.
    """
    batch = target.shape[0]
    labels = target.flatten(1).long()
    counted = labels != IGNORE_LABEL
    labels = labels * counted
    counts = torch.zeros(batch, num_classes, device=target.device).scatter_add_(1, labels, counted.float())
    background = counts[:, :1].clamp(min=1)
    weights = (background / counts.clamp(min=1)).pow(power).clamp(min=1.0, max=MAX_CLASS_WEIGHT)
    return (weights.gather(1, labels) * counted).reshape(target.shape)


def soft_dice_per_class(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """(B, C-1) soft Dice of each foreground class 1..C-1 per sample, on softmax probabilities.

    Args:
        logits: (B, C, X, Y, Z) raw outputs; target: (B, X, Y, Z) int64 in 0..C-1 or IGNORE_LABEL.
    """
    _check_shapes(logits, target)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probabilities = torch.softmax(logits.float(), dim=1).flatten(2)  # (B, C, N)
        labels = target.flatten(1).long()  # (B, N)
        counted = (labels != IGNORE_LABEL).float()  # ignored voxels count for no class
        labels = labels * counted.long()
        true_class = probabilities.gather(1, labels.unsqueeze(1)).squeeze(1) * counted  # (B, N)
        batch, classes = probabilities.shape[:2]
        intersection = probabilities.new_zeros(batch, classes).scatter_add_(1, labels, true_class)
        target_sum = probabilities.new_zeros(batch, classes).scatter_add_(1, labels, counted)
        prediction_sum = (probabilities * counted.unsqueeze(1)).sum(dim=2)
        dice = (2 * intersection + smooth) / (prediction_sum + target_sum + smooth)
        return dice[:, 1:]


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim < 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"expected logits (B, C, X, Y, Z) and target (B, X, Y, Z), got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point:
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
