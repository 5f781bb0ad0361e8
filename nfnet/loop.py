"""The training loop: `train(config, callback)` runs one NFNet training run and returns its summary.

`train` validates the config and checks the resume and init sources before anything
is built or written, loads the data (cut to `max_*_examples` by nfnet.data.subsets),
builds and compiles the step (nfnet.step) and trains. The run evaluates
(nfnet.evaluation) at `evals_per_run` evenly spaced steps (`eval_schedule`), which is
where it reports (the callback and TensorBoard), checkpoints and may stop; a non-finite
training loss ends it as "diverged". A resumed run continues exactly where its
checkpoint left it and may change only the fields in `RESUMABLE_CHANGES`; a run started
from a pre-trained checkpoint (`init_from`) loads every parameter but the classifier
and records that checkpoint as `parent`. `python -m nfnet.train` is its command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from nfnet.agc import DEFAULT_EPS, DEFAULT_EXCLUDE
from nfnet.checkpoint import (
    CHECKPOINTS_SUBDIR,
    MAX_TO_KEEP,
    CheckpointStore,
    latest_checkpoint,
    read_meta,
    resolve_checkpoint,
    restore_checkpoint,
)
from nfnet.config import RESUMABLE_CHANGES, TrainConfig, validate
from nfnet.data import Loader, load_dataset, total_steps
from nfnet.data.subsets import subset
from nfnet.errors import NFNetError
from nfnet.evaluation import evaluate
from nfnet.metrics import MetricWriter, ProgressBar, json_safe
from nfnet.optim import OptimConfig, make_schedule
from nfnet.step import DATA_AXIS, StepSpec, global_arrays, abstract_state_key, compile_train_step, init_state
from nfnet.variants import get_variant

CHECKPOINT_FORMAT = 1


METRIC_KEYS = (
    "step", "epoch", "progress", "images_seen", "train_loss", "val_loss", "val_top1", "lr",
    "clip_fraction", "images_per_sec", "flops", "device_seconds", "diverged", "done",
    "variant", "epochs", "params",
)


def eval_schedule(total: int, evals_per_run: int) -> list[int]:
    """Steps that evaluate: round(k·total/evals_per_run) for k = 1..evals_per_run, deduplicated, >= 1."""
    return sorted({max(1, math.floor(k * total / evals_per_run + 0.5)) for k in range(1, evals_per_run + 1)})


def _load_init_params(path: str, fresh_params: Any, spec: StepSpec) -> tuple[Any, dict]:
    """The pre-trained params of `path` with this run's freshly initialised classifier."""
    loaded, meta = restore_checkpoint(path, fallback_sharding=spec.replicated)
    pretrained = loaded["params"]
    params = {}
    for name, fresh in fresh_params.items():
        if name == "classifier":
            params[name] = fresh
            continue
        if name not in pretrained:
            raise NFNetError(f"pre-trained checkpoint {path} has no {name!r} parameters; "
                             "it was trained with another variant than this run's")
        old_shapes = jax.tree.map(np.shape, pretrained[name])
        new_shapes = jax.tree.map(np.shape, fresh)
        if old_shapes != new_shapes:
            raise NFNetError(f"pre-trained checkpoint {path}: {name!r} has shapes {old_shapes}, "
                             f"this model needs {new_shapes}; use the checkpoint's variant and multipliers")
        params[name] = jax.tree.map(lambda a, f: jnp.asarray(a, f.dtype), pretrained[name], fresh)
    return jax.device_put(params, spec.replicated), meta


def _config_diff(saved: dict, config: TrainConfig) -> list[str]:
    current = dataclasses.asdict(config)
    return [f"{k}={saved.get(k)!r} in the checkpoint but {v!r} now" for k, v in current.items()
            if k not in RESUMABLE_CHANGES and k in saved and saved[k] != v]


def config_from_meta(meta: dict) -> dict:
    """The TrainConfig fields of a checkpoint's saved config (fields it has that this version lacks dropped)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in meta.get("config", {}).items() if k in fields}


def _parent_info(path: str, meta: dict) -> dict:
    cfg = meta.get("config", {})
    return {
        "checkpoint": path,
        "variant": meta.get("variant"),
        "dataset": cfg.get("dataset"),
        "resolution": meta.get("resolution"),
        "num_classes": meta.get("num_classes"),
        "step": meta.get("step"),
        "val_loss": meta.get("metrics", {}).get("val_loss"),
        "workdir": cfg.get("workdir"),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def train(config: TrainConfig, callback: Callable[[dict, str | None], None] | None = None,
          tensorboard_dir: str | None = None, checkpoint_root: str | None = None,
          keep_checkpoints: int = MAX_TO_KEEP) -> dict:
    """Train, evaluate, checkpoint; call `callback(metrics, checkpoint_dir)` after every evaluation.

    TensorBoard events (scalars against the step, and the run's hparams) go to
    `tensorboard_dir`, `<workdir>/tensorboard` unless given. Checkpoints go to
    `checkpoint_root` (`<workdir>/checkpoints` unless given), the newest
    `keep_checkpoints` of them kept; `--resume` looks there too.

    Returns the summary: the last metrics plus status ("finished" or "diverged"),
    num_classes, steps, workdir, checkpoint_dir (the last checkpoint written, or None),
    best_val_loss, dataset, resolution, eval_resolution, peak_lr, batch_size, seed, width_mult,
    depth_mult and, for runs started from a pre-trained checkpoint, parent. `params` is the
    parameter count; `lr` is the LR of the last update (see `peak_lr` for the config's).
    Every mistake in `config` raises NFNetError before anything is written.
    """
    run_start = time.perf_counter()
    validate(config)
    variant = get_variant(config.variant, config.width_mult, config.depth_mult)
    resolution = config.resolution or variant.train_resolution
    eval_resolution = config.eval_resolution or resolution

    # Resume / init sources are checked before anything is built or written.
    checkpoint_root = checkpoint_root or os.path.join(config.workdir, CHECKPOINTS_SUBDIR)
    if keep_checkpoints < 1:
        raise NFNetError(f"keep_checkpoints must be at least 1, got {keep_checkpoints}")
    resume_path = None
    if config.resume:
        resume_path = latest_checkpoint(checkpoint_root)
        if resume_path is None:
            raise NFNetError(f"--resume: no checkpoint in {checkpoint_root}; start the run without --resume")
    elif config.resume_from:
        resume_path = resolve_checkpoint(config.resume_from)
    elif latest_checkpoint(checkpoint_root):
        raise NFNetError(f"{config.workdir} already holds checkpoints of a run; pass --resume to continue it "
                         "or choose another --workdir")
    resume_meta = read_meta(resume_path) if resume_path else None
    if resume_meta is not None:
        diff = _config_diff(resume_meta.get("config", {}), config)
        if diff:
            raise NFNetError(f"cannot resume {resume_path} with different settings: {'; '.join(diff)}")
    init_path = init_meta = None
    if config.init_from and resume_meta is None:
        init_path = resolve_checkpoint(config.init_from)
        init_meta = read_meta(init_path)

    train_ds = subset(load_dataset(config.dataset, "train", data_dir=config.data_dir), config.max_train_examples)
    eval_ds = subset(load_dataset(config.dataset, "test", data_dir=config.data_dir), config.max_eval_examples)
    num_classes = train_ds.num_classes
    total = total_steps(len(train_ds), config.batch_size, config.epochs)
    evals = eval_schedule(total, config.evals_per_run)

    devices = jax.devices()
    if config.batch_size % len(devices):
        raise NFNetError(f"global batch size {config.batch_size} does not divide over {len(devices)} devices; "
                         f"use a multiple of {len(devices)}")
    optim = OptimConfig(lr=float(config.lr), total_steps=total, warmup_fraction=float(config.warmup_fraction),
                        weight_decay=float(config.weight_decay),
                        clipping=None if config.clipping is None else float(config.clipping),
                        agc_eps=DEFAULT_EPS, agc_exclude=DEFAULT_EXCLUDE)
    spec = StepSpec(variant=variant, num_classes=num_classes, dtype=config.dtype,
                    stochdepth_rate=float(config.stochdepth_rate), dropout_rate=float(config.dropout_rate),
                    label_smoothing=float(config.label_smoothing), optim=optim, sam_rho=float(config.sam_rho),
                    sam_fraction=float(config.sam_fraction), ema_decay=float(config.ema_decay),
                    mesh=Mesh(np.array(devices), (DATA_AXIS,)), batch_size=config.batch_size,
                    resolution=resolution, eval_resolution=eval_resolution, conv_lowering=config.conv_lowering)
    schedule = make_schedule(optim)

    state = init_state(spec, config.seed)
    num_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(state["params"])))
    counters = {"flops": 0.0, "device_seconds": 0.0, "best_val_loss": float("inf")}
    parent = None
    start = 0
    if resume_meta is not None:
        state, meta = restore_checkpoint(resume_path, target=state)
        start = int(meta["step"])
        counters.update({k: float(meta[k]) if meta.get(k) is not None else counters[k] for k in counters})
        if meta.get("flops") is None and start > 0:
            counters["flops"] = None  # the steps before the checkpoint were not counted
        parent = meta.get("parent")
    elif init_path is not None:
        # The optimizer state holds no parameter values yet (zero momentum), so it stays.
        params, _ = _load_init_params(init_path, state["params"], spec)
        state = dict(state, params=params)
        if "ema" in state:  # its own buffers: the step donates the whole state
            state["ema"] = jax.tree.map(jnp.copy, params)
        parent = _parent_info(init_path, init_meta)

    step_fn, flops_per_step = compile_train_step(spec, abstract_state_key(state)) if start < total else (None, 0.0)

    main_process = jax.process_index() == 0
    epath.Path(config.workdir).mkdir(parents=True, exist_ok=True)  # local or gs://
    store = CheckpointStore(checkpoint_root, max_to_keep=keep_checkpoints)
    if resume_meta is not None:
        stale = store.delete_after(start)
        if stale and main_process:
            print(f"resuming at step {start}: removed later checkpoints {stale}", file=sys.stderr)
    writer = MetricWriter(tensorboard_dir or os.path.join(config.workdir, "tensorboard"), enabled=main_process)
    writer.write_hparams(
        {"variant": variant.label, "epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size,
         "seed": config.seed, "width_mult": variant.width_mult, "depth_mult": variant.depth_mult,
         "dataset": config.dataset if not config.max_train_examples
         else f"{config.dataset}[{int(config.max_train_examples)}]"},
        group=config.workdir.rstrip("/").rsplit("/", 1)[-1])  # the Trial ID column: a trial's run name
    bar = ProgressBar(total, initial=start, enabled=config.progress and main_process)

    n_train, batch = len(train_ds), config.batch_size
    checkpoint_dir = resume_path  # the run's latest checkpoint
    eval_steps = set(evals)
    # A run resumed at its last step trains no further: its summary is the saved one.
    metrics: dict[str, Any] = dict(resume_meta.get("metrics") or {}) if resume_meta else {}
    since_eval: list[dict] = []
    diverged = False
    interval_start, interval_first = time.perf_counter(), start
    segment_start_step = start

    def device_seconds() -> float:
        return counters["device_seconds"] + (time.perf_counter() - run_start) * len(devices)

    def base_metrics(step: int, losses: list[float], clips: list[float]) -> dict:
        elapsed = time.perf_counter() - interval_start
        return {
            "step": step,
            "epoch": step * batch / n_train,
            "progress": step / total,
            "images_seen": step * batch,
            "train_loss": _mean(losses),
            "lr": float(schedule(max(step - 1, 0))),
            "clip_fraction": _mean(clips),
            "images_per_sec": (step - interval_first) * batch / elapsed if elapsed > 0 else float("nan"),
            # None (not 0) when XLA gave no FLOPs figure: unknown compute is not free.
            "flops": None if counters["flops"] is None or flops_per_step is None
            else counters["flops"] + flops_per_step * (step - segment_start_step),
            "device_seconds": device_seconds(),
            "variant": variant.name,
            "epochs": config.epochs,
            "params": num_params,
        }

    def meta_for(step: int, m: dict) -> dict:
        return json_safe({
            "format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "step": step,
            "flops": m["flops"], "device_seconds": m["device_seconds"], "images_seen": m["images_seen"],
            "best_val_loss": counters["best_val_loss"], "num_classes": num_classes, "variant": variant.label,
            "resolution": resolution, "params": num_params, "metrics": m, "parent": parent,
        })

    try:
        loader = Loader(train_ds, batch, resolution, train=True, seed=config.seed, start_step=start,
                        process_index=jax.process_index(), process_count=jax.process_count(),
                        num_workers=config.num_workers, num_steps=total,
                        shuffle_window=config.shuffle_window)
        with loader:
            for step, (x, y) in loader:
                state, out = step_fn(state, global_arrays(spec.batch_sharding, x, y))
                since_eval.append(out)
                done = step + 1
                bar.update(done)
                # Check the previous step's loss while this one runs (keeps one step in flight).
                if len(since_eval) >= 2 and not math.isfinite(float(since_eval[-2]["loss"])):
                    diverged = True
                if done not in eval_steps and not diverged:
                    continue
                host = jax.device_get(since_eval)
                losses = [float(m["loss"]) for m in host]
                clips = [float(m["clip_fraction"]) for m in host]
                diverged = diverged or not all(math.isfinite(v) for v in losses)
                metrics = base_metrics(done, losses, clips)
                if diverged:
                    metrics.update(val_loss=float("inf"), val_top1=0.0, diverged=True, done=True)
                    if "ema" in state:
                        metrics.update(ema_val_loss=float("inf"), ema_val_top1=0.0)
                    bar.note(f"diverged at step {done}: train loss {metrics['train_loss']}")
                    writer.write(done, metrics)
                    if callback is not None:
                        callback(metrics, None)
                    break
                val_loss, val_top1 = evaluate(spec, state["params"], eval_ds, config.num_workers,
                                               config.shuffle_window)
                metrics.update(val_loss=val_loss, val_top1=val_top1, diverged=False, done=done == total)
                if "ema" in state:
                    ema_loss, ema_top1 = evaluate(spec, state["ema"], eval_ds, config.num_workers,
                                                       config.shuffle_window)
                    metrics.update(ema_val_loss=ema_loss, ema_val_top1=ema_top1)
                counters["best_val_loss"] = min(counters["best_val_loss"], val_loss)
                index = evals.index(done) + 1
                saved = None
                if index % config.checkpoint_every == 0 or done == total:
                    metrics["device_seconds"] = device_seconds()
                    saved = checkpoint_dir = store.save(done, state, meta_for(done, metrics))
                writer.write(done, metrics)
                bar.note(f"train {metrics['train_loss']:.4f} val {val_loss:.4f} top1 {val_top1:.3f}")
                if callback is not None:
                    callback(metrics, saved)
                since_eval = []
                interval_start, interval_first = time.perf_counter(), done
    finally:
        bar.close()
        writer.close()
        store.close()

    summary = dict(metrics)
    summary.update(
        status="diverged" if diverged else "finished",
        num_classes=num_classes,
        steps=int(metrics.get("step", start)),
        workdir=config.workdir,
        checkpoint_dir=checkpoint_dir,
        best_val_loss=counters["best_val_loss"],
        dataset=config.dataset,
        resolution=resolution,
        eval_resolution=eval_resolution,
        peak_lr=config.lr,
        batch_size=batch,
        seed=config.seed,
        width_mult=variant.width_mult,
        depth_mult=variant.depth_mult,
    )
    if parent is not None:
        summary["parent"] = parent
    if main_process:
        (epath.Path(config.workdir) / "summary.json").write_text(json.dumps(json_safe(summary), indent=1))
    return summary
