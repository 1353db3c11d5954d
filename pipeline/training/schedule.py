"""The one-cycle learning-rate schedule, for any budget: a step count, a time limit, or both.

torch's OneCycleLR divides by the length of its warm-up phase, which is zero below ten steps
(ZeroDivisionError on a short run), and it plans the cycle from the step count alone, so a run
cut off by `max_time` stops mid-cycle at a high learning rate. Here the cycle follows the
run's progress: the larger of the share of steps done and the share of the time budget spent,
as Lightning's Timer (which survives a resume) counts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # only its type: importing Lightning costs seconds
    from lightning.pytorch.callbacks import Timer

WARMUP_SHARE = 0.1  # of the run spent warming the learning rate up
START_FACTOR = 1 / 25  # OneCycleLR's defaults: start at max_lr / 25 ...
END_FACTOR = START_FACTOR / 1e4  # ... and end at start / 1e4


def one_cycle_factor(progress: float) -> float:
    """The learning rate as a share of its peak at `progress` (0 … 1) through the run:
    cosine warm-up to the peak, then cosine decay to the end value."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < WARMUP_SHARE:
        return _cosine(START_FACTOR, 1.0, progress / WARMUP_SHARE)
    return _cosine(1.0, END_FACTOR, (progress - WARMUP_SHARE) / (1 - WARMUP_SHARE))


def _cosine(start: float, end: float, share: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * share)) / 2


def run_progress(total_steps: float, timer: Timer | None) -> Callable[[int], float]:
    """How far through its budget the run is after `step` optimiser steps; `total_steps` is
    infinite for a run bounded by time alone."""

    def progress(step: int) -> float:
        by_steps = step / max(total_steps - 1, 1) if math.isfinite(total_steps) else 0.0
        if timer is None:
            return by_steps
        elapsed = timer.time_elapsed()
        remaining = timer.time_remaining()
        by_time = elapsed / (elapsed + remaining) if remaining is not None else 0.0
        return max(by_steps, by_time)

    return progress


def one_cycle(
    optimizer: torch.optim.Optimizer, total_steps: float, timer: Timer | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler to step once per batch; the optimizer's lr is the peak."""
    progress = run_progress(total_steps, timer)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: one_cycle_factor(progress(step))
    )
