import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet.errors import NFNetError
from nfnet.model import ALPHA, STRIDES, NFBlock, NFNet, block_betas
from nfnet.variants import GROUP_WIDTH, VARIANTS, get_variant


def _init(model, res, batch=2):
    x = jnp.zeros((batch, res, res, 3))
    return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False)


@pytest.mark.parametrize("res", [28, 32])
def test_small_variant_output_shapes(res):
    model = NFNet(get_variant("nano"), num_classes=10)
    variables = _init(model, res)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, res, res, 3))
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (3, 10)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


def test_bf16_computes_in_bf16_but_params_and_logits_stay_f32():
    model = NFNet(get_variant("nano"), num_classes=10, dtype=jnp.bfloat16)
    variables = _init(model, 32)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
    logits, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    assert logits.dtype == jnp.float32
    stem_out = state["intermediates"]["stem_conv0"]["__call__"][0]
    assert stem_out.dtype == jnp.bfloat16


def test_stochastic_depth_and_dropout_are_identities_at_eval():
    v = get_variant("nano")
    plain = NFNet(v, num_classes=10)
    regularized = NFNet(v, num_classes=10, stochdepth_rate=0.5, dropout_rate=0.5)
    variables = _init(plain, 32)
    # SkipInit starts the residual branches at 0; open them so stochastic depth matters.
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.ones_like(a) if p[-1].key == "skip_gain" else a, variables["params"]
    )
    x = jax.random.normal(jax.random.PRNGKey(3), (8, 32, 32, 3))
    ref = plain.apply({"params": params}, x, train=False)
    for seed in (0, 1):
        out = regularized.apply({"params": params}, x, train=False, rngs={"dropout": jax.random.PRNGKey(seed)})
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    trained = regularized.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    assert not np.allclose(np.asarray(trained), np.asarray(ref))


def test_betas_follow_the_reference_bookkeeping():
    betas = block_betas((1, 2, 3, 1))
    std = lambda k: (1 + k * ALPHA**2) ** 0.5  # after k blocks since the last reset
    # Block 0 of each stage sees the previous stage's growth; the stage restarts from 1 + α².
    expected = [1.0, 1 / std(1), 1 / std(1), 1 / std(2), 1 / std(1), 1 / std(2), 1 / std(3)]
    np.testing.assert_allclose(betas, expected)


def test_signal_propagation_at_initialisation_follows_beta_bookkeeping():
    """Every block, fed random data at the variance its β assumes, returns the next
    block's expected variance: expected_std² + α² (or 1 + α² after a transition).

    The skip gains are opened to 1 so the residual branches count. Inputs are
    2x2-constant Gaussian noise so the transition blocks' 2x2 average pool keeps
    the variance exactly (for spatially white noise it would divide it by 4).
    Tolerance 5% relative: measured deviations are under 1.5% with 32x16x16
    samples per channel; the branch variance is 1 only in expectation over the
    weight draw.
    """
    v = get_variant("micro", depth_mult=3)
    betas = block_betas(v.depths)
    key = jax.random.PRNGKey(0)
    index, in_ch = 0, v.widths[0] // 2
    for depth, width, stride in zip(v.depths, v.widths, STRIDES):
        for i in range(depth):
            std_in = 1.0 / betas[index]
            k_x, k_p, key = jax.random.split(key, 3)
            x = jax.random.normal(k_x, (32, 8, 8, in_ch)) * std_in
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            block = NFBlock(width, v.group_width, stride if i == 0 else 1, betas[index])
            params = block.init(k_p, x, False)
            params = jax.tree_util.tree_map_with_path(
                lambda p, a: jnp.ones_like(a) if p[-1].key == "skip_gain" else a, params
            )
            y = block.apply(params, x, False)
            measured = float(jnp.mean(jnp.var(y, axis=(0, 1, 2))))
            expected = (1.0 if i == 0 else std_in**2) + ALPHA**2
            assert measured == pytest.approx(expected, rel=0.05), (index, measured, expected)
            index, in_ch = index + 1, width


def test_skipinit_makes_every_block_an_identity_on_its_shortcut_at_init():
    model = NFNet(get_variant("nano"), num_classes=10)
    variables = _init(model, 32)
    gains = [a for p, a in jax.tree_util.tree_leaves_with_path(variables) if p[-1].key == "skip_gain"]
    assert len(gains) == sum(get_variant("nano").depths)
    assert all(float(g) == 0.0 for g in gains)


def test_reference_variants_keep_group_width_128_and_scaled_ones_keep_whole_groups():
    for name in ("F0", "F3+", "F7"):
        assert get_variant(name).group_width == GROUP_WIDTH
    for mult in (0.5, 0.25, 0.3, 1.5):
        v = get_variant("F0", width_mult=mult)
        for w in v.widths:
            assert (w // 2) % v.group_width == 0, (mult, w, v.group_width)
    assert get_variant("F0", width_mult=0.5).group_width == 64
    assert get_variant("F0", width_mult=0.5).widths == (128, 256, 768, 768)
    assert get_variant("F0", depth_mult=2).depths == (2, 4, 12, 6)
    assert get_variant("F0-w0.5-d2") == get_variant("F0", 0.5, 2)
    assert get_variant("F0-w0.5").label == "F0-w0.5"


@pytest.mark.parametrize("name", ["F9", "f0", "", "F0-wx", "resnet50"])
def test_unknown_variant_names_raise_with_the_known_list(name):
    with pytest.raises(NFNetError) as err:
        get_variant(name)
    message = str(err.value)
    assert "unknown variant" in message and "F7+" in message and "nano" in message
    assert "\n" not in message


def test_non_positive_multipliers_are_rejected():
    with pytest.raises(NFNetError, match="multipliers must be > 0"):
        get_variant("F0", width_mult=0)


def test_every_reference_variant_has_a_plus_twin():
    for n in range(8):
        base, plus = VARIANTS[f"F{n}"], VARIANTS[f"F{n}+"]
        assert base.depths == plus.depths and plus.widths == (384, 768, 2048, 2048)
