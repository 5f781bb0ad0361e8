"""An LR search as Ray Tune trials: its options, its plan for one cell (from the ledger,
by tuner.study.planner), its rounds of trials, and the one ledger row it records.
The command is tuner/lr_search.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nfnet.metrics import json_safe
from tuner.errors import TunerError
from tuner.raytune.connection import DEFAULT_NODE_WAIT_S
from tuner.study.planner import COMPLETE_STOPS, DEFAULT_MAX_TRIALS, DEFAULT_PARALLEL, SEARCH_SOURCE, Bracket, CellSearch, Verdict, make_record, plan_cell
from tuner.records.cells import cell_label, cell_shape, variant_params
from tuner.raytune.trainable import FAST_COMPILE

SOURCE = SEARCH_SOURCE
DEFAULT_VARIANT = "nano"
# Batch 128 gives the short default run ~60 optimizer steps; the planner moves LRs
# between batch sizes by linear scaling, so cells tuned at 256 still bound it.
DEFAULT_BATCH = 128
# Epoch budgets of the embedded default: ~7.5k training images on either dataset,
# which keeps a search within a few minutes on a 2-core CPU.
DEFAULT_EPOCHS = {"fashion_mnist": 0.125, "digits": 4.0}
OTHER_EPOCHS = 1.0
DEFAULT_MAX_EVAL = 2000
DEFAULT_EVALS = 4
# Keep the latest checkpoints of each trial (the last is the ledger's checkpoint_uri).
CHECKPOINTS_TO_KEEP = 2


@dataclass(frozen=True)
class LRSearchOptions:
    """One search, as the command line gives it; None means "the default for the dataset"."""

    variant: str = DEFAULT_VARIANT
    width_mult: float = 1.0
    depth_mult: float = 1.0
    epochs: float | None = None
    dataset: str | None = None
    data_dir: str | None = None
    batch_size: int = DEFAULT_BATCH
    resolution: int | None = None
    seed: int = 0
    max_train_examples: int | None = None
    max_eval_examples: int | None = DEFAULT_MAX_EVAL
    evals_per_run: int = DEFAULT_EVALS
    ledger: str | None = None
    storage: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    cpus_per_trial: float = 1.0
    accelerator: str = "cpu"
    experiment_name: str | None = None
    fast_compile: bool = False
    noise: float | None = None
    parallel: int = DEFAULT_PARALLEL
    max_trials: int = DEFAULT_MAX_TRIALS
    force: bool = False
    max_failures: int = 2
    wait_for_nodes: float = DEFAULT_NODE_WAIT_S
    stagger: str = "auto"


@dataclass(frozen=True)
class SearchPlan:
    """Everything decided before Ray starts: the resolved target and the planner's LRs."""

    options: LRSearchOptions
    variant: str  # base name; multipliers in width_mult/depth_mult
    width_mult: float
    depth_mult: float
    dataset: str
    dataset_label: str  # as the ledger files it (`spec[n]` for a training subset)
    epochs: float
    params: int
    ledger_uri: str
    ledger_rows: int
    cell: CellSearch
    rows: tuple[dict[str, Any], ...] = ()  # the ledger's rows of this very cell
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return cell_label(self.variant, self.width_mult, self.depth_mult)

    def placement(self) -> Any:
        """Where each trial runs and what it asks Ray for (tuner.placement.trial.TrialPlacement)."""
        from tuner.placement.trial import placement_for_config

        return placement_for_config(trial_config(self, self.first_lr), self.options.accelerator,
                                    self.options.cpus_per_trial)

    @property
    def first_lr(self) -> float:
        return (self.cell.start or tuple(t.lr for t in self.cell.known) or (self.cell.prediction.lr,))[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.label,
            "dataset": self.dataset_label,
            "epochs": self.epochs,
            "batch_size": self.options.batch_size,
            "params": self.params,
            "status": self.cell.status,
            "first_round": list(self.cell.start),
            "known": [t.to_dict() for t in self.cell.known],
            "prediction": self.cell.prediction.to_dict(),
            "noise": {"value": self.cell.noise.value, "source": self.cell.noise.source,
                      "points": self.cell.noise.points},
            "previous": self.cell.previous,
            "parallel": self.cell.parallel,
            "max_trials": self.cell.max_trials,
            "ledger": self.ledger_uri,
            "ledger_rows": self.ledger_rows,
            "notes": list(self.notes),
            "placement": self.placement().to_dict(),
        }


@dataclass(frozen=True)
class SearchResult:
    """The trials' rows, where the search stopped, and the row recorded in the ledger (if any)."""

    search: SearchPlan
    experiment: str | None  # None when nothing ran (the cell was already tuned)
    experiment_dir: str | None
    trials: list[dict[str, Any]]  # this run's trials, as ledger rows
    verdict: Verdict
    record: dict[str, Any] | None  # the search record of the recorded row
    recorded: dict[str, Any] | None
    wall_seconds: float
    failed: list[str] = field(default_factory=list)  # error files of trials that failed for good
    incomplete: list[float] = field(default_factory=list)  # LRs whose trial did not reach its end
    interrupted: bool = False  # stopped by Ctrl-C

    @property
    def chosen_lr(self) -> float | None:
        return self.verdict.lr

    @property
    def ok(self) -> bool:
        """The search ended by its rule (bracketed or tied) with every trial complete, or had nothing to run."""
        if self.experiment is None:
            return self.verdict.lr is not None
        return self.verdict.lr is not None and self.verdict.stop in COMPLETE_STOPS and not self.incomplete

    @property
    def tensorboard(self) -> str | None:
        from tuner.raytune.experiment import tensorboard_hint

        return tensorboard_hint(self.experiment_dir) if self.experiment_dir else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "search": self.search.to_dict(),
            "experiment": self.experiment,
            "experiment_dir": self.experiment_dir,
            "trials": self.trials,
            "verdict": dataclasses.asdict(self.verdict),
            "record": self.record,
            "chosen_lr": self.chosen_lr,
            "bracketed": self.verdict.bracketed,
            "stop": self.verdict.stop,
            "recorded_trial_id": self.recorded["trial_id"] if self.recorded else None,
            "failed": self.failed,
            "incomplete_lrs": self.incomplete,
            "ledger": self.search.ledger_uri,
            "tensorboard": self.tensorboard,
            "wall_seconds": self.wall_seconds,
            "interrupted": self.interrupted,
        }


# ---------------------------------------------------------------- planning (no Ray)


def _num_classes(dataset: str, data_dir: str | None) -> int:
    from nfnet.data import load_dataset
    from nfnet.errors import NFNetError

    try:
        return int(load_dataset(dataset, "test", data_dir=data_dir).num_classes)
    except NFNetError as exc:
        raise TunerError(str(exc)) from None


def choose_dataset(dataset: str | None, data_dir: str | None) -> tuple[str, int, str | None]:
    """(dataset, its class count, a note when the default fell back to digits)."""
    if dataset is not None:
        return dataset, _num_classes(dataset, data_dir), None
    if data_dir is not None:
        # A folder the user named is never swapped for another dataset.
        try:
            return "fashion_mnist", _num_classes("fashion_mnist", data_dir), None
        except TunerError as exc:
            raise TunerError(f"--data-dir {data_dir}: {exc}") from None
    try:
        return "fashion_mnist", _num_classes("fashion_mnist", None), None
    except TunerError as exc:
        note = f"Fashion-MNIST is not installed ({exc}); using scikit-learn's digits instead"
        return "digits", _num_classes("digits", data_dir), note


def _count_params(variant: str, width_mult: float, depth_mult: float, num_classes: int) -> int | None:
    import jax

    # Shapes only, on the driver's CPU: the driver must never take accelerators
    # its trials need (the setting is this process's, not its children's).
    jax.config.update("jax_platforms", "cpu")
    # The count the placement's memory estimate reads too (cached: counted once).
    return variant_params(variant, width_mult, depth_mult, num_classes)


def _check_variant(variant: str, width_mult: float, depth_mult: float) -> tuple[str, float, float]:
    from nfnet.errors import NFNetError
    from nfnet.variants import get_variant

    base, width, depth = cell_shape(variant, width_mult, depth_mult)
    try:
        get_variant(base, width, depth)
    except NFNetError as exc:
        raise TunerError(str(exc)) from None
    return base, width, depth


def _check_options(options: LRSearchOptions) -> None:
    from tuner.raytune.connection import check_ray_options

    def bad(flag: str, value: Any, want: str) -> TunerError:
        return TunerError(f"{flag} must be {want}, got {value}")

    if options.epochs is not None and not (math.isfinite(options.epochs) and options.epochs > 0):
        raise bad("--epochs", options.epochs, "> 0 (fractions like 0.25 are fine)")
    if options.batch_size < 1:
        raise bad("--batch-size", options.batch_size, "an integer >= 1")
    if not options.cpus_per_trial > 0:
        raise bad("--cpus-per-trial", options.cpus_per_trial, "> 0")
    if options.noise is not None and not (math.isfinite(options.noise) and 0 <= options.noise < 1):
        raise bad("--noise", options.noise, "a relative spread in [0, 1) (0.02 is 2%)")
    if options.parallel < 1:
        raise bad("--parallel", options.parallel, "an integer >= 1")
    if options.max_trials < 2:
        raise bad("--max-trials", options.max_trials, "an integer >= 2")
    check_ray_options(options.num_cpus, options.wait_for_nodes)
    if options.experiment_name is not None and (not options.experiment_name or "/" in options.experiment_name):
        raise TunerError(f"--experiment-name must be a non-empty name without '/', got {options.experiment_name!r}")


def plan_search(options: LRSearchOptions) -> SearchPlan:
    """Resolve the target cell and ask the planner for its LRs; reads the ledger, starts nothing."""
    from tuner.raytune.experiment import check_storage
    from tuner.records.ledger import Ledger, default_ledger_uri
    from tuner.records.rows import dataset_label

    _check_options(options)
    variant, width, depth = _check_variant(options.variant, options.width_mult, options.depth_mult)
    dataset, num_classes, note = choose_dataset(options.dataset, options.data_dir)
    epochs = options.epochs if options.epochs is not None else DEFAULT_EPOCHS.get(dataset, OTHER_EPOCHS)
    label = dataset_label(dataset, options.max_train_examples)
    check_storage(options.storage)
    ledger = Ledger(options.ledger or default_ledger_uri())
    rows = ledger.check().to_pylist()
    params = _count_params(variant, width, depth, num_classes)
    cell = plan_cell(
        rows, variant, epochs, options.batch_size, params, width_mult=width, depth_mult=depth, dataset=label,
        seed=options.seed, noise=options.noise, parallel=options.parallel, max_trials=options.max_trials,
        force=options.force,
    )
    mine = tuple(r for r in rows if r.get("kind") == "pretrain" and r.get("dataset") == label
                 and (r.get("variant"), r.get("width_mult") or 1.0, r.get("depth_mult") or 1.0,
                      float(r.get("epochs") or 0), r.get("batch_size")) == (variant, width, depth, float(epochs),
                                                                             options.batch_size))
    plan = SearchPlan(
        options=options,
        variant=variant,
        width_mult=width,
        depth_mult=depth,
        dataset=dataset,
        dataset_label=label,
        epochs=float(epochs),
        params=params,
        ledger_uri=ledger.uri,
        ledger_rows=len(rows),
        cell=cell,
        rows=mine,
        notes=(note,) if note else (),
    )
    _validate_trainer(plan)  # the trainer's own rules, so --dry-run checks what a run would
    return plan


def trial_config(search: SearchPlan, lr: Any) -> dict[str, Any]:
    """A trial's config: TrainConfig fields (every key a TensorBoard hparam can use)."""
    o = search.options
    config: dict[str, Any] = {
        "variant": search.variant,
        "width_mult": search.width_mult,
        "depth_mult": search.depth_mult,
        "dataset": search.dataset,
        "epochs": search.epochs,
        "lr": lr,
        "batch_size": o.batch_size,
        "seed": o.seed,
        "evals_per_run": o.evals_per_run,
    }
    if o.fast_compile:
        config[FAST_COMPILE] = True
    optional = {
        "data_dir": o.data_dir,
        "resolution": o.resolution,
        "max_train_examples": o.max_train_examples,
        "max_eval_examples": o.max_eval_examples,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    return config


def _validate_trainer(search: SearchPlan) -> None:
    """Check the trial config with the trainer's own rules before Ray starts."""
    from nfnet.errors import NFNetError
    from nfnet.config import TrainConfig, validate

    try:
        fields = {k: v for k, v in trial_config(search, search.first_lr).items() if k != FAST_COMPILE}
        validate(TrainConfig(**fields, workdir="unused"))
    except NFNetError as exc:
        raise TunerError(str(exc)) from None


# ---------------------------------------------------------------- running (Ray)


def _rows_from_results(grid: Any, experiment: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Ledger rows of the trials that reported, and the error files of those that failed."""
    from tuner.raytune.callbacks import checkpoint_uri, ledger_trial_id
    from tuner.records.rows import ledger_row

    rows, failed = [], []
    for result in grid:
        metrics = result.metrics or {}
        if result.error is not None:
            failed.append(f"{result.path}/error.txt")
        if "val_loss" not in metrics:
            continue
        history = result.metrics_dataframe
        best = None
        if history is not None and "val_loss" in history:
            best = float(history["val_loss"].min())
        row = ledger_row(
            ledger_trial_id(experiment, metrics["trial_id"]),
            experiment,
            result.config,
            metrics,
            source=SOURCE,
            checkpoint_uri=checkpoint_uri(result.checkpoint),
            best_val_loss=best,
        )
        if result.error is not None and row["status"] != "diverged":
            row["status"] = "stopped"
        rows.append(row)
    rows.sort(key=lambda r: -r["lr"])
    return rows, failed


def staggered(stagger: str, ray_in_process: bool) -> bool:
    """Whether the first trial compiles alone (`--stagger`): auto staggers on an in-process Ray, whose
    trials share this machine's cores and compilation cache, and not on a cluster, where trials on
    other nodes would only start later."""
    return stagger == "on" or (stagger == "auto" and ray_in_process)


def _run_trials(
    search: SearchPlan, bracket: Bracket, name: str, storage: str, to_stderr: bool, stagger: bool
) -> tuple[list[dict[str, Any]], list[str], list[float], bool]:
    """Run the bracket's rounds as one Tune experiment: (trial rows, error files, LRs that did not
    finish, whether Ctrl-C stopped it)."""
    from ray import tune

    from tuner.raytune.experiment import InterruptWatch, quiet_tune_output, ray_location
    from tuner.raytune.callbacks import NoTuneTensorBoard, ProgressPrinter, trial_dirname
    from tuner.raytune.searcher import BracketSearcher
    from tuner.raytune.slice_trial import tune_trainable
    from tuner.raytune.trainable import train_trial

    storage_at, storage_fs = ray_location(storage)

    o = search.options
    quiet_tune_output()
    searcher = BracketSearcher(bracket, stagger=stagger)
    config = trial_config(search, None)
    config.pop("lr")  # the searcher gives each trial its LR
    tuner = tune.Tuner(
        tune_trainable(train_trial, o.accelerator, o.cpus_per_trial),
        param_space=config,
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", search_alg=searcher,
                                    num_samples=o.max_trials, max_concurrent_trials=o.parallel,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_at,
            storage_filesystem=storage_fs,
            callbacks=[NoTuneTensorBoard(), ProgressPrinter(to_stderr=to_stderr)],
            failure_config=tune.FailureConfig(max_failures=o.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            verbose=0,
            log_to_file=True,
        ),
    )
    with InterruptWatch() as watch:
        grid = tuner.fit()
    rows, failed = _rows_from_results(grid, name)
    searcher.finish()
    return rows, failed, list(searcher.failed), watch.interrupted


def _recorded_row(search: SearchPlan, rows: list[dict[str, Any]], verdict: Verdict, record: dict[str, Any],
                  experiment: str) -> dict[str, Any] | None:
    """The ledger row for the search: the winner's trial with the search record.

    A winner this run did not train (it came from the ledger: an earlier search's
    winner, or a sweep's run of this cell) is recorded again as a copy of its row
    under a new trial id, so the cell's latest lr_search row carries the whole search.
    """
    import json

    from tuner.study.planner import LR_SAME, latest_row

    def same(lr: Any) -> bool:
        return lr is not None and math.isclose(float(lr), verdict.lr, rel_tol=LR_SAME)

    text = json.dumps(json_safe(record), allow_nan=False)
    mine = [r for r in rows if same(r["lr"]) and r["status"] == "finished"]
    if mine:
        return {**mine[0], "search": text}
    earlier = [r for r in search.rows if same(r.get("lr")) and r.get("status") in ("finished", "imported")]
    if not earlier:
        return None
    latest = latest_row(earlier)
    copy = {k: v for k, v in latest.items() if k not in ("code_version", "time")}
    copy.update(trial_id=f"{experiment}/from-{latest['trial_id']}", experiment=experiment, source=SOURCE,
                search=text, status="finished")
    return copy


def run_search(search: SearchPlan, log: Callable[[str], None] = print, to_stderr: bool = False) -> SearchResult:
    """Run the search's rounds on Ray and record the chosen LR in the ledger.

    `log` takes this command's lines; the trials' progress goes to stdout, or to
    stderr with `to_stderr`. A cell already searched to its end starts nothing.
    """
    from tuner.raytune.connection import check_resources, connect, placement_requests
    from tuner.raytune.experiment import experiment_dir, experiment_name, storage_path
    from tuner.records.ledger import Ledger

    o = search.options
    start = time.perf_counter()
    bracket = search.cell.bracket()
    if search.cell.status == "done" or not bracket.next_round_preview():
        return SearchResult(search=search, experiment=None, experiment_dir=None, trials=[],
                            verdict=_previous_verdict(search, bracket), record=search.cell.previous,
                            recorded=None, wall_seconds=time.perf_counter() - start)
    storage = storage_path(o.storage)
    name = o.experiment_name or experiment_name(SOURCE, search.variant, search.epochs, search.width_mult, search.depth_mult)
    path = experiment_dir(storage, name)
    with connect(o.address, num_cpus=o.num_cpus) as connection:
        where = "started Ray in-process" if connection.started else f"joined the Ray cluster at {connection.address}"
        check_resources(placement_requests([search.placement()]), connection, log, o.wait_for_nodes)
        stagger = staggered(o.stagger, connection.started)
        first = "; the first compiles alone, the others start from its cache" if stagger and o.parallel > 1 else ""
        log(f"{where}; up to {o.parallel} trials at once ({o.cpus_per_trial:g} CPU each){first} in {path}")
        rows, failed, incomplete, interrupted = _run_trials(search, bracket, name, storage, to_stderr, stagger)
    verdict = bracket.verdict()
    record = make_record(search.cell, bracket, verdict, incomplete)
    recorded = None
    if verdict.lr is not None:
        recorded = _recorded_row(search, rows, verdict, record, name)
        if recorded is not None:
            Ledger(search.ledger_uri).append([recorded])
    if interrupted and recorded is None and not any(r["status"] == "finished" for r in rows):
        _remove_local(path)  # nothing to look at or continue from
        path = None
    return SearchResult(
        search=search,
        experiment=name,
        experiment_dir=path,
        trials=rows,
        verdict=verdict,
        record=record,
        recorded=recorded,
        wall_seconds=time.perf_counter() - start,
        failed=failed,
        incomplete=incomplete,
        interrupted=interrupted,
    )


def _remove_local(path: str) -> None:
    import shutil

    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)


def _previous_verdict(search: SearchPlan, bracket: Bracket) -> Verdict:
    """Where an already-tuned cell stands: its last search's verdict, or the ledger's runs'."""
    verdict = bracket.verdict()
    previous = search.cell.previous
    if search.cell.status == "done" and previous is not None and verdict.lr is not None:
        return dataclasses.replace(verdict, message=previous.get("message") or verdict.message)
    return verdict


# ---------------------------------------------------------------- command line
