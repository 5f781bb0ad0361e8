import math

import numpy as np
import pytest

from tuner.errors import TunerError
from tuner.study.scaling import ScalingError, best_per_cell, bootstrap_ci, check_fit_points, compute_optimal, fit_power_law, frontier, optimal_lr_table, size_order, uncontested


def noisy_power_law(a: float, b: float, noise: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e9, 1e13, n)
    return x, a * x**b * (1.0 + noise * rng.standard_normal(n))


def test_fit_recovers_exponent_and_ci_covers_truth():
    x, y = noisy_power_law(a=5.0, b=-0.08, noise=0.02, n=40, seed=1)
    fit = fit_power_law(x, y)
    assert abs(fit.b - (-0.08)) < 0.01
    assert fit.a == pytest.approx(5.0, rel=0.3)
    assert fit.n == 40
    assert 0.9 < fit.r2 <= 1.0
    ci = bootstrap_ci(x, y, n_boot=1000, level=0.95, seed=0)
    assert ci.b_low < -0.08 < ci.b_high
    assert ci.a_low < 5.0 < ci.a_high
    assert ci.b_low <= fit.b <= ci.b_high
    assert ci.n_boot == 1000


def test_fit_is_exact_on_noiseless_data():
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    fit = fit_power_law(x, 3.0 * x**-0.5)
    assert fit.a == pytest.approx(3.0)
    assert fit.b == pytest.approx(-0.5)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.predict(10_000.0) == pytest.approx(0.03)
    assert fit.equation() == "L = 3 · C^-0.5000"


def test_bootstrap_is_seeded_and_narrows_with_level():
    x, y = noisy_power_law(a=2.0, b=-0.2, noise=0.05, n=20, seed=3)
    wide = bootstrap_ci(x, y, n_boot=300, level=0.95, seed=7)
    assert bootstrap_ci(x, y, n_boot=300, level=0.95, seed=7) == wide
    narrow = bootstrap_ci(x, y, n_boot=300, level=0.5, seed=7)
    assert wide.b_low < narrow.b_low < narrow.b_high < wide.b_high


@pytest.mark.parametrize(
    "x, y, fragment",
    [
        ([5.0, 5.0, 5.0], [1.0, 2.0, 3.0], "2 distinct x"),
        ([3.0], [1.0], "2 distinct x"),
        ([1.0, 2.0], [1.0, -1.0], "finite and positive"),
        ([0.0, 2.0], [1.0, 1.0], "finite and positive"),
        ([1.0, 2.0], [1.0, math.nan], "finite and positive"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], "differ in length"),
    ],
)
def test_degenerate_inputs_raise_scaling_error(x, y, fragment):
    with pytest.raises(ScalingError, match=fragment) as info:
        fit_power_law(x, y)
    assert isinstance(info.value, TunerError)
    with pytest.raises(ScalingError):
        bootstrap_ci(x, y, n_boot=10)


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ScalingError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], [1.0, 2.0], n_boot=0)
    with pytest.raises(ScalingError, match="level"):
        bootstrap_ci([1.0, 2.0], [1.0, 2.0], level=1.0)


def test_frontier_on_hand_built_table():
    #          0    1    2    3    4    5    6
    compute = [4.0, 1.0, 2.0, 2.0, 3.0, 8.0, 5.0]
    loss = [2.0, 3.0, 2.5, 2.8, 2.6, 1.5, 2.0]
    # 3 ties 2 in compute with a worse loss; 4 is worse than 2 at higher compute;
    # 6 only equals 0's loss at higher compute, so it is not lower.
    assert frontier(compute, loss).tolist() == [1, 2, 0, 5]


def test_uncontested_frontier_points_are_beyond_every_other_model():
    # a reaches compute 4, b reaches 8: b's points above 4 had no competitor.
    compute = [1.0, 2.0, 4.0, 3.0, 6.0, 8.0]
    variants = ["a", "a", "a", "b", "b", "b"]
    loss = [3.0, 2.0, 1.5, 2.5, 1.4, 1.2]
    front = frontier(compute, loss).tolist()
    assert front == [0, 1, 2, 4, 5]
    assert uncontested(compute, variants, front) == [4, 5]
    # A model run as far as the other contests it; a single model contests nothing.
    assert uncontested([1.0, 2.0, 2.0], ["a", "a", "b"], [0, 1, 2]) == []
    assert uncontested([1.0, 2.0], ["a", "a"], [0, 1]) == []


def test_frontier_ties_and_non_finite_values():
    assert frontier([1.0, 1.0, 2.0], [2.0, 2.0, 1.0]).tolist() == [0, 2]
    assert frontier([1.0, 2.0, 3.0], [math.nan, 5.0, 4.0]).tolist() == [1, 2]
    assert frontier([], []).tolist() == []
    with pytest.raises(ScalingError):
        frontier([1.0, 2.0], [1.0])


def test_compute_optimal_exponents():
    c = np.array([1e10, 1e11, 1e12, 1e13])
    params = 0.02 * c**0.5
    epochs = 1e-5 * c**0.45
    opt = compute_optimal(c, params, epochs)
    assert opt.params.b == pytest.approx(0.5)
    assert opt.params.a == pytest.approx(0.02)
    assert opt.epochs.b == pytest.approx(0.45)
    assert opt.notes == ()


def test_compute_optimal_drops_unknown_params_and_reports_gaps():
    c = np.array([1e10, 1e11, 1e12])
    opt = compute_optimal(c, [math.nan, math.nan, 5e6], [0.25, 1.0, 4.0])
    assert opt.params is None
    assert opt.epochs is not None and opt.epochs.b == pytest.approx(math.log10(4.0), rel=1e-6)
    assert len(opt.notes) == 1 and opt.notes[0].startswith("no params fit")


def lr_rows(optimum: dict[tuple[str, float], float], params: dict[str, int]) -> list[dict]:
    """A factor-2 LR grid around each cell's optimum; loss grows with the distance in log2."""
    rows = []
    for (variant, epochs), best in optimum.items():
        for k in (-2, -1, 0, 1, 2):
            rows.append(
                dict(
                    variant=variant,
                    epochs=epochs,
                    lr=best * 2.0**k,
                    val_loss=3.0 / epochs**0.1 + 0.05 * k * k,
                    params=params[variant],
                    compute=6.0 * params[variant] * epochs,
                )
            )
    return rows


def test_optimal_lr_table_detects_monotone_and_non_monotone():
    optimum = {
        ("big", 0.25): 1.6, ("big", 1.0): 0.4, ("big", 4.0): 0.1,
        ("small", 0.25): 1.6, ("small", 1.0): 0.2, ("small", 4.0): 1.6,
    }
    table = optimal_lr_table(lr_rows(optimum, {"small": 1_000, "big": 9_000}))
    assert {(c.variant, c.epochs): c.lr for c in table.cells} == pytest.approx(optimum)
    assert [c.variant for c in table.cells] == ["small"] * 3 + ["big"] * 3
    assert all(c.n_lrs == 5 for c in table.cells)
    assert table.size_order == ("small", "big")
    assert table.monotone_in_epochs == {"small": False, "big": True}
    # Equal optima (1.6 at 0.25 epochs) count as non-increasing.
    assert table.monotone_in_size == {0.25: True, 1.0: False, 4.0: True}


def test_optimal_lr_table_single_cells_are_unanswerable():
    table = optimal_lr_table(lr_rows({("only", 1.0): 0.8}, {"only": 10}))
    assert table.monotone_in_epochs == {"only": None}
    assert table.monotone_in_size == {1.0: None}


def test_optimal_lr_averages_seeds_and_ignores_rows_without_lr():
    rows = [
        dict(variant="m", epochs=1.0, lr=1.6, val_loss=1.0),
        dict(variant="m", epochs=1.0, lr=1.6, val_loss=3.0),
        dict(variant="m", epochs=1.0, lr=0.8, val_loss=1.5),
        dict(variant="m", epochs=1.0, lr=0.8, val_loss=1.5),
        dict(variant="m", epochs=1.0, lr=math.nan, val_loss=0.1),
        dict(variant="m", epochs=1.0, lr=0.4, val_loss=math.nan),
    ]
    (cell,) = optimal_lr_table(rows).cells
    assert cell.lr == 0.8 and cell.val_loss == 1.5 and cell.n_lrs == 2


def test_optimal_lr_ties_go_to_smaller_lr():
    rows = [dict(variant="m", epochs=1.0, lr=lr, val_loss=2.0) for lr in (1.6, 0.4, 0.8)]
    assert optimal_lr_table(rows).cells[0].lr == 0.4


def test_size_order_uses_params_else_compute_per_epoch():
    rows = [
        dict(variant="b", params=50, compute=1.0, epochs=1.0),
        dict(variant="a", params=90, compute=2.0, epochs=1.0),
    ]
    assert size_order(rows) == ("b", "a")
    no_params = [dict(r, params=math.nan) for r in rows]
    assert size_order(no_params) == ("b", "a")
    no_params[0]["compute"] = 10.0
    assert size_order(no_params) == ("a", "b")


def test_best_per_cell_keeps_lowest_loss_sorted_by_compute():
    rows = [
        dict(variant="m", epochs=2.0, compute=20.0, val_loss=2.0, lr=0.8),
        dict(variant="m", epochs=2.0, compute=20.0, val_loss=1.8, lr=0.4),
        dict(variant="m", epochs=1.0, compute=10.0, val_loss=2.5, lr=0.8),
        dict(variant="m", epochs=4.0, compute=40.0, val_loss=math.nan, lr=0.8),
    ]
    best = best_per_cell(rows)
    assert [(r["epochs"], r["lr"]) for r in best] == [(1.0, 0.8), (2.0, 0.4)]


def test_check_fit_points_needs_three_distinct_x():
    assert check_fit_points([1.0, 2.0, 4.0]) == 3
    with pytest.raises(ScalingError, match=r"too few points for a fit: 2 \(need ≥ 3\)"):
        check_fit_points([1.0, 2.0, 2.0])


def test_compute_optimal_refuses_two_point_fits():
    # Through 2 points any power law is exact (R² = 1): no fit, and the notes say why.
    opt = compute_optimal([1e10, 1e11], [1e5, 4e5], [0.5, 1.0])
    assert opt.params is None and opt.epochs is None
    assert opt.notes == ("no params fit: too few points for a fit: 2 (need ≥ 3)",
                         "no epochs fit: too few points for a fit: 2 (need ≥ 3)")


def test_bootstrap_flags_intervals_from_too_few_distinct_points():
    # 2 points: every fittable resample holds both, so the interval is the fit's own slope.
    two = bootstrap_ci([1.0, 10.0], [2.0, 1.0], n_boot=200)
    assert two.b_low == pytest.approx(two.b_high) and two.collapsed and two.distinct == 1
    assert two.caveat().startswith("the bootstrap interval collapsed to a point")
    # 4 noisy points: an interval, but from at most C(7, 4) - 4 = 31 different resamples.
    x, y = noisy_power_law(a=2.0, b=-0.2, noise=0.05, n=4, seed=3)
    four = bootstrap_ci(x, y, n_boot=500)
    assert not four.collapsed and four.points == 4 and four.distinct <= 31
    assert "rests on 4 distinct points" in four.caveat() and "at most 31 different fits" in four.caveat()
    x, y = noisy_power_law(a=2.0, b=-0.2, noise=0.05, n=20, seed=3)
    assert bootstrap_ci(x, y, n_boot=300).caveat() == ""


def test_lrs_tried_count_an_lr_search_rows_trials_and_unfinished_runs():
    rows = [
        # lr_search's row is its winner; its trials (from the `search` column) were run too.
        dict(variant="m", epochs=1.0, lr=0.4, val_loss=1.0, trial_lrs=[0.1, 0.2, 0.4, 0.8 * (1 + 1e-12)]),
        dict(variant="m", epochs=2.0, lr=0.2, val_loss=0.9),
    ]
    diverged = [dict(variant="m", epochs=2.0, lr=0.8, val_loss=math.nan), dict(variant="m", epochs=2.0, lr=0.2)]
    table = optimal_lr_table(rows, tried=diverged)
    assert [(c.epochs, c.lr, c.n_lrs, c.measured) for c in table.cells] == [(1.0, 0.4, 4, True), (2.0, 0.2, 2, True)]
    assert table.monotone_in_epochs == {"m": True} and table.not_measured_in_epochs == {}


def test_optimal_lr_trends_leave_out_cells_with_one_lr():
    # One LR per cell falls with epochs, but nothing was measured: no answer.
    single = [dict(variant="m", epochs=e, lr=lr, val_loss=1.0 / e) for e, lr in ((0.5, 0.4), (1.0, 0.2), (2.0, 0.1))]
    table = optimal_lr_table(single)
    assert all(not c.measured for c in table.cells)
    assert table.monotone_in_epochs == {"m": None}
    assert table.not_measured_in_epochs == {"m": (0.5, 1.0, 2.0)}
    # With two measured cells the answer comes from those, and the unmeasured cell is named.
    grid = lr_rows({("m", 0.5): 0.8, ("m", 1.0): 0.4}, {"m": 10})
    table = optimal_lr_table([*grid, dict(variant="m", epochs=2.0, lr=1.6, val_loss=0.1, params=10)])
    assert table.monotone_in_epochs == {"m": True}
    assert table.not_measured_in_epochs == {"m": (2.0,)}
    assert table.not_measured_in_size == {2.0: ("m",)}
