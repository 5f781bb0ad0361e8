"""Ray Tune callbacks and trial naming: `LedgerCallback` appends a trial's ledger row as
soon as the trial ends for good; `NoTuneTensorBoard` keeps Tune's own TensorBoard
logger out (the trainer writes each trial's events, scalars and hparams);
`trial_dirname` names each trial's directory, so its TensorBoard run, by its
settings (`nano-e0.5-lr0.4-b128-s0-<id>`); `ProgressPrinter` prints one line per
evaluation instead of Tune's status table.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from tuner.errors import TunerError
from tuner.records.ledger import Ledger
from tuner.records.cells import cell_label, parse_label
from tuner.records.rows import SCHEDULE_DONE, ledger_row


def ledger_trial_id(experiment: str, trial_id: str) -> str:
    """Ray's trial ids are unique only within an experiment; the ledger's are global."""
    return f"{experiment}/{trial_id}"


def checkpoint_uri(checkpoint: Any) -> str | None:
    """A Ray checkpoint's location as a path or `gs://`/`s3://` URI."""
    from nfnet.storage import uri_of

    if checkpoint is None:
        return None
    return uri_of(checkpoint.filesystem, str(checkpoint.path))


def trial_row(trial: Any, source: str) -> dict[str, Any] | None:
    """The ledger row for a Ray `Trial` that has reported; None when it never did."""
    if not trial.last_result or "val_loss" not in trial.last_result:
        return None
    experiment = trial.storage.experiment_dir_name
    history = trial.metric_analysis.get("val_loss", {})
    best = history.get("min")
    return ledger_row(
        ledger_trial_id(experiment, trial.trial_id),
        experiment,
        trial.config,
        trial.last_result,
        source=source,
        checkpoint_uri=checkpoint_uri(trial.checkpoint),
        best_val_loss=best if isinstance(best, (int, float)) else None,
    )


# Where a trial's row goes when the ledger refuses it mid-run (one JSON object a line).
UNRECORDED_FILE = "unrecorded_ledger_rows.jsonl"


class LedgerCallback(Callback):
    """Appends each trial's row to the ledger the moment the trial ends for good.

    Ray calls `on_trial_complete` when a trial returns or is stopped by the
    scheduler, and `on_trial_error` only once its retries (`FailureConfig`) are
    spent, so a trial that fails and is retried is written once, with its final
    outcome. An errored trial that reported is recorded as stopped (its loss is
    not a final one); trials that never reported are not recorded. The ledger
    skips ids it holds, so a resumed experiment never writes a trial twice.
    """

    def __init__(self, ledger: Ledger, source: str):
        self.ledger = ledger
        self.source = source
        # Rows the ledger refused (it became unreadable or unwritable mid-run): the
        # command reports them at the end instead of Tune failing every later trial.
        self.unrecorded: list[dict[str, Any]] = []

    def make_row(self, trial: Any) -> dict[str, Any] | None:
        """The trial's ledger row (None for a trial that never reported)."""
        return trial_row(trial, self.source)

    def _write(self, trial: Any, status: str | None = None) -> None:
        row = self.make_row(trial)
        if row is None:
            return
        if status is not None and row["status"] != "diverged":
            row["status"] = status
        try:
            self.ledger.append([row])
        except TunerError as exc:
            self.unrecorded.append(row)
            kept = self._keep(trial, row)
            print(f"error: trial {row['trial_id']} ended but its ledger row was not written ({exc}); "
                  f"the row is kept in {kept} (a JSON object a line, the ledger's columns)",
                  file=sys.stderr, flush=True)

    @staticmethod
    def _keep(trial: Any, row: Mapping[str, Any]) -> str:
        """Append the row as a JSON line under the experiment's driver-side directory."""
        import json

        path = Path(trial.local_experiment_path) / UNRECORDED_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps({k: v for k, v in row.items()}, default=str) + "\n")
        return str(path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, status="stopped")


class NoTuneTensorBoard(TBXLoggerCallback):
    """Keeps Tune's TensorBoard logger out of an experiment: the trainer writes each trial's events.

    Tune adds a `TBXLoggerCallback` to every experiment whose callbacks hold none,
    and it would log every result again: a second TensorBoard run per trial, with
    `ray/tune/*` tags against Tune's iterations. Being one, this takes its place and
    writes nothing. Tune still adds its CSV and JSON loggers (`progress.csv`,
    `result.json`), which its experiment analysis and our tools read.
    """

    def log_trial_start(self, trial: Any) -> None:
        pass

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        pass

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        pass


def trial_dirname(trial: Any) -> str:
    """`nano-e0.5-lr0.4-b128-s0-<trial id>`: a trial's directory, named by its settings.

    The directory is the trial's TensorBoard run, so runs read as cell, LR, batch
    size and seed. Ray's trial id keeps the name unique within the experiment
    (its default name lists every sampled config key instead). Settings the
    config lacks are left out; a config without a variant or LR gives the id alone.
    """
    config = trial.config
    if config.get("variant") is None or config.get("lr") is None:
        return trial.trial_id
    variant, width, depth = parse_label(str(config["variant"]))
    width *= float(config.get("width_mult") or 1.0)
    depth *= float(config.get("depth_mult") or 1.0)
    parts = [cell_label(variant, width, depth)]
    if config.get("epochs") is not None:
        parts.append(f"e{float(config['epochs']):g}")
    parts.append(f"lr{float(config['lr']):g}")
    if config.get("batch_size") is not None:
        parts.append(f"b{int(config['batch_size'])}")
    if config.get("seed") is not None:
        parts.append(f"s{int(config['seed'])}")
    return "-".join([*parts, trial.trial_id])


class ProgressPrinter(Callback):
    """One line per evaluation and per ended trial, instead of Tune's status table.

    Holds no stream, only where to print (it is pickled with the experiment):
    stderr when stdout carries a command's JSON.
    """

    def __init__(self, to_stderr: bool = False, label_key: str = "lr"):
        self.to_stderr = to_stderr
        self.label_key = label_key

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr if self.to_stderr else sys.stdout, flush=True)

    def _name(self, trial: Any) -> str:
        value = trial.config.get(self.label_key)
        return f"{self.label_key}={value:g}" if isinstance(value, (int, float)) else trial.trial_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(f"  trial {self._name(trial)}: started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        parts = [f"  trial {self._name(trial)}:"]
        budget = trial.config.get("epochs")
        if isinstance(result.get("progress"), (int, float)) and isinstance(budget, (int, float)):
            # The share of the budget's steps done (the last batch is whole, so images
            # seen may pass the budget by less than a batch: "epoch" in the metrics).
            parts.append(f"epoch {result['progress'] * budget:.3g}/{budget:g}")
        elif "epoch" in result:
            parts.append(f"epoch {result['epoch']:.3g}")
        for key in ("val_loss", "val_top1", "images_per_sec"):
            if isinstance(result.get(key), (int, float)):
                parts.append(f"{key} {result[key]:.4g}")
        self._print(" ".join(parts))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = (trial.last_result or {}).get(SCHEDULE_DONE)
        self._print(f"  trial {self._name(trial)}: {'finished' if done else 'ended'}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(f"  trial {self._name(trial)}: failed (see {trial.path}/error.txt)")
