"""The pre-training recipe's optimizer as one optax chain.

[P1]/[P2]: AGC, then coupled L2 weight decay (not on gains, biases or skip
gains), then SGD with Nesterov momentum 0.9, scaled by a learning rate that
warms up linearly and decays to 0 along a cosine.

    g  <- AGC(g)                       (classifier exempt)
    g  <- g + wd · W                   (kernels only, the classifier's included)
    buf <- m · buf + g                 (PyTorch's Nesterov form, as the reference)
    u  <- g + m · buf
    W  <- W - lr(step) · u

``optax.trace(decay=m, nesterov=True)`` computes exactly the two momentum lines
(tests/nfnet/test_optim.py checks it by hand), so it is used as is.

lr(step) = peak · shape(step): the shape (warmup, cosine) is a function of the step
compiled into the program, the peak is a value in the optimizer state
(``optax.inject_hyperparams``). Runs that differ only in their LR therefore compile to
the same program, and JAX's persistent compilation cache serves a whole LR grid of a
(model, epoch budget) from one compile.
"""

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import jax
import optax

from nfnet.agc import DEFAULT_EPS, adaptive_grad_clip
from nfnet.errors import NFNetError

# Parameters named like this get weight decay; gains, biases and skip gains do not
# ([P2] and the reference code).
DECAYED_PARAM_NAME = "kernel"

# The reference code sets the LR for a batch of 256 and scales it linearly.
LR_REFERENCE_BATCH = 256


def scale_lr(base_lr_at_256: float, batch_size: int) -> float:
    """Linear LR scaling: ``base × batch / 256``; [P1]'s 1.6 is 0.1 at batch 4096."""
    if not (isinstance(base_lr_at_256, numbers.Real) and base_lr_at_256 > 0):
        raise NFNetError(f"base learning rate must be > 0, got {base_lr_at_256}")
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise NFNetError(f"batch size must be a positive integer, got {batch_size}")
    return float(base_lr_at_256) * batch_size / LR_REFERENCE_BATCH


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings; defaults are [P1]'s JFT pre-training values.

    ``lr`` is the peak learning rate (already scaled to the batch size, see
    ``scale_lr``). ``warmup_fraction`` is the share of ``total_steps`` spent
    warming up: [P1] gives no warmup and [P2]'s 5 epochs cannot fit a 0.25-epoch
    budget, so warmup is a fraction of the run. ``clipping`` is AGC's λ
    ([P2]: 0.01 at batch 1024-4096); None turns AGC off.
    """

    lr: float
    total_steps: int
    warmup_fraction: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-6
    clipping: float | None = 0.01
    agc_eps: float = DEFAULT_EPS
    agc_exclude: tuple[str, ...] = ("classifier",)

    def __post_init__(self) -> None:
        def real(x: Any) -> bool:
            return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

        if not (real(self.lr) and self.lr > 0):
            raise NFNetError(f"learning rate must be a finite number > 0, got {self.lr}")
        if not (isinstance(self.total_steps, numbers.Integral) and not isinstance(self.total_steps, bool)
                and self.total_steps >= 1):
            raise NFNetError(f"total_steps must be an integer >= 1, got {self.total_steps} "
                             "(is the epoch budget too small for the dataset and batch size?)")
        if not (real(self.warmup_fraction) and 0 <= self.warmup_fraction < 1):
            raise NFNetError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not (real(self.momentum) and 0 <= self.momentum < 1):
            raise NFNetError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (real(self.weight_decay) and self.weight_decay >= 0):
            raise NFNetError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.clipping is not None and not (real(self.clipping) and self.clipping > 0):
            raise NFNetError(f"AGC clipping must be > 0 (or None to turn AGC off), got {self.clipping}")
        if not (real(self.agc_eps) and self.agc_eps > 0):
            raise NFNetError(f"agc_eps must be > 0, got {self.agc_eps}")
        if isinstance(self.agc_exclude, str):
            raise NFNetError(f"agc_exclude must be a tuple of names, got the string {self.agc_exclude!r}")


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Warmup length in whole steps: ``warmup_fraction × total_steps`` rounded half up.

    Capped at ``total_steps - 1`` so the cosine part always has at least one step;
    a fraction that rounds to 0 (tiny runs) means no warmup.
    """
    return min(math.floor(warmup_fraction * total_steps + 0.5), total_steps - 1)


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``cfg.lr`` over ``warmup_steps``, then cosine to 0 at ``total_steps``.

    The schedule is evaluated at the optimizer's step count, so the first update
    uses ``lr(0)`` (0 when there is warmup) and the last uses ``lr(total_steps - 1)``.
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup_steps(cfg.total_steps, cfg.warmup_fraction),
        decay_steps=cfg.total_steps,
        end_value=0.0,
    )


def weight_decay_mask(params: Any) -> Any:
    """Pytree of bools shaped like ``params``: True for every ``kernel``.

    That is every WSConv2D and Dense kernel, the classifier's included (AGC
    exempts the classifier, weight decay does not); gains, biases and skip gains
    get no decay.
    """
    def decayed(path: tuple[Any, ...], _: Any) -> bool:
        last = path[-1] if path else None
        return getattr(last, "key", getattr(last, "name", None)) == DECAYED_PARAM_NAME

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg: OptimConfig, peak_lr: Any = None) -> optax.GradientTransformation:
    """AGC → coupled weight decay (kernels) → SGD momentum (Nesterov) → × shape(step) → × -peak.

    The peak (``cfg.lr`` unless ``peak_lr`` is given: a jitted init may pass it as a
    traced value so that its program does not depend on it either) is set into the
    state by ``init``; ``update`` reads it from the state, never from ``cfg``.
    """
    # Every stage is always present so the optimizer state has the same structure
    # whatever the values (a checkpoint restores under any of them).
    clip = (optax.identity() if cfg.clipping is None
            else adaptive_grad_clip(cfg.clipping, cfg.agc_eps, cfg.agc_exclude))
    peak = cfg.lr if peak_lr is None else peak_lr
    return optax.chain(
        clip,
        optax.add_decayed_weights(cfg.weight_decay, mask=weight_decay_mask),
        optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
        optax.scale_by_schedule(make_schedule(dataclasses.replace(cfg, lr=1.0))),
        optax.inject_hyperparams(optax.scale)(step_size=-peak),
    )
