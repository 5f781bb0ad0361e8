"""Sharpness-aware minimisation (SAM) gradients for fine-tuning.

[P1] fine-tunes with SAM; [P2]'s transfer recipe uses ρ = 0.05 and computes the
ascent gradient on 20% of the batch, without synchronising it across devices:

    g_asc = ∇L(W; first ceil(0.2·B) examples)
    ε     = ρ · g_asc / ||g_asc||          (global L2 norm over all parameters)
    g     = ∇L(W + ε; whole batch)         (ε held constant)

``g`` then goes to the ordinary optimizer in place of ∇L(W).

Why not ``optax.contrib.sam``: it is an optimizer wrapper whose adversarial step
is driven through the optimizer state (alternating calls, or an ``update`` that
takes a ``grad_fn`` closure in opaque mode). It has no notion of an ascent
sub-batch (the caller would have to build it), keeps the loss and auxiliary
outputs of the perturbed pass out of reach, and divides by the raw gradient norm
(NaN on a zero gradient). Here SAM is a pure function of (params, batch) that
returns what the train step needs, so the optimizer stays the plain recipe.

Devices: inside ``jit`` a batch sharded over D devices is one global array, so
the plain form (``num_shards=1``) takes the first 20% of the global batch and its
ε is a global quantity. ``num_shards=D`` reproduces the reference's per-device
SAM: the batch is split into D contiguous shards (the data-parallel layout), each
shard takes the first 20% of its own examples, perturbs by its own ε and computes
its gradient there; only the final gradients are averaged. Shards are mapped
with ``vmap``, which lines up with the batch sharding, so nothing is exchanged
between devices for the ascent.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nfnet.errors import NFNetError

# [P2] JFT-300M -> ImageNet fine-tuning.
DEFAULT_RHO = 0.05
DEFAULT_ASCENT_FRACTION = 0.2
NORM_EPS = 1e-12

LossFn = Callable[[Any, Any], tuple[jax.Array, Any]]


def ascent_batch_size(batch_size: int, ascent_fraction: float) -> int:
    """``ceil(ascent_fraction × batch_size)``, immune to float noise (0.2 × 15 is 3, not 4)."""
    return min(batch_size, max(1, math.ceil(round(ascent_fraction * batch_size, 9))))


def _batch_size(batch: Any) -> int:
    sizes = {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise NFNetError(f"every array in the SAM batch needs the same leading (batch) size, got {sorted(sizes)}")
    return sizes.pop()


def _sam_single(loss_fn: LossFn, params: Any, batch: Any, rho: Any, ascent_size: int):
    grad_fn = jax.grad(loss_fn, has_aux=True)
    ascent_batch = jax.tree.map(lambda x: x[:ascent_size], batch)
    g_asc, _ = grad_fn(params, ascent_batch)
    scale = rho / (optax.tree.norm(g_asc) + NORM_EPS)
    perturbed = jax.tree.map(lambda p, g: p + jax.lax.stop_gradient(scale * g).astype(p.dtype), params, g_asc)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(perturbed, batch)
    return loss, aux, grads


def sam_gradients(loss_fn: LossFn, params: Any, batch: Any, *, rho: float = DEFAULT_RHO,
                  ascent_fraction: float = DEFAULT_ASCENT_FRACTION,
                  num_shards: int = 1) -> tuple[jax.Array, Any, Any]:
    """SAM gradient of ``loss_fn(params, batch) -> (loss, aux)``; returns ``(loss, aux, grads)``.

    ``loss`` and ``aux`` are those of the descent pass, i.e. on the whole batch at
    the perturbed point W + ε (the value SAM optimises; no extra forward pass).
    ``batch`` is a pytree of arrays sharing the leading batch axis; ``loss_fn``
    should return a batch mean. With ``num_shards > 1`` the batch splits into that
    many equal contiguous shards, each with its own ε (see the module docstring);
    ``loss`` and ``grads`` are averaged over shards and so is every ``aux`` leaf
    (return per-batch means in ``aux``, not per-example arrays). Jit-able:
    ``ascent_fraction`` and ``num_shards`` are static, ``rho`` may be traced.
    """
    if isinstance(rho, (int, float)) and not rho >= 0:
        raise NFNetError(f"SAM rho must be >= 0, got {rho} (the paper uses 0.05)")
    if not 0 < ascent_fraction <= 1:
        raise NFNetError(f"SAM ascent_fraction must be in (0, 1], got {ascent_fraction} (the paper uses 0.2)")
    if not (isinstance(num_shards, int) and num_shards >= 1):
        raise NFNetError(f"SAM num_shards must be an integer >= 1, got {num_shards}")
    batch_size = _batch_size(batch)
    if batch_size % num_shards:
        raise NFNetError(f"batch size {batch_size} does not split into {num_shards} equal SAM shards; "
                         "use a batch size divisible by the device count")
    shard_size = batch_size // num_shards
    ascent_size = ascent_batch_size(shard_size, ascent_fraction)
    if num_shards == 1:
        return _sam_single(loss_fn, params, batch, rho, ascent_size)
    shards = jax.tree.map(lambda x: x.reshape((num_shards, shard_size) + x.shape[1:]), batch)
    losses, auxes, grads = jax.vmap(lambda b: _sam_single(loss_fn, params, b, rho, ascent_size))(shards)
    mean = lambda x: jnp.mean(x, axis=0)
    return mean(losses), jax.tree.map(mean, auxes), jax.tree.map(mean, grads)
