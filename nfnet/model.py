"""The NFNet model ([P2] Sec. 4, reference `nfnets/nfnet.py`), in Flax linen.

Parameters are f32; `dtype=jnp.bfloat16` computes activations in bf16 while
the classifier's logits stay f32.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nfnet.layers import ACTIVATIONS, SqueezeExcite, StochasticDepth, WSConv2D
from nfnet.variants import Variant

ALPHA = 0.2  # residual branch scale ([P2] Sec. 4.1)
STRIDES = (1, 2, 2, 2)


def bottleneck_width(out_ch: int, group_width: int, expansion: float = 0.5) -> tuple[int, int]:
    """(width, groups): int(expansion x out_ch) rounded down to whole groups."""
    groups = int(out_ch * expansion) // group_width
    return groups * group_width, groups


class NFBlock(nn.Module):
    """One residual block, in the paper's order.

    out = act(x)·β; shortcut = x, or (pool →) 1x1 conv of `out` in transition
    blocks; main path 1x1 → 3x3 grouped (stride) → 3x3 grouped → 1x1 with
    scaled activations between; SE (x2); stochastic depth; SkipInit gain;
    return out·α + shortcut.
    """

    out_ch: int
    group_width: int
    stride: int
    beta: float
    alpha: float = ALPHA
    stochdepth_rate: float = 0.0
    activation: str = "gelu"
    dtype: jnp.dtype = jnp.float32
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        width, groups = bottleneck_width(self.out_ch, self.group_width)
        out = act(x) * self.beta
        transition = self.stride > 1 or x.shape[-1] != self.out_ch
        if transition:
            shortcut = out
            if self.stride > 1:
                shortcut = nn.avg_pool(shortcut, (2, 2), (2, 2), padding="SAME")
            shortcut = WSConv2D(self.out_ch, 1, dtype=self.dtype, lowering=self.conv_lowering,
                                name="conv_shortcut")(shortcut)
        else:
            shortcut = x
        conv = functools.partial(WSConv2D, dtype=self.dtype, lowering=self.conv_lowering)
        out = conv(width, 1, name="conv0")(out)
        out = conv(width, 3, self.stride, groups, name="conv1")(act(out))
        out = conv(width, 3, 1, groups, name="conv1b")(act(out))
        out = conv(self.out_ch, 1, name="conv2")(act(out))
        out = 2.0 * SqueezeExcite(self.out_ch, dtype=self.dtype, name="se")(out) * out
        out = StochasticDepth(self.stochdepth_rate)(out, train)
        skip_gain = self.param("skip_gain", nn.initializers.zeros, ())
        return out * skip_gain.astype(out.dtype) * self.alpha + shortcut


def block_betas(depths: tuple[int, ...], alpha: float = ALPHA) -> list[float]:
    """β = 1/expected_std for every block, with the reference's bookkeeping:
    expected_std grows as sqrt(std² + α²) per block and is reset to 1 (before
    that update) after the first block of each stage, whose shortcut is fed the
    normalized `out`."""
    betas, expected_std = [], 1.0
    for depth in depths:
        for i in range(depth):
            betas.append(1.0 / expected_std)
            if i == 0:
                expected_std = 1.0
            expected_std = (expected_std**2 + alpha**2) ** 0.5
    return betas


class NFNet(nn.Module):
    """NFNet: stem, four stages of NFBlocks, 1x1 conv to 2x width, pool, dropout, linear."""

    variant: Variant
    num_classes: int = 1000
    stochdepth_rate: float = 0.0
    dropout_rate: float = 0.0
    activation: str = "gelu"
    dtype: jnp.dtype = jnp.float32
    conv_lowering: str = "auto"  # nfnet.layers.CONV_LOWERINGS: how convs are lowered, not what they compute

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        v, act = self.variant, ACTIVATIONS[self.activation]
        x = x.astype(self.dtype)
        # Stem ([P2] Fig. 7): no activation after the last conv.
        conv = functools.partial(WSConv2D, dtype=self.dtype, lowering=self.conv_lowering)
        x = act(conv(16, 3, 2, name="stem_conv0")(x))
        x = act(conv(32, 3, 1, name="stem_conv1")(x))
        x = act(conv(64, 3, 1, name="stem_conv2")(x))
        x = conv(v.widths[0] // 2, 3, 2, name="stem_conv3")(x)

        betas = block_betas(v.depths)
        num_blocks, index = sum(v.depths), 0
        for stage, (depth, width, stride) in enumerate(zip(v.depths, v.widths, STRIDES)):
            for i in range(depth):
                x = NFBlock(
                    out_ch=width,
                    group_width=v.group_width,
                    stride=stride if i == 0 else 1,
                    beta=betas[index],
                    stochdepth_rate=self.stochdepth_rate * index / num_blocks,
                    activation=self.activation,
                    dtype=self.dtype,
                    conv_lowering=self.conv_lowering,
                    name=f"stage{stage}_block{i}",
                )(x, train)
                index += 1

        x = act(conv(2 * v.widths[-1], 1, name="final_conv")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        # The classifier runs in f32 so the logits (and the loss) are f32.
        return nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(0.01),
            dtype=jnp.float32,
            name="classifier",
        )(x.astype(jnp.float32))
