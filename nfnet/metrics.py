"""Where the trainer's metrics go: TensorBoard event files, a progress bar (tqdm), JSON.

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
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TextIO

from tqdm import tqdm

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


def _columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to; 0 when it reports none or is no terminal."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class ProgressBar:
    """tqdm's progress bar on a terminal (stderr by default), redrawn at most every `interval` seconds.

    Elsewhere (logs, pipes) the bar never draws itself: only `note()` writes it, as one line per
    evaluation, so logs stay readable. The rate is the average since the start (or the resume).
    """

    def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None, enabled: bool = True,
                 interval: float = 0.2) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.status = ""
        self._bar = None
        if enabled:
            # tqdm fits the bar to the terminal's size; one that reports none (a bare pty) would hide the
            # bar, so 80 columns and 20 rows then. Off a TTY an infinite delay keeps tqdm from ever
            # drawing (or closing) the bar itself.
            sized = self.tty and _columns(self.stream) > 0
            self._bar = tqdm(total=max(1, total), initial=initial, file=self.stream, unit="step", smoothing=0,
                             mininterval=interval, dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 20, ascii=None if self.tty else True,
                             delay=0 if self.tty else math.inf)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n - self._bar.n)

    def note(self, status: str) -> None:
        """Set the status text shown after the bar; off a TTY, write the bar with it as a line."""
        self.status = status
        if self._bar is None:
            return
        self._bar.set_postfix_str(status, refresh=self.tty)
        if not self.tty:
            # The whole line, status included, whatever $COLUMNS says.
            self.stream.write(tqdm.format_meter(**{**self._bar.format_dict, "ncols": None}) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # on a TTY the bar's last state stays, and the line ends
            self._bar = None
