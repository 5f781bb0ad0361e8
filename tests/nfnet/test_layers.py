"""How a convolution is lowered changes speed, not results: dense and native agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet.config import TrainConfig, validate
from nfnet.errors import NFNetError
from nfnet.layers import (CONV_LOWERINGS, IM2COL_MAX_PIXELS, PER_TAP_WGRAD_MIN_CHANNELS, PER_TAP_WGRAD_MIN_PIXELS,
                          PER_TAP_WGRAD_STRIDED_MIN_BATCH, WSConv2D, conv2d, resolve_conv_lowering,
                          standardise)
from nfnet.model import NFNet
from nfnet.variants import get_variant


def _loss(lowering, stride, groups):
    def f(x, w):
        y = conv2d(x, w, stride, groups, lowering)
        return jnp.sum(jnp.sin(y) * y), y
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


# (batch, size, in channels, out channels, kernel, stride, groups): every path of the dense
# lowering (1x1 matmul, dense conv, per-group convs, im2col on tiny maps), odd sizes included.
CASES = [
    (2, 8, 12, 20, 1, 1, 1),
    (2, 7, 6, 10, 3, 1, 1),
    (2, 9, 6, 8, 3, 2, 1),
    (3, 8, 24, 24, 3, 1, 6),
    (3, 9, 24, 24, 3, 2, 6),
    (2, 6, 16, 16, 3, 2, 2),
    (4, 2, 24, 24, 3, 1, 3),
    (4, 1, 12, 12, 3, 1, 2),
    (2, 4, 12, 12, 3, 2, 4),
    (2, 3, 8, 16, 3, 2, 1),
]


@pytest.mark.parametrize("n,size,cin,cout,k,stride,groups", CASES)
def test_dense_lowering_gives_the_native_outputs_and_gradients(n, size, cin, cout, k, stride, groups):
    rng = np.random.default_rng(size * 31 + groups)
    x = jnp.asarray(rng.standard_normal((n, size, size, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout), np.float32) / np.sqrt(k * k * cin / groups))
    (loss_n, y_n), (dx_n, dw_n) = _loss("native", stride, groups)(x, w)
    (loss_d, y_d), (dx_d, dw_d) = _loss("dense", stride, groups)(x, w)
    assert y_d.shape == y_n.shape == (n, -(-size // stride), -(-size // stride), cout)
    np.testing.assert_allclose(y_d, y_n, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss_d, loss_n, rtol=1e-5)
    np.testing.assert_allclose(dx_d, dx_n, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw_d, dw_n, rtol=1e-4, atol=1e-4)


def test_tiny_maps_take_the_im2col_path_and_larger_ones_do_not():
    x_small = jnp.zeros((2, 2, 2, 8))
    x_large = jnp.zeros((2, 8, 8, 8))
    w = jnp.zeros((3, 3, 4, 8))
    small = jax.jit(lambda x: conv2d(x, w, 1, 2, "dense")).lower(x_small).as_text()
    large = jax.jit(lambda x: conv2d(x, w, 1, 2, "dense")).lower(x_large).as_text()
    assert 2 * 2 <= IM2COL_MAX_PIXELS < 8 * 8
    assert "convolution" not in small and "dot_general" in small
    # Per-group dense convs: two convs, none with feature groups.
    assert large.count("stablehlo.convolution") == 2 and "feature_group_count = 2" not in large
    native = jax.jit(lambda x: conv2d(x, w, 1, 2, "native")).lower(x_large).as_text()
    assert native.count("stablehlo.convolution") == 1 and "feature_group_count = 2" in native


def test_auto_is_dense_on_cpu_and_native_on_accelerators():
    assert resolve_conv_lowering("auto", "cpu") == "dense"
    assert resolve_conv_lowering("auto", "gpu") == "native"
    assert resolve_conv_lowering("auto", "tpu") == "native"
    assert resolve_conv_lowering("native", "cpu") == "native"
    assert resolve_conv_lowering("dense", "tpu") == "dense"
    assert resolve_conv_lowering("auto") == ("dense" if jax.default_backend() == "cpu" else "native")
    with pytest.raises(ValueError, match="auto, native, dense"):
        resolve_conv_lowering("grouped", "cpu")
    assert CONV_LOWERINGS == ("auto", "native", "dense")


def test_a_bad_lowering_flag_is_a_one_line_config_error():
    with pytest.raises(NFNetError, match="--conv-lowering must be one of auto, native, dense"):
        validate(TrainConfig(conv_lowering="fast"))


@pytest.mark.parametrize("name", ["nano"])
def test_the_whole_model_agrees_across_lowerings(name):
    """Same parameters (the lowering does not change their shapes), same logits and gradients."""
    variant = get_variant(name)
    dense, native = NFNet(variant, 10, conv_lowering="dense"), NFNet(variant, 10, conv_lowering="native")
    params = dense.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    native_shapes = jax.tree.map(jnp.shape, native.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"])
    assert jax.tree.map(jnp.shape, params) == native_shapes
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    labels = jnp.arange(4) % 10
    # A trained-looking net: SkipInit's zero gains would hide every residual branch.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.full_like(p, 0.5) if path[-1].key == "skip_gain" else p, params)

    def loss(model):
        def f(p):
            logits = model.apply({"params": p}, x)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (loss_d, logits_d), grads_d = loss(dense)
    (loss_n, logits_n), grads_n = loss(native)
    np.testing.assert_allclose(logits_d, logits_n, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss_d, loss_n, rtol=1e-5)
    for gd, gn in zip(jax.tree.leaves(grads_d), jax.tree.leaves(grads_n)):
        np.testing.assert_allclose(gd, gn, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(gn))) + 1e-7)


def test_weight_standardisation_is_per_output_channel_with_its_floor():
    conv = WSConv2D(4, 3, groups=2, lowering="dense")
    x = jnp.ones((1, 5, 5, 6))
    params = conv.init(jax.random.PRNGKey(0), x)["params"]
    kernel = params["kernel"]
    fan_in = 3 * 3 * 3
    w = (kernel - kernel.mean((0, 1, 2))) / jnp.sqrt(jnp.maximum(kernel.var((0, 1, 2)) * fan_in, 1e-4))
    expected = conv2d(x, w, 1, 2, "native") + params["bias"]
    np.testing.assert_allclose(conv.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)
    # A constant kernel has zero variance: the floor keeps it finite (zero after centring).
    flat = dict(params, kernel=jnp.ones_like(kernel))
    np.testing.assert_allclose(conv.apply({"params": flat}, x), jnp.broadcast_to(params["bias"], (1, 5, 5, 4)))


def autodiff_standardise(k, gain):
    mean, var = jnp.mean(k, axis=0), jnp.var(k, axis=0)
    scale = jax.lax.rsqrt(jnp.maximum(var * k.shape[0], 1e-4)) * gain
    return k * scale - mean * scale


def test_standardisations_written_out_backward_is_autodiffs():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((27, 5)).astype(np.float32) * 0.3
    k[:, 1] = 0.7  # a constant column: the floor holds, no gradient through its variance
    k[:, 2] = k[:, 2] * 1e-4  # a column just under the floor
    k = jnp.asarray(k)
    gain = jnp.asarray(rng.uniform(0.5, 2.0, 5).astype(np.float32))
    probe = jnp.asarray(rng.standard_normal((27, 5)).astype(np.float32))
    np.testing.assert_allclose(standardise(k, gain), autodiff_standardise(k, gain), rtol=1e-6, atol=1e-7)
    own = jax.grad(lambda k, g: jnp.sum(standardise(k, g) * probe), argnums=(0, 1))(k, gain)
    ref = jax.grad(lambda k, g: jnp.sum(autodiff_standardise(k, g) * probe), argnums=(0, 1))(k, gain)
    for a, b in zip(own, ref):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))
    # Under the floor the scale is a constant: the gradient is the centred probe times it.
    centred = probe[:, 1] - jnp.mean(probe[:, 1])
    np.testing.assert_allclose(own[0][:, 1], gain[1] * 100.0 * centred, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stride,batch", [(1, 2), (2, 2), (2, PER_TAP_WGRAD_STRIDED_MIN_BATCH)])
@pytest.mark.parametrize("side_extra", [0, 1])
@pytest.mark.parametrize("groups", [1, 2])
def test_own_conv_gradients_match_native(stride, batch, side_extra, groups):
    # 16x16 = PER_TAP_WGRAD_MIN_PIXELS takes nfnet's own gradients: the per-tap weight gradient
    # (strided: at a batch of PER_TAP_WGRAD_STRIDED_MIN_BATCH) and, strided, the sub-pixel input
    # gradient; odd sides pad unevenly.
    side = int(np.sqrt(PER_TAP_WGRAD_MIN_PIXELS)) + side_extra
    rng = np.random.default_rng(stride * 7 + side_extra + groups + batch)
    cg = PER_TAP_WGRAD_MIN_CHANNELS
    x = jnp.asarray(rng.standard_normal((batch, side, side, cg * groups), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, cg, 6 * groups), np.float32) * 0.2)

    def forward_jaxpr(a):
        return str(jax.make_jaxpr(lambda a, b: conv2d(a, b, stride, groups, "dense"))(a, w))

    def grad_jaxpr(lowering):
        return str(jax.make_jaxpr(lambda a, b: _loss(lowering, stride, groups)(a, b))(x, w))

    assert "custom_vjp" in forward_jaxpr(x)
    assert "custom_vjp" not in forward_jaxpr(x[:, 2:, 2:, :])  # below the threshold: XLA's own
    dense, native = grad_jaxpr("dense"), grad_jaxpr("native")
    per_tap = stride == 1 or batch >= PER_TAP_WGRAD_STRIDED_MIN_BATCH
    assert (dense.count("dot_general") >= 9 * groups) == per_tap
    if stride > 1:  # XLA's input gradient convolves the zero-dilated output gradient; ours does not
        assert "lhs_dilation=(2, 2)" in native and "lhs_dilation=(2, 2)" not in dense
    # An input of fewer channels per group (an RGB image) keeps XLA's weight gradient.
    few = x[..., :PER_TAP_WGRAD_MIN_CHANNELS - 1]
    few_w = w[:, :, :PER_TAP_WGRAD_MIN_CHANNELS - 1, :6]
    assert str(jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(conv2d(a, b, stride, 1, "dense")), argnums=1))(
        few, few_w)).count("dot_general") < 9
    (_, y_d), (dx_d, dw_d) = _loss("dense", stride, groups)(x, w)
    (_, y_n), (dx_n, dw_n) = _loss("native", stride, groups)(x, w)
    np.testing.assert_allclose(y_d, y_n, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx_d, dx_n, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw_d, dw_n, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_subpixel_input_gradient_is_xlas_for_every_size(stride, kernel):
    from nfnet.layers import _dense_conv, _subpixel_input_grad

    rng = np.random.default_rng(stride * 10 + kernel)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 5), np.float32))
    for h, wd in [(7, 7), (8, 8), (9, 10), (10, 13)]:
        x = jnp.zeros((2, h, wd, 3), jnp.float32)
        y, vjp = jax.vjp(lambda a: _dense_conv(a, w, stride), x)
        g = jnp.asarray(rng.standard_normal(y.shape, np.float32))
        np.testing.assert_allclose(_subpixel_input_grad(g, w, (h, wd), stride), vjp(g)[0], rtol=1e-4, atol=1e-4,
                                   err_msg=f"{h}x{wd}")
