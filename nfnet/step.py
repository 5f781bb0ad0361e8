"""The compiled training step: `StepSpec`, `init_state`, `make_train_step`, `compile_train_step`.

The recipe is [P1]'s pre-training recipe (nfnet/optim.py): SGD with Nesterov
momentum, AGC, coupled weight decay, warmup (a fraction of the run) and cosine decay
to zero, softmax cross-entropy with optional label smoothing; optionally SAM's
gradient and an EMA of the weights. `lr` is the peak LR as given; scale it for the
batch size with `nfnet.optim.scale_lr` (0.1 x batch/256).

The step is one pure jitted function of (state, batch), compiled once and run
data-parallel over every device of every process: params replicated, batches split
along the mesh axis `data` (`DATA_AXIS`). `StepSpec` holds everything the compiled
functions depend on and is their cache key. Logging, checkpoints and the callback
happen outside the step (nfnet.loop).
The persistent compilation cache is JAX's own: set JAX_COMPILATION_CACHE_DIR.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nfnet.agc import agc_clip_fraction
from nfnet.config import DTYPES
from nfnet.counting import jaxpr_flops
from nfnet.data import normalise_on_device
from nfnet.layers import resolve_conv_lowering
from nfnet.model import NFNet
from nfnet.optim import OptimConfig, make_optimizer
from nfnet.sam import sam_gradients
from nfnet.variants import Variant

DATA_AXIS = "data"


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


def step_flops(spec: StepSpec, state_abstract: Any, batch: Any) -> float | None:
    """Training FLOPs of one step over all devices (`nfnet.counting.jaxpr_flops`), counted on
    the step with native convolutions: the same figure for a spec on every backend and
    lowering (the dense lowering's per-tap weight gradients would add taps on padding).
    None when the step cannot be counted."""
    native = dataclasses.replace(spec, conv_lowering="native")
    return jaxpr_flops(jax.make_jaxpr(make_train_step(native))(state_abstract, batch))


@functools.lru_cache(maxsize=4)
def compile_train_step(spec: StepSpec, state_shapes: Any) -> tuple[Any, float | None]:
    """(compiled step, training FLOPs of one step over all devices) for this spec; the
    FLOPs (`step_flops`) are None when the step cannot be counted."""
    state_abstract = jax.tree.unflatten(state_shapes[0], state_shapes[1])
    batch = (
        jax.ShapeDtypeStruct((spec.batch_size, spec.resolution, spec.resolution, 3), jnp.uint8,
                             sharding=spec.batch_sharding),
        jax.ShapeDtypeStruct((spec.batch_size,), jnp.int32, sharding=spec.batch_sharding),
    )
    step = jax.jit(make_train_step(spec), in_shardings=(spec.replicated, spec.batch_sharding),
                   out_shardings=(spec.replicated, spec.replicated), donate_argnums=0)
    traced = step.trace(state_abstract, batch)
    platform = spec.mesh.devices.flat[0].platform
    if resolve_conv_lowering(spec.conv_lowering, platform) == "native":
        flops = jaxpr_flops(traced.jaxpr)  # the program being compiled is the one to count
    else:
        flops = step_flops(spec, state_abstract, batch)
    return traced.lower().compile(), flops


def abstract_state_key(state: dict) -> Any:
    """A hashable description of the state's shapes, dtypes and shardings (the compile cache key)."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state))
    return treedef, tuple(leaves)


def global_arrays(sharding: NamedSharding, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """This process's rows of a global batch -> global arrays sharded along `data`."""
    return tuple(jax.make_array_from_process_local_data(sharding, a) for a in arrays)
