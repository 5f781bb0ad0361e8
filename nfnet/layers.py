"""NFNet building blocks: scaled weight standardization, scaled activations,
squeeze-excite and stochastic depth ([P2] Sec. 3-4, reference `nfnets/base.py`)."""

from __future__ import annotations

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


class WSConv2D(nn.Module):
    """Conv with Scaled Weight Standardization ([P2] eq. 2).

    W_hat = gain * (W - mean) / sqrt(N * var), N = fan-in, per output channel,
    with N * var floored at 1e-4. The kernel is kept in f32 and cast to the
    compute dtype after standardization.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    groups: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_ch = x.shape[-1]
        shape = (self.kernel_size, self.kernel_size, in_ch // self.groups, self.features)
        kernel = self.param("kernel", nn.initializers.variance_scaling(1.0, "fan_in", "normal"), shape)
        gain = self.param("gain", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        fan_in = np.prod(shape[:-1])
        mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
        scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, 1e-4)) * gain
        w = (kernel * scale - mean * scale).astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            w,
            window_strides=(self.stride, self.stride),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )
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
