"""A moving average of a network's weights: the model that validates, is saved as best.pt and predicts.

With `stageN.weight_average` = d > 0, after every optimiser step the average moves towards
the trained weights: average <- rate * average + (1 - rate) * weights, with
rate = min(d, (1 + n) / (10 + n)) at its n-th update (n = 0 copies the weights). A short
budget ends while the steps still scatter the weights around a minimum; their average lies
nearer its centre than any one of them. The rate starts low so that the first, poor weights
are forgotten within a few dozen steps instead of weighing on the average for 1 / (1 - d)
steps. Training itself goes on from the trained weights, never from the average.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

WARM_UP = 10  # the rate's warm-up: (1 + n) / (WARM_UP + n)


def average_rate(decay: float, updates: int) -> float:
    """The share the average keeps of itself at its `updates`-th update (0 copies the weights)."""
    return min(decay, (1 + updates) / (WARM_UP + updates))


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An average of `model`'s weights (buffers included) with `decay`; None when `decay` is 0."""
    if decay <= 0:
        return None

    def update(averages: list[torch.Tensor], weights: list[torch.Tensor], count: torch.Tensor) -> None:
        rate = average_rate(decay, int(count))
        for average, weight in zip(averages, weights, strict=True):
            average.lerp_(weight.to(average.dtype), 1 - rate)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
