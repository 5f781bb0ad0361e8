"""Where the trainer's metrics go: TensorBoard event files, a progress bar, JSON.

All three are side effects of the train loop and live outside the jitted step.
In a multi-host run only process 0 writes events and draws the bar.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no inf or NaN)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / jax scalars
        return json_safe(value.item())
    return value


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict (booleans as 0/1), as floats."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


class MetricWriter:
    """Scalars to TensorBoard event files under `logdir`, one tag per metric name.

    Uses tensorboardX's `SummaryWriter`; `enabled=False` (other hosts) makes it a no-op.
    """

    def __init__(self, logdir: str, enabled: bool = True) -> None:
        self.logdir = logdir
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            if "://" not in logdir:  # tensorboardX writes gs:// itself
                os.makedirs(logdir, exist_ok=True)
            self._writer = SummaryWriter(logdir=logdir)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        for tag, value in scalars(metrics).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class ProgressBar:
    """A one-line progress bar on a terminal (stderr by default).

    On a TTY the line is redrawn at most every `interval` seconds; elsewhere (logs, pipes)
    only `note()` lines are written, one per evaluation, so logs stay readable.
    """

    def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None, enabled: bool = True,
                 interval: float = 0.2, width: int = 24) -> None:
        self.total = max(1, total)
        self.n = initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self.width = width
        self.status = ""
        self._start_n = initial
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def _line(self) -> str:
        frac = min(1.0, self.n / self.total)
        filled = int(frac * self.width)
        elapsed = time.perf_counter() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        bar = "#" * filled + "-" * (self.width - filled)
        return (f"{frac:4.0%} [{bar}] {self.n}/{self.total} steps "
                f"{_duration(elapsed)}<{_duration(eta)} {rate:.2f} it/s {self.status}").rstrip()

    def update(self, n: int) -> None:
        self.n = n
        if self.tty and time.perf_counter() - self._last_draw >= self.interval:
            self._draw()

    def _draw(self) -> None:
        self._last_draw = time.perf_counter()
        self.stream.write("\r\033[K" + self._line())
        self.stream.flush()

    def note(self, status: str) -> None:
        """Set the status text shown after the bar; off a TTY, write it as a line."""
        self.status = status
        if not self.enabled:
            return
        if self.tty:
            self._draw()
        else:
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self.tty = False
