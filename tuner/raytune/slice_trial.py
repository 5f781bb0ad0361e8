"""One Tune trial on a whole multi-host TPU slice, through Ray Train's JaxTrainer.

The Tune trial is a small driver (tuner/placement/trial.py gives it one CPU, no TPU). It
starts a `JaxTrainer` whose `ScalingConfig(use_tpu=True, topology, accelerator_type
="TPU-V4", num_workers=<hosts>)` makes Ray Train reserve one slice atomically (its
worker 0 through the `TPU-<type>-head` resource, then every host of that slice by
the `ray.io/tpu-slice-name` label, all or nothing), start one worker per host and
call `jax.distributed.initialize` on each. Every worker then runs the same
`nfnet.loop.train`: the data-parallel step spans all chips of all hosts and each
host loads only its rows of each global batch. Why Ray Train and not N tasks of
`{"TPU": 4}`: see cluster/README.md ("What each trial occupies").

Checkpoints and resuming: the trainer's workdir is the trial's directory in the
experiment storage (a bucket on a cluster), which every host reaches; all hosts
write each orbax checkpoint there together. When the run starts and the workdir
holds a checkpoint (Ray Train restarted the workers after a host failed, Tune
retried the trial, or the sweep was resumed with `--resume`) the trainer resumes
from it exactly, data order included. Checkpoints are therefore not handed to
Ray: metrics reach Tune through Ray's `TuneReportCallback` (rank 0's), with the
checkpoint directory in `checkpoint_dir`.

JAX is imported only inside the workers: the trial's own process never touches a TPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from tuner.errors import TunerError
from tuner.placement.trial import TrialPlacement
from tuner.placement.trial import DEFAULT_NUM_CLASSES, placement_for_config
from collections.abc import Callable

# Ray Train's accelerator type for every TPU v4 slice.
TPU_V4 = "TPU-V4"
# Below the trial's directory: the trainer's workdir and Ray Train's run directory.
WORKDIR_NAME = "slice"
TRAIN_RUN_NAME = "slice-train"
CHECKPOINT_DIR = "checkpoint_dir"
# Reported with every result: the JAX processes (hosts) the run spans.
PROCESSES = "processes"
# Worker-group restarts Ray Train makes on its own (a host lost) before the trial fails
# and Tune's FailureConfig takes over.
DEFAULT_TRAIN_MAX_FAILURES = 2


def tune_metrics(metrics: Mapping[str, Any], best_val_loss: float) -> tuple[dict[str, Any], float]:
    """The trainer's metrics as tuner.raytune.trainable reports them, and the running best loss.

    `done` becomes `schedule_done` (a reported `done=True` would stop the trial) and
    `best_val_loss` is the lowest finite held-out loss so far.
    """
    from tuner.records.rows import BEST_VAL_LOSS, SCHEDULE_DONE

    out = dict(metrics)
    out[SCHEDULE_DONE] = bool(out.pop("done", False))
    loss = out.get("val_loss")
    if isinstance(loss, (int, float)) and math.isfinite(loss):
        best_val_loss = min(best_val_loss, float(loss))
    out[BEST_VAL_LOSS] = best_val_loss if math.isfinite(best_val_loss) else float("nan")
    return out, best_val_loss


def train_on_host(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop: this host's share of one data-parallel run.

    `loop_config` holds `train`, the trial's config (TrainConfig fields, `workdir`
    shared by all hosts, and tuner.raytune.trainable's `fast_compile`). Every host reports
    every evaluation (Ray Train needs the same number of reports from each worker);
    Tune sees rank 0's, with the same keys tuner.raytune.trainable.train_trial reports.
    """
    import dataclasses

    import ray.train

    from tuner.raytune.compile_cache import COMPILE_CACHE_HITS, COMPILE_SECONDS, CompileClock, apply_compilation_cache
    from tuner.raytune.trainable import FAST_COMPILE

    apply_compilation_cache()
    import jax

    if loop_config["train"].get(FAST_COMPILE):
        jax.config.update("jax_disable_most_optimizations", True)
    from nfnet.checkpoint import CHECKPOINTS_SUBDIR, latest_checkpoint
    from nfnet.config import TrainConfig
    from nfnet.loop import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in loop_config["train"].items() if k in names}
    workdir = values["workdir"]
    resume = latest_checkpoint(os.path.join(workdir, CHECKPOINTS_SUBDIR)) is not None
    config = TrainConfig(**{**values, "resume": resume, "resume_from": None, "progress": False})
    best = math.inf
    clock = CompileClock()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        nonlocal best
        out, best = tune_metrics(metrics, best)
        out[COMPILE_SECONDS] = clock.seconds
        out[COMPILE_CACHE_HITS] = clock.cache_hits
        out[CHECKPOINT_DIR] = checkpoint_dir
        out[PROCESSES] = jax.process_count()
        ray.train.report(out)

    with clock:
        train(config, callback=report)


def shared_trial_dir() -> str:
    """The running Tune trial's directory in the experiment storage, as a path or URI.

    Every host of a slice must reach it: a bucket (`gs://`, `s3://`) or a path shared
    by all nodes.
    """
    from ray import tune

    storage = tune.get_context().get_storage()
    kind = storage.storage_filesystem.type_name
    if kind == "local":
        return storage.trial_fs_path
    scheme = {"gcs": "gs", "s3": "s3"}.get(kind)
    if scheme is None:
        raise TunerError(
            f"multi-host slice trials need --storage that every host reaches as a path or gs:// "
            f"or s3:// URI; this experiment's storage is a {kind!r} filesystem"
        )
    return f"{scheme}://{storage.trial_fs_path}"


def run_on_slice(
    train_config: Mapping[str, Any],
    placement: TrialPlacement,
    workdir: str | None = None,
    worker_env: Mapping[str, str] | None = None,
    max_failures: int = DEFAULT_TRAIN_MAX_FAILURES,
) -> Any:
    """Train one config on a whole slice from inside a Tune trial; returns Ray Train's Result.

    `workdir` defaults to `<trial dir in storage>/slice`; `worker_env` adds
    environment variables to every worker. Metrics are forwarded to Tune as they
    are reported.
    """
    if not placement.is_slice:
        raise TunerError(f"run_on_slice needs a multi-host slice placement, got {placement.kind}")
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_dir = shared_trial_dir()
    sep = "/" if "://" in trial_dir else os.sep
    workdir = workdir or trial_dir.rstrip("/") + sep + WORKDIR_NAME
    from ray import tune

    storage = tune.get_context().get_storage()
    run_config = RunConfig(
        name=TRAIN_RUN_NAME,
        storage_path=storage.trial_fs_path,
        storage_filesystem=storage.storage_filesystem,
        failure_config=FailureConfig(max_failures=max_failures),
        callbacks=[TuneReportCallback()],
        worker_runtime_env={"env_vars": dict(worker_env)} if worker_env else None,
    )
    trainer = JaxTrainer(
        train_on_host,
        train_loop_config={"train": {**dict(train_config), "workdir": workdir}},
        scaling_config=ScalingConfig(
            num_workers=placement.hosts,
            use_tpu=True,
            topology=placement.topology,
            accelerator_type=TPU_V4,
            resources_per_worker=dict(placement.worker_resources or {}),
        ),
        run_config=run_config,
    )
    return trainer.fit()


def tune_trainable(
    train_fn: Callable[[dict[str, Any]], None],
    accelerator: str = "cpu",
    cpus_per_trial: float = 1.0,
    num_classes: int = DEFAULT_NUM_CLASSES,
) -> Any:
    """`train_fn` for Tune, each trial placed by its own config (`tune.with_resources`).

    A sweep mixes variants, so every trial's placement is derived from its config:
    one that fits a host runs `train_fn` (tuner.raytune.trainable.train_trial) in the trial;
    one that needs a multi-host slice runs through tuner.raytune.slice_trial.run_on_slice.
    The accelerator name is checked now, so a typo fails before Ray starts.
    """
    from ray import tune
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    placement_for_config({}, accelerator, cpus_per_trial, num_classes)

    def resources(config: dict[str, Any]) -> Any:
        placement = placement_for_config(config, accelerator, cpus_per_trial, num_classes)
        return resource_dict_to_pg_factory(dict(placement.resources))

    def trial(config: dict[str, Any]) -> None:
        placement = placement_for_config(config, accelerator, cpus_per_trial, num_classes)
        if placement.is_slice:

            run_on_slice(config, placement)
        else:
            train_fn(config)

    trial.__name__ = getattr(train_fn, "__name__", "train_trial")
    trial.__qualname__ = trial.__name__
    return tune.with_resources(trial, resources)
