"""Adaptive gradient clipping against hand computations and against optax's version."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnet.agc import adaptive_grad_clip, agc_clip_counts, agc_clip_fraction, agc_mask, unitwise_norm
from nfnet.errors import NFNetError

LAMBDA = 0.01
EPS = 1e-3


def tiny_tree():
    """A conv kernel (2 of 3 output channels clipped), a linear kernel (1 of 2 clipped),
    a bias (clipped, zero weights so eps decides), a skip gain (not clipped) and a classifier."""
    conv_w = np.ones((1, 1, 2, 3), np.float32)            # per-channel ||W|| = sqrt(2)
    conv_g = np.zeros((1, 1, 2, 3), np.float32)
    conv_g[..., 0] = [0.03, 0.04]                          # ||G|| = 0.05 > 0.01·sqrt(2): clip
    conv_g[..., 1] = [0.001, 0.0]                          # 0.001 < 0.0141: keep
    conv_g[..., 2] = [-1.0, 2.0]                           # clip
    lin_w = np.array([[3.0, 0.0], [4.0, 0.0]], np.float32)   # column norms 5 and 0 (-> eps)
    lin_g = np.array([[0.01, 0.006], [0.02, 0.008]], np.float32)  # norms 0.0224 < 0.05 keep; 0.01 > 1e-5 clip
    bias_w = np.zeros((2,), np.float32)
    bias_g = np.array([1e-3, 0.0], np.float32)             # 1e-3 > 0.01·1e-3: clip
    skip_w = np.array(0.5, np.float32)
    skip_g = np.array(-0.004, np.float32)                  # 0.004 < 0.005: keep
    cls_w = np.full((2, 2), 1e-3, np.float32)
    cls_g = np.full((2, 2), 10.0, np.float32)              # would be clipped, but exempt
    params = {"block": {"conv": {"kernel": conv_w}, "fc": {"kernel": lin_w, "bias": bias_w},
                        "skip_gain": skip_w},
              "classifier": {"kernel": cls_w}}
    grads = {"block": {"conv": {"kernel": conv_g}, "fc": {"kernel": lin_g, "bias": bias_g},
                       "skip_gain": skip_g},
             "classifier": {"kernel": cls_g}}
    return params, grads


def clip_by_hand(g, w, axes):
    """[P2]'s rule with numpy; `axes` are the axes of one unit (None = whole tensor)."""
    g = np.asarray(g, np.float64)
    w = np.asarray(w, np.float64)
    g_norm = np.sqrt(np.sum(g ** 2, axis=axes, keepdims=True))
    w_norm = np.maximum(np.sqrt(np.sum(w ** 2, axis=axes, keepdims=True)), EPS)
    clip = g_norm / w_norm > LAMBDA
    return np.where(clip, g * LAMBDA * w_norm / np.where(clip, g_norm, 1.0), g)


def test_agc_matches_hand_computation():
    params, grads = tiny_tree()
    out, _ = adaptive_grad_clip(LAMBDA, EPS).update(grads, optax.EmptyState(), params)
    b, gb = params["block"], grads["block"]
    expected = {
        "conv": clip_by_hand(gb["conv"]["kernel"], b["conv"]["kernel"], (0, 1, 2)),
        "fc_kernel": clip_by_hand(gb["fc"]["kernel"], b["fc"]["kernel"], 0),
        "bias": clip_by_hand(gb["fc"]["bias"], b["fc"]["bias"], None),
        "skip": clip_by_hand(gb["skip_gain"], b["skip_gain"], None),
    }
    np.testing.assert_allclose(out["block"]["conv"]["kernel"], expected["conv"], rtol=1e-6)
    np.testing.assert_allclose(out["block"]["fc"]["kernel"], expected["fc_kernel"], rtol=1e-6)
    np.testing.assert_allclose(out["block"]["fc"]["bias"], expected["bias"], rtol=1e-6)
    np.testing.assert_allclose(out["block"]["skip_gain"], expected["skip"], rtol=1e-6)
    # Spot values: clipped conv channel 0 has norm exactly λ·sqrt(2); channel 1 is untouched.
    conv_out = np.asarray(out["block"]["conv"]["kernel"])
    assert np.linalg.norm(conv_out[..., 0]) == pytest.approx(LAMBDA * np.sqrt(2), rel=1e-6)
    np.testing.assert_array_equal(conv_out[..., 1], gb["conv"]["kernel"][..., 1])
    # Zero-weight linear column: clipped to λ·eps = 1e-5 in norm.
    assert np.linalg.norm(np.asarray(out["block"]["fc"]["kernel"])[:, 1]) == pytest.approx(1e-5, rel=1e-5)
    np.testing.assert_array_equal(out["block"]["skip_gain"], gb["skip_gain"])
    # The classifier is exempt.
    np.testing.assert_array_equal(out["classifier"]["kernel"], grads["classifier"]["kernel"])


def test_agc_is_jittable_and_keeps_dtype():
    params, grads = tiny_tree()
    tx = adaptive_grad_clip(LAMBDA, EPS)
    out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    eager, _ = tx.update(grads, tx.init(params), params)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(eager)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        assert a.dtype == jnp.float32


def test_zero_gradient_stays_zero_and_finite():
    params = {"kernel": jnp.zeros((3, 2)), "skip_gain": jnp.zeros(())}
    grads = jax.tree.map(jnp.zeros_like, params)
    out, _ = adaptive_grad_clip().update(grads, optax.EmptyState(), params)
    for leaf in jax.tree.leaves(out):
        assert np.all(np.asarray(leaf) == 0)


def test_exclude_by_names_and_predicate():
    params, grads = tiny_tree()
    mask = agc_mask(params)
    assert mask["classifier"]["kernel"] is False
    assert mask["block"]["conv"]["kernel"] is True
    only_fc = agc_mask(params, exclude=lambda path: "fc" not in path)
    assert only_fc["block"]["fc"]["bias"] is True and only_fc["block"]["conv"]["kernel"] is False
    # Exempting nothing clips the classifier too.
    out, _ = adaptive_grad_clip(LAMBDA, EPS, exclude=()).update(grads, optax.EmptyState(), params)
    cls = np.asarray(out["classifier"]["kernel"])
    np.testing.assert_allclose(np.linalg.norm(cls, axis=0), LAMBDA * np.sqrt(2) * 1e-3, rtol=1e-5)


def test_clip_fraction_counts_units():
    params, grads = tiny_tree()
    # Units: conv 3 (2 clipped), linear 2 (1 clipped), bias 1 (clipped), skip gain 1 (kept);
    # the classifier's 2 units are not counted.
    counts = agc_clip_counts(grads, params, LAMBDA, EPS)
    assert counts.total == 7
    assert int(counts.clipped) == 4
    assert float(agc_clip_fraction(grads, params, LAMBDA, EPS)) == pytest.approx(4 / 7)
    assert float(jax.jit(lambda g, p: agc_clip_fraction(g, p, LAMBDA))(grads, params)) == pytest.approx(4 / 7)
    assert float(agc_clip_fraction(grads, params, LAMBDA, EPS, exclude=())) == pytest.approx(6 / 9)
    # After clipping, nothing is over the threshold any more.
    clipped, _ = adaptive_grad_clip(LAMBDA, EPS).update(grads, optax.EmptyState(), params)
    assert float(agc_clip_fraction(clipped, params, LAMBDA * 1.0001, EPS)) == 0.0
    # No leaf subject to AGC: 0, not a division by zero.
    only_cls = {"classifier": params["classifier"]}
    assert float(agc_clip_fraction({"classifier": grads["classifier"]}, only_cls)) == 0.0


def test_unitwise_norm_axes():
    x = jnp.arange(24.0).reshape(2, 3, 1, 4)
    np.testing.assert_allclose(unitwise_norm(x)[0, 0, 0], np.linalg.norm(np.asarray(x).reshape(6, 4), axis=0),
                               rtol=1e-6)
    assert unitwise_norm(jnp.ones((5, 7))).shape == (1, 7)
    assert float(unitwise_norm(jnp.full((4,), 2.0))[0]) == pytest.approx(4.0)
    assert float(unitwise_norm(jnp.array(-3.0))) == pytest.approx(3.0)


def test_equivalent_to_optax_on_ordinary_shapes():
    """On the shapes of an NFNet with real widths (HWIO kernels with more than one input
    element per unit, (in, out) linears with in > 1, vectors, scalars) and λ >= 1e-3,
    `optax.adaptive_grad_clip` and ours give the same gradients, up to the masked classifier:
    optax clips everything, so it is wrapped in `optax.masked` to compare."""
    params, grads = tiny_tree()
    mask = agc_mask(params)
    theirs = optax.masked(optax.adaptive_grad_clip(LAMBDA, EPS), mask)
    t_out, _ = theirs.update(grads, theirs.init(params), params)
    o_out, _ = adaptive_grad_clip(LAMBDA, EPS).update(grads, optax.EmptyState(), params)
    for a, b in zip(jax.tree.leaves(t_out), jax.tree.leaves(o_out)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Unwrapped, optax also clips the classifier, which [P2] exempts.
    raw, _ = optax.adaptive_grad_clip(LAMBDA, EPS).update(grads, optax.EmptyState(), params)
    assert not np.allclose(raw["classifier"]["kernel"], grads["classifier"]["kernel"])


def test_differs_from_optax_when_unit_axes_have_size_one():
    """optax squeezes before choosing axes: a (1, O) linear kernel (one input) or a
    (1, 1, 1, O) depthwise 1x1 conv becomes a vector and is clipped as ONE unit by its
    whole norm. [P2] clips each of the O outputs on its own: an output whose gradient is
    small relative to its own weight must be left alone."""
    w = jnp.array([[1.0, 1.0]])            # (in=1, out=2)
    g = jnp.array([[0.001, 1.0]])          # output 0: ratio 0.001 (keep); output 1: ratio 1 (clip)
    ours, _ = adaptive_grad_clip(LAMBDA).update({"kernel": g}, optax.EmptyState(), {"kernel": w})
    theirs, _ = optax.adaptive_grad_clip(LAMBDA).update({"kernel": g}, optax.EmptyState(), {"kernel": w})
    np.testing.assert_allclose(ours["kernel"], clip_by_hand(g, w, 0), rtol=1e-6)
    assert float(ours["kernel"][0, 0]) == pytest.approx(0.001)           # untouched
    assert float(theirs["kernel"][0, 0]) < 0.0001                          # shrunk with the other unit
    conv_w = w.reshape(1, 1, 1, 2)
    conv_g = g.reshape(1, 1, 1, 2)
    ours_c, _ = adaptive_grad_clip(LAMBDA).update(conv_g, optax.EmptyState(), conv_w)
    theirs_c, _ = optax.adaptive_grad_clip(LAMBDA).update(conv_g, optax.EmptyState(), conv_w)
    np.testing.assert_allclose(ours_c.reshape(1, 2), ours["kernel"], rtol=1e-6)
    assert not np.allclose(theirs_c, ours_c)


def test_differs_from_optax_on_rank3_and_tiny_lambda():
    """optax reads every 3-D tensor as a multi-head linear (units over axis 0 only); here a
    3-D kernel is a 1-D conv WIO and a unit spans (0, 1). optax also divides by
    max(||G||, 1e-6), so when λ·eps < 1e-6 it shrinks a clipped unit below λ·eps."""
    w = jnp.ones((2, 2, 1))
    g = jnp.array([[[0.5], [0.0]], [[0.0], [0.0]]])
    ours, _ = adaptive_grad_clip(LAMBDA).update(g, optax.EmptyState(), w)
    np.testing.assert_allclose(ours, clip_by_hand(g, w, (0, 1)), rtol=1e-6)
    theirs, _ = optax.adaptive_grad_clip(LAMBDA).update(g, optax.EmptyState(), w)
    assert not np.allclose(theirs, ours)

    tiny = 1e-5                            # λ·eps = 1e-8
    w0, g0 = jnp.zeros((3,)), jnp.array([1e-7, 0.0, 0.0])
    ours_t, _ = adaptive_grad_clip(tiny).update(g0, optax.EmptyState(), w0)
    theirs_t, _ = optax.adaptive_grad_clip(tiny).update(g0, optax.EmptyState(), w0)
    assert float(jnp.linalg.norm(ours_t)) == pytest.approx(tiny * EPS, rel=1e-5)
    assert float(jnp.linalg.norm(theirs_t)) == pytest.approx(tiny * EPS * 0.1, rel=1e-5)


@pytest.mark.parametrize("clipping, eps", [(0.0, 1e-3), (-0.01, 1e-3), (0.01, 0.0)])
def test_bad_values_raise(clipping, eps):
    with pytest.raises(NFNetError, match="must be > 0"):
        adaptive_grad_clip(clipping, eps)
    params, grads = tiny_tree()
    with pytest.raises(NFNetError):
        agc_clip_fraction(grads, params, clipping, eps)
