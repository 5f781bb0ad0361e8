"""An experiment's storage and names: where Ray keeps it (a local path or gs://, checked
before anything starts), its name and directory, which checkpoints Ray keeps, the
Ctrl-C watch that turns an interrupt into a resumable stop, and the text the
commands print about it (the results table, the TensorBoard hint, the command line
that reruns it).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any


from tuner.errors import TunerError
from tuner.records.cells import cell_label
from tuner.records.tables import text_table

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "results"


# ---------------------------------------------------------------- Ray connection


# The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT = 130


class InterruptWatch(logging.Filter):
    """Notes a Ctrl-C that Tune caught, and drops Tune's lines about it.

    Tune ends the run on the first SIGINT and advises `Tuner.restore(...)`, a Python
    call with no command-line form; the commands print the nfscale command that
    continues instead. Use as a context manager around `Tuner.fit`.
    """

    LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")
    MARKS = ("Stop signal received", "has been interrupted")
    # After a Ctrl-C, trials stopped before their first report have no metrics to fetch.
    AFTER = ("Failed to fetch metrics",)

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(mark in text for mark in self.MARKS):
            self.interrupted = True
            return False
        return not (self.interrupted and any(mark in text for mark in self.AFTER))

    def __enter__(self) -> InterruptWatch:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The shell command that runs `module` with `argv` (default: this process's arguments)."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in args)])


def quiet_tune_output() -> None:
    """Make `RunConfig(verbose=0)` silent: Ray's newer console output still prints a header.

    That header also names the driver's staging directory as the TensorBoard log
    directory, which is not where the logs end up; the commands print their own.
    Call before `Tuner.fit`.
    """
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Short trials checkpoint often; Tune's advice about snapshot frequency is not the user's to act on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


# ---------------------------------------------------------------- storage, names, cache


def storage_path(storage: str | None) -> str:
    """Where Ray Tune keeps experiments: `results/` under the working directory by default.

    URIs (`gs://...`) pass through; local paths become absolute, as Ray requires.
    """
    if storage and "://" in storage:
        return storage
    return str(Path(storage or DEFAULT_STORAGE).expanduser().absolute())


def check_storage(storage: str | None, flag: str = "--storage") -> None:
    """Fail in one line when a storage path (None: the default) cannot hold experiments; creates nothing.

    A bucket URI must name an existing bucket that answers (`nfnet.storage.uri_problem`).
    """
    from nfnet import storage as storage_lib
    from nfnet.paths import dir_problem

    if storage and storage_lib.is_uri(storage):
        problem = storage_lib.uri_problem(storage)
        if problem is not None:
            raise TunerError(f"{flag} {problem}")
        return
    problem = dir_problem(storage or DEFAULT_STORAGE)
    if problem is not None:
        raise TunerError(f"{flag} {problem}; pass a directory (it is created when missing)")


def ray_location(uri: str) -> tuple[str, Any]:
    """(path, filesystem) to hand Ray for a storage location (`RunConfig`, `Tuner.restore`).

    A local path is Ray's to open (filesystem None). A bucket is opened by
    `nfnet.storage.filesystem`, so Ray reaches the same place as the rest of nfscale
    (the emulator when $STORAGE_EMULATOR_HOST is set); Ray then wants the path
    without its scheme.
    """
    from nfnet import storage as storage_lib

    if not storage_lib.is_uri(uri):
        return uri, None
    fs, path = open_filesystem(uri)
    return path, fs


def open_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) of a local path or bucket URI (`nfnet.storage.filesystem`),
    its problems raised as this package's error."""
    from nfnet import storage as storage_lib
    from nfnet.errors import NFNetError

    try:
        return storage_lib.filesystem(uri)
    except NFNetError as e:
        raise TunerError(str(e)) from None


DEFAULT_KEEP_CHECKPOINTS = 1
KEEP_CHECKPOINTS_HELP = ("checkpoints Ray keeps per trial: this many of the lowest val_loss, plus always the "
                         "latest (which resumes the trial), so at most K+1 (default: 1, the best and the latest)")


def checkpoint_config(keep: int, metric: str = "val_loss"):
    """Ray's retention for a sweep's or promotion's trials: the `keep` checkpoints of lowest
    `metric`, and the latest one (Ray never deletes a trial's latest: a retry resumes from
    it), so at most keep + 1 per trial and the best always among them."""
    from ray import tune

    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise TunerError(f"--keep-checkpoints must be a whole number of at least 1, got {keep}")
    return tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric,
                                 checkpoint_score_order="min")


def check_experiment_name(name: str) -> str:
    """`name` when it can name an experiment directory (letters, digits and . _ + -), else a TunerError."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise TunerError(f"experiment name {name!r} may hold only letters, digits and . _ + -")
    return name


def experiment_dir(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def experiment_name(
    command: str,
    variant: str,
    epochs: float,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    now: datetime | None = None,
) -> str:
    """`lr_search-nano-e0.5-20250101-120000`: command, cell and a timestamp."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{command}-{cell_label(variant, width_mult, depth_mult)}-e{epochs:g}-{stamp}"


# ---------------------------------------------------------------- callbacks


# ---------------------------------------------------------------- output

TABLE_COLUMNS = ("variant", "epochs", "lr", "status", "final_val_loss", "best_val_loss", "top1", "flops", "device_hours")
TABLE_HEADERS = {"final_val_loss": "val_loss", "best_val_loss": "best_loss", "device_hours": "dev_h"}


def results_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """An aligned plain-text table of ledger rows (or any dicts with those columns), numbers right-aligned."""
    return text_table(rows, columns, TABLE_HEADERS)


def tensorboard_hint(path: str) -> str:
    """The command that shows an experiment's scalars and hparams view."""
    return f"tensorboard --logdir {path}"
