"""Held-out evaluation: `evaluate(spec, params, ds, num_workers)` -> (mean loss, top-1) over a whole split.

`make_eval_step(spec)` is the jitted evaluation step, cached by its StepSpec like the
training step: softmax cross-entropy (no label smoothing) and top-1 summed over the
real rows of a global batch, the last batch's padding masked out. Each process feeds
its own rows of every batch (nfnet.data.eval_batches), sharded as in training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nfnet.config import TrainConfig
from nfnet.data import Dataset, eval_batches, normalise_on_device
from nfnet.step import StepSpec, global_arrays


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


def evaluate(spec: StepSpec, params: Any, ds: Dataset, num_workers: int,
             shuffle_window: int = TrainConfig.shuffle_window) -> tuple[float, float]:
    """(mean loss, top-1) of `params` over the whole split `ds` (padding masked out)."""
    step = make_eval_step(spec)
    totals = []
    for x, y, mask in eval_batches(ds, spec.batch_size, spec.eval_resolution, process_index=jax.process_index(),
                                   process_count=jax.process_count(), num_workers=num_workers,
                                   shuffle_window=shuffle_window):
        totals.append(step(params, *global_arrays(spec.batch_sharding, x, y, mask)))
    loss_sum, correct, count = (float(sum(v)) for v in zip(*jax.device_get(totals)))
    return loss_sum / count, correct / count
