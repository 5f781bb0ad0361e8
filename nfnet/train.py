"""Train one NFNet: `train(config, callback)` and `python -m nfnet.train`.

    python -m nfnet.train --variant nano --epochs 0.25 --lr 0.4 --batch-size 256 \\
        --dataset fashion_mnist --resolution 32 --workdir runs/nano-fashion

prints a progress bar on stderr and one JSON summary line on stdout, and leaves
TensorBoard events (scalars by step, and the run's hparams) in `<workdir>/tensorboard`, orbax checkpoints in
`<workdir>/checkpoints/<step>` and the summary in `<workdir>/summary.json`.
`--resume` continues the run in `--workdir` exactly where its last checkpoint left it
(the other flags default to the checkpoint's); `--resume-from <checkpoint dir>` does
the same from a given checkpoint. The command above (59 steps, 8 evaluations over the
10k test images) takes 2-6 minutes on a 2-core CPU depending on what else runs there,
and reaches a held-out loss near 0.9 (top-1 ~0.67). The demo continues with
`python -m nfnet.finetune` (see there).

The recipe is [P1]'s pre-training recipe (nfnet/optim.py): SGD with Nesterov
momentum, AGC, coupled weight decay, warmup (a fraction of the run) and cosine decay
to zero, softmax cross-entropy with optional label smoothing. `lr` is the peak LR as
given; scale it for the batch size with `nfnet.optim.scale_lr` (0.1 x batch/256).

The step is one pure jitted function of (state, batch), compiled once and run
data-parallel over every device of every process: params replicated, batches split
along the mesh axis `data`. Logging, checkpoints and the callback happen outside it.
The run evaluates at `evals_per_run` evenly spaced steps, which is where it reports,
checkpoints and may stop; a non-finite training loss ends it as "diverged".
The persistent compilation cache is JAX's own: set JAX_COMPILATION_CACHE_DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nfnet import cli, storage
from nfnet.agc import DEFAULT_EPS, DEFAULT_EXCLUDE, agc_clip_fraction
from nfnet.checkpoint import (
    CHECKPOINTS_SUBDIR,
    MAX_TO_KEEP,
    CheckpointStore,
    latest_checkpoint,
    read_meta,
    resolve_checkpoint,
    restore_checkpoint,
)
from nfnet.counting import compiled_flops
from nfnet.data import Dataset, Loader, eval_batches, load_dataset, normalise_on_device, total_steps
from nfnet.errors import NFNetError
from nfnet.layers import CONV_LOWERINGS, resolve_conv_lowering
from nfnet.metrics import MetricWriter, ProgressBar, json_safe
from nfnet.model import NFNet
from nfnet.optim import OptimConfig, make_optimizer, make_schedule
from nfnet.paths import dir_problem
from nfnet.sam import sam_gradients
from nfnet.variants import Variant, get_variant, resolution_problem

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DATA_AXIS = "data"
# Subsets (max_*_examples) are drawn with this fixed seed, so runs that differ in
# `seed` still train and evaluate on the same examples.
SUBSET_SEED = 0
CHECKPOINT_FORMAT = 1
DESCRIPTION = ("Train one NFNet: print a progress bar on stderr and one JSON summary line on stdout, and "
               "leave checkpoints, TensorBoard events and summary.json in --workdir.")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are [P1]'s pre-training recipe at CPU scale."""

    variant: str = "nano"
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    epochs: float = 1.0              # fractional budgets (0.25) are first-class
    lr: float = 0.1                  # peak LR as given (the caller scales it for the batch size)
    batch_size: int = 256            # global batch, over all devices and hosts
    resolution: int | None = None    # None: the variant's train_resolution (32 for the small variants)
    eval_resolution: int | None = None  # None: same as resolution
    seed: int = 0
    workdir: str = "runs/default"
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-6       # [P1] JFT pre-training
    clipping: float | None = 0.01    # AGC λ ([P2]); None turns AGC off
    label_smoothing: float = 0.0
    dtype: str = "float32"           # or "bfloat16": bf16 activations, f32 params and logits
    stochdepth_rate: float = 0.0
    dropout_rate: float = 0.0
    evals_per_run: int = 8           # evaluate and report at fixed fractions of the run
    checkpoint_every: int = 1        # checkpoint every N evaluations (and always at the end)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    num_workers: int = 2
    shuffle_window: int = 16         # streamed Parquet: row groups whose rows are shuffled together
    progress: bool = True
    resume: bool = False             # continue from the latest checkpoint in workdir
    resume_from: str | None = None   # or from this checkpoint directory
    init_from: str | None = None     # pre-trained checkpoint: load all but the classifier
    sam_rho: float = 0.0             # > 0 turns SAM on ([P2] fine-tuning: 0.05)
    sam_fraction: float = 0.2        # share of the batch for SAM's ascent gradient
    ema_decay: float = 0.0           # > 0 keeps an EMA of the params, evaluated alongside
    conv_lowering: str = "auto"      # how convs are lowered (nfnet.layers): auto, native or dense; same maths


# Fields that may change when a run is resumed; every other field must match the checkpoint's.
RESUMABLE_CHANGES = frozenset({
    "workdir", "data_dir", "resume", "resume_from", "init_from", "progress", "num_workers",
    "checkpoint_every", "max_eval_examples", "eval_resolution", "conv_lowering",
})

METRIC_KEYS = (
    "step", "epoch", "progress", "images_seen", "train_loss", "val_loss", "val_top1", "lr",
    "clip_fraction", "images_per_sec", "flops", "device_seconds", "diverged", "done",
    "variant", "epochs", "params",
)


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def validate(config: TrainConfig) -> None:
    """Raise NFNetError for any field a run cannot start with."""
    c = config
    checks = [
        (_real(c.lr) and c.lr > 0, f"--lr must be a finite number > 0, got {c.lr}"),
        (_real(c.epochs) and c.epochs > 0, f"--epochs must be > 0 (fractions like 0.25 are fine), got {c.epochs}"),
        (_integer(c.batch_size) and c.batch_size >= 1, f"--batch-size must be an integer >= 1, got {c.batch_size}"),
        (c.resolution is None or resolution_problem(c.resolution) is None,
         f"--resolution {resolution_problem(c.resolution)}"),
        (c.eval_resolution is None or resolution_problem(c.eval_resolution) is None,
         f"--eval-resolution {resolution_problem(c.eval_resolution)}"),
        (_real(c.warmup_fraction) and 0 <= c.warmup_fraction < 1,
         f"--warmup-fraction must be in [0, 1), got {c.warmup_fraction}"),
        (_real(c.weight_decay) and c.weight_decay >= 0, f"--weight-decay must be >= 0, got {c.weight_decay}"),
        (c.clipping is None or (_real(c.clipping) and c.clipping > 0),
         f"--clipping must be > 0 (or 'none' to turn AGC off), got {c.clipping}"),
        (_real(c.label_smoothing) and 0 <= c.label_smoothing < 1,
         f"--label-smoothing must be in [0, 1), got {c.label_smoothing}"),
        (c.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {c.dtype!r}"),
        (_real(c.stochdepth_rate) and 0 <= c.stochdepth_rate < 1,
         f"--stochdepth-rate must be in [0, 1), got {c.stochdepth_rate}"),
        (_real(c.dropout_rate) and 0 <= c.dropout_rate < 1, f"--dropout-rate must be in [0, 1), got {c.dropout_rate}"),
        (_integer(c.evals_per_run) and c.evals_per_run >= 1, f"--evals-per-run must be >= 1, got {c.evals_per_run}"),
        (_integer(c.checkpoint_every) and c.checkpoint_every >= 1,
         f"--checkpoint-every must be >= 1, got {c.checkpoint_every}"),
        (c.max_train_examples is None or (_integer(c.max_train_examples) and c.max_train_examples >= 1),
         f"--max-train-examples must be >= 1, got {c.max_train_examples}"),
        (c.max_eval_examples is None or (_integer(c.max_eval_examples) and c.max_eval_examples >= 1),
         f"--max-eval-examples must be >= 1, got {c.max_eval_examples}"),
        (_integer(c.num_workers) and c.num_workers >= 0, f"--num-workers must be >= 0, got {c.num_workers}"),
        (_integer(c.shuffle_window) and c.shuffle_window >= 1,
         f"--shuffle-window must be >= 1 row group, got {c.shuffle_window}"),
        (_real(c.sam_rho) and c.sam_rho >= 0, f"--sam-rho must be >= 0, got {c.sam_rho}"),
        (_real(c.sam_fraction) and 0 < c.sam_fraction <= 1, f"--sam-fraction must be in (0, 1], got {c.sam_fraction}"),
        (_real(c.ema_decay) and 0 <= c.ema_decay < 1, f"--ema-decay must be in [0, 1), got {c.ema_decay}"),
        (c.conv_lowering in CONV_LOWERINGS,
         f"--conv-lowering must be one of {', '.join(CONV_LOWERINGS)}, got {c.conv_lowering!r}"),
        (not (c.resume and c.resume_from), "pass either --resume or --resume-from, not both"),
        (bool(c.workdir), "--workdir must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise NFNetError(message)
    if storage.is_uri(c.workdir):
        storage.check_uri(c.workdir, "--workdir")
        return
    problem = dir_problem(c.workdir)
    if problem is not None:
        raise NFNetError(f"--workdir {problem}; pass a directory (it is created when missing)")


class Subset:
    """A fixed random subset of a dataset (the `max_*_examples` options), in the original order."""

    def __init__(self, ds: Dataset, size: int, seed: int = SUBSET_SEED) -> None:
        self.ds = ds
        self.indices = np.sort(np.random.default_rng(seed).permutation(len(ds))[:size])
        self.name = f"{ds.name}[{size}]"
        self.num_classes = ds.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices):
        return self.ds.get(self.indices[np.asarray(indices, dtype=np.int64)])


def subset(ds: Dataset, size: int | None) -> Dataset:
    """`ds` cut to `size` examples: a fixed random subset, or a streamed split's first `size` rows."""
    if size is None or size >= len(ds):
        return ds
    head = getattr(ds, "head", None)  # random rows of a stream would read a row group per example
    return head(size) if head is not None else Subset(ds, size)


def eval_schedule(total: int, evals_per_run: int) -> list[int]:
    """Steps that evaluate: round(k·total/evals_per_run) for k = 1..evals_per_run, deduplicated, >= 1."""
    return sorted({max(1, math.floor(k * total / evals_per_run + 0.5)) for k in range(1, evals_per_run + 1)})


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy in f32, with labels smoothed by `smoothing`."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


@dataclass(frozen=True)
class StepSpec:
    """Everything the compiled functions depend on; compiled functions are cached by it."""

    variant: Variant
    num_classes: int
    dtype: str
    stochdepth_rate: float
    dropout_rate: float
    label_smoothing: float
    optim: OptimConfig
    sam_rho: float
    sam_fraction: float
    ema_decay: float
    mesh: Mesh
    batch_size: int
    resolution: int
    eval_resolution: int
    conv_lowering: str = "auto"

    @property
    def model(self) -> NFNet:
        platform = self.mesh.devices.flat[0].platform
        return NFNet(self.variant, self.num_classes, self.stochdepth_rate, self.dropout_rate,
                     dtype=DTYPES[self.dtype], conv_lowering=resolve_conv_lowering(self.conv_lowering, platform))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA_AXIS))


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """EMA decay with a warm-up: min(decay, (1 + t) / (10 + t)) after t updates.

    TensorFlow's ExponentialMovingAverage(num_updates) rule: early in a run the average
    follows the weights closely, so short runs (a few hundred steps) still get a useful
    EMA, and long runs reach `decay`.
    """
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def make_train_step(spec: StepSpec) -> Callable[[dict, tuple], tuple[dict, dict]]:
    """The pure step: (state, (x, y)) -> (state, {loss, clip_fraction}).

    state = {params, opt_state, step, rng[, ema]}; the dropout/stochastic-depth key of
    step s is fold_in(rng, s), so a resumed run draws the same keys.
    """
    model, tx = spec.model, make_optimizer(spec.optim)
    num_shards = spec.mesh.size

    def train_step(state: dict, batch: tuple[jax.Array, jax.Array]) -> tuple[dict, dict]:
        params = state["params"]
        rng = jax.random.fold_in(state["rng"], state["step"])

        def loss_fn(p, b):
            x, y = b
            logits = model.apply({"params": p}, normalise_on_device(x), train=True, rngs={"dropout": rng})
            return cross_entropy(logits, y, spec.num_classes, spec.label_smoothing), None

        if spec.sam_rho > 0:
            # [P2]: the ascent gradient uses part of each device's batch, not synchronised.
            loss, _, grads = sam_gradients(loss_fn, params, batch, rho=spec.sam_rho,
                                           ascent_fraction=spec.sam_fraction, num_shards=num_shards)
        else:
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        if spec.optim.clipping is None:
            clip_fraction = jnp.zeros((), jnp.float32)
        else:
            clip_fraction = agc_clip_fraction(grads, params, spec.optim.clipping, spec.optim.agc_eps,
                                              spec.optim.agc_exclude)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        new_state = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1)
        if "ema" in state:
            d = ema_decay_at(spec.ema_decay, state["step"])
            new_state["ema"] = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema"], params)
        return new_state, {"loss": loss, "clip_fraction": clip_fraction}

    return train_step


def init_state(spec: StepSpec, seed: int) -> dict:
    """Fresh replicated train state (params from `seed`, the peak LR in the optimizer state)."""
    return _init_fn(spec)(jax.random.PRNGKey(seed), jnp.float32(spec.optim.lr))


@functools.lru_cache(maxsize=4)
def _init_fn(spec: StepSpec) -> Callable[[jax.Array, jax.Array], dict]:
    model = spec.model

    def init(key: jax.Array, peak_lr: jax.Array) -> dict:
        # The LR is an argument, not a constant: every LR of a grid shares this program.
        tx = make_optimizer(spec.optim, peak_lr=peak_lr)
        init_key, rng = jax.random.split(key)
        # Parameter shapes do not depend on the resolution: initialise on a small image.
        params = model.init(init_key, jnp.zeros((1, 16, 16, 3), jnp.float32), train=False)["params"]
        state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng}
        if spec.ema_decay > 0:
            state["ema"] = params
        return state

    return jax.jit(init, out_shardings=spec.replicated)


@functools.lru_cache(maxsize=4)
def compile_train_step(spec: StepSpec, state_shapes: Any) -> tuple[Any, float | None]:
    """(compiled step, training FLOPs of one step over all devices) for this spec; the
    FLOPs are None when the backend's cost analysis gives no figure."""
    state_abstract = jax.tree.unflatten(state_shapes[0], state_shapes[1])
    batch = (
        jax.ShapeDtypeStruct((spec.batch_size, spec.resolution, spec.resolution, 3), jnp.uint8,
                             sharding=spec.batch_sharding),
        jax.ShapeDtypeStruct((spec.batch_size,), jnp.int32, sharding=spec.batch_sharding),
    )
    step = jax.jit(make_train_step(spec), in_shardings=(spec.replicated, spec.batch_sharding),
                   out_shardings=(spec.replicated, spec.replicated), donate_argnums=0)
    compiled = step.lower(state_abstract, batch).compile()
    # XLA's cost analysis is of the per-device SPMD program.
    flops = compiled_flops(compiled)
    return compiled, None if flops is None else flops * spec.mesh.size


def abstract_state_key(state: dict) -> Any:
    """A hashable description of the state's shapes, dtypes and shardings (the compile cache key)."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state))
    return treedef, tuple(leaves)


@functools.lru_cache(maxsize=4)
def make_eval_step(spec: StepSpec) -> Callable[..., tuple[jax.Array, jax.Array, jax.Array]]:
    """Jitted (params, x, y, mask) -> (sum of loss, sum of correct, count) over the real rows."""
    model = spec.model

    def eval_step(params, x, y, mask):
        logits = model.apply({"params": params}, normalise_on_device(x), train=False).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        return jnp.sum(loss * mask), jnp.sum(correct * mask), jnp.sum(mask)

    data = spec.batch_sharding
    return jax.jit(eval_step, in_shardings=(spec.replicated, data, data, data), out_shardings=spec.replicated)


def _global(sharding: NamedSharding, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """This process's rows of a global batch -> global arrays sharded along `data`."""
    return tuple(jax.make_array_from_process_local_data(sharding, a) for a in arrays)


def evaluate(spec: StepSpec, params: Any, ds: Dataset, num_workers: int,
             shuffle_window: int = TrainConfig.shuffle_window) -> tuple[float, float]:
    """(mean loss, top-1) of `params` over the whole split `ds` (padding masked out)."""
    step = make_eval_step(spec)
    totals = []
    for x, y, mask in eval_batches(ds, spec.batch_size, spec.eval_resolution, process_index=jax.process_index(),
                                   process_count=jax.process_count(), num_workers=num_workers,
                                   shuffle_window=shuffle_window):
        totals.append(step(params, *_global(spec.batch_sharding, x, y, mask)))
    loss_sum, correct, count = (float(sum(v)) for v in zip(*jax.device_get(totals)))
    return loss_sum / count, correct / count


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


def _config_from_meta(meta: dict) -> dict:
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
                state, out = step_fn(state, _global(spec.batch_sharding, x, y))
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


# ---------------------------------------------------------------- command line

# The command line's parser and flag types live in nfnet.cli (shared with the tuner commands).
FlagParser = cli.FlagParser

# One sentence per TrainConfig field: what it does, its units and allowed values. A text
# that states its own default (a None default means "derived from something else") ends
# with it; every other flag gets "(default: X)" appended from the config dataclass.
_HELP = {
    "variant": "NFNet variant: nano, micro, mini, small (CPU scale), F0..F7 or F0+..F7+, optionally "
               "with -w<mult>/-d<mult> width/depth suffixes; `python -m nfnet.summary --list` shows them",
    "width_mult": "multiply every stage's width (channels) by this factor; the conv group width scales "
                  "with it",
    "depth_mult": "multiply every stage's number of blocks by this factor (rounded, at least one block)",
    "dataset": "data to train and evaluate on: fashion_mnist, digits, synthetic[:n=..,classes=..], "
               "parquet:<uri> or imagefolder:<dir>",
    "data_dir": "where the dataset is read from when its spec names no location: Fashion-MNIST's IDX "
                "files, or the parquet/imagefolder location (default: $NFSCALE_FASHION_MNIST_DIR or the "
                "system copy for Fashion-MNIST)",
    "epochs": "training budget in passes over the training set; fractions such as 0.25 are fine",
    "lr": "peak learning rate, used as given: scale it for the batch size yourself (0.1 x batch/256)",
    "batch_size": "global batch size, split over all devices and hosts (a multiple of the device count)",
    "resolution": "training image size in px, at least 16 (default: the variant's training resolution, "
                  "32 for the small variants)",
    "eval_resolution": "image size in px of the held-out evaluation, at least 16 (default: --resolution)",
    "seed": "seed of the initial parameters, the data order, augmentation, dropout and stochastic depth "
            "(the --max-*-examples subsets do not depend on it)",
    "workdir": "directory or gs:// URI for this run's checkpoints/, tensorboard/ and summary.json",
    "warmup_fraction": "share of the run's steps over which the LR rises linearly to --lr before its "
                       "cosine decay to 0, in [0, 1)",
    "weight_decay": "coupled L2 weight decay on conv and linear kernels (not gains or biases); 0 turns "
                    "it off",
    "clipping": "adaptive gradient clipping (AGC) threshold: each unit's gradient norm is kept below this "
                "times its weight norm (classifier exempt); 'none' turns AGC off",
    "label_smoothing": "label smoothing of the cross-entropy targets, in [0, 1); 0 turns it off",
    "dtype": "precision of the activations: float32, or bfloat16 (parameters and logits stay float32)",
    "stochdepth_rate": "stochastic depth: the chance of dropping the last residual block, rising "
                       "linearly from 0 at the first block, in [0, 1); 0 turns it off",
    "dropout_rate": "dropout rate on the pooled features before the classifier, in [0, 1)",
    "evals_per_run": "held-out evaluations, evenly spaced over the run; only there the run reports, "
                     "checkpoints and can be stopped",
    "checkpoint_every": "write a checkpoint every N evaluations (the last evaluation always writes one)",
    "max_train_examples": "train on a fixed random subset of this many training examples, the same for "
                          "every seed (default: all of them)",
    "max_eval_examples": "evaluate on a fixed random subset of this many held-out examples (default: all "
                         "of them)",
    "num_workers": "threads that decode and augment batches ahead of the step; 0 loads them in the "
                   "training loop",
    "shuffle_window": "streamed Parquet datasets: row groups whose rows are shuffled together, after "
                      "each epoch's seeded row-group permutation; the loader holds at most twice this "
                      "many row groups in memory (other datasets ignore it)",
    "progress": "draw a progress bar on stderr (on by default; --no-progress turns it off)",
    "resume": "continue the run in --workdir from its latest checkpoint (the other flags default to "
              "the checkpoint's)",
    "resume_from": "continue a run from this checkpoint directory (default: start a new run)",
    "init_from": "start from this pre-trained checkpoint: load every parameter but the classifier "
                 "(default: random initial parameters)",
    "sam_rho": "radius of sharpness-aware minimisation (SAM); > 0 turns SAM on ([P2] fine-tunes with "
               "0.05), 0 turns it off",
    "sam_fraction": "share of each device's batch that computes SAM's ascent gradient, in (0, 1]; used "
                    "only with --sam-rho > 0",
    "ema_decay": "decay of an exponential moving average of the weights, evaluated alongside them "
                 "(ema_val_loss, ema_val_top1), in [0, 1); 0 turns it off",
    "conv_lowering": "how convolutions are lowered: auto (dense on CPU, native elsewhere), native "
                     "(XLA's grouped conv) or dense (per-group dense convs and matmuls); same results",
}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str] | None = None,
                     skip: frozenset[str] = frozenset()) -> None:
    """One flag per field of the config dataclass `cls` (`--batch-size` for `batch_size`), no defaults.

    Each flag's help is its sentence from `help_texts` (over `_HELP`) and, unless the
    sentence states its default or the flag is an on/off switch, "(default: X)" from `cls`.
    """
    help_texts = {**_HELP, **(help_texts or {})}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = help_texts[f.name]
        if f.type != "bool" and "default" not in help_text:
            help_text += f" (default: {f.default})"
        if f.name == "progress":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name == "clipping":
            parser.add_argument(flag, type=cli.number_or_none, metavar="NUMBER|none", help=help_text)
        elif f.type in ("int", "int | None"):
            parser.add_argument(flag, type=cli.integer, help=help_text)
        elif f.type in ("float", "float | None"):
            parser.add_argument(flag, type=cli.number, help=help_text)
        else:
            parser.add_argument(flag, type=str, help=help_text)


def build_parser(prog: str = "nfnet.train", description: str | None = None) -> argparse.ArgumentParser:
    """One flag per TrainConfig field (`--batch-size` for `batch_size`); unset flags stay unset.

    Defaults are left out of the namespace so `config_from_args` can lay the flags
    over any base config (TrainConfig's defaults, or a checkpoint's config on resume).
    """
    parser = FlagParser(prog=prog, description=description or DESCRIPTION, argument_default=argparse.SUPPRESS)
    add_config_flags(parser, TrainConfig)
    return parser


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """`base` (default: TrainConfig()) with every flag that was given laid over it."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    return dataclasses.replace(base or TrainConfig(), **given)


def resume_base(args: argparse.Namespace) -> TrainConfig | None:
    """The checkpoint's config when resuming (so `--workdir X --resume` needs no other flags)."""
    if getattr(args, "resume", False):
        workdir = getattr(args, "workdir", TrainConfig.workdir)
        path = latest_checkpoint(os.path.join(workdir, CHECKPOINTS_SUBDIR))
        if path is None:
            raise NFNetError(f"--resume: no checkpoint in {os.path.join(workdir, CHECKPOINTS_SUBDIR)}; "
                             "start the run without --resume")
    elif getattr(args, "resume_from", None):
        path = resolve_checkpoint(args.resume_from)
    else:
        return None
    return TrainConfig(**_config_from_meta(read_meta(path)))


def print_summary(summary: dict) -> None:
    """The final summary as one JSON line on stdout (non-finite numbers as null)."""
    print(json.dumps(json_safe(summary)), flush=True)


def run_command(make_config: Callable[[], TrainConfig]) -> int:
    """Train the config a command line makes: one-line error and exit 2 on a user
    mistake, else the JSON summary line from the first process."""
    try:
        summary = train(make_config())
    except NFNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print_summary(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: config_from_args(args, resume_base(args)))


if __name__ == "__main__":
    sys.exit(main())
