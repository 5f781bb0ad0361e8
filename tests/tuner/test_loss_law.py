"""Chinchilla's approaches 3 (tuner/study/loss_law.py) and 2 (tuner/study/isoflop.py) on runs made
from Chinchilla's published law, and through `tuner.report` on a ledger of them."""

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuner.study.isoflop import isoflop
from tuner.records.ledger import LEDGER_SCHEMA
from tuner.study.loss_law import _objective, fit_joint_law
from tuner.report import main
from tuner.study.scaling import ScalingError

# Hoffmann et al. (2022), approach 3's constants.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TRUE = {"E": E, "alpha": ALPHA, "beta": BETA, "a": BETA / (ALPHA + BETA), "b": ALPHA / (ALPHA + BETA)}


def chinchilla_grid(sizes: int = 8, budgets: int = 8, noise: float = 0.0, seed: int = 1, repeats: int = 1):
    """N from 1e7 to 1e10, D from 1e9 to 1e12, C = 6ND; `noise`: relative (log-normal) noise on L."""
    n, d = np.meshgrid(np.geomspace(1e7, 1e10, sizes), np.geomspace(1e9, 1e12, budgets))
    n, d = np.repeat(n.ravel(), repeats), np.repeat(d.ravel(), repeats)
    loss = E + A / n**ALPHA + B / d**BETA
    if noise:
        loss = loss * np.exp(np.random.default_rng(seed).normal(0.0, noise, loss.size))
    return n, d, loss, 6.0 * n * d


def test_noiseless_runs_give_back_chinchillas_constants():
    n, d, loss, compute = chinchilla_grid()
    law = fit_joint_law(n, d, loss, compute, n_boot=0)
    for name in ("E", "alpha", "beta"):
        assert getattr(law, name) == pytest.approx(TRUE[name], rel=0.01), name
    assert law.A == pytest.approx(A, rel=0.01) and law.B == pytest.approx(B, rel=0.01)
    assert law.k == pytest.approx(6.0) and law.gamma == pytest.approx(1.0) and law.a_flops == pytest.approx(law.a)
    # The compute-optimal allocation: a = β/(α+β), and N*·D* spends the budget.
    assert law.a == pytest.approx(TRUE["a"], rel=1e-3) and law.a + law.b == pytest.approx(1.0)
    n_opt, d_opt = law.optimal(1e21)
    assert 6.0 * n_opt * d_opt == pytest.approx(1e21)
    # N* is where the law is lowest along the iso-compute curve.
    sizes = np.geomspace(n_opt / 10, n_opt * 10, 2001)
    assert sizes[np.argmin(law.predict(sizes, 1e21 / (6 * sizes)))] == pytest.approx(n_opt, rel=0.01)


def test_with_one_percent_noise_the_intervals_cover_the_truth():
    n, d, loss, compute = chinchilla_grid(noise=0.01)
    law = fit_joint_law(n, d, loss, compute, n_boot=1000, seed=0)
    assert law.n_boot == 1000
    for name, value in TRUE.items():
        iv = law.intervals[name]
        assert iv.low < value < iv.high, (name, iv, value)
        assert iv.high - iv.low < 0.5 * abs(value), (name, iv)  # and say something
    # Chinchilla's law has a < b (data should grow faster), and 64 runs at 1% noise can tell.
    assert law.same_rate() == "data faster"


def test_equal_exponents_answer_the_same_rate():
    n, d = np.meshgrid(np.geomspace(1e5, 1e7, 6), np.geomspace(1e4, 1e6, 6))
    n, d = n.ravel(), d.ravel()
    loss = (0.3 + 30 / n**0.3 + 20 / d**0.3) * np.exp(np.random.default_rng(3).normal(0, 0.01, n.size))
    law = fit_joint_law(n, d, loss, 10 * n * d, n_boot=300, seed=0)
    assert law.intervals["a_minus_b"].contains(0.0)
    assert law.same_rate() == "yes"


def test_the_objective_is_summed_not_averaged():
    n, d, loss, _ = chinchilla_grid(noise=0.01)
    x, y, ll = np.log(n), np.log(d), np.log(loss)
    theta = np.array([6.0, 6.0, 0.5, 0.34, 0.28])
    whole, _ = _objective(theta, x, y, ll, 1e-3)
    half, _ = _objective(theta, x[::2], y[::2], ll[::2], 1e-3)
    other, _ = _objective(theta, x[1::2], y[1::2], ll[1::2], 1e-3)
    assert whole == pytest.approx(half + other)


def test_the_gradient_is_the_objectives():
    n, d, loss, _ = chinchilla_grid(noise=0.01)
    x, y, ll = np.log(n), np.log(d), np.log(loss)
    theta = np.array([6.0, 6.0, 0.5, 0.34, 0.28])
    _, grad = _objective(theta, x, y, ll, 1e-3)
    step = 1e-6
    numeric = [(_objective(theta + step * e, x, y, ll, 1e-3)[0] - _objective(theta - step * e, x, y, ll, 1e-3)[0])
               / (2 * step) for e in np.eye(5)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("sizes, budgets, fragment", [
    (2, 8, "≥ 3 model sizes; the rows have 2"),
    (8, 2, "≥ 3 data budgets; the rows have 2"),
    (1, 5, "needs ≥ 6 runs"),
])
def test_too_few_sizes_or_budgets_are_refused(sizes, budgets, fragment):
    n, d, loss, compute = chinchilla_grid(sizes, budgets)
    with pytest.raises(ScalingError, match=fragment):
        fit_joint_law(n, d, loss, compute, n_boot=0)


def test_a_loss_that_does_not_depend_on_data_is_degenerate():
    n, d = np.meshgrid(np.geomspace(1e5, 1e7, 4), np.geomspace(1e4, 1e6, 4))
    loss = 0.5 + 30 / n.ravel() ** 0.3
    with pytest.raises(ScalingError, match="degenerate"):
        fit_joint_law(n.ravel(), d.ravel(), loss, n_boot=0)


def test_approaches_2_and_3_agree_on_a():
    n, d, loss, compute = chinchilla_grid(12, 12)
    law = fit_joint_law(n, d, loss, compute, n_boot=0)
    iso = isoflop(list(zip(n, d, compute, loss)), n_boot=200)
    assert iso.fit is not None and iso.fit.n >= 5
    assert iso.a == pytest.approx(law.a, abs=0.01)
    assert iso.a == pytest.approx(TRUE["a"], abs=0.01)
    # Each profiled minimum is the law's own optimum at that compute.
    for p in iso.profiles:
        if p.n_opt is not None:
            assert p.n_opt == pytest.approx(float(law.optimal(p.compute)[0]), rel=0.1)
    # Profiles at the grid's corners have their lowest loss at an end: listed, not fitted.
    assert any("beyond the sizes run" in p.note for p in iso.profiles)
    assert iso.method == "levels" and iso.interval[0] <= iso.a <= iso.interval[1]


def test_isoflop_resamples_runs_when_cells_have_seeds():
    n, d, loss, compute = chinchilla_grid(10, 10, noise=0.01, repeats=3)
    iso = isoflop(list(zip(n, d, compute, loss)), n_boot=300, seed=0)
    assert iso.method == "runs" and iso.n_boot > 250
    low, high = iso.interval
    assert low < TRUE["a"] < high and high - low < 0.2


def test_isoflop_with_two_sizes_says_what_it_needs():
    n, d, loss, compute = chinchilla_grid(2, 6)
    iso = isoflop(list(zip(n, d, compute, loss)), n_boot=10)
    assert iso.fit is None and "run more sizes around the optimum" in iso.note


def test_report_carries_both_approaches_from_a_ledger(tmp_path, capsys):
    """A ledger of runs on Chinchilla's law (as a sweep files them), through tuner.report."""
    n, d, loss, compute = chinchilla_grid(8, 8, noise=0.01)
    rows = []
    for i, (ni, di, li, ci) in enumerate(zip(n, d, loss, compute)):
        rows.append(dict(
            trial_id=f"t{i}", experiment="chinchilla", kind="pretrain", variant=f"m{int(ni):d}", width_mult=1.0,
            depth_mult=1.0, params=int(ni), epochs=float(di / 1e9), lr=0.1, batch_size=256, dataset="text",
            final_val_loss=float(li), best_val_loss=float(li), flops=float(ci), images_seen=int(di),
            status="finished", source="sweep", code_version="test", time=datetime(2026, 1, 1, tzinfo=timezone.utc),
        ))
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), ledger / "part-0001.parquet")
    out = tmp_path / "report"
    assert main(["--ledger", str(ledger), "--out", str(out), "--json", "--n-boot", "300"]) == 0
    result = json.loads(capsys.readouterr().out)
    law = result["joint_law"]
    assert law["fitted"] and law["data_unit"] == "examples" and law["n"] == 64
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        low, high = law["intervals"][name]
        assert low <= law[name] <= high
    for name in ("E", "alpha", "beta", "a"):
        low, high = law["intervals"][name]
        assert low < TRUE[name] < high, name
    assert law["same_rate"] == "data faster"
    iso = result["isoflop"]
    assert iso["fitted"] and iso["a"] == pytest.approx(law["a"], abs=0.03)
    summary = (out / "summary.md").read_text()
    assert "## Joint law L(N, D) (Chinchilla's approach 3)" in summary
    assert "Should the model size and the epochs grow at the same rate" in summary
    assert "**no, the epochs (data) faster**" in summary
    assert "## IsoFLOP profiles (Chinchilla's approach 2)" in summary
    assert (out / "isoflop.png").read_bytes().startswith(b"\x89PNG")


def test_a_cost_law_other_than_6nd_moves_the_allocation_against_flops():
    """A convnet's FLOPs per example grow slower than its parameters: C = k·N^γ·D with γ < 1."""
    n, d, loss, _ = chinchilla_grid(12, 12)
    compute = 3.0 * n**0.5 * d
    law = fit_joint_law(n, d, loss, compute, n_boot=0)
    assert law.gamma == pytest.approx(0.5) and law.k == pytest.approx(3.0)
    assert law.a == pytest.approx(TRUE["a"], rel=1e-3)  # Chinchilla's split is of N·D, unchanged
    assert law.a_flops == pytest.approx(BETA / (ALPHA + 0.5 * BETA), rel=1e-3)
    # N* is the law's lowest point along the measured iso-FLOP curve ...
    budget = 1e15
    n_opt, d_opt = law.optimal(budget)
    assert 3.0 * n_opt**0.5 * d_opt == pytest.approx(budget)
    sizes = np.geomspace(n_opt / 10, n_opt * 10, 4001)
    assert sizes[np.argmin(law.predict(sizes, budget / (3.0 * sizes**0.5)))] == pytest.approx(n_opt, rel=0.01)
    # ... and IsoFLOP profiles over those FLOPs find the same exponent.
    iso = isoflop(list(zip(n, d, compute, loss)), n_boot=0)
    assert iso.a == pytest.approx(law.a_flops, abs=0.02)


def test_a_wide_interval_is_undetermined_not_yes():
    n, d, loss, compute = chinchilla_grid(3, 3, noise=0.05, seed=4)
    law = fit_joint_law(n, d, loss, compute, n_boot=200, seed=0)
    iv = law.intervals["a_minus_b"]
    assert iv.contains(0.0) and iv.high - iv.low > 0.5
    assert law.same_rate() == "undetermined"
