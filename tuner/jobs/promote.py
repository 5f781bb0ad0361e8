"""Promotion: the best pre-trained checkpoints in the ledger fine-tuned as Ray Tune trials,
each recorded as a ledger row of kind `finetune`. The command is tuner/promote.py.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuner.errors import TunerError
from tuner.raytune.experiment import DEFAULT_KEEP_CHECKPOINTS, InterruptWatch, check_experiment_name, checkpoint_config, check_storage, experiment_dir, quiet_tune_output, ray_location, results_table, storage_path, tensorboard_hint
from tuner.raytune.connection import DEFAULT_NODE_WAIT_S, check_ray_options, check_resources, connect, placement_requests
from tuner.raytune.callbacks import LedgerCallback, NoTuneTensorBoard, ProgressPrinter, trial_dirname, trial_row
from tuner.records.ledger import Ledger, default_ledger_uri
from tuner.records.cells import cell_label
from tuner.records.rows import finite
from tuner.jobs.overrides import parse_overrides
from tuner.raytune.compile_cache import use_fast_compile
from tuner.raytune.trainable import FAST_COMPILE

SOURCE = "promote"
EXPERIMENT_PREFIX = "promote-"
# Keys the trainable sets itself (workdir, resume) or that only the command line uses.
_TRAINABLE_KEYS = frozenset({"workdir", "resume", "resume_from", "progress"})
# Columns of the printed table of fine-tuning rows.
TABLE_COLUMNS = ("variant", "epochs", "lr", "dataset", "resolution", "status", "top1", "final_val_loss",
                 "parent_trial_id")


@dataclass(frozen=True)
class PromoteOptions:
    """Everything `python -m tuner.promote` takes; the flags map one to one."""

    dataset: str
    resolution: int | None = None
    eval_resolution: int | None = None
    ledger: str | None = None
    top_k: int = 1
    per_cell: bool = False
    skip_promoted: bool = False
    budget_flops: float | None = None
    budget_device_hours: float | None = None
    experiment: str | None = None
    pretrain_dataset: str | None = None
    lrs: tuple[float, ...] = ()
    epochs: float | None = None
    batch_size: int | None = None
    seed: int = 0
    data_dir: str | None = None
    overrides: tuple[str, ...] = ()
    address: str | None = None
    num_cpus: int | None = None
    storage: str | None = None
    name: str | None = None
    cpus_per_trial: float = 1.0
    accelerator: str = "cpu"
    fast_compile: bool | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS
    wait_for_nodes: float = DEFAULT_NODE_WAIT_S
    json: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class PromoteResult:
    experiment: str
    path: str
    candidates: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C


# ---------------------------------------------------------------- choosing candidates


def select_candidates(
    rows: Sequence[Mapping[str, Any]],
    top_k: int = 1,
    budget_flops: float | None = None,
    budget_device_hours: float | None = None,
    experiment: str | None = None,
    pretrain_dataset: str | None = None,
    per_cell: bool = False,
) -> list[dict[str, Any]]:
    """The `top_k` finished pre-training rows with a checkpoint and the lowest final loss,
    at or under the budget (a row whose compute is unknown is not under a budget).
    With `per_cell`, only the best row of each (model, epoch budget) competes."""
    if top_k < 1:
        raise TunerError(f"--top-k must be at least 1, got {top_k}")
    for flag, value in (("--budget-flops", budget_flops), ("--budget-device-hours", budget_device_hours)):
        if value is not None and not (finite(value) and value > 0):
            raise TunerError(f"{flag} must be a positive number, got {value:g}")
    if budget_flops is not None and budget_device_hours is not None:
        raise TunerError("give one budget: --budget-flops or --budget-device-hours, not both")
    pretrain = [dict(r) for r in rows if r.get("kind") == "pretrain"]
    if experiment is not None:
        pretrain = [r for r in pretrain if r.get("experiment") == experiment]
    if pretrain_dataset is not None:
        pretrain = [r for r in pretrain if r.get("dataset") == pretrain_dataset]
    finished = [r for r in pretrain if r.get("status") == "finished" and finite(r.get("final_val_loss"))]
    with_checkpoint = [r for r in finished if r.get("checkpoint_uri")]
    eligible = with_checkpoint
    if budget_flops is not None:
        measured = [r for r in eligible if finite(r.get("flops")) and r["flops"] > 0]
        if eligible and not measured:
            raise TunerError(
                f"none of the {len(eligible)} finished pre-training rows with a checkpoint has a FLOPs figure "
                "(their training steps could not be counted), so --budget-flops cannot select them; "
                "give the budget in device-hours with --budget-device-hours instead")
        eligible = [r for r in measured if r["flops"] <= budget_flops]
    if budget_device_hours is not None:
        eligible = [r for r in eligible if finite(r.get("device_hours")) and r["device_hours"] <= budget_device_hours]
    if not eligible:
        where = f" of experiment {experiment}" if experiment else ""
        budget = ""
        if budget_flops is not None:
            budget = f", {len(eligible)} of them within {budget_flops:g} FLOPs"
        elif budget_device_hours is not None:
            budget = f", {len(eligible)} of them within {budget_device_hours:g} device-hours"
        raise TunerError(
            f"no pre-training row to promote{where}: {len(pretrain)} pre-training rows, {len(finished)} finished, "
            f"{len(with_checkpoint)} with a checkpoint{budget}; run tuner.sweep or tuner.lr_search first"
            + (" or raise the budget" if budget else "")
        )
    datasets = sorted({str(r.get("dataset")) for r in eligible})
    if len(datasets) > 1:
        raise TunerError(
            f"candidates were pre-trained on {', '.join(datasets)}, whose losses do not compare; "
            "pass --pretrain-dataset to pick one"
        )
    eligible.sort(key=lambda r: (r["final_val_loss"], r["trial_id"]))
    if per_cell:
        seen: set[tuple[str, float]] = set()
        best_of_cell = []
        for r in eligible:
            cell = (cell_label(r["variant"], r.get("width_mult") or 1.0, r.get("depth_mult") or 1.0),
                    float(r["epochs"]))
            if cell not in seen:
                seen.add(cell)
                best_of_cell.append(r)
        eligible = best_of_cell
    return eligible[:top_k]


def promoted_parents(rows: Sequence[Mapping[str, Any]], dataset: str, resolution: int | None) -> set[str]:
    """Pre-training trial ids the ledger holds a fine-tuning row of on `dataset` (at
    `resolution`, when given) that ran to its end."""
    return {
        r["parent_trial_id"] for r in rows
        if r.get("kind") == "finetune" and r.get("parent_trial_id") and r.get("dataset") == dataset
        and r.get("status") == "finished" and (resolution is None or r.get("resolution") == resolution)
    }


def checkpoint_exists(uri: str) -> bool:
    """Whether a checkpoint directory is there (local path or gs://...)."""
    import pyarrow.fs as pafs

    from nfnet.errors import NFNetError
    from nfnet.storage import filesystem

    try:
        fs, path = filesystem(uri)
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except (OSError, NFNetError):
        return False


# ---------------------------------------------------------------- trial configs


def finetune_config(candidate: Mapping[str, Any], options: PromoteOptions, lr: float | None) -> dict[str, Any]:
    """The trainer fields of one fine-tuning trial from a candidate row (nfnet.finetune's recipe)."""
    import nfnet.finetune as nffinetune
    import nfnet.config as nfconfig
    from nfnet.errors import NFNetError

    uri = candidate["checkpoint_uri"]
    if not checkpoint_exists(uri):
        raise TunerError(
            f"checkpoint {uri} of pre-training trial {candidate['trial_id']} is missing; "
            "restore it or promote another row (--experiment, --budget-*)"
        )
    fields = {"dataset": options.dataset, "seed": options.seed}
    for name in ("resolution", "eval_resolution", "epochs", "batch_size", "data_dir"):
        if getattr(options, name) is not None:
            fields[name] = getattr(options, name)
    if lr is not None:
        fields["lr"] = lr
    extra = parse_overrides(options.overrides)
    finetune_fields = {f.name for f in dataclasses.fields(nffinetune.FinetuneConfig)}
    fields.update({k: v for k, v in extra.items() if k in finetune_fields})
    try:
        config = dataclasses.asdict(nffinetune.to_train_config(
            nffinetune.FinetuneConfig(init_from=uri, progress=False, **fields)))
        config.update({k: v for k, v in extra.items() if k not in finetune_fields})
        nfconfig.validate(nfconfig.TrainConfig(**config))
    except NFNetError as exc:
        raise TunerError(f"cannot fine-tune {candidate['trial_id']}: {exc}") from None
    except TypeError as exc:
        raise TunerError(f"bad trainer setting: {exc}") from None
    out = {k: v for k, v in config.items() if k not in _TRAINABLE_KEYS}
    if use_fast_compile(options.fast_compile, options.address, options.accelerator):
        out[FAST_COMPILE] = True
    return out


def _from_parent(configs: Mapping[str, Mapping[str, Any]], key: str, spec: Any) -> Any:
    return configs[spec.config.parent_trial_id][key]


def param_space(configs: Mapping[str, Mapping[str, Any]], lrs: Sequence[float] | None) -> dict[str, Any]:
    """A Tune space with one trial per (parent, lr): fields equal across parents are constants,
    the rest follow the trial's parent."""
    from ray import tune

    first = next(iter(configs.values()))
    space: dict[str, Any] = {"parent_trial_id": tune.grid_search(list(configs))}
    for key in first:
        values = [c[key] for c in configs.values()]
        if key == "lr" and lrs:
            space[key] = tune.grid_search(list(lrs))
        elif all(v == values[0] for v in values):
            space[key] = values[0]
        else:
            space[key] = tune.sample_from(functools.partial(_from_parent, dict(configs), key))
    return space


# ---------------------------------------------------------------- Ray


class FinetuneLedgerCallback(LedgerCallback):
    """`LedgerCallback` whose rows are fine-tuning rows linked to their pre-training parent."""

    def __init__(self, ledger: Ledger):
        super().__init__(ledger, SOURCE)

    def make_row(self, trial: Any) -> dict[str, Any] | None:
        row = trial_row(trial, SOURCE)
        if row is not None:
            row.update(kind="finetune", parent_trial_id=trial.config.get("parent_trial_id"))
        return row


class PromoteProgressPrinter(ProgressPrinter):
    """Trials named by parent and LR; to stderr when stdout carries --json."""

    def __init__(self, to_stderr: bool = False):
        super().__init__()
        self.to_stderr = to_stderr

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr if self.to_stderr else sys.stdout, flush=True)

    def _name(self, trial: Any) -> str:
        return f"{trial.trial_id} from {trial.config.get('parent_trial_id')} lr={trial.config.get('lr', 0.0):g}"


def _experiment_name(options: PromoteOptions) -> str:
    if options.name:
        return check_experiment_name(options.name)
    dataset = re.sub(r"[^A-Za-z0-9]+", "_", options.dataset).strip("_") or "data"
    return f"{EXPERIMENT_PREFIX}{dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def plan_promotion(options: PromoteOptions) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Candidates, one trial config per candidate, and each one's placement; no Ray."""
    from tuner.placement.trial import placement_for_config

    if options.max_concurrent is not None and options.max_concurrent <= 0:
        raise TunerError(f"--max-concurrent must be positive, got {options.max_concurrent}")
    if options.max_failures < 0:
        raise TunerError(f"--max-failures must be >= 0, got {options.max_failures}")
    checkpoint_config(options.keep_checkpoints)
    if options.lrs and any(not (finite(lr) and lr > 0) for lr in options.lrs):
        raise TunerError(f"--lrs must be positive numbers, got {list(options.lrs)}")
    check_ray_options(options.num_cpus, options.wait_for_nodes)
    check_storage(options.storage)
    rows = Ledger(options.ledger or default_ledger_uri()).check().to_pylist()
    candidates = select_candidates(
        rows, options.top_k, options.budget_flops, options.budget_device_hours,
        options.experiment, options.pretrain_dataset, per_cell=options.per_cell,
    )
    if options.skip_promoted:
        done = promoted_parents(rows, options.dataset, options.resolution)
        candidates = [c for c in candidates if c["trial_id"] not in done]
    configs = {c["trial_id"]: finetune_config(c, options, options.lrs[0] if options.lrs else None)
               for c in candidates}
    placements = {trial_id: placement_for_config(config, options.accelerator, options.cpus_per_trial)
                  for trial_id, config in configs.items()}
    return candidates, configs, placements


def promote(options: PromoteOptions, log: Callable[..., None] = print) -> PromoteResult:
    """Fine-tune the best pre-trained checkpoints as Ray Tune trials; returns their ledger rows."""
    from ray import tune

    from tuner.raytune.slice_trial import tune_trainable
    from tuner.raytune.trainable import train_trial

    quiet_tune_output()
    candidates, configs, placements = plan_promotion(options)
    name = _experiment_name(options)
    if not candidates:
        log(f"every candidate has been fine-tuned on {options.dataset} already (--skip-promoted): nothing to run")
        return PromoteResult(name, experiment_dir(storage_path(options.storage), name), [], [])
    storage = storage_path(options.storage)
    storage_at, storage_fs = ray_location(storage)
    path = experiment_dir(storage, name)
    ledger_uri = options.ledger or default_ledger_uri()
    for c in candidates:
        log(f"promoting {c['trial_id']}: {cell_label(c['variant'], c['width_mult'], c['depth_mult'])} "
            f"epochs={c['epochs']:g} lr={c['lr']:g} val_loss={c['final_val_loss']:.4g} ({c['checkpoint_uri']})")
    lrs = list(options.lrs) or [next(iter(configs.values()))["lr"]]
    log(f"fine-tuning on {options.dataset} at LR {', '.join(f'{lr:g}' for lr in lrs)}: "
        f"{len(configs) * len(lrs)} trials in {path}")
    connection = connect(options.address, num_cpus=options.num_cpus)
    try:
        check_resources(placement_requests(placements.values()), connection, log, options.wait_for_nodes)
        tuner = tune.Tuner(
            tune_trainable(train_trial, options.accelerator, options.cpus_per_trial),
            param_space=param_space(configs, options.lrs),
            tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_at,
                storage_filesystem=storage_fs,
                callbacks=[FinetuneLedgerCallback(Ledger(ledger_uri)), NoTuneTensorBoard(),
                           PromoteProgressPrinter(to_stderr=options.json)],
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                checkpoint_config=checkpoint_config(options.keep_checkpoints),
                verbose=0,
            ),
        )
        with InterruptWatch() as watch:
            results = tuner.fit()
    finally:
        connection.shutdown()
    rows = [r for r in Ledger(ledger_uri).read().to_pylist() if r["experiment"] == name]
    rows.sort(key=lambda r: (r["parent_trial_id"] or "", r["lr"]))
    failed = [r for r in results if r.error is not None]
    if rows:
        log(results_table(rows, TABLE_COLUMNS))
    if failed:
        log(f"{len(failed)} fine-tuning trial(s) failed after their retries; see error.txt under {path}")
    done = [r for r in rows if r["status"] == "finished" and finite(r.get("top1"))]
    if done:
        best = max(done, key=lambda r: r["top1"])
        log(f"best fine-tuned: {cell_label(best['variant'], best['width_mult'], best['depth_mult'])} "
            f"from {best['parent_trial_id']} top1={best['top1']:.4g}")
    log(f"ledger: {ledger_uri}")
    log(f"TensorBoard: {tensorboard_hint(path)}")
    if watch.interrupted:
        log("interrupted (Ctrl-C): finished fine-tuning trials are in the ledger; promote has no --resume: "
            "run the same command with --skip-promoted to fine-tune the candidates not yet done")
    return PromoteResult(name, path, candidates, rows, interrupted=watch.interrupted)


# ---------------------------------------------------------------- command line
