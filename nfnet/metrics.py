"""Where the trainer's metrics go: TensorBoard event files, a progress bar, JSON.

All three are side effects of the train loop and live outside the jitted step.
In a multi-host run only process 0 writes events and draws the bar.

A run's event files hold its scalars (one tag per metric, against the step) and
its hyperparameters for TensorBoard's HParams view (`HPARAMS`, compared by
`HPARAM_METRICS`), so one directory is one run in both views.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TextIO

# The HParams view's columns: (name, kind, shown by default). TensorBoard shows the
# columns flagged as differing first (by name), and ticks the first five of them;
# the rest are a tick away. It prints every number to five significant digits
# ("128.00"), so whole-number settings are written as text ("128").
HPARAMS = (
    ("variant", "str", True),      # with its multipliers: `nano`, `nano-w0.5`
    ("epochs", "float", True),
    ("lr", "float", True),
    ("batch_size", "int", True),
    ("seed", "int", True),
    ("width_mult", "float", False),
    ("depth_mult", "float", False),
    ("dataset", "str", False),
)
# The metrics the HParams view compares runs by (scalar tags the trainer writes).
HPARAM_METRICS = ("val_loss", "val_top1")


def json_safe(value: Any) -> Any:
    """`value` as JSON can carry it: every non-finite float as None (JSON has no inf or NaN),
    datetimes as ISO text, numpy / jax scalars as Python numbers, tuples as lists and keys
    as strings, through nested dicts and lists. nfnet's summaries and the tuner's JSON
    (ledger rows, plans, reports) all go through here."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
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


def hparam_values(values: Mapping[str, Any]) -> dict[str, str | float]:
    """The `HPARAMS` of `values` as the HParams view gets them: whole numbers as text.

    Keys missing from `values` (or None) are left out.
    """
    out: dict[str, str | float] = {}
    for name, kind, _ in HPARAMS:
        value = values.get(name)
        if value is None:
            continue
        if kind == "int":
            out[name] = str(int(value))
        elif kind == "float":
            out[name] = float(value)
        else:
            out[name] = str(value)
    return out


def hparams_summaries(values: Mapping[str, Any], group: str, start_time: float | None = None) -> list:
    """TensorBoard summaries (tensorboard's own protos) for a run's HParams entry.

    The experiment summary lists `HPARAMS` and `HPARAM_METRICS` with their types but
    no domains: every run writes the same one, so whichever TensorBoard picks among
    runs (it reads one per log directory) describes them all. The session start
    holds this run's values, grouped as `group` (one row per run in the table).
    """
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    types = {"str": api_pb2.DATA_TYPE_STRING, "int": api_pb2.DATA_TYPE_STRING, "float": api_pb2.DATA_TYPE_FLOAT64}
    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=name, type=types[kind], differs=shown) for name, kind, shown in HPARAMS],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag)
                      for tag in HPARAM_METRICS],
    )
    config = summary_pb2.Summary()
    config.value.add(
        tag=metadata.EXPERIMENT_TAG,
        metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        tensor=metadata.NULL_TENSOR,
    )
    start = summary_v2.hparams_pb(hparam_values(values), trial_id=group, start_time_secs=start_time)
    return [config, start]


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

    def write_hparams(self, values: Mapping[str, Any], group: str) -> None:
        """The run's entry in TensorBoard's HParams view (see `hparams_summaries`)."""
        if self._writer is None:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        for summary in hparams_summaries(values, group):
            self._writer.file_writer.add_summary(Summary.FromString(summary.SerializeToString()))
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
