"""Plumbing every tuner command shares: Ray connection, storage, naming, callbacks, output.

- `connect(address)` starts Ray in-process (address None) or joins a cluster, and
  fails in seconds when the cluster cannot be reached.
- `compilation_cache_env()` points every trial on a node at one persistent JAX
  compilation cache, so a second trial of the same shapes does not compile again.
- `LedgerCallback` appends a trial's ledger row as soon as the trial ends for good.
- `NoTuneTensorBoard` keeps Tune's own TensorBoard logger out (the trainer writes
  each trial's events, scalars and hparams), and `trial_dirname` names each trial's
  directory, so its TensorBoard run, by its settings: `nano-e0.5-lr0.4-b128-s0-<id>`.
- `ProgressPrinter` prints one line per evaluation instead of Tune's status table.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from tuner.errors import TunerError
from tuner.ledger import Ledger
from tuner.planner import cell_label, parse_label
from tuner.trainable import SCHEDULE_DONE, ledger_row

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "results"
DEFAULT_JAX_CACHE = "~/.cache/nfscale/jax"
# Seconds to wait for a cluster's GCS port to answer before giving up, plus the
# time a child process takes to import Ray for the GCS check.
CONNECT_TIMEOUT_S = 5.0
GCS_CHECK_STARTUP_S = 15.0


# ---------------------------------------------------------------- Ray connection


@dataclass(frozen=True)
class RayConnection:
    """A live Ray connection; `shutdown()` stops Ray only when this process started it."""

    address: str | None
    started: bool

    def shutdown(self) -> None:
        if self.started and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TunerError(f"Ray address {address!r} is not host:port; pass e.g. --address 10.0.0.2:6379 or auto")
    return host.strip("[]"), int(port)


def _resolve_auto() -> str:
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        raise TunerError(
            f"--address auto found no running Ray cluster ({exc}); start one with `ray start --head` or drop --address"
        ) from None
    if not found:
        raise TunerError("--address auto found no running Ray cluster; start one with `ray start --head` or drop --address")
    return found


# Asks the cluster's GCS for one key, in a child process that can be killed:
# `ray.init` to an address that is not a Ray GCS it may talk to retries for minutes.
_GCS_CHECK = (
    "import sys; from ray._raylet import GcsClient; "
    "GcsClient(address=sys.argv[1]).internal_kv_get(b'nfscale-probe', None, timeout=5)"
)


def _unreachable(address: str, reason: str) -> TunerError:
    return TunerError(
        f"cannot reach a Ray cluster at {address}: {reason}; start one with `ray start --head` or drop --address"
    )


def _probe(address: str, timeout: float) -> None:
    """Fail in seconds on an address where no Ray cluster answers."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise _unreachable(address, exc.strerror or str(exc) or type(exc).__name__) from None
    if address.startswith("ray://"):
        return  # a Ray Client server, not a GCS: the open port is all that can be checked cheaply
    try:
        check = subprocess.run(
            [sys.executable, "-c", _GCS_CHECK, f"{host}:{port}"],
            capture_output=True,
            text=True,
            timeout=timeout + GCS_CHECK_STARTUP_S,
        )
    except subprocess.TimeoutExpired:
        raise _unreachable(
            address,
            f"the port is open but no Ray GCS answered within {timeout + GCS_CHECK_STARTUP_S:g}s "
            "(a cluster with token authentication also needs its token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)",
        ) from None
    if check.returncode != 0:
        lines = [line for line in check.stderr.strip().splitlines() if line.strip()]
        raise _unreachable(address, lines[-1] if lines else f"GCS check exited with {check.returncode}")


def connect(
    address: str | None,
    num_cpus: int | None = None,
    env_vars: Mapping[str, str] | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> RayConnection:
    """Start Ray in-process (`address` None) or join the cluster at `address` (`auto` allowed).

    With no address, $RAY_ADDRESS (set for drivers of Ray jobs) is joined when
    set. Trials get `env_vars` (by default `compilation_cache_env()`) through the
    job's runtime environment. If Ray is already initialised in this process it
    is used as it is and left running.
    """
    if ray.is_initialized():
        return RayConnection(ray.get_runtime_context().gcs_address, started=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = dict(compilation_cache_env() if env_vars is None else env_vars)
    if address is not None and env_vars is None and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        # Each node of a cluster keeps the cache under its own home directory,
        # which the trainable resolves there; the driver's path may not exist on it.
        env.pop("JAX_COMPILATION_CACHE_DIR")
    common: dict[str, Any] = dict(
        runtime_env={"env_vars": env},
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=True,
    )
    # Ray starts its processes with subprocess (fork, then exec at once), which JAX's
    # fork warning does not concern; it would add two lines to every command's output.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    if address is None:
        # Ray turns on token authentication for the instance it starts and says so
        # at WARNING; for an in-process instance that only this driver uses it is noise.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common)
        return RayConnection(None, started=True)
    target = _resolve_auto() if address == "auto" else address
    _probe(target, timeout)
    try:
        ray.init(address=target, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TunerError(
            f"cannot join the Ray cluster at {address}: {exc}; check that its Ray version matches ({ray.__version__})"
        ) from None
    return RayConnection(target, started=False)


# How long a command waits for a cluster's autoscaler to add a node a trial needs.
DEFAULT_NODE_WAIT_S = 900.0
NODE_POLL_S = 5.0
NODE_WAIT_HELP = (f"seconds to wait for a cluster's autoscaler to add a node that can hold a trial before "
                  f"giving up (default {DEFAULT_NODE_WAIT_S:g}); an in-process Ray never waits")


def _fmt_resources(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def _alive_nodes() -> list[dict[str, float]]:
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _fits(request: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in request.items() if v > 0)


def _shortfall(label: str, request: Mapping[str, float], nodes: Sequence[Mapping[str, float]],
               in_process: bool) -> str:
    """One line: what a trial asks for that no node has, and the flag that fixes it."""
    where = "the in-process Ray" if in_process else "the cluster"
    wanted = _fmt_resources(request)
    missing = [k for k in request if request[k] > 0 and not any(n.get(k, 0.0) >= request[k] for n in nodes)]
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if "CPU" in missing and len(missing) == 1:
        fix = f"lower --cpus-per-trial to at most {most_cpus:g}" if most_cpus > 0 else "give Ray CPUs"
        if in_process:
            fix += " (or raise --num-cpus to oversubscribe this machine)"
        return (f"a {label} trial asks for {wanted}, but no node of {where} has more than {most_cpus:g} CPUs; {fix}")
    if "GPU" in missing:
        fix = ("use --accelerator cpu, or join a cluster with GPU nodes (--address)" if in_process
               else "use --accelerator cpu, or add GPU nodes to the cluster")
        return f"a {label} trial asks for {wanted}, but {where} has no GPU; {fix}"
    if any(k.startswith("TPU") or k.startswith("accelerator_type") for k in missing):
        fix = ("run on a TPU cluster (--address auto on its head node), or use --accelerator cpu" if in_process
               else "check the cluster's TPU node types (cluster/*.yaml) and --accelerator")
        return f"a {label} trial asks for {wanted}, but {where} has no node with {', '.join(missing)}; {fix}"
    return (f"a {label} trial asks for {wanted}, but no node of {where} holds all of it "
            f"(largest: {_fmt_resources(max(nodes, key=lambda n: n.get('CPU', 0.0)) if nodes else {})}); "
            "lower --cpus-per-trial or change --accelerator")


def check_ray_options(num_cpus: int | None, wait_for_nodes: float) -> None:
    """The flags every Ray command shares (`--num-cpus`, `--wait-for-nodes`), checked before Ray starts."""
    if num_cpus is not None and num_cpus < 1:
        raise TunerError(f"--num-cpus must be at least 1, got {num_cpus}; leave it out to give Ray every CPU")
    if not (math.isfinite(wait_for_nodes) and wait_for_nodes >= 0):
        raise TunerError(f"--wait-for-nodes must be a number of seconds >= 0, got {wait_for_nodes}")


def placement_requests(placements: Iterable[Any]) -> dict[str, dict[str, float]]:
    """What each trial placement (tuner.placement.TrialPlacement) asks one node for, by label."""
    out: dict[str, dict[str, float]] = {}
    for p in placements:
        out[p.variant] = dict(p.resources)
        if p.worker_resources:
            out[f"{p.variant} (slice host)"] = dict(p.worker_resources)
    return out


def check_resources(
    requests: Mapping[str, Mapping[str, float]],
    connection: RayConnection,
    log: Any = print,
    wait_s: float = DEFAULT_NODE_WAIT_S,
    poll_s: float = NODE_POLL_S,
) -> None:
    """Fail in one line, before any trial starts, when no node can ever hold a trial.

    `requests` maps a label (the variant) to one trial's resources (its placement
    group's bundle, or a slice host's). An in-process Ray cannot grow, so a request
    none of its nodes meets is an error at once. A joined cluster may autoscale: the
    command says what it waits for, asks the autoscaler for it, and gives up after
    `wait_s` seconds instead of waiting forever.
    """
    pending = {label: dict(r) for label, r in requests.items()}

    def unmet() -> dict[str, dict[str, float]]:
        nodes = _alive_nodes()
        return {label: r for label, r in pending.items() if not any(_fits(r, n) for n in nodes)}

    missing = unmet()
    if not missing:
        return
    label, request = next(iter(missing.items()))
    if connection.started:
        raise TunerError(_shortfall(label, request, _alive_nodes(), in_process=True))
    from ray.autoscaler.sdk import request_resources

    wanted = "; ".join(f"{lbl}: {_fmt_resources(r)}" for lbl, r in missing.items())
    log(f"waiting up to {wait_s:g}s for the cluster to add a node for a trial ({wanted}); "
        "its autoscaler starts one when a node type has these resources (Ctrl-C stops)")
    request_resources(bundles=list(missing.values()))
    deadline = time.monotonic() + wait_s
    try:
        while missing and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            missing = unmet()
    finally:
        request_resources(bundles=[])
    if missing:
        label, request = next(iter(missing.items()))
        raise TunerError(f"gave up after {wait_s:g}s: " + _shortfall(label, request, _alive_nodes(), in_process=False)
                         + " (or raise --wait-for-nodes)")


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


def compilation_cache_env(cache_dir: str | None = None) -> dict[str, str]:
    """Environment that makes JAX share a persistent compilation cache between trials.

    The cache is node-local (`~/.cache/nfscale/jax` unless `cache_dir` or
    $JAX_COMPILATION_CACHE_DIR says otherwise): every trial on a node reads what
    the first one compiled. Every program is cached, however quick its compile
    and however small (JAX's defaults skip compiles under a second, which on a CPU
    is most of them).
    """
    directory = cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_JAX_CACHE
    if "://" not in directory:
        directory = str(Path(directory).expanduser().absolute())
    return {
        "JAX_COMPILATION_CACHE_DIR": directory,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


# ---------------------------------------------------------------- callbacks


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


# ---------------------------------------------------------------- output

TABLE_COLUMNS = ("variant", "epochs", "lr", "status", "final_val_loss", "best_val_loss", "top1", "flops", "device_hours")
TABLE_HEADERS = {"final_val_loss": "val_loss", "best_val_loss": "best_loss", "device_hours": "dev_h"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """An aligned plain-text table of ledger rows (or any dicts with those columns)."""
    rows = list(rows)
    cells = []
    for row in rows:
        shown = dict(row)
        if "variant" in shown and ("width_mult" in shown or "depth_mult" in shown):
            shown["variant"] = cell_label(shown["variant"], shown.get("width_mult") or 1.0, shown.get("depth_mult") or 1.0)
        cells.append([_cell(shown.get(col)) for col in columns])
    headers = [TABLE_HEADERS.get(col, col) for col in columns]
    widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, h in enumerate(headers)]
    numeric = {
        i for i, col in enumerate(columns) if any(isinstance(r.get(col), (int, float)) for r in rows)
    }

    def fmt(line: list[str]) -> str:
        return "  ".join(t.rjust(widths[i]) if i in numeric else t.ljust(widths[i]) for i, t in enumerate(line)).rstrip()

    return "\n".join([fmt(headers), *(fmt(line) for line in cells)])


def tensorboard_hint(path: str) -> str:
    """The command that shows an experiment's scalars and hparams view."""
    return f"tensorboard --logdir {path}"
