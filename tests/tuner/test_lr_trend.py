"""scaling.lr_trend: the optimal LR's slopes in epochs and size, with intervals."""

import math

import numpy as np
import pytest

from tuner.study.scaling import ScalingError, lr_trend

SIZES = {"s1": 1e5, "s2": 4e5, "s3": 1.6e6}
EPOCHS = (0.25, 0.5, 1.0, 2.0, 4.0)
LRS = [0.05 * 2.0**k for k in range(7)]  # 0.05 ... 3.2


def rows(slope_epochs: float, slope_size: float, noise: float = 0.0, seeds: int = 1, seed: int = 0):
    """Loss a parabola in log2 LR around log2 lr* = −1 + s_e·log2(epochs) + s_n·log2(N / 1e5)."""
    rng = np.random.default_rng(seed)
    out = []
    for variant, n in SIZES.items():
        for e in EPOCHS:
            opt = -1.0 + slope_epochs * math.log2(e) + slope_size * math.log2(n / 1e5)
            for lr in LRS:
                for s in range(seeds):
                    loss = 0.5 + 0.05 * (math.log2(lr) - opt) ** 2
                    loss *= math.exp(rng.normal(0, noise)) if noise else 1.0
                    out.append(dict(variant=variant, epochs=e, lr=lr, val_loss=loss, params=n, seed=s))
    return out


def test_noiseless_slopes_are_recovered():
    trend = lr_trend(rows(-0.2, -0.3), n_boot=0)
    assert trend.slopes["epochs"] == pytest.approx(-0.2, abs=1e-6)
    assert trend.slopes["size"] == pytest.approx(-0.3, abs=1e-6)
    assert trend.cells == 15 and trend.censored == 0
    assert trend.verdict("epochs") == "falls"


def test_with_seed_noise_the_intervals_cover_the_slopes_and_say_falls():
    trend = lr_trend(rows(-0.25, -0.25, noise=0.005, seeds=3), n_boot=300, seed=0)
    for factor in ("epochs", "size"):
        low, high = trend.intervals[factor]
        assert low < -0.25 < high
        assert trend.verdict(factor) == "falls"


def test_a_flat_optimum_is_flat_within_noise():
    trend = lr_trend(rows(0.0, 0.0, noise=0.01, seeds=3), n_boot=300, seed=0)
    assert trend.verdict("epochs") == "flat within noise" and trend.verdict("size") == "flat within noise"
    assert trend.intervals["epochs"][0] < 0 < trend.intervals["epochs"][1]


def test_an_optimum_at_the_end_of_the_lrs_is_counted_as_censored():
    trend = lr_trend(rows(-1.0, 0.0), n_boot=0)  # at 4 epochs lr* = 2^-3 = 0.125: inside; at 0.25, 2^1 = 2: inside
    assert trend.censored == 0
    # lr* = 2^3 = 8 > 3.2 at 0.25 epochs and 2^-5 < 0.05 at 4 epochs: both ends, in 3 sizes.
    trend = lr_trend(rows(-2.0, 0.0), n_boot=0)
    assert trend.censored == 6
    assert -2.0 < trend.slopes["epochs"] < -1.0  # pulled toward the LRs tried, as the report warns


def test_one_size_measures_only_the_epochs():
    one = [r for r in rows(-0.2, -0.3) if r["variant"] == "s1"]
    trend = lr_trend(one, n_boot=50)
    assert "size" not in trend.slopes and trend.verdict("size") == "not measured"
    assert trend.slopes["epochs"] == pytest.approx(-0.2, abs=1e-6)


def test_too_few_cells_with_three_lrs_are_refused():
    few = [r for r in rows(-0.2, -0.3) if r["variant"] == "s1" and r["epochs"] <= 0.5]
    with pytest.raises(ScalingError, match="≥ 4 .* cells run at ≥ 3 LRs each; the rows have 2"):
        lr_trend(few)
