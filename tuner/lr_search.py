"""The paper's two-trial learning-rate search: `python -m tuner.lr_search`.

    python -m tuner.lr_search                                  # the embedded default
    python -m tuner.lr_search --variant micro --epochs 0.25 --dry-run
    python -m tuner.lr_search --variant F0 --epochs 1 --batch-size 4096 --dataset parquet:gs://bucket/imagenet \\
        --address auto --storage gs://bucket/nfscale --ledger gs://bucket/nfscale/ledger --cpus-per-trial 8 --accelerator tpu

For a target cell (variant, epoch budget) the planner (`tuner.planner`) reads the
ledger and bounds the optimal LR from above by the smallest tuned optimum among
cells no larger and no longer; the two trials at that bound and half of it run
at once as Ray Tune trials, the better one (lowest final held-out loss) is the
cell's optimum and is recorded as ONE ledger row (source `lr_search`): the row
the planner reads as the cell's tuned LR. The other trial stays in the Ray
results and TensorBoard. With `--extend`, when the lower LR wins by a wide margin
(the paper's slow-fall assumption may be breaking) a third trial at a quarter
of the bound runs, and the best of the three is recorded. A pair in which a trial
does not finish (it failed for good after its retries, or was interrupted)
records nothing and exits with status 1: one trial is not a search.

With no arguments it runs the embedded default: Ray in-process, `nano` on
Fashion-MNIST (scikit-learn's digits when the Debian package is missing) for a
fraction of an epoch at batch 128: 1 min 20 s on a quiet 2-core CPU (40 s when
the persistent compilation cache already holds its programs), up to 5 min when other
work shares the cores (docs/benchmarks.md, "Tuner overhead").
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
from tuner.placement import ACCELERATOR_HELP
from tuner.planner import WIDE_MARGIN, Decision, Plan, cell_label, decide, parse_label, plan
from tuner.trainable import FAST_COMPILE

SOURCE = "lr_search"
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
    extend: bool = False
    margin: float = WIDE_MARGIN
    max_failures: int = 2


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
    plan: Plan
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return cell_label(self.variant, self.width_mult, self.depth_mult)

    def placement(self) -> Any:
        """Where each trial runs and what it asks Ray for (tuner.placement.TrialPlacement)."""
        from tuner.placement import placement_for_config

        return placement_for_config(trial_config(self, self.plan.lrs[0]), self.options.accelerator,
                                    self.options.cpus_per_trial)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.label,
            "dataset": self.dataset_label,
            "epochs": self.epochs,
            "batch_size": self.options.batch_size,
            "params": self.params,
            "lrs": list(self.plan.lrs),
            "ledger": self.ledger_uri,
            "ledger_rows": self.ledger_rows,
            "notes": list(self.notes),
            "plan": self.plan.to_dict(),
            "placement": self.placement().to_dict(),
        }


@dataclass(frozen=True)
class SearchResult:
    """The trials' rows, the decision, and the row recorded in the ledger (if any)."""

    search: SearchPlan
    experiment: str
    experiment_dir: str
    trials: list[dict[str, Any]]
    decision: Decision | None  # None when a planned trial did not complete: nothing is decided
    recorded: dict[str, Any] | None
    extended: bool
    wall_seconds: float
    failed: list[str] = field(default_factory=list)
    extension_dir: str | None = None  # the third trial's experiment, when --extend ran one
    incomplete: list[float] = field(default_factory=list)

    @property
    def chosen_lr(self) -> float | None:
        return self.decision.winner if self.decision else None

    @property
    def tensorboard(self) -> str:
        from tuner.experiment import tensorboard_hint

        if self.extension_dir is None:
            return tensorboard_hint(self.experiment_dir)
        return f"tensorboard --logdir_spec two:{self.experiment_dir},third:{self.extension_dir}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "search": self.search.to_dict(),
            "experiment": self.experiment,
            "experiment_dir": self.experiment_dir,
            "extension_dir": self.extension_dir,
            "trials": self.trials,
            "decision": self.decision.to_dict() if self.decision else None,
            "chosen_lr": self.chosen_lr,
            "recorded_trial_id": self.recorded["trial_id"] if self.recorded else None,
            "extended": self.extended,
            "failed": self.failed,
            "incomplete_lrs": self.incomplete,
            "ledger": self.search.ledger_uri,
            "tensorboard": self.tensorboard,
            "wall_seconds": self.wall_seconds,
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
    try:
        return "fashion_mnist", _num_classes("fashion_mnist", data_dir), None
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
    def bad(flag: str, value: Any, want: str) -> TunerError:
        return TunerError(f"{flag} must be {want}, got {value}")

    if options.epochs is not None and not (math.isfinite(options.epochs) and options.epochs > 0):
        raise bad("--epochs", options.epochs, "> 0 (fractions like 0.25 are fine)")
    if options.batch_size < 1:
        raise bad("--batch-size", options.batch_size, "an integer >= 1")
    if not options.cpus_per_trial > 0:
        raise bad("--cpus-per-trial", options.cpus_per_trial, "> 0")
    if options.margin < 0:
        raise bad("--margin", options.margin, ">= 0")
    if options.experiment_name is not None and (not options.experiment_name or "/" in options.experiment_name):
        raise TunerError(f"--experiment-name must be a non-empty name without '/', got {options.experiment_name!r}")


def plan_search(options: LRSearchOptions) -> SearchPlan:
    """Resolve the target cell and ask the planner for its LRs; reads the ledger, starts nothing."""
    from tuner.ledger import Ledger, default_ledger_uri
    from tuner.trainable import dataset_label

    _check_options(options)
    variant, width, depth = _check_variant(options.variant, options.width_mult, options.depth_mult)
    dataset, num_classes, note = choose_dataset(options.dataset, options.data_dir)
    epochs = options.epochs if options.epochs is not None else DEFAULT_EPOCHS.get(dataset, OTHER_EPOCHS)
    label = dataset_label(dataset, options.max_train_examples)
    ledger = Ledger(options.ledger or default_ledger_uri())
    rows = ledger.read().to_pylist()
    params = _count_params(variant, width, depth, num_classes)
    the_plan = plan(
        rows,
        variant,
        epochs,
        options.batch_size,
        params,
        width_mult=width,
        depth_mult=depth,
        dataset=label,
    )
    return SearchPlan(
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
        plan=the_plan,
        notes=(note,) if note else (),
    )


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
    from nfnet.train import TrainConfig, validate

    try:
        fields = {k: v for k, v in trial_config(search, search.plan.lrs[0]).items() if k != FAST_COMPILE}
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


def _run_trials(
    search: SearchPlan, lrs: list[float], name: str, storage: str, to_stderr: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    from ray import tune

    from tuner.experiment import HParamsLoggerCallback, ProgressPrinter, quiet_tune_output
    from tuner.placement import tune_trainable
    from tuner.trainable import train_trial

    o = search.options
    quiet_tune_output()
    tuner = tune.Tuner(
        tune_trainable(train_trial, o.accelerator, o.cpus_per_trial),
        param_space=trial_config(search, tune.grid_search(lrs)),
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", max_concurrent_trials=len(lrs)),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[HParamsLoggerCallback(), ProgressPrinter(to_stderr=to_stderr)],
            failure_config=tune.FailureConfig(max_failures=o.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            verbose=0,
            log_to_file=True,
        ),
    )
    return _rows_from_results(tuner.fit(), name)


def extension_lr(decision: Decision, extend: bool) -> float | None:
    """The third trial's LR: one grid step below the winner, when asked for and the win was wide."""
    if extend and decision.wide_margin and decision.suggest_extension is not None:
        return decision.suggest_extension
    return None


def incomplete_lrs(lrs: list[float], rows: list[dict[str, Any]]) -> list[float]:
    """LRs whose trial did not reach the end of its schedule (failed for good, or interrupted)."""
    complete = {r["lr"] for r in rows if r["status"] != "stopped"}
    return [lr for lr in lrs if lr not in complete]


def _decide(rows: list[dict[str, Any]], margin: float) -> Decision:
    return decide([(r["lr"], r["final_val_loss"], r["status"]) for r in rows if r["status"] != "stopped"], margin)


def run_search(search: SearchPlan, log: Callable[[str], None] = print, to_stderr: bool = False) -> SearchResult:
    """Run the planned trials (and the extension), record the winner in the ledger.

    `log` takes this command's lines; the trials' progress goes to stdout, or to
    stderr with `to_stderr`.
    """
    from tuner.experiment import connect, experiment_dir, experiment_name, storage_path
    from tuner.ledger import Ledger

    o = search.options
    _validate_trainer(search)
    start = time.perf_counter()
    storage = storage_path(o.storage)
    name = o.experiment_name or experiment_name(SOURCE, search.variant, search.epochs, search.width_mult, search.depth_mult)
    path = experiment_dir(storage, name)
    lrs = list(search.plan.lrs)
    with connect(o.address, num_cpus=o.num_cpus) as connection:
        where = "started Ray in-process" if connection.started else f"joined the Ray cluster at {connection.address}"
        log(f"{where}; running {len(lrs)} trials at once ({o.cpus_per_trial:g} CPU each) in {path}")
        rows, failed = _run_trials(search, lrs, name, storage, to_stderr)
        incomplete = incomplete_lrs(lrs, rows)
        decision = None if incomplete else _decide(rows, o.margin)
        extended, extension_dir = False, None
        third = extension_lr(decision, o.extend) if decision else None
        if third is not None:
            log(f"{decision.message}; --extend: running a third trial at lr {third:g}")
            more, more_failed = _run_trials(search, [third], f"{name}-extend", storage, to_stderr)
            rows, failed, extended = rows + more, failed + more_failed, True
            extension_dir = experiment_dir(storage, f"{name}-extend")
            if incomplete_lrs([third], more):
                incomplete.append(third)  # the two-trial decision stands
            else:
                decision = _decide(rows, o.margin)
    recorded = None
    if decision is not None and decision.winner is not None:
        recorded = next(r for r in rows if r["lr"] == decision.winner and r["status"] != "stopped")
        Ledger(search.ledger_uri).append([recorded])
    return SearchResult(
        search=search,
        experiment=name,
        experiment_dir=path,
        trials=rows,
        decision=decision,
        recorded=recorded,
        extended=extended,
        wall_seconds=time.perf_counter() - start,
        failed=failed,
        extension_dir=extension_dir,
        incomplete=incomplete,
    )


# ---------------------------------------------------------------- output


def describe_plan(search: SearchPlan) -> list[str]:
    o, p = search.options, search.plan
    lines = [
        f"target: {search.label} ({search.params:,} params) on {search.dataset_label}, "
        f"{search.epochs:g} epochs at batch {o.batch_size}",
        *(f"note: {note}" for note in search.notes),
        f"ledger: {search.ledger_uri} ({search.ledger_rows} rows)",
        f"plan: {p.reason}",
    ]
    for cell in p.bounding_cells:
        mark = "  <- binds" if cell == p.binding_cell else ""
        lines.append(
            f"  bound: {cell.variant} at {cell.epochs:g} epochs: lr {cell.lr:g} at batch {cell.batch_size} "
            f"-> {cell.transferred_lr:g} at batch {o.batch_size}{mark}"
        )
    lines.append(f"placement: {search.placement().describe()}")
    mode = " (XLA fast compile)" if o.fast_compile else ""
    lines.append(f"trials: lr {' and '.join(f'{lr:g}' for lr in p.lrs)}{mode}")
    if o.extend:
        lines.append(f"--extend: a third trial at lr {p.upper_bound / 4:g} if lr {p.upper_bound / 2:g} wins by a wide margin")
    return lines


def describe_result(result: SearchResult) -> list[str]:
    from tuner.experiment import results_table

    lines = ["", "results:", results_table(result.trials), ""]
    d = result.decision
    if d is None:
        missing = ", ".join(f"{lr:g}" for lr in result.incomplete)
        lines.append(f"nothing recorded: the trial(s) at lr {missing} did not finish; rerun the search")
    elif d.winner is None:
        lines.append(f"no LR chosen: {d.message}; nothing recorded")
    else:
        lines.append(f"chosen lr: {d.winner:g} (val_loss {d.winner_loss:.4g})")
        if d.wide_margin and not result.extended:
            lines.append(f"note: {d.message}; rerun with --extend to try it")
        elif d.wide_margin or d.above_bound:
            lines.append(f"note: {d.message}")
        if d.above_bound and result.search.plan.binding_cell is None:
            lines.append("note: the bound is the paper's default, not a tuned cell's optimum; tune this cell over "
                         "LRs above it first (a grid with tuner.sweep, or tuner.ledger import of a result you "
                         "trust), then bound the next cells by it")
        if result.incomplete:
            lines.append(f"note: the third trial at lr {result.incomplete[-1]:g} did not finish")
        lines.append(f"recorded in ledger {result.search.ledger_uri} as {result.recorded['trial_id']}")
    for path in result.failed:
        lines.append(f"failed trial: {path}")
    lines += [
        f"TensorBoard logs: {', '.join(filter(None, (result.experiment_dir, result.extension_dir)))}",
        f"  {result.tensorboard}",
        f"took {result.wall_seconds:.0f}s",
    ]
    return lines


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
    p = argparse.ArgumentParser(
        prog="python -m tuner.lr_search",
        description="Tune one (variant, epoch budget) cell's learning rate with the paper's two trials: "
        "the upper bound from the ledger and half of it, run at once on Ray; the better is recorded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--variant", default=DEFAULT_VARIANT, help="model variant (nano, micro, ..., F0-F7, F0+...; -w/-d suffixes allowed)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--depth-mult", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=None,
                   help=f"epoch budget (default {DEFAULT_EPOCHS['fashion_mnist']:g} on Fashion-MNIST, "
                   f"{DEFAULT_EPOCHS['digits']:g} on digits, else {OTHER_EPOCHS:g})")
    p.add_argument("--dataset", default=None, help="dataset spec (default: fashion_mnist when installed, else digits)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--resolution", type=int, default=None, help="training resolution (default: the variant's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-examples", type=int, default=None,
                   help="train on a fixed subset of this many examples (the ledger files it as dataset[n])")
    p.add_argument("--max-eval-examples", type=int, default=DEFAULT_MAX_EVAL)
    p.add_argument("--evals-per-run", type=int, default=DEFAULT_EVALS)
    p.add_argument("--ledger", default=None, help="ledger directory or gs:// URI (default: $NFSCALE_LEDGER or results/ledger)")
    p.add_argument("--storage", default=None, help="Ray results directory or gs:// URI (default: results/)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (host:port or auto); default: Ray in-process")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the in-process Ray (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--accelerator", default="cpu", help=f"where trials run: {ACCELERATOR_HELP}")
    p.add_argument("--experiment-name", default=None, help="default: lr_search-<variant>-e<epochs>-<time>")
    p.add_argument("--fast-compile", action="store_true",
                   help="XLA with most optimizations off: compiles ~2x faster, steps run ~2x slower; "
                   "pays only for very short CPU runs (see docs/benchmarks.md)")
    p.add_argument("--extend", action="store_true",
                   help="run a third trial at a quarter of the bound when the lower LR wins by a wide margin")
    p.add_argument("--margin", type=float, default=WIDE_MARGIN, help="relative loss gap that counts as a wide margin")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the LRs and the ledger cells that bound them; run nothing")
    p.add_argument("--json", action="store_true", help="print the plan or the result as one JSON object on stdout")
    return p


def options_from_args(args: argparse.Namespace) -> LRSearchOptions:
    names = {f.name for f in dataclasses.fields(LRSearchOptions)}
    return LRSearchOptions(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

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
    for line in describe_result(result):
        log(line)
    if args.json:
        print(json.dumps(_json_safe({"dry_run": False, **result.to_dict()})))
    return 1 if result.decision is None else 0


if __name__ == "__main__":
    sys.exit(main())
