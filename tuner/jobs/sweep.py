"""A sweep as one Ray Tune experiment: its options, its plan (preset, searcher, scheduler,
budget, placement), running it, resuming it and its summary. The command is tuner/sweep.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from search_spaces import CELL_KEYS, Preset, PresetSpace, get_preset, grid_space, parse_point
from search_spaces.space import DistinctCellSampler, GridCellSampler
from tuner.errors import TunerError
from tuner.raytune.connection import DEFAULT_NODE_WAIT_S, check_ray_options, check_resources, connect, placement_requests
from tuner.raytune.experiment import InterruptWatch, DEFAULT_KEEP_CHECKPOINTS, check_experiment_name, checkpoint_config, check_storage, experiment_dir, open_filesystem, quiet_tune_output, ray_location, results_table, storage_path, tensorboard_hint
from tuner.raytune.callbacks import LedgerCallback, NoTuneTensorBoard, ProgressPrinter, trial_dirname
from tuner.records.ledger import Ledger
from tuner.records.cells import cell_label
from tuner.raytune.trainable import FAST_COMPILE
from tuner.jobs.overrides import parse_overrides
from nfnet.metrics import json_safe
from tuner.records.rows import finite
from tuner.raytune.compile_cache import use_fast_compile

DEFAULT_PRESET = "cpu-smoke"
SOURCE = "sweep"
METRIC, MODE = "val_loss", "min"
# Written into the experiment directory; --resume reads it back.
SETTINGS_FILE = "nfscale_sweep.json"
EXPERIMENT_PREFIX = "sweep-"
# TPE's random start-up phase: at most Optuna's default of 10 trials, and at most
# half of a small sweep, so TPE gets to choose the rest.
MAX_STARTUP = 10


@dataclass(frozen=True)
class SweepOptions:
    """Everything `python -m tuner.sweep` takes; the flags map one to one."""

    preset: str | None = None
    cpu: bool = False
    grid: bool = False
    num_samples: int | None = None
    points: tuple[str, ...] = ()
    budget_flops: float | None = None
    budget_device_hours: float | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    accelerator: str = "cpu"
    fast_compile: bool | None = None
    max_failures: int = 2
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS
    resume: bool = False
    skip_recorded: bool = False
    name: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    storage: str | None = None
    ledger: str | None = None
    optuna_storage: str | None = None
    study_name: str | None = None
    seed: int = 0
    dataset: str | None = None
    data_dir: str | None = None
    overrides: tuple[str, ...] = ()
    then_finetune: bool = False
    finetune_dataset: str | None = None
    finetune_resolution: int | None = None
    finetune_top_k: int = 1
    finetune_lrs: tuple[float, ...] = ()
    finetune_epochs: float | None = None
    wait_for_nodes: float = DEFAULT_NODE_WAIT_S
    json: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved from its options: what runs, where, with what."""

    preset: Preset
    experiment: str
    storage: str
    base_config: dict[str, Any]
    mode: str  # "optuna" or "grid"
    num_samples: int
    points: list[dict[str, Any]]
    startup: int
    accelerator: str
    cpus_per_trial: float
    placements: dict[str, Any]  # variant label -> tuner.placement.trial.TrialPlacement
    max_concurrent: int | None
    budget: tuple[str, float] | None
    ledger: str
    optuna_storage: str | None
    study_name: str
    seed: int
    max_failures: int
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS
    notes: list[str] = field(default_factory=list)
    recorded: int = 0  # grid cells left out because the ledger holds them (--skip-recorded)

    @property
    def path(self) -> str:
        return experiment_dir(self.storage, self.experiment)

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset.name,
            "experiment": self.experiment,
            "path": self.path,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "points": self.points,
            "startup_trials": self.startup,
            "space": grid_space(self.preset),
            "cells": len(self.preset.cells()),
            "recorded_cells_skipped": self.recorded,
            "base_config": self.base_config,
            "accelerator": self.accelerator,
            "cpus_per_trial": self.cpus_per_trial,
            "placements": {label: p.describe() for label, p in self.placements.items()},
            "resources_per_trial": {label: p.resources for label, p in self.placements.items()},
            "max_concurrent": self.max_concurrent,
            "budget": None if self.budget is None else {"unit": self.budget[0], "total": self.budget[1]},
            "ledger": self.ledger,
            "optuna_storage": self.optuna_storage,
            "study_name": self.study_name,
            "seed": self.seed,
            "max_failures": self.max_failures,
            "keep_checkpoints": self.keep_checkpoints,
            "scheduler": {
                "grace_period": self.preset.grace_period,
                "reduction_factor": self.preset.reduction_factor,
            },
            "notes": self.notes,
        }

    def describe(self) -> str:
        budget = "none" if self.budget is None else f"{self.budget[1]:g} {self.budget[0]}"
        lines = [
            self.preset.describe(),
            f"experiment {self.experiment} at {self.path}",
            f"search: {self.mode}, {self.num_samples} trials"
            + (f" ({self.startup} distinct start-up cells, then TPE)" if self.mode == "optuna" else "")
            + (f" ({self.recorded} of {len(self.preset.cells())} cells already in the ledger)"
               if self.recorded else ""),
            f"scheduler: GroupedASHA per (variant, epochs), rungs from {self.preset.grace_period:g} of each run, "
            f"reduction factor {self.preset.reduction_factor:g}",
            f"compute budget: {budget}; concurrency: {self.max_concurrent or 'as resources allow'}; "
            f"retries: {self.max_failures}; checkpoints kept per trial: the {self.keep_checkpoints} best "
            "and the latest",
            *(f"placement: {p.describe()}" for p in self.placements.values()),
            f"ledger: {self.ledger}",
            "trainer: " + ", ".join(f"{k}={v}" for k, v in sorted(self.base_config.items())),
        ]
        if self.optuna_storage:
            lines.append(f"optuna study {self.study_name} in {self.optuna_storage}")
        if self.mode == "optuna":
            for point in self.points:
                lines.append(f"  start point: {point['variant']} epochs={point['epochs']:g} lr={point['lr']:g}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did: its ledger rows, the best one, the compute used."""

    plan_json: dict[str, Any]
    experiment: str
    path: str
    rows: list[dict[str, Any]]
    trials: int
    flops: float | None  # None when a trial's FLOPs are unknown
    device_hours: float
    budget: tuple[str, float] | None
    finetune: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C; `--resume` continues it

    @property
    def best(self) -> dict[str, Any] | None:
        done = [r for r in self.rows if r["status"] == "finished" and finite(r.get("final_val_loss"))]
        return min(done, key=lambda r: r["final_val_loss"]) if done else None

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "path": self.path,
            "trials": self.trials,
            "flops": self.flops,
            "device_hours": self.device_hours,
            "budget": None if self.budget is None else {"unit": self.budget[0], "total": self.budget[1]},
            "best": None if self.best is None else json_safe(self.best),
            "rows": [json_safe(r) for r in self.rows],
            "ledger": self.plan_json.get("ledger"),
            "tensorboard": tensorboard_hint(self.path),
            "finetune": [json_safe(r) for r in self.finetune],
            "interrupted": self.interrupted,
        }


# ---------------------------------------------------------------- pure parts


def group_by_cell(config: Mapping[str, Any], result: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """GroupedASHA's group: (variant label with multipliers, epoch budget), from the config.

    The trainer reports the bare variant name, so `nano` and `nano-w2` would share
    rungs if grouped by the result; the config keeps the multipliers.
    """
    if config.get("variant") is None or config.get("epochs") is None:
        return None
    label = cell_label(str(config["variant"]), float(config.get("width_mult", 1.0)),
                       float(config.get("depth_mult", 1.0)))
    return label, float(config["epochs"])


def startup_points(preset: Preset, count: int, seed: int, taken: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`count` distinct cells drawn at random (seeded), none of them already in `taken`."""
    seen = {(p["variant"], p["epochs"], p["lr"]) for p in taken}
    cells = [(c.label, c.epochs, c.lr) for c in preset.cells()]
    random.Random(seed).shuffle(cells)
    fresh = [c for c in cells if c not in seen][: max(count, 0)]
    return [{"variant": v, "epochs": e, "lr": lr} for v, e, lr in fresh]


def _same(a: Any, b: Any) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-6)


def recorded_cells(rows: Iterable[Mapping[str, Any]], preset: Preset, base: Mapping[str, Any]) -> list[Any]:
    """The preset's cells that ledger `rows` already hold as a run with the sweep's trainer
    settings: a finished or diverged pre-training row of the same model, epochs, LR, batch
    size, dataset, resolution and seed (what a ledger row records of a trial's config).

    Stopped rows do not count (their run did not reach its end), nor do imported ones
    (they do not say how they were trained).
    """
    from tuner.records.rows import dataset_label, ledger_resolution

    dataset = dataset_label(base.get("dataset"), base.get("max_train_examples"))
    batch_size, seed = int(base.get("batch_size", 256)), int(base.get("seed", 0))
    held: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        if row.get("kind") != "pretrain" or row.get("status") not in ("finished", "diverged"):
            continue
        if row.get("dataset") != dataset or row.get("batch_size") != batch_size or row.get("seed") != seed:
            continue
        label = cell_label(row["variant"], row.get("width_mult") or 1.0, row.get("depth_mult") or 1.0)
        if row.get("resolution") != ledger_resolution(base, row["variant"], row.get("width_mult") or 1.0,
                                                      row.get("depth_mult") or 1.0):
            continue
        held.setdefault((label, float(row["epochs"])), []).append(float(row["lr"]))
    return [
        cell for cell in preset.cells()
        if any(_same(lr, cell.lr) for (label, epochs), lrs in held.items()
               if label == cell.label and _same(epochs, cell.epochs) for lr in lrs)
    ]


def default_experiment_name(preset: Preset, now: datetime | None = None) -> str:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{EXPERIMENT_PREFIX}{preset.name}-{stamp}"


def _budget(options: SweepOptions) -> tuple[str, float] | None:
    """(unit, total), checked here so that a mistake fails before Ray starts."""
    if options.budget_flops is None and options.budget_device_hours is None:
        return None
    if options.budget_flops is not None and options.budget_device_hours is not None:
        raise TunerError("give one compute budget: --budget-flops or --budget-device-hours, not both")
    if options.budget_flops is not None:
        if not (math.isfinite(options.budget_flops) and options.budget_flops > 0):
            raise TunerError(f"--budget-flops must be a positive number, got {options.budget_flops:g}")
        return "flops", float(options.budget_flops)
    if not (math.isfinite(options.budget_device_hours) and options.budget_device_hours > 0):
        raise TunerError(f"--budget-device-hours must be a positive number, got {options.budget_device_hours:g}")
    return "device_hours", float(options.budget_device_hours)


def _make_budget(budget: tuple[str, float] | None):
    from tuner.raytune.budget import ComputeBudget

    if budget is None:
        return None
    unit, total = budget
    return ComputeBudget(flops=total) if unit == "flops" else ComputeBudget(device_hours=total)


def check_trainer_config(config: Mapping[str, Any]) -> None:
    """Every key a TrainConfig field and every value one a run can start with.

    Imports nfnet.config (and so JAX) but initialises no JAX backend: the driver
    holds no accelerator.
    """
    import nfnet.config as nfconfig
    from nfnet.errors import NFNetError

    names = {f.name for f in dataclasses.fields(nfconfig.TrainConfig)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise TunerError(
            f"unknown trainer setting(s) {', '.join(unknown)}; TrainConfig fields are {', '.join(sorted(names))}"
        )
    try:
        nfconfig.validate(nfconfig.TrainConfig(**config))
    except NFNetError as exc:
        raise TunerError(str(exc)) from None
    except TypeError as exc:
        raise TunerError(f"bad trainer setting: {exc}") from None


def _dataset_choice(preset: Preset, options: SweepOptions) -> tuple[str, str | None]:
    """The dataset to train on, and a note when the preset's fallback replaced it."""
    if options.dataset:
        return options.dataset, None
    if preset.dataset_required:
        raise TunerError(
            f"preset {preset.name} names a placeholder dataset ({preset.dataset}); "
            "pass --dataset parquet:<uri of your image shards> (or run its CPU form with --cpu)"
        )
    if preset.fallback_dataset is None:
        return preset.dataset, None
    from nfnet.data import load_dataset
    from nfnet.errors import NFNetError

    try:
        load_dataset(preset.dataset, "test", data_dir=options.data_dir)
    except NFNetError as exc:
        if options.data_dir is not None:
            # A folder the user named is never swapped for another dataset.
            raise TunerError(f"--data-dir {options.data_dir}: {exc}") from None
        return preset.fallback_dataset, (
            f"dataset {preset.dataset} is not available here ({exc}); using {preset.fallback_dataset} instead"
        )
    return preset.dataset, None


def plan_sweep(options: SweepOptions, preset: Preset | None = None, now: datetime | None = None) -> SweepPlan:
    """Resolve options (and an optional Preset object, which wins over --preset) into a plan.

    Every mistake a user can make in the flags is raised here, before Ray starts.
    """
    from tuner.records.ledger import default_ledger_uri
    from tuner.placement.trial import placement_for_config

    if preset is None:
        preset = get_preset(options.preset or DEFAULT_PRESET, cpu=options.cpu)
    elif options.cpu:
        preset = preset.cpu()
    budget = _budget(options)
    if options.num_samples is not None and options.num_samples <= 0:
        raise TunerError(f"--num-samples must be positive, got {options.num_samples}")
    if options.max_concurrent is not None and options.max_concurrent <= 0:
        raise TunerError(f"--max-concurrent must be positive, got {options.max_concurrent}")
    if options.max_failures < 0:
        raise TunerError(f"--max-failures must be >= 0, got {options.max_failures}")
    checkpoint_config(options.keep_checkpoints, METRIC)
    if options.grid and options.points:
        raise TunerError("--grid runs every cell once; drop --point (start points are for Optuna sweeps)")
    if options.grid and options.num_samples is not None:
        raise TunerError(f"--grid runs all {len(preset.cells())} cells; drop --num-samples")
    if options.skip_recorded and not options.grid:
        raise TunerError("--skip-recorded continues a grid from its ledger; add --grid")
    if preset.only_cells and not options.grid:
        raise TunerError(f"preset {preset.name} lists its cells (only_cells); run it with --grid")
    if options.then_finetune and not options.finetune_dataset:
        raise TunerError("--then-finetune needs --finetune-dataset (e.g. digits)")
    if options.finetune_top_k < 1:
        raise TunerError(f"--finetune-top-k must be at least 1, got {options.finetune_top_k}")
    check_ray_options(options.num_cpus, options.wait_for_nodes)
    check_storage(options.storage)

    dataset, note = _dataset_choice(preset, options)
    base = preset.base_config(dataset=dataset, data_dir=options.data_dir, seed=options.seed)
    base.update(parse_overrides(options.overrides))
    taken = sorted(set(base) & set(CELL_KEYS))
    if taken:
        raise TunerError(f"--set may not change {', '.join(taken)}: the search space sets them per trial")
    base["progress"] = False
    first = preset.cells()[0]
    check_trainer_config({**base, **first.config()})
    if use_fast_compile(options.fast_compile, options.address, options.accelerator):
        base[FAST_COMPILE] = True

    # Every variant's trials are placed by their own config (largest epochs and LR
    # change nothing in the placement): TPU hosts or whole slices for big variants.
    placements = {}
    for cell in preset.cells():
        if cell.label not in placements:
            placements[cell.label] = placement_for_config({**base, **cell.config()}, options.accelerator,
                                                          options.cpus_per_trial)

    ledger = options.ledger or default_ledger_uri()
    # Read now, so a damaged part file or an unwritable path fails before the first trial.
    ledger_rows = Ledger(ledger).check().to_pylist()
    points = [parse_point(text, preset) for text in options.points]
    recorded = 0
    if options.grid and (options.skip_recorded or preset.only_cells):
        held = recorded_cells(ledger_rows, preset, base) if options.skip_recorded else []
        recorded = len(held)
        # The cells to run, as fixed points: Optuna's grid sampler cannot leave cells out.
        points = [{"variant": c.label, "epochs": c.epochs, "lr": c.lr} for c in preset.cells() if c not in held]
        mode, num_samples, startup = "grid", len(points), 0
    elif options.grid:
        mode, num_samples, startup = "grid", len(preset.cells()), 0
    else:
        mode = "optuna"
        num_samples = options.num_samples or preset.num_samples
        startup = min(MAX_STARTUP, max(1, num_samples // 2))
        points = points + startup_points(preset, startup - len(points), options.seed, points)
    name = check_experiment_name(options.name) if options.name else default_experiment_name(preset, now)
    notes = [note] if note else []
    return SweepPlan(
        preset=preset,
        experiment=name,
        storage=storage_path(options.storage),
        base_config=base,
        mode=mode,
        num_samples=num_samples,
        points=points,
        startup=startup,
        accelerator=options.accelerator,
        cpus_per_trial=options.cpus_per_trial,
        placements=placements,
        max_concurrent=options.max_concurrent,
        budget=budget,
        ledger=ledger,
        optuna_storage=options.optuna_storage,
        study_name=options.study_name or name,
        seed=options.seed,
        max_failures=options.max_failures,
        keep_checkpoints=options.keep_checkpoints,
        notes=notes,
        recorded=recorded,
    )


# ---------------------------------------------------------------- Ray parts


def _optuna_storage(url: str | None):
    if not url:
        return None
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # Optuna raises ValueError, ImportError or SQLAlchemy errors
        raise TunerError(f"cannot open Optuna storage {url}: {exc}; give e.g. sqlite:///results/optuna.db") from None


def make_searcher(plan: SweepPlan):
    """Ray's OptunaSearch over the preset's space: seeded TPE, or the grid sampler for --grid."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if plan.mode == "grid":
        sampler: optuna.samplers.BaseSampler = GridCellSampler(plan.preset, seed=plan.seed)
    else:
        # Optuna 5's TPE is multivariate with constant liar by default (concurrent trials);
        # the wrapper keeps it from proposing a cell some trial already holds.
        sampler = DistinctCellSampler(
            optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=plan.startup), seed=plan.seed
        )
    storage = _optuna_storage(plan.optuna_storage)
    # Continuing a stored study: its cells are known already, so no start point repeats one.
    known = _study_cells(storage, plan.study_name) if storage is not None else set()
    points = [p for p in plan.points if (p["variant"], p["epochs"], p["lr"]) not in known]
    return OptunaSearch(
        space=PresetSpace(plan.preset),
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=points or None,
        sampler=sampler,
        study_name=plan.study_name,
        storage=storage,
    )


def _study_cells(storage: Any, study_name: str) -> set[tuple[Any, Any, Any]]:
    """(variant, epochs, lr) of every trial a stored study holds; empty for a new study."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return set()
    return {
        (t.params["variant"], t.params["epochs"], t.params["lr"])
        for t in study.get_trials(deepcopy=False)
        if {"variant", "epochs", "lr"} <= set(t.params)
    }


def make_scheduler(plan: SweepPlan):
    from tuner.raytune.schedulers import GroupedASHA

    return GroupedASHA(
        grace_period=plan.preset.grace_period,
        reduction_factor=plan.preset.reduction_factor,
        group_key=group_by_cell,
        budget=_make_budget(plan.budget),
    )


def _trainable(accelerator: str, cpus_per_trial: float):
    """The trainable with each trial placed by its own config (tuner.placement.trial)."""
    from tuner.raytune.slice_trial import tune_trainable
    from tuner.raytune.trainable import train_trial

    return tune_trainable(train_trial, accelerator, cpus_per_trial)


def trial_name(trial: Any) -> str:
    """`<id> nano e1 lr=0.1`: a trial named by its cell in the progress output."""
    key = group_by_cell(trial.config, None)
    if key is None:
        return trial.trial_id
    return f"{trial.trial_id} {key[0]} e{key[1]:g} lr={float(trial.config.get('lr', 0.0)):g}"


class SweepProgressPrinter(ProgressPrinter):
    """One line per evaluation, trials named by cell; to stderr when stdout carries --json.

    Holds no stream (it is pickled with the experiment and comes back on --resume).
    """

    def __init__(self, to_stderr: bool = False):
        super().__init__()
        self.to_stderr = to_stderr

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr if self.to_stderr else sys.stdout, flush=True)

    def _name(self, trial: Any) -> str:
        return trial_name(trial)


def _write_settings(plan: SweepPlan, options: SweepOptions) -> None:
    fs, path = open_filesystem(plan.path)
    fs.create_dir(path, recursive=True)
    settings = {"plan": plan.to_json(), "options": dataclasses.asdict(options),
                "created": datetime.now().isoformat()}
    with fs.open_output_stream(f"{path}/{SETTINGS_FILE}") as f:
        f.write(json.dumps(settings, indent=1, default=str).encode())


def read_settings(path: str) -> dict[str, Any] | None:
    """The settings a sweep wrote into its experiment directory; None when there are none."""
    try:
        fs, base = open_filesystem(path)
        with fs.open_input_stream(f"{base}/{SETTINGS_FILE}") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):
        return None


def find_experiment(storage: str, name: str | None, preset: str | None) -> str:
    """The experiment directory to resume: `name` under `storage`, or the latest sweep there
    (of `preset`, when given)."""
    import pyarrow.fs as pafs

    if name:
        path = experiment_dir(storage, check_experiment_name(name))
        if read_settings(path) is None:
            raise TunerError(f"no sweep to resume at {path}; check --storage and --name")
        return path
    try:
        fs, base = open_filesystem(storage)
        listing = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError as exc:
        raise TunerError(f"cannot list {storage}: {exc}") from None
    found = []
    for info in listing:
        if info.type != pafs.FileType.Directory:
            continue
        path = experiment_dir(storage, info.base_name)
        settings = read_settings(path)
        if settings is not None and (preset is None or settings["plan"]["preset"] == preset):
            found.append((settings.get("created", ""), info.base_name, path))
    if found:
        return max(found)[2]
    which = f" of preset {preset}" if preset else ""
    raise TunerError(f"no sweep{which} to resume under {storage}; start one without --resume, or pass --name")


def _grid_usage(results: Iterable[Any]) -> tuple[int, float | None, float, str | None]:
    """(trials, their FLOPs, device-hours, the first trial that reported no FLOPs figure).
    The FLOPs are None when any trial's are unknown: a partial sum would read as the total."""
    trials = flops = seconds = 0.0
    unmeasured = None
    for result in results:
        metrics = result.metrics or {}
        if not metrics:
            continue
        trials += 1
        if metrics.get("flops") is None:
            unmeasured = unmeasured or str(metrics.get("trial_id") or getattr(result, "path", "?"))
        else:
            flops += float(metrics["flops"])
        seconds += float(metrics.get("device_seconds") or 0.0)
    return int(trials), None if unmeasured else flops, seconds / 3600.0, unmeasured


def _experiment_rows(ledger_uri: str, experiment: str) -> list[dict[str, Any]]:
    from tuner.records.ledger import sort_rows

    rows = [r for r in Ledger(ledger_uri).read().to_pylist() if r["experiment"] == experiment]
    return sort_rows(rows)


def _run_config(plan: SweepPlan, callbacks: Sequence[Any], quiet: bool):
    from ray import tune

    storage, filesystem = ray_location(plan.storage)
    return tune.RunConfig(
        name=plan.experiment,
        storage_path=storage,
        storage_filesystem=filesystem,
        callbacks=[LedgerCallback(Ledger(plan.ledger), source=SOURCE), NoTuneTensorBoard(),
                   SweepProgressPrinter(to_stderr=quiet), *callbacks],
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=checkpoint_config(plan.keep_checkpoints, METRIC),
        verbose=0,
    )


def run_sweep(
    options: SweepOptions,
    preset: Preset | None = None,
    callbacks: Sequence[Any] = (),
    log=print,
) -> SweepResult:
    """Run (or with `options.resume`, continue) a sweep; returns its rows and compute.

    `preset` overrides `options.preset` with a Preset object; `callbacks` are extra
    Ray Tune callbacks (they are pickled with the experiment and come back on resume).
    """
    from ray import tune

    if options.resume:
        if options.skip_recorded:
            raise TunerError("--resume continues a sweep from its experiment directory; drop --skip-recorded")
        target = preset.name if preset is not None else (
            get_preset(options.preset, cpu=options.cpu).name if options.preset else None)
        check_storage(options.storage)
        path = find_experiment(storage_path(options.storage), options.name, target)
        plan_json = read_settings(path)["plan"]
        log(f"resuming sweep {plan_json['experiment']} at {path}")
        quiet_tune_output()
        check_ray_options(options.num_cpus, options.wait_for_nodes)
        Ledger(plan_json["ledger"]).check()
        connection = connect(options.address, num_cpus=options.num_cpus)
        try:
            check_resources(plan_json.get("resources_per_trial") or {}, connection, log, options.wait_for_nodes)
            restore_path, restore_fs = ray_location(path)
            tuner = tune.Tuner.restore(restore_path, trainable=_trainable(plan_json["accelerator"],
                                                                          plan_json["cpus_per_trial"]),
                                       resume_unfinished=True, storage_filesystem=restore_fs)
            with InterruptWatch() as watch:
                results = tuner.fit()
            return _finish(plan_json, path, results, options, log, watch.interrupted)
        finally:
            connection.shutdown()

    plan = plan_sweep(options, preset)
    log(plan.describe())
    if plan.num_samples == 0:
        log(f"every cell of the grid is already in the ledger {plan.ledger}; nothing to run")
        rows = _experiment_rows(plan.ledger, plan.experiment)
        return SweepResult(plan.to_json(), plan.experiment, plan.path, rows, 0, 0.0, 0.0, plan.budget)
    quiet_tune_output()
    connection = connect(options.address, num_cpus=options.num_cpus)
    try:
        check_resources(placement_requests(plan.placements.values()), connection, log, options.wait_for_nodes)
        _write_settings(plan, options)
        tuner = tune.Tuner(
            _trainable(plan.accelerator, plan.cpus_per_trial),
            param_space=dict(plan.base_config),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode=MODE,
                search_alg=make_searcher(plan),
                scheduler=make_scheduler(plan),
                num_samples=plan.num_samples,
                max_concurrent_trials=plan.max_concurrent,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=_run_config(plan, callbacks, quiet=options.json),
        )
        with InterruptWatch() as watch:
            results = tuner.fit()
        return _finish(plan.to_json(), plan.path, results, options, log, watch.interrupted)
    finally:
        connection.shutdown()


def resume_command(plan_json: Mapping[str, Any], options: SweepOptions) -> str:
    """The command that continues this sweep (its settings come from the experiment directory)."""
    parts = ["python -m tuner.sweep --resume", f"--name {plan_json['experiment']}"]
    if options.storage:
        parts.append(f"--storage {options.storage}")
    if options.address:
        parts.append(f"--address {options.address}")
    return " ".join(parts)


def _finish(plan_json: dict[str, Any], path: str, results: Any, options: SweepOptions, log,
            interrupted: bool = False) -> SweepResult:
    """Print what the sweep did (table, compute, best cell, where things are), then promote."""
    experiment = plan_json["experiment"]
    trials, flops, device_hours, unmeasured = _grid_usage(results)
    rows = _experiment_rows(plan_json["ledger"], experiment)
    budget = None if plan_json["budget"] is None else (plan_json["budget"]["unit"], plan_json["budget"]["total"])
    result = SweepResult(plan_json, experiment, path, rows, trials, flops, device_hours, budget,
                         interrupted=interrupted)
    if rows:
        log(results_table(rows))
    used = flops if budget is None or budget[0] == "flops" else device_hours
    shown = "unknown (a trial's step could not be counted)" if flops is None else f"{flops:.4g}"
    log(f"{trials} trials, {shown} FLOPs, {device_hours:.4g} device-hours"
        + ("" if budget is None or used is None else f" (budget {used:.4g} of {budget[1]:.4g} {budget[0]})"))
    errors = [r for r in results if r.error is not None]
    if errors:
        log(f"{len(errors)} trial(s) failed after their retries; see error.txt in their directories under {path}")
    if result.best is not None:
        best = result.best
        log(f"best: {cell_label(best['variant'], best['width_mult'], best['depth_mult'])} epochs={best['epochs']:g} "
            f"lr={best['lr']:g} val_loss={best['final_val_loss']:.4g}")
    log(f"ledger: {plan_json['ledger']}")
    log(f"TensorBoard: {tensorboard_hint(path)}")
    if interrupted:
        log(f"interrupted (Ctrl-C): finished trials are in the ledger; continue the sweep with: "
            f"{resume_command(plan_json, options)}")
        return result
    if budget is not None and budget[0] == "flops" and unmeasured is not None:
        from tuner.raytune.budget import unmeasured_budget_message

        raise TunerError(unmeasured_budget_message(True, unmeasured))
    if not options.then_finetune:
        return result
    from tuner.jobs.promote import PromoteOptions, promote

    promoted = promote(
        PromoteOptions(
            dataset=options.finetune_dataset,
            resolution=options.finetune_resolution,
            ledger=plan_json["ledger"],
            experiment=experiment,
            top_k=options.finetune_top_k,
            lrs=tuple(options.finetune_lrs),
            epochs=options.finetune_epochs,
            wait_for_nodes=options.wait_for_nodes,
            address=options.address,
            storage=options.storage,
            accelerator=options.accelerator,
            cpus_per_trial=options.cpus_per_trial,
            fast_compile=options.fast_compile,
            max_failures=options.max_failures,
            keep_checkpoints=options.keep_checkpoints,
            seed=options.seed,
        ),
        log=log,
    )
    return dataclasses.replace(result, finetune=promoted.rows)


# ---------------------------------------------------------------- command line
