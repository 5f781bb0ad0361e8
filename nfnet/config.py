"""One training run's settings: `TrainConfig`, and `validate(config)`, the rules a run must meet to start.

`RESUMABLE_CHANGES` names the fields a resumed run may change (every other field must
match the checkpoint's); `DTYPES` maps the `dtype` names to JAX dtypes. Each mistake
`validate` finds is an NFNetError naming the command-line flag (`--lr must be ...`),
which nfnet.train, nfnet.finetune and the tuner commands show as their one-line error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from nfnet import storage
from nfnet.errors import NFNetError
from nfnet.layers import CONV_LOWERINGS
from nfnet.paths import dir_problem
from nfnet.variants import resolution_problem

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
