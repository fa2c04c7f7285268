"""The learning-rate schedule and the time budget that can end a run.

Schedules (LMConfig.lr_schedule): "epochs" is the tutorial's (constant for max_epoch epochs,
then lr_decay per epoch); "linear" and "cosine" decay from learning_rate to 0 over the run's
windows: max_max_epoch epochs, or the windows a time budget plans.

A time budget (LMConfig.time_budget) is wall time for the whole run, evaluations and the final
test included, across --resume segments (the time up to the last checkpoint counts; work lost
with an interruption does not). It plans the run's windows from the speed measured so far:

    windows left = (time left - final reserve) / (seconds per window + evaluation per window)

where the final reserve is the measured time of the final validation, both test evaluations
and saving, with a margin. The plan is made after the first windows and again after each
evaluation, and is saved with the run: the schedule follows the plan (a resumed run goes on
with it), not the clock. Two runs with one seed repeat up to the first plan; after it, they
differ where their measured speeds, and so their plans, differ. Training also stops whenever
only the final reserve is left.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from lstmkit.lm.config import LMConfig

WARMUP_WINDOWS = 5  # a segment's first windows (kernel builds, caches) are never timed
PLAN_AFTER_WINDOWS = 20  # windows timed before the first plan
RESERVE_MARGIN = 1.3  # the final evaluations are estimated, then given this much more time
RESERVE_SECONDS = 10.0  # and this much (at most 5% of the budget) for saving and the record


def decay_factor(schedule: str, fraction: float) -> float:
    """The learning rate's factor at `fraction` of the way through training."""
    fraction = min(max(fraction, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - fraction
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * fraction))
    raise ValueError(f"no decay for schedule {schedule!r}")


def learning_rate(config: LMConfig, epoch: int, windows_done: int, total_windows: int) -> float:
    """The scheduled rate for the next window (1-based `epoch`; `total_windows` is the run's
    length for the decaying schedules: 0 while a time budget has not planned yet)."""
    if config.lr_schedule == "epochs":
        return config.learning_rate_for_epoch(epoch)
    if total_windows <= 0:
        return config.learning_rate
    return config.learning_rate * decay_factor(config.lr_schedule, windows_done / total_windows)


def rescaled_plan(planned_windows: int, windows_done: int, old_seconds: float | None,
                  new_seconds: float | None) -> int:
    """A resumed run's plan when its time budget changed, until the segment's own timing plans
    again: the old plan scaled by the budgets' ratio, so that the rate goes on near where it
    was rather than jumping back to the start's; never so short that training ends before that
    re-plan (the clock still ends it). 0 (no plan: the undecayed rate) where either run has no
    budget or the old one had not planned yet."""
    if not (old_seconds and new_seconds and planned_windows):
        return 0
    return max(round(planned_windows * new_seconds / old_seconds),
               windows_done + WARMUP_WINDOWS + PLAN_AFTER_WINDOWS)


@dataclass
class TimeBudget:
    """A run's wall-time budget; `used_before`: seconds spent in earlier segments."""
    seconds: float
    used_before: float = 0.0
    started: float = field(default_factory=lambda: time.monotonic())
    train_seconds: float = 0.0  # timed training windows of this segment
    train_windows: int = 0
    warmup_windows: int = 0  # untimed windows of this segment so far
    eval_seconds: float = 0.0  # the last validation check's time
    final_seconds: float = 0.0  # the final evaluations' estimate, before the margin

    def used(self) -> float:
        return self.used_before + time.monotonic() - self.started

    def reserve(self) -> float:
        """Seconds kept for the end: final validation, test, saving."""
        return self.final_seconds * RESERVE_MARGIN + min(RESERVE_SECONDS, 0.05 * self.seconds)

    def out_of_time(self) -> bool:
        return self.seconds - self.used() <= self.reserve()

    def time_window(self, seconds: float) -> None:
        """Account one trained window's time (not the segment's first WARMUP_WINDOWS)."""
        if self.warmup_windows < WARMUP_WINDOWS:
            self.warmup_windows += 1
            return
        self.train_seconds += seconds
        self.train_windows += 1

    def can_plan(self) -> bool:
        return self.train_windows >= PLAN_AFTER_WINDOWS

    def plan(self, windows_done: int, windows_per_epoch: int) -> int:
        """The run's total windows that end training with the reserve left (at least those
        done): evaluations once per epoch cost eval_seconds / windows_per_epoch per window."""
        per_window = self.train_seconds / max(self.train_windows, 1)
        per_window += self.eval_seconds / max(windows_per_epoch, 1)
        left = self.seconds - self.used() - self.reserve()
        return windows_done + max(int(left / per_window), 0)
