"""Adaptive gradient clipping (AGC) as an optax transformation.

[P2] §4.1: for each output unit i of a weight W with gradient G,

    if ||G_i|| / max(||W_i||, eps) > λ:   G_i <- G_i · λ · max(||W_i||, eps) / ||G_i||

with eps = 1e-3 (so zero-initialised weights such as skip gains can still move)
and λ = 0.01 at batch sizes 1024-4096. A unit is the slice that feeds one output:
for Flax kernels, whose output axis is the last one, the norm runs over every
other axis (HWIO convs over (0, 1, 2), (in, out) linears over 0); vectors
(gains, biases) and scalars (skip gains) are one unit each. [P2] does not clip the
final classifier, so parameters under a module named ``classifier`` are exempt.

Why not ``optax.adaptive_grad_clip``: it copies the reference code, which differs
from the rule above in three ways (see tests/nfnet/test_agc.py):
  * it squeezes the tensor before choosing the axes, so a kernel whose reduced
    axes all have size 1 (a (1, O) linear, a (1, 1, 1, O) depthwise 1x1 conv) is
    clipped as one unit instead of O units;
  * it treats every 3-D tensor as multi-head linear (norm over axis 0 only);
  * it divides by max(||G_i||, 1e-6), which shrinks gradients too far when
    λ · eps < 1e-6 (λ < 1e-3).
It also clips every parameter (no classifier exemption). On ordinary conv and
linear kernels with λ >= 1e-3 the two agree; here the rule is written out.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nfnet.errors import NFNetError

# [P2] §4.1 and the reference code.
DEFAULT_CLIPPING = 0.01
DEFAULT_EPS = 1e-3
DEFAULT_EXCLUDE = ("classifier",)

PathPredicate = Callable[[tuple[str, ...]], bool]
Exclude = Sequence[str] | PathPredicate


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(_key_name(k) for k in path)


def _check(clipping: float, eps: float) -> None:
    if not clipping > 0:
        raise NFNetError(f"AGC clipping threshold must be > 0, got {clipping} (the paper uses 0.01)")
    if not eps > 0:
        raise NFNetError(f"AGC eps must be > 0, got {eps} (the paper uses 1e-3)")


def _excluded_fn(exclude: Exclude) -> PathPredicate:
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        names = frozenset([exclude])
    else:
        names = frozenset(exclude)
    return lambda path: any(name in names for name in path)


def agc_mask(params: Any, exclude: Exclude = DEFAULT_EXCLUDE) -> Any:
    """Pytree of bools shaped like ``params``: True where AGC applies.

    ``exclude`` is either module/parameter names (a leaf is exempt when any key on
    its path equals one of them; the default exempts ``classifier``) or a
    predicate on the tuple of path names.
    """
    excluded = _excluded_fn(exclude)
    return jax.tree_util.tree_map_with_path(lambda path, _: not excluded(_path_names(path)), params)


def unitwise_norm(x: jax.Array) -> jax.Array:
    """L2 norm of each output unit, with reduced axes kept (broadcasts against ``x``).

    Rank >= 2: over every axis but the last (the output axis in Flax kernels).
    Rank <= 1: the whole tensor, shape () or (1,).
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim <= 1:
        return jnp.sqrt(jnp.sum(jnp.square(x), keepdims=True))
    # Reduced as a [units' inputs, units] matrix: the same sums, and XLA:CPU runs a 2-D
    # column reduction several times faster than one over a 4-D kernel's leading axes.
    sq = jnp.sum(jnp.square(x.reshape(-1, x.shape[-1])), axis=0)
    return jnp.sqrt(sq).reshape((1,) * (x.ndim - 1) + (x.shape[-1],))


def _clip_decision(grad: jax.Array, param: jax.Array, clipping: float, eps: float):
    g_norm = unitwise_norm(grad)
    max_norm = clipping * jnp.maximum(unitwise_norm(param), eps)
    # ||G_i|| / max(||W_i||, eps) > λ, written without the division.
    clipped = g_norm > max_norm
    return clipped, g_norm, max_norm


def clip_unitwise(grad: jax.Array, param: jax.Array, clipping: float = DEFAULT_CLIPPING,
                  eps: float = DEFAULT_EPS) -> jax.Array:
    """AGC on one tensor: the [P2] rule applied to every output unit of ``grad``."""
    clipped, g_norm, max_norm = _clip_decision(grad, param, clipping, eps)
    # Divide only where clipping, so unclipped zero-gradient units stay finite.
    scale = jnp.where(clipped, max_norm / jnp.where(clipped, g_norm, 1.0), 1.0)
    return (grad * scale).astype(jnp.asarray(grad).dtype)


def adaptive_grad_clip(clipping: float = DEFAULT_CLIPPING, eps: float = DEFAULT_EPS,
                       exclude: Exclude = DEFAULT_EXCLUDE) -> optax.GradientTransformation:
    """AGC as an optax transformation; ``update`` needs ``params``.

    Leaves on an excluded path (by default everything under ``classifier``) pass
    through unchanged. Stateless.
    """
    _check(clipping, eps)

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None):
        if params is None:
            raise ValueError("adaptive_grad_clip needs params: call update(grads, state, params)")
        mask = agc_mask(params, exclude)
        updates = jax.tree.map(
            lambda g, p, m: clip_unitwise(g, p, clipping, eps) if m else g, updates, params, mask
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


class ClipCounts(NamedTuple):
    clipped: jax.Array
    total: int


def agc_clip_counts(grads: Any, params: Any, clipping: float = DEFAULT_CLIPPING,
                    eps: float = DEFAULT_EPS, exclude: Exclude = DEFAULT_EXCLUDE) -> ClipCounts:
    """How many units AGC clips, and how many units it looks at (exempt leaves not counted)."""
    _check(clipping, eps)
    mask = agc_mask(params, exclude)
    clipped = jnp.zeros((), jnp.int32)
    total = 0
    for g, p, m in zip(jax.tree.leaves(grads), jax.tree.leaves(params), jax.tree.leaves(mask)):
        if not m:
            continue
        decision, _, _ = _clip_decision(g, p, clipping, eps)
        clipped = clipped + jnp.sum(decision, dtype=jnp.int32)
        total += decision.size
    return ClipCounts(clipped, total)


def agc_clip_fraction(grads: Any, params: Any, clipping: float = DEFAULT_CLIPPING,
                      eps: float = DEFAULT_EPS, exclude: Exclude = DEFAULT_EXCLUDE) -> jax.Array:
    """Fraction of AGC units clipped for these gradients (the trainer's ``clip_fraction``).

    Every unit counts once whatever its size: an output channel of a conv, an
    output of a linear, a whole gain/bias vector, a skip gain. Pass the raw
    gradients (before clipping). 0.0 when no leaf is subject to AGC.
    """
    counts = agc_clip_counts(grads, params, clipping, eps, exclude)
    if counts.total == 0:
        return jnp.zeros((), jnp.float32)
    return counts.clipped.astype(jnp.float32) / counts.total
