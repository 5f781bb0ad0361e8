"""NFNet building blocks: scaled weight standardization, scaled activations,
squeeze-excite and stochastic depth ([P2] Sec. 3-4, reference `nfnets/base.py`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Gamma constants that keep a unit-Gaussian input at unit variance after the
# activation (reference `base.nonlinearities`).
GELU_GAMMA = 1.7015043497085571
RELU_GAMMA = 1.7139588594436646


def scaled_gelu(x: jax.Array) -> jax.Array:
    # jax.nn.gelu defaults to the tanh approximation, as the reference uses.
    return jax.nn.gelu(x) * GELU_GAMMA


def scaled_relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x) * RELU_GAMMA


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"gelu": scaled_gelu, "relu": scaled_relu}

# How a convolution is lowered (the parameters and the maths are the same either way):
#   native: one `lax.conv_general_dilated`, grouped convs with `feature_group_count`
#           (XLA's GPU and TPU backends run these fastest);
#   dense:  only dense matrix products and dense convs, which XLA:CPU runs 5-15x faster
#           than its grouped convolution (docs/benchmarks.md): a 1x1 conv is a matmul,
#           a grouped 3x3 conv is one dense conv per group on its channel slice, and a
#           conv whose output map has at most `IM2COL_MAX_PIXELS` pixels (where XLA:CPU's
#           dense conv is slow too) is one (batched over groups) matmul of its patches;
#   auto:   dense on CPU, native elsewhere (`resolve_conv_lowering`).
CONV_LOWERINGS = ("auto", "native", "dense")
IM2COL_MAX_PIXELS = 4
# In the dense lowering, a 3x3 conv whose input map has at least this many pixels takes
# its weight gradient as one dot per tap (`_conv_per_tap_wgrad`), not XLA's own; a strided
# one only at a batch of at least PER_TAP_WGRAD_STRIDED_MIN_BATCH (measured: nano's step at
# batch 128 and 256 gains from it, F0's at batch 16 loses ~8%; docs/benchmarks.md).
PER_TAP_WGRAD_MIN_PIXELS = 256
PER_TAP_WGRAD_STRIDED_MIN_BATCH = 64
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_conv_lowering(lowering: str, platform: str | None = None) -> str:
    """'native' or 'dense' for `lowering` on `platform` (default: JAX's default backend)."""
    if lowering not in CONV_LOWERINGS:
        raise ValueError(f"conv lowering must be one of {', '.join(CONV_LOWERINGS)}, got {lowering!r}")
    if lowering != "auto":
        return lowering
    return "dense" if (platform or jax.default_backend()) == "cpu" else "native"


def _same_taps(x: jax.Array, k: int, stride: int) -> list[jax.Array]:
    """The k*k shifted (and strided) views of x under SAME padding, row-major over the window."""
    _, h, w, _ = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - w, 0)
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    return [xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride, :]
            for i in range(k) for j in range(k)]


def _conv_im2col(x: jax.Array, w: jax.Array, stride: int, groups: int) -> jax.Array:
    """SAME conv as one matmul of the patches, batched over groups: [G, M, k*k*Cg] x [G, k*k*Cg, Co/G]."""
    kh, kw, cg, co = w.shape
    taps = _same_taps(x, kh, stride)
    n, oh, ow, _ = taps[0].shape
    cog = co // groups
    patches = jnp.stack([t.reshape(-1, groups, cg) for t in taps], axis=2)  # [M, G, taps, Cg]
    patches = patches.reshape(-1, groups, kh * kw * cg)
    wg = w.reshape(kh * kw, cg, groups, cog).transpose(2, 0, 1, 3).reshape(groups, kh * kw * cg, cog)
    y = jax.lax.dot_general(patches, wg, (((2,), (1,)), ((1,), (0,))))  # [G, M, Co/G]
    return y.transpose(1, 0, 2).reshape(n, oh, ow, co)


def _dense_conv(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=_DIMS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_per_tap_wgrad(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """A dense SAME conv whose weight gradient is one [Co, M] x [M, Ci] dot per kernel tap.

    XLA:CPU computes a conv's weight gradient as a convolution over the batch, which on
    large maps runs 1.6-3x slower than these dots and needs a transposed copy of the
    activations (docs/benchmarks.md, `benchmarks/conv_weight_grad.py`). The forward pass
    and the input gradient are XLA's own.
    """
    return _dense_conv(x, w, stride)


def _per_tap_fwd(x, w, stride):
    return _dense_conv(x, w, stride), (x, w)


def _per_tap_bwd(stride, res, g):
    x, w = res
    kh, kw, cin, co = w.shape
    _, dx_fn = jax.vjp(lambda a: _dense_conv(a, w, stride), x)
    g2 = g.reshape(-1, co).T  # [Co, M]
    taps = [g2 @ t.reshape(-1, cin) for t in _same_taps(x, kh, stride)]  # each [Co, Ci]
    dw = jnp.stack(taps).reshape(kh, kw, co, cin).transpose(0, 1, 3, 2)
    return dx_fn(g)[0], dw.astype(w.dtype)


_conv_per_tap_wgrad.defvjp(_per_tap_fwd, _per_tap_bwd)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, groups: int = 1, lowering: str = "native") -> jax.Array:
    """SAME-padded NHWC x HWIO convolution with `groups` feature groups, lowered as `lowering` says."""
    if lowering == "native":
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=_DIMS,
                                            feature_group_count=groups)
    if lowering != "dense":
        raise ValueError(f"conv lowering must be 'native' or 'dense' here, got {lowering!r}")
    kh, kw, cg, co = w.shape
    n, h, wd, c = x.shape
    if kh == kw == 1 and stride == 1 and groups == 1:
        return (x.reshape(-1, c) @ w.reshape(c, co)).reshape(n, h, wd, co)
    if -(-h // stride) * -(-wd // stride) <= IM2COL_MAX_PIXELS:
        return _conv_im2col(x, w, stride, groups)
    dense = functools.partial(_dense_conv, stride=stride)
    big_map = h * wd >= PER_TAP_WGRAD_MIN_PIXELS
    if kh == kw == 3 and big_map and (stride == 1 or n >= PER_TAP_WGRAD_STRIDED_MIN_BATCH):
        # Large maps: XLA:CPU's own weight gradient is the slow part of the backward here.
        dense = functools.partial(_conv_per_tap_wgrad, stride=stride)
    if groups == 1:
        return dense(x, w)
    xs, ws = jnp.split(x, groups, axis=-1), jnp.split(w, groups, axis=-1)
    return jnp.concatenate([dense(a, b) for a, b in zip(xs, ws)], axis=-1)


class WSConv2D(nn.Module):
    """Conv with Scaled Weight Standardization ([P2] eq. 2).

    W_hat = gain * (W - mean) / sqrt(N * var), N = fan-in, per output channel,
    with N * var floored at 1e-4. The kernel is kept in f32 and cast to the
    compute dtype after standardization. `lowering` picks how the conv is
    lowered (`CONV_LOWERINGS`); the result is the same up to rounding.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    groups: int = 1
    dtype: jnp.dtype = jnp.float32
    lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_ch = x.shape[-1]
        shape = (self.kernel_size, self.kernel_size, in_ch // self.groups, self.features)
        kernel = self.param("kernel", nn.initializers.variance_scaling(1.0, "fan_in", "normal"), shape)
        gain = self.param("gain", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        fan_in = int(np.prod(shape[:-1]))
        # Standardise the kernel as a [fan-in, out] matrix: the same numbers, but XLA:CPU
        # runs the backward's reductions over a 2-D matrix 5x faster than over the
        # 4-D kernel's leading axes (docs/benchmarks.md).
        k = kernel.reshape(fan_in, self.features)
        mean = jnp.mean(k, axis=0)
        var = jnp.var(k, axis=0)
        scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, 1e-4)) * gain
        w = (k * scale - mean * scale).reshape(shape).astype(self.dtype)
        y = conv2d(x.astype(self.dtype), w, self.stride, self.groups, resolve_conv_lowering(self.lowering))
        return y + bias.astype(self.dtype)


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global pool, Dense -> ReLU -> Dense -> sigmoid.

    Hidden width = ratio x channels; the linears are not weight-standardized
    and use ReLU (the reference code; [P2]'s text says GELU).
    """

    features: int
    ratio: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = max(1, int(x.shape[-1] * self.ratio))
        h = jnp.mean(x, axis=(1, 2))
        h = nn.relu(nn.Dense(hidden, dtype=self.dtype, name="fc0")(h))
        h = nn.Dense(self.features, dtype=self.dtype, name="fc1")(h)
        return jax.nn.sigmoid(h)[:, None, None, :]


class StochasticDepth(nn.Module):
    """Drops whole samples' residual branches in training; identity at eval."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0], 1, 1, 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))
