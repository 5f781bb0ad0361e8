"""The compute budget of a sweep (`--budget-flops`, `--budget-device-hours`): what the
trials used, counted from their results, and the stopper that starts no new trial
once it is spent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ray.tune.stopper import Stopper

from tuner.errors import TunerError
import logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetSummary:
    """What the budget says, for the command line and reports."""

    unit: str
    total: float
    used: float
    trials: int
    flops: float
    device_hours: float

    @property
    def spent(self) -> bool:
        return self.used >= self.total

    def __str__(self) -> str:
        return (
            f"compute budget: {self.used:.4g} of {self.total:.4g} {self.unit} used "
            f"({100.0 * self.used / self.total:.1f}%) by {self.trials} trials"
            f"{' (spent)' if self.spent else ''}"
        )


def unmeasured_budget_message(flops: bool, trial_id: str) -> str:
    """Why a budget in FLOPs (`flops`) or device-hours cannot be counted, and what to pass instead."""
    if flops:
        return (f"trial {trial_id} reported no FLOPs figure (its training step could not be counted), "
                "so --budget-flops cannot be counted and no further trial was started; give the budget in "
                "device-hours with --budget-device-hours instead")
    return (f"trial {trial_id} reported no device_seconds, so --budget-device-hours cannot be counted and no "
            "further trial was started; its trainable must report device_seconds")


class ComputeBudget:
    """A sweep's total compute, in training FLOPs or in device-hours (one of them).

    Each trial counts the largest cumulative `flops` / `device_seconds` it has
    reported, so a trial stopped early counts what it used and a trial that
    restarts from a checkpoint never lowers the count. A result without a figure
    in the budget's unit sets `unmeasured` (the first such trial), and the budget
    is spent from then on.
    """

    def __init__(self, flops: float | None = None, device_hours: float | None = None):
        if (flops is None) == (device_hours is None):
            raise TunerError(
                "give the compute budget in exactly one unit: flops=... or device_hours=..."
            )
        total = flops if flops is not None else device_hours
        if not math.isfinite(total) or total <= 0:
            unit = "flops" if flops is not None else "device_hours"
            raise TunerError(f"compute budget {unit}={total} must be a positive number")
        self.unit = "FLOPs" if flops is not None else "device-hours"
        self.total = float(total)
        self._usage: dict[str, tuple[float, float]] = {}
        self.unmeasured: str | None = None

    def unmeasured_message(self) -> str:
        """The one-line error for a budget a trial could not be counted against."""
        return unmeasured_budget_message(self.unit == "FLOPs", str(self.unmeasured))

    def record(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Counts one reported result (cumulative `flops`, `device_seconds`)."""
        flops = result.get("flops")
        seconds = result.get("device_seconds")
        needed = flops if self.unit == "FLOPs" else seconds
        if needed is None and self.unmeasured is None:
            self.unmeasured = trial_id
            logger.error("%s", self.unmeasured_message())
        self.record_usage(trial_id, float(flops or 0.0), float(seconds or 0.0))

    def record_usage(self, trial_id: str, flops: float, device_seconds: float) -> None:
        """Raises a trial's count to these cumulative totals (never lowers it)."""
        old_flops, old_seconds = self._usage.get(trial_id, (0.0, 0.0))
        self._usage[trial_id] = (max(old_flops, flops), max(old_seconds, device_seconds))

    def usage(self) -> dict[str, tuple[float, float]]:
        """trial id -> (FLOPs, device-seconds) counted so far."""
        return dict(self._usage)

    @property
    def used(self) -> float:
        """Compute used by every trial so far, in the budget's unit."""
        if self.unit == "FLOPs":
            return sum(flops for flops, _ in self._usage.values())
        return sum(seconds for _, seconds in self._usage.values()) / 3600.0

    @property
    def spent(self) -> bool:
        return self.unmeasured is not None or self.used >= self.total

    def summary(self) -> BudgetSummary:
        return BudgetSummary(
            unit=self.unit,
            total=self.total,
            used=self.used,
            trials=len(self._usage),
            flops=sum(flops for flops, _ in self._usage.values()),
            device_hours=sum(seconds for _, seconds in self._usage.values()) / 3600.0,
        )


class BudgetStopper(Stopper):
    """The hard cap: ends the experiment, running trials included, once spent.

    Pass the same `ComputeBudget` as the scheduler's (counting a result twice is
    harmless) or use it alone with any scheduler.
    """

    def __init__(self, budget: ComputeBudget):
        self.budget = budget

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.budget.record(trial_id, result)
        return False

    def stop_all(self) -> bool:
        return self.budget.spent
