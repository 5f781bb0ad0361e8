"""The learning-rate search: `python -m tuner.lr_search`.

    python -m tuner.lr_search                                  # the embedded default
    python -m tuner.lr_search --variant micro --epochs 0.25 --dry-run
    python -m tuner.lr_search --variant F0 --epochs 1 --batch-size 4096 --dataset parquet:gs://bucket/imagenet \\
        --address auto --storage gs://bucket/nfscale --ledger gs://bucket/nfscale/ledger --cpus-per-trial 8 --accelerator tpu

For a target cell (variant, epoch budget) the planner (`tuner.planner.plan_cell`)
reads the ledger: it predicts the cell's optimal LR from every tuned cell (a
least-squares law in log params and log epochs, else the paper's monotone bound,
else the paper's 1.6 at batch 4096 scaled), takes the seed noise from the ledger's
seed repeats (else `--noise`), and starts from what the ledger already holds for
the cell. The search (`tuner.planner.Bracket`) runs the pair of grid LRs around the
prediction at once as Ray Tune trials, then continues up or down on the factor-2
grid while a neighbour wins by more than the noise, until the best LR is bracketed
by a worse neighbour on each side (or ties its neighbour within the noise). The
best is recorded as ONE ledger row (source `lr_search`) whose `search` column
says how it was chosen: every trial, the rounds, the prediction and its source,
the noise, whether it was bracketed. The other trials stay in the Ray results
and TensorBoard. A cell already searched to its end is not searched again
(`--force` does); one that stopped unbracketed continues where it stopped.

With no arguments it runs the embedded default: Ray in-process, `nano` on
Fashion-MNIST (scikit-learn's digits when the Debian package is missing) for a
fraction of an epoch at batch 128 (docs/benchmarks.md, "Tuner overhead").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuner.errors import TunerError
from tuner.experiment import DEFAULT_NODE_WAIT_S, INTERRUPTED_EXIT, NODE_WAIT_HELP
from tuner.placement import ACCELERATOR_HELP
from tuner.planner import (
    COMPLETE_STOPS,
    DEFAULT_MAX_TRIALS,
    DEFAULT_NOISE,
    DEFAULT_PARALLEL,
    SEARCH_SOURCE,
    Bracket,
    CellSearch,
    Verdict,
    cell_label,
    make_record,
    parse_label,
    plan_cell,
)
from tuner.trainable import FAST_COMPILE

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
        """Where each trial runs and what it asks Ray for (tuner.placement.TrialPlacement)."""
        from tuner.placement import placement_for_config

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
        from tuner.experiment import tensorboard_hint

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


def _count_params(variant: str, width_mult: float, depth_mult: float, num_classes: int) -> int:
    import jax

    # Shapes only, on the driver's CPU: the driver must never take accelerators
    # its trials need (the setting is this process's, not its children's).
    jax.config.update("jax_platforms", "cpu")
    from nfnet.counting import count_params
    from nfnet.variants import get_variant

    return count_params(get_variant(variant, width_mult, depth_mult), num_classes=num_classes)


def _check_variant(variant: str, width_mult: float, depth_mult: float) -> tuple[str, float, float]:
    from nfnet.errors import NFNetError
    from nfnet.variants import get_variant

    base, w, d = parse_label(variant)
    try:
        get_variant(base, w * width_mult, d * depth_mult)
    except NFNetError as exc:
        raise TunerError(str(exc)) from None
    return base, w * width_mult, d * depth_mult


def _check_options(options: LRSearchOptions) -> None:
    from tuner.experiment import check_ray_options

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
    from tuner.experiment import check_storage, storage_path
    from tuner.ledger import Ledger, default_ledger_uri
    from tuner.trainable import dataset_label

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
    from nfnet.config import TrainConfig, validate
    from nfnet.errors import NFNetError

    try:
        fields = {k: v for k, v in trial_config(search, search.first_lr).items() if k != FAST_COMPILE}
        validate(TrainConfig(**fields, workdir="unused"))
    except NFNetError as exc:
        raise TunerError(str(exc)) from None


# ---------------------------------------------------------------- running (Ray)


def _rows_from_results(grid: Any, experiment: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Ledger rows of the trials that reported, and the error files of those that failed."""
    from tuner.experiment import checkpoint_uri, ledger_trial_id
    from tuner.trainable import ledger_row

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

    from tuner.experiment import (
        InterruptWatch,
        NoTuneTensorBoard,
        ProgressPrinter,
        quiet_tune_output,
        ray_location,
        trial_dirname,
    )
    from tuner.lr_searcher import BracketSearcher
    from tuner.placement import tune_trainable
    from tuner.trainable import train_trial

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

    from tuner.planner import LR_SAME, latest_row

    def same(lr: Any) -> bool:
        return lr is not None and math.isclose(float(lr), verdict.lr, rel_tol=LR_SAME)

    text = json.dumps(_json_safe(record), allow_nan=False)
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
    from tuner.experiment import (
        check_resources,
        connect,
        experiment_dir,
        experiment_name,
        placement_requests,
        storage_path,
    )
    from tuner.ledger import Ledger

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


# ---------------------------------------------------------------- output


def describe_plan(search: SearchPlan) -> list[str]:
    o, cell = search.options, search.cell
    pred = cell.prediction
    lines = [
        f"target: {search.label} ({search.params:,} params) on {search.dataset_label}, "
        f"{search.epochs:g} epochs at batch {o.batch_size}",
        *(f"note: {note}" for note in search.notes),
        f"ledger: {search.ledger_uri} ({search.ledger_rows} rows)",
        f"prediction ({pred.source}): {pred.detail}",
    ]
    if pred.bound is not None:
        for b in pred.bound.bounding_cells:
            mark = "  <- binds" if b == pred.bound.binding_cell else ""
            lines.append(f"  bound: {b.variant} at {b.epochs:g} epochs: lr {b.lr:g} at batch {b.batch_size} "
                         f"-> {b.transferred_lr:g} at batch {o.batch_size}{mark}")
    lines.append(f"noise: {cell.noise.describe()}; a win needs a gap over "
                 f"{100 * math.sqrt(2) * cell.noise.value:.3g}% (sqrt 2 x the noise)")
    lines.append(f"search: {cell.describe()}")
    if cell.status != "done":
        lines.append(f"placement: {search.placement().describe()}")
        mode = " (XLA fast compile)" if o.fast_compile else ""
        lines.append(f"rounds of up to {cell.parallel} trials at once, at most {cell.max_trials} trials{mode}")
    return lines


def describe_result(result: SearchResult, rerun: str | None = None) -> list[str]:
    """The closing lines; `rerun` is the command that ran (default: this process's), for advice."""
    from tuner.experiment import command_line, results_table

    rerun = rerun or command_line("tuner.lr_search")
    v = result.verdict
    lines = []
    if result.trials:
        lines += ["", "results:", results_table(result.trials), ""]
    if result.record is not None and result.record.get("rounds"):
        rounds = " / ".join(", ".join(f"{lr:g}" for lr in r) for r in result.record["rounds"])
        lines.append(f"rounds: {rounds}")
    if result.interrupted:
        lines.append("interrupted (Ctrl-C)")
    if v.lr is None:
        lines.append(f"no LR chosen: {v.message}; nothing recorded")
        if result.interrupted:
            lines.append(f"no trial finished; start the search again with: {rerun}")
    elif result.experiment is None:
        lines.append(f"chosen lr: {v.lr:g} (val_loss {v.loss:.4g}); already tuned, nothing run")
        lines.append(f"  {v.message}")
        lines.append(f"to search it again from scratch: {rerun} --force")
    else:
        lines.append(f"chosen lr: {v.lr:g} (val_loss {v.loss:.4g}), {v.stop}")
        lines.append(f"  {v.message}")
        if result.incomplete:
            missing = ", ".join(f"{lr:g}" for lr in result.incomplete)
            lines.append(f"note: the trial(s) at lr {missing} did not finish: the search stopped unbracketed")
            lines.append(f"continue it with: {rerun}")
        elif v.stop not in COMPLETE_STOPS:
            lines.append("note: not bracketed")
            lines.append(f"continue the search with: {rerun}")
        if result.recorded is not None:
            lines.append(f"recorded in ledger {result.search.ledger_uri} as {result.recorded['trial_id']}")
    for path in result.failed:
        lines.append(f"failed trial: {path}")
    if result.experiment_dir:
        lines += [f"TensorBoard logs: {result.experiment_dir}", f"  {result.tensorboard}"]
    if result.ok and not result.interrupted:
        ledger = result.search.ledger_uri
        lines.append(f"next: tune another cell (e.g. {_other_cell(result.search)}), then summarise the ledger "
                     f"with: python -m tuner.report --ledger {ledger} --out report")
    lines.append(f"took {result.wall_seconds:.0f}s")
    return lines


def _other_cell(search: SearchPlan) -> str:
    """A command for the same search at twice the epoch budget: the next cell of a scaling study."""
    parts = ["python -m tuner.lr_search", f"--variant {search.label}", f"--epochs {2 * search.epochs:g}"]
    o = search.options
    if o.dataset:
        parts.append(f"--dataset {o.dataset}")
    if o.ledger:
        parts.append(f"--ledger {o.ledger}")
    return "`" + " ".join(parts) + "`"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser, resolution

    p = FlagParser(
        prog="python -m tuner.lr_search",
        description="Tune one (variant, epoch budget) cell's learning rate: predict its optimum from the ledger, "
        "run the pair of grid LRs around it at once on Ray, continue up or down until the best is bracketed "
        "(or ties within the seed noise), and record the best with how it was chosen.",
    )
    p.add_argument("--variant", default=DEFAULT_VARIANT,
                   help="model variant to tune: nano, micro, mini, small, F0..F7 or F0+..F7+, optionally with "
                   f"-w<mult>/-d<mult> suffixes (default: {DEFAULT_VARIANT})")
    p.add_argument("--width-mult", type=float, default=1.0,
                   help="multiply the variant's widths by this factor; the ledger files the cell as "
                   "<variant>-w<mult> (default: 1.0)")
    p.add_argument("--depth-mult", type=float, default=1.0,
                   help="multiply the variant's block counts by this factor; the ledger files the cell as "
                   "<variant>-d<mult> (default: 1.0)")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"epoch budget of every trial (default: {DEFAULT_EPOCHS['fashion_mnist']:g} on "
                   f"Fashion-MNIST, {DEFAULT_EPOCHS['digits']:g} on digits, else {OTHER_EPOCHS:g})")
    p.add_argument("--dataset", default=None,
                   help="dataset spec, as nfnet.train --dataset (default: fashion_mnist when installed, else digits)")
    p.add_argument("--data-dir", default=None,
                   help="where the dataset is read from when its spec names no location, as nfnet.train "
                   "--data-dir (default: the dataset's usual place)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="global batch size of every trial; the planner scales LRs tuned at other batch sizes "
                   f"linearly (default: {DEFAULT_BATCH})")
    p.add_argument("--resolution", type=resolution, default=None,
                   help="training image size in px, at least 16 (default: the variant's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every trial's initial parameters and data order (default: 0)")
    p.add_argument("--max-train-examples", type=int, default=None,
                   help="train on a fixed subset of this many examples; the ledger files it as dataset[n] "
                   "(default: the whole training set)")
    p.add_argument("--max-eval-examples", type=int, default=DEFAULT_MAX_EVAL,
                   help="evaluate every trial on a fixed subset of this many held-out examples "
                   f"(default: {DEFAULT_MAX_EVAL})")
    p.add_argument("--evals-per-run", type=int, default=DEFAULT_EVALS,
                   help="held-out evaluations per trial, evenly spaced; a trial reports and checkpoints "
                   f"there (default: {DEFAULT_EVALS})")
    p.add_argument("--ledger", default=None, help="ledger directory or gs:// URI (default: $NFSCALE_LEDGER or results/ledger)")
    p.add_argument("--storage", default=None, help="Ray results directory or gs:// URI (default: results/)")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster to run on, host:port or auto (default: Ray in-process)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the in-process Ray (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs Ray reserves for each trial, per host on a TPU slice (default: 1.0)")
    p.add_argument("--accelerator", default="cpu", help=f"where trials run: {ACCELERATOR_HELP} (default: cpu)")
    p.add_argument("--experiment-name", default=None,
                   help="name of the Ray experiment under --storage (default: lr_search-<variant>-e<epochs>-<time>)")
    p.add_argument("--fast-compile", action="store_true",
                   help="XLA with most optimizations off: compiles ~2x faster, steps run ~2x slower; "
                   "pays only for very short CPU runs (see docs/benchmarks.md)")
    p.add_argument("--noise", type=float, default=None,
                   help="relative seed-to-seed spread of a final loss; a win needs a gap over sqrt(2) x it "
                   f"(default: the median of the ledger's seed repeats of this dataset, else {DEFAULT_NOISE:g})")
    p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help=f"trials per round, run at once when the cluster has room (default: {DEFAULT_PARALLEL})")
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help="trials this search may run before it stops unbracketed; a rerun continues "
                   f"(default: {DEFAULT_MAX_TRIALS})")
    p.add_argument("--stagger", choices=("auto", "on", "off"), default="auto",
                   help="start the first trial alone and the others after its first report, so they take its "
                   "compiled program from the persistent cache; auto: on with Ray in-process, off on a cluster "
                   "(default: auto)")
    p.add_argument("--force", action="store_true",
                   help="search a cell the ledger already tunes, from scratch (its own runs are not reused)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial from its last checkpoint (default: 2)")
    p.add_argument("--wait-for-nodes", type=float, default=DEFAULT_NODE_WAIT_S, metavar="SECONDS", help=NODE_WAIT_HELP)
    p.add_argument("--dry-run", action="store_true", help="print the LRs and the ledger cells that bound them; run nothing")
    p.add_argument("--json", action="store_true", help="print the plan or the result as one JSON object on stdout")
    return p


def options_from_args(args: argparse.Namespace) -> LRSearchOptions:
    names = {f.name for f in dataclasses.fields(LRSearchOptions)}
    return LRSearchOptions(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    from tuner.experiment import command_line

    args = build_parser().parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    rerun = command_line("tuner.lr_search", argv)

    def log(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        from nfnet.errors import NFNetError

        try:
            search = plan_search(options_from_args(args))
            for line in describe_plan(search):
                log(line)
            if args.dry_run:
                if args.json:
                    print(json.dumps(_json_safe({"dry_run": True, **search.to_dict()})))
                return 0
            result = run_search(search, log, to_stderr=args.json)
        except NFNetError as exc:
            raise TunerError(str(exc)) from None
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A second Ctrl-C: Tune stopped without its last snapshot, and nothing was recorded.
        print(f"interrupted (Ctrl-C) before the search was recorded; start it again with: {rerun}", file=sys.stderr)
        return INTERRUPTED_EXIT
    for line in describe_result(result, rerun):
        log(line)
    if args.json:
        print(json.dumps(_json_safe({"dry_run": False, **result.to_dict()})))
    if result.interrupted:
        return INTERRUPTED_EXIT
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
