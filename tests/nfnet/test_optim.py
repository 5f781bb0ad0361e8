"""The recipe optimizer: masks, the Nesterov update by hand, the schedule, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnet.errors import NFNetError
from nfnet.optim import OptimConfig, make_optimizer, make_schedule, scale_lr, warmup_steps, weight_decay_mask


def nfnet_like_params():
    """The naming of nfnet/model.py: WSConv2D (kernel, gain, bias), SE Dense, skip gain, classifier."""
    return {
        "stem_conv0": {"kernel": jnp.full((3, 3, 3, 4), 0.1), "gain": jnp.ones((4,)), "bias": jnp.zeros((4,))},
        "stage0_block0": {
            "conv0": {"kernel": jnp.full((1, 1, 4, 2), -0.2), "gain": jnp.ones((2,)), "bias": jnp.zeros((2,))},
            "se": {"fc0": {"kernel": jnp.full((2, 1), 0.3), "bias": jnp.zeros((1,))},
                   "fc1": {"kernel": jnp.full((1, 2), 0.3), "bias": jnp.zeros((2,))}},
            "skip_gain": jnp.zeros(()),
        },
        "classifier": {"kernel": jnp.full((2, 3), 0.01), "bias": jnp.zeros((3,))},
    }


def test_weight_decay_mask_picks_exactly_the_kernels():
    mask = weight_decay_mask(nfnet_like_params())
    flat = {"/".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = sorted(name for name, v in flat.items() if v)
    assert decayed == ["classifier/kernel", "stage0_block0/conv0/kernel", "stage0_block0/se/fc0/kernel",
                       "stage0_block0/se/fc1/kernel", "stem_conv0/kernel"]
    assert all(v is False for name, v in flat.items() if not name.endswith("/kernel"))


def test_scale_lr_is_linear_in_batch():
    assert scale_lr(0.1, 4096) == pytest.approx(1.6)     # [P1]'s peak LR
    assert scale_lr(0.1, 256) == pytest.approx(0.1)
    assert scale_lr(0.2, 128) == pytest.approx(0.1)
    with pytest.raises(NFNetError, match="batch size"):
        scale_lr(0.1, 0)
    with pytest.raises(NFNetError, match="base learning rate"):
        scale_lr(-0.1, 256)


def test_schedule_warmup_peak_and_end():
    cfg = OptimConfig(lr=1.6, total_steps=100, warmup_fraction=0.05)
    sched = make_schedule(cfg)
    assert warmup_steps(100, 0.05) == 5
    assert float(sched(0)) == 0.0
    assert float(sched(2)) == pytest.approx(1.6 * 2 / 5)
    assert float(sched(5)) == pytest.approx(1.6)
    assert float(sched(5 + 95 / 2)) == pytest.approx(0.8, rel=1e-5)      # cosine half way
    assert float(sched(99)) == pytest.approx(1.6 * 0.5 * (1 + math.cos(math.pi * 94 / 95)), rel=1e-4)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)
    assert float(sched(1000)) == pytest.approx(0.0, abs=1e-7)
    values = np.array([float(sched(t)) for t in range(5, 101)])
    assert np.all(np.diff(values) <= 1e-7)


def test_schedule_fractional_warmup_on_tiny_runs():
    # 0.25 × 10 = 2.5 steps rounds up to 3.
    sched = make_schedule(OptimConfig(lr=1.0, total_steps=10, warmup_fraction=0.25))
    assert warmup_steps(10, 0.25) == 3
    np.testing.assert_allclose([float(sched(t)) for t in range(4)], [0.0, 1 / 3, 2 / 3, 1.0], rtol=1e-6)
    expected = [0.5 * (1 + math.cos(math.pi * (t - 3) / 7)) for t in range(3, 11)]
    np.testing.assert_allclose([float(sched(t)) for t in range(3, 11)], expected, rtol=1e-5, atol=1e-7)
    # 0.05 × 10 = 0.5 rounds up to one warmup step; 0.04 × 10 rounds to none.
    assert warmup_steps(10, 0.05) == 1
    assert float(make_schedule(OptimConfig(lr=1.0, total_steps=10, warmup_fraction=0.04))(0)) == 1.0
    # A single-step run never spends its only step at lr 0.
    assert warmup_steps(1, 0.5) == 0
    assert float(make_schedule(OptimConfig(lr=1.0, total_steps=1, warmup_fraction=0.5))(0)) == 1.0
    assert warmup_steps(2, 0.9) == 1


def agc_by_hand(g, w, lam, eps, axes):
    g_norm = np.sqrt(np.sum(g ** 2, axis=axes, keepdims=True))
    w_norm = np.maximum(np.sqrt(np.sum(w ** 2, axis=axes, keepdims=True)), eps)
    clip = g_norm / w_norm > lam
    return np.where(clip, g * lam * w_norm / np.where(clip, g_norm, 1.0), g)


def test_full_chain_matches_hand_computation_over_three_steps():
    """AGC → +wd·W on kernels → buf = m·buf + g; u = g + m·buf → W -= lr(t)·u."""
    cfg = OptimConfig(lr=0.5, total_steps=4, warmup_fraction=0.0, momentum=0.9, weight_decay=0.1,
                      clipping=0.01)
    params = {"fc": {"kernel": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "bias": jnp.array([0.5, -0.5])},
              "skip_gain": jnp.array(1.0),
              "classifier": {"kernel": jnp.array([[0.1], [0.2]])}}
    grads_seq = [
        {"fc": {"kernel": jnp.array([[0.001, 0.1], [0.002, -0.3]]), "bias": jnp.array([0.001, 0.002])},
         "skip_gain": jnp.array(0.5), "classifier": {"kernel": jnp.array([[1.0], [-2.0]])}},
        {"fc": {"kernel": jnp.array([[0.0, 0.01], [0.003, 0.0]]), "bias": jnp.array([-1.0, 0.0])},
         "skip_gain": jnp.array(0.001), "classifier": {"kernel": jnp.array([[0.5], [0.5]])}},
        {"fc": {"kernel": jnp.array([[0.2, 0.0], [0.0, 0.0]]), "bias": jnp.array([0.0, 0.0])},
         "skip_gain": jnp.array(-0.02), "classifier": {"kernel": jnp.array([[-1.0], [0.0]])}},
    ]
    tx = make_optimizer(cfg)
    state = tx.init(params)
    p = params
    for g in grads_seq:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)

    lam, eps, m, wd = 0.01, 1e-3, 0.9, 0.1
    lrs = [0.5 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(3)]
    axes = {"fc/kernel": 0, "fc/bias": None, "skip_gain": None, "classifier/kernel": "exempt"}
    w = {"fc/kernel": np.array([[1.0, 0.0], [0.0, 2.0]]), "fc/bias": np.array([0.5, -0.5]),
         "skip_gain": np.array(1.0), "classifier/kernel": np.array([[0.1], [0.2]])}
    buf = {k: np.zeros_like(v) for k, v in w.items()}
    for t, gt in enumerate(grads_seq):
        gh = {"fc/kernel": gt["fc"]["kernel"], "fc/bias": gt["fc"]["bias"], "skip_gain": gt["skip_gain"],
              "classifier/kernel": gt["classifier"]["kernel"]}
        gh = {k: np.asarray(v, np.float64) for k, v in gh.items()}
        for k in w:
            g = gh[k] if axes[k] == "exempt" else agc_by_hand(gh[k], w[k], lam, eps, axes[k])
            if k.endswith("kernel"):
                g = g + wd * w[k]
            buf[k] = m * buf[k] + g
            w[k] = w[k] - lrs[t] * (g + m * buf[k])

    np.testing.assert_allclose(p["fc"]["kernel"], w["fc/kernel"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p["fc"]["bias"], w["fc/bias"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p["skip_gain"], w["skip_gain"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p["classifier"]["kernel"], w["classifier/kernel"], rtol=1e-5, atol=1e-7)


def test_nesterov_is_the_pytorch_form():
    """Nothing but momentum (constant lr): update_t = g_t + m·buf_t, buf_t = m·buf_{t-1} + g_t."""
    cfg = OptimConfig(lr=1.0, total_steps=10**9, warmup_fraction=0.0, weight_decay=0.0, clipping=None)
    tx = make_optimizer(cfg)
    params = {"w": jnp.zeros((2,))}
    state = tx.init(params)
    gs = [np.array([1.0, -2.0]), np.array([0.5, 0.0]), np.array([-1.0, 3.0])]
    buf = np.zeros(2)
    for g in gs:
        u, state = tx.update({"w": jnp.asarray(g)}, state, params)
        buf = 0.9 * buf + g
        np.testing.assert_allclose(-np.asarray(u["w"]), g + 0.9 * buf, rtol=1e-5)
    # Heavy-ball when nesterov is off: the update is the buffer itself.
    tx_hb = make_optimizer(OptimConfig(lr=1.0, total_steps=10**9, warmup_fraction=0.0, nesterov=False,
                                       weight_decay=0.0, clipping=None))
    s = tx_hb.init(params)
    u1, s = tx_hb.update({"w": jnp.asarray(gs[0])}, s, params)
    u2, s = tx_hb.update({"w": jnp.asarray(gs[1])}, s, params)
    np.testing.assert_allclose(-np.asarray(u2["w"]), 0.9 * gs[0] + gs[1], rtol=1e-5)


def test_optimizer_jits_and_state_structure_is_stable():
    params = nfnet_like_params()
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.01), params)
    on = make_optimizer(OptimConfig(lr=0.1, total_steps=10))
    off = make_optimizer(OptimConfig(lr=0.1, total_steps=10, clipping=None, weight_decay=0.0, momentum=0.0))
    assert jax.tree.structure(on.init(params)) == jax.tree.structure(off.init(params))
    updates, _ = jax.jit(on.update)(grads, on.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    # warmup: the first update (lr(0) = 0) moves nothing.
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "learning rate"),
    (dict(lr=-1.0), "learning rate"),
    (dict(lr=float("nan")), "learning rate"),
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=2.5), "total_steps"),
    (dict(warmup_fraction=1.0), "warmup_fraction"),
    (dict(warmup_fraction=-0.1), "warmup_fraction"),
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1e-6), "weight_decay"),
    (dict(clipping=0.0), "clipping"),
    (dict(agc_eps=0.0), "agc_eps"),
    (dict(agc_exclude="classifier"), "agc_exclude"),
])
def test_bad_values_raise_one_line(kwargs, match):
    base = dict(lr=0.1, total_steps=10)
    with pytest.raises(NFNetError, match=match) as err:
        OptimConfig(**{**base, **kwargs})
    assert "\n" not in str(err.value)
