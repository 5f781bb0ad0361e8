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
# In the dense lowering, a 3x3 conv takes some of its gradients from `_conv_own_grads`,
# not XLA's (docs/benchmarks.md):
# - on an input map of at least PER_TAP_WGRAD_MIN_PIXELS pixels, its weight gradient as one
#   dot per tap (a strided one only at a batch of at least PER_TAP_WGRAD_STRIDED_MIN_BATCH:
#   nano's step at batch 128 and 256 gains from it, F0's at batch 16 loses ~8%; and only with
#   at least PER_TAP_WGRAD_MIN_CHANNELS input channels a group: on the RGB stem conv the nine
#   dots of 3-channel slices cost nano's step ~18% on a loaded machine, 2% on a quiet one);
# - strided, on an input map of at least SUBPIXEL_DX_MIN_PIXELS pixels, its input gradient
#   as one stride-1 conv per input parity (`_subpixel_input_grad`), where XLA convolves a
#   zero-dilated gradient at a quarter of the rate.
PER_TAP_WGRAD_MIN_PIXELS = 256
PER_TAP_WGRAD_STRIDED_MIN_BATCH = 64
PER_TAP_WGRAD_MIN_CHANNELS = 8
SUBPIXEL_DX_MIN_PIXELS = 256
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


def _parity_classes(size: int, k: int, stride: int) -> list[tuple[list[int], int, int, int]]:
    """How a SAME conv's input positions of each residue r (mod `stride`) along one axis get
    their gradient: (the kernel taps that reach them, ordered so that the gradient is a plain
    correlation of the output gradient with those taps, the output gradient's low and high
    padding for that correlation (negative: cropped), how many input positions have residue r)."""
    out = -(-size // stride)
    lo = max((out - 1) * stride + k - size, 0) // 2
    classes = []
    for r in range(stride):
        # Input i = stride * m + r is reached by tap t from output o = m + (r + lo - t) / stride.
        taps = sorted((t for t in range(k) if (t - r - lo) % stride == 0), reverse=True)
        count = len(range(r, size, stride))
        if not taps:  # no tap reaches these inputs (a kernel smaller than the stride): gradient 0
            classes.append((taps, 0, 0, count))
            continue
        shifts = [(r + lo - t) // stride for t in taps]  # ascending
        classes.append((taps, -shifts[0], count - 1 + shifts[-1] - (out - 1), count))
    return classes


def _subpixel_input_grad(g: jax.Array, w: jax.Array, size: tuple[int, int], stride: int) -> jax.Array:
    """The input gradient of a strided SAME conv (`_dense_conv`) as stride**2 stride-1 convs of
    the output gradient, one per (row, column) parity of the input, interleaved: the same sums
    as XLA's convolution of the zero-dilated gradient, without the multiplies by zero."""
    kh, kw, cin, _ = w.shape
    n = g.shape[0]
    rows, cols = _parity_classes(size[0], kh, stride), _parity_classes(size[1], kw, stride)
    full_h, full_w = rows[0][3], cols[0][3]  # residue 0 has the most positions
    wt = jnp.swapaxes(w, 2, 3)  # [kh, kw, Co, Ci]: from the output gradient to the input's
    parts = []
    for taps_h, lo_h, hi_h, count_h in rows:
        line = []
        for taps_w, lo_w, hi_w, count_w in cols:
            if not (taps_h and taps_w):
                line.append(jnp.zeros((n, full_h, full_w, cin), g.dtype))
                continue
            kernel = wt[np.array(taps_h)][:, np.array(taps_w)]
            gp = jax.lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
            d = jax.lax.conv_general_dilated(gp, kernel, (1, 1), "VALID", dimension_numbers=_DIMS)
            line.append(jnp.pad(d, ((0, 0), (0, full_h - count_h), (0, full_w - count_w), (0, 0))))
        parts.append(jnp.stack(line, axis=3))  # [n, full_h, full_w, stride (column parity), ci]
    dx = jnp.stack(parts, axis=2)  # [n, full_h, stride (row parity), full_w, stride, ci]
    return dx.reshape(n, full_h * stride, full_w * stride, cin)[:, :size[0], :size[1]]


def _per_tap_weight_grad(x: jax.Array, g: jax.Array, k: int, stride: int) -> jax.Array:
    """A SAME k x k conv's weight gradient [k, k, Ci, Co] as one [Co, M] x [M, Ci] dot per tap."""
    cin, co = x.shape[-1], g.shape[-1]
    # [Co, M], materialised once for the k*k dots: left as a transpose, XLA folds it into
    # each dot as a contraction over the leading axis of [M, Co] and [M, Ci], which XLA:CPU
    # runs at half the rate of [Co, M] x [M, Ci] (docs/benchmarks.md).
    g2 = jax.lax.optimization_barrier(g.reshape(-1, co).T)
    taps = [g2 @ t.reshape(-1, cin) for t in _same_taps(x, k, stride)]  # each [Co, Ci]
    return jnp.stack(taps).reshape(k, k, co, cin).transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_own_grads(x: jax.Array, w: jax.Array, stride: int, per_tap_wgrad: bool, subpixel_dx: bool) -> jax.Array:
    """A dense SAME conv whose gradients are computed here where XLA:CPU's are slow.

    `per_tap_wgrad`: the weight gradient as one [Co, M] x [M, Ci] dot per kernel tap.
    XLA:CPU computes it as a convolution over the batch, which on large maps runs 1.6-3x
    slower than these dots and needs a transposed copy of the activations.
    `subpixel_dx` (strided convs): the input gradient by `_subpixel_input_grad`.
    Otherwise, and for the forward pass, XLA's own (docs/benchmarks.md,
    `benchmarks/conv_weight_grad.py`).
    """
    return _dense_conv(x, w, stride)


def _own_grads_fwd(x, w, stride, per_tap_wgrad, subpixel_dx):
    return _dense_conv(x, w, stride), (x, w)


def _own_grads_bwd(stride, per_tap_wgrad, subpixel_dx, res, g):
    x, w = res
    if subpixel_dx:
        dx = _subpixel_input_grad(g, w, x.shape[1:3], stride)
    else:
        dx = jax.vjp(lambda a: _dense_conv(a, w, stride), x)[1](g)[0]
    if per_tap_wgrad:
        dw = _per_tap_weight_grad(x, g, w.shape[0], stride)
    else:
        dw = jax.vjp(lambda b: _dense_conv(x, b, stride), w)[1](g)[0]
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_own_grads.defvjp(_own_grads_fwd, _own_grads_bwd)


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
    if kh == kw == 3:
        # Large maps: XLA:CPU's own weight gradient, and a strided conv's input gradient,
        # are the slow parts of the backward here.
        per_tap = (h * wd >= PER_TAP_WGRAD_MIN_PIXELS and cg >= PER_TAP_WGRAD_MIN_CHANNELS
                   and (stride == 1 or n >= PER_TAP_WGRAD_STRIDED_MIN_BATCH))
        subpixel = stride > 1 and h * wd >= SUBPIXEL_DX_MIN_PIXELS
        if per_tap or subpixel:
            dense = functools.partial(_conv_own_grads, stride=stride, per_tap_wgrad=per_tap, subpixel_dx=subpixel)
    if groups == 1:
        return dense(x, w)
    xs, ws = jnp.split(x, groups, axis=-1), jnp.split(w, groups, axis=-1)
    return jnp.concatenate([dense(a, b) for a, b in zip(xs, ws)], axis=-1)


@jax.custom_vjp
def standardise(k: jax.Array, gain: jax.Array) -> jax.Array:
    """Scaled Weight Standardization of a [fan-in, out] kernel: gain * (k - mean) /
    sqrt(fan-in * var) per column, fan-in * var floored at 1e-4.

    Its backward is written out (one reduction over the output gradient and the centred
    kernel, then one elementwise pass) instead of left to autodiff, whose backward makes
    several more passes over the kernel: F0's final 1536x3072 kernel 35 -> 18 ms on one
    core (docs/benchmarks.md). Equal to autodiff's gradients to rounding (tests/nfnet/test_layers.py).
    """
    return _standardise_fwd(k, gain)[0]


def _standardise_fwd(k, gain):
    mean = jnp.mean(k, axis=0)
    var = jnp.var(k, axis=0)
    inv = jax.lax.rsqrt(jnp.maximum(var * k.shape[0], 1e-4))
    scale = inv * gain
    return k * scale - mean * scale, (k, mean, var, inv, scale)


def _standardise_bwd(res, g):
    k, mean, var, inv, scale = res
    n = k.shape[0]
    centred = k - mean
    sum_g = jnp.sum(g, axis=0)
    sum_gc = jnp.sum(g * centred, axis=0)
    # Through the variance (none where the floor holds) and through the mean.
    through_var = jnp.where(var * n < 1e-4, 0.0, -scale * sum_gc / (n * var))
    dk = scale * g - scale * sum_g / n + through_var * centred
    return dk, sum_gc * inv


standardise.defvjp(_standardise_fwd, _standardise_bwd)


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
        w = standardise(k, gain).reshape(shape).astype(self.dtype)
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
