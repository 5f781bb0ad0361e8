"""SAM gradients against closed-form linear regression."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet.errors import NFNetError
from nfnet.sam import ascent_batch_size, sam_gradients

X = np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [-1.0, 1.0], [0.0, 3.0],
              [1.5, 0.5], [-2.0, -1.0], [0.3, 0.7], [1.0, -2.0], [2.5, 1.0]], np.float32)
Y = np.array([1.0, 0.0, 2.0, -1.0, 0.5, 1.0, -2.0, 0.0, 1.0, 3.0], np.float32)
PARAMS = {"kernel": jnp.array([0.2, -0.1]), "bias": jnp.array(0.3)}


def loss_fn(params, batch):
    x, y = batch
    resid = x @ params["kernel"] + params["bias"] - y
    loss = 0.5 * jnp.mean(resid ** 2)
    return loss, {"mse": jnp.mean(resid ** 2)}


def grad_by_hand(w, b, x, y):
    """∇ of 0.5·mean((xw + b - y)²): (xᵀr / n, mean(r))."""
    r = x @ w + b - y
    return x.T @ r / len(y), r.mean()


def sam_by_hand(w, b, x, y, rho, k):
    gw, gb = grad_by_hand(w, b, x[:k], y[:k])
    norm = np.sqrt(np.sum(gw ** 2) + gb ** 2)              # global norm over both leaves
    w_p, b_p = w + rho * gw / norm, b + rho * gb / norm
    r = x @ w_p + b_p - y
    return 0.5 * np.mean(r ** 2), grad_by_hand(w_p, b_p, x, y)


def test_sam_matches_closed_form():
    rho = 0.05
    loss, aux, grads = sam_gradients(loss_fn, PARAMS, (X, Y), rho=rho, ascent_fraction=0.2)
    w, b = np.asarray(PARAMS["kernel"], np.float64), float(PARAMS["bias"])
    exp_loss, (gw, gb) = sam_by_hand(w, b, X.astype(np.float64), Y.astype(np.float64), rho, k=2)
    np.testing.assert_allclose(grads["kernel"], gw, rtol=1e-5)
    assert float(grads["bias"]) == pytest.approx(gb, rel=1e-5)
    # loss and aux are those of the full batch at the perturbed point.
    assert float(loss) == pytest.approx(exp_loss, rel=1e-5)
    assert float(aux["mse"]) == pytest.approx(2 * exp_loss, rel=1e-5)
    # ... which is not the plain gradient, and uses only the sub-batch for the ascent.
    plain_w, _ = grad_by_hand(w, b, X, Y)
    assert not np.allclose(grads["kernel"], plain_w, rtol=1e-3)
    _, (full_w, _) = sam_by_hand(w, b, X.astype(np.float64), Y.astype(np.float64), rho, k=10)
    assert not np.allclose(grads["kernel"], full_w, rtol=1e-3)


def test_rho_zero_is_the_plain_gradient():
    _, _, grads = sam_gradients(loss_fn, PARAMS, (X, Y), rho=0.0)
    gw, gb = grad_by_hand(np.asarray(PARAMS["kernel"]), float(PARAMS["bias"]), X, Y)
    np.testing.assert_allclose(grads["kernel"], gw, rtol=1e-5)
    assert float(grads["bias"]) == pytest.approx(gb, rel=1e-5)


def test_sam_jits_with_traced_rho():
    fn = jax.jit(functools.partial(sam_gradients, loss_fn, ascent_fraction=0.3))
    loss, _, grads = fn(PARAMS, (X, Y), rho=jnp.float32(0.1))
    w, b = np.asarray(PARAMS["kernel"], np.float64), float(PARAMS["bias"])
    exp_loss, (gw, _) = sam_by_hand(w, b, X.astype(np.float64), Y.astype(np.float64), 0.1, k=3)
    np.testing.assert_allclose(grads["kernel"], gw, rtol=1e-5)
    assert float(loss) == pytest.approx(exp_loss, rel=1e-5)


def test_per_shard_ascent_matches_hand_computation():
    """num_shards=2: each half takes its own first ceil(0.2·5) = 1 example for its own ε,
    gets its gradient at its own perturbed point, and the two gradients are averaged."""
    rho = 0.05
    loss, aux, grads = sam_gradients(loss_fn, PARAMS, (X, Y), rho=rho, ascent_fraction=0.2, num_shards=2)
    w, b = np.asarray(PARAMS["kernel"], np.float64), float(PARAMS["bias"])
    x, y = X.astype(np.float64), Y.astype(np.float64)
    l0, (gw0, gb0) = sam_by_hand(w, b, x[:5], y[:5], rho, k=1)
    l1, (gw1, gb1) = sam_by_hand(w, b, x[5:], y[5:], rho, k=1)
    np.testing.assert_allclose(grads["kernel"], (gw0 + gw1) / 2, rtol=1e-5)
    assert float(grads["bias"]) == pytest.approx((gb0 + gb1) / 2, rel=1e-5)
    assert float(loss) == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert float(aux["mse"]) == pytest.approx(l0 + l1, rel=1e-5)
    _, _, one = sam_gradients(loss_fn, PARAMS, (X, Y), rho=rho, ascent_fraction=0.2)
    assert not np.allclose(one["kernel"], grads["kernel"], rtol=1e-4)


def test_zero_ascent_gradient_gives_no_perturbation_and_no_nan():
    # The first two examples are fitted exactly, so their gradient is 0.
    params = {"kernel": jnp.array([1.0, 0.0]), "bias": jnp.array(0.0)}
    x = np.array([[1.0, 0.0], [2.0, 5.0], [0.0, 1.0]], np.float32)
    y = np.array([1.0, 2.0, 4.0], np.float32)
    _, _, grads = sam_gradients(loss_fn, params, (x, y), rho=0.05, ascent_fraction=0.5)
    gw, gb = grad_by_hand(np.array([1.0, 0.0]), 0.0, x, y)
    np.testing.assert_allclose(grads["kernel"], gw, rtol=1e-6)
    assert np.isfinite(float(grads["bias"]))


def test_ascent_batch_size_rounds_up_without_float_noise():
    assert ascent_batch_size(15, 0.2) == 3          # 0.2 * 15 = 3.0000000000000004 in floats
    assert ascent_batch_size(10, 0.2) == 2
    assert ascent_batch_size(11, 0.2) == 3
    assert ascent_batch_size(4, 0.01) == 1
    assert ascent_batch_size(4, 1.0) == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(rho=-0.1), "rho"),
    (dict(ascent_fraction=0.0), "ascent_fraction"),
    (dict(ascent_fraction=1.5), "ascent_fraction"),
    (dict(num_shards=0), "num_shards"),
    (dict(num_shards=3), "divisible"),
])
def test_bad_values_raise(kwargs, match):
    with pytest.raises(NFNetError, match=match):
        sam_gradients(loss_fn, PARAMS, (X, Y), **kwargs)


def test_mismatched_batch_raises():
    with pytest.raises(NFNetError, match="leading"):
        sam_gradients(loss_fn, PARAMS, (X, Y[:5]))
