"""Scaling-law maths over ledger rows: the compute-optimal frontier, power-law fits
with bootstrap intervals, compute-optimal model size and epoch budget, and the
optimal learning rate per (variant, epoch budget).

[P1] Fig. 2: held-out loss falls as a straight line in log(loss) vs log(compute),
and the compute-optimal model size and epoch budget both grow with compute. [P1]
Fig. 3: the optimal LR falls slowly but monotonically with epoch budget and size.

numpy, and scipy.stats for the bootstrap; no Ray. Rows are mappings with the keys `variant`, `epochs`, `compute`,
`val_loss` and, where known, `lr`, `params`.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from tuner.errors import TunerError


class ScalingError(TunerError):
    """The data cannot support the requested fit (too few or invalid points)."""


# A line through 2 points fits them exactly (R² = 1 whatever they are): a scaling fit
# that says anything needs 3 or more distinct x values.
MIN_FIT_POINTS = 3
# Below this many distinct points a percentile bootstrap has too few different
# resamples to give an interval (4 points: at most 31 different fits).
ROUGH_BOOTSTRAP_POINTS = 5


def check_fit_points(x: Sequence[float] | np.ndarray, min_points: int = MIN_FIT_POINTS) -> int:
    """The number of distinct x values, or a ScalingError when there are fewer than `min_points`."""
    n = int(np.unique(np.asarray(x, dtype=np.float64)).size)
    if n < min_points:
        raise ScalingError(f"too few points for a fit: {n} (need ≥ {min_points})")
    return n


@dataclass(frozen=True)
class Fit:
    """`y = a · x^b`, fitted by least squares on (log x, log y)."""

    a: float
    b: float
    r2: float  # coefficient of determination in log space
    n: int  # points used

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return self.a * np.power(np.asarray(x, dtype=np.float64), self.b)

    def equation(self, y: str = "L", x: str = "C") -> str:
        return f"{y} = {self.a:.4g} · {x}^{self.b:.4f}"


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap intervals for a power law's coefficient and exponent."""

    a_low: float
    a_high: float
    b_low: float
    b_high: float
    level: float
    n_boot: int  # resamples that could be fitted (degenerate ones are skipped)
    points: int = 0  # distinct x values resampled
    distinct: int = 0  # different resamples (multisets of points) among those fitted

    @property
    def collapsed(self) -> bool:
        """Every fitted resample gave the same exponent: the interval is a point."""
        return self.b_high - self.b_low <= 1e-9 * max(1.0, abs(self.b_low), abs(self.b_high))

    def caveat(self) -> str:
        """Why the interval says little, or "" when it is a usable interval."""
        if self.collapsed:
            return (
                f"the bootstrap interval collapsed to a point: every fitted resample of the {self.points} distinct "
                f"points ({self.distinct} different ones) gives the same exponent, so it measures no uncertainty"
            )
        if self.points < ROUGH_BOOTSTRAP_POINTS:
            most = math.comb(2 * self.points - 1, self.points) - self.points
            return (
                f"the bootstrap interval rests on {self.points} distinct points: resampling them gives at most "
                f"{most} different fits, too few for a percentile interval; treat it as rough"
            )
        return ""


def _positive_log(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ScalingError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise ScalingError(
            f"{name} must be finite and positive for a log-log fit; "
            f"{int(bad.sum())} value(s) are not (first: {arr[bad][0]!r}); drop those rows"
        )
    return np.log(arr)


def _log_xy(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lx, ly = _positive_log(x, "x"), _positive_log(y, "y")
    if lx.shape != ly.shape:
        raise ScalingError(f"x and y differ in length ({lx.size} vs {ly.size})")
    if np.unique(lx).size < 2:
        raise ScalingError(
            f"a power-law fit needs at least 2 distinct x values, got {np.unique(lx).size} "
            f"from {lx.size} point(s); add runs at other compute budgets"
        )
    return lx, ly


def fit_power_law(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> Fit:
    """Least-squares fit of `log y = log a + b · log x`."""
    lx, ly = _log_xy(x, y)
    b, log_a = np.polyfit(lx, ly, 1)
    residual = ly - (log_a + b * lx)
    ss_res = float(residual @ residual)
    centred = ly - ly.mean()
    ss_tot = float(centred @ centred)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res <= 1e-24 else 0.0)
    return Fit(a=float(np.exp(log_a)), b=float(b), r2=r2, n=int(lx.size))


def bootstrap_distribution(samples: Sequence[np.ndarray], statistic: Any, n_boot: int, seed: int,
                           vectorized: bool = False) -> np.ndarray:
    """`statistic` over `n_boot` resamples of `samples` (scipy.stats.bootstrap: each sample resampled
    with replacement on its own), resamples on the last axis; NaN where a resample could not be fitted.

    The interval is then `percentile_interval`'s: scipy's own is taken over every resample, so a NaN
    makes it NaN (with a warning, silenced here), and scipy has no rule to leave such resamples out.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(samples, statistic, n_resamples=n_boot, vectorized=vectorized,
                                 method="percentile", rng=np.random.default_rng(seed))
    return np.asarray(result.bootstrap_distribution)


def percentile_interval(distribution: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval (low, high) of a bootstrap distribution over the resamples that could be
    fitted (NaN marks the others), with scipy's quantile: the linear interpolation its bootstrap uses."""
    tail = (1.0 - level) / 2.0
    low, high = np.moveaxis(stats.quantile(distribution, np.array([tail, 1.0 - tail]), axis=-1,
                                           nan_policy="omit"), -1, 0)
    return low, high


def bootstrap_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile intervals for `a` and `b` from refitting on points resampled with replacement
    (scipy.stats.bootstrap). Resamples with a single distinct x cannot be fitted and are skipped."""
    if n_boot < 1:
        raise ScalingError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ScalingError(f"level must lie strictly between 0 and 1, got {level}")
    lx, ly = _log_xy(x, y)
    tiny = 1e-12 * max(1.0, float(np.ptp(lx)) ** 2)
    resamples: list[np.ndarray] = []

    def slope_and_intercept(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        """(slope, log a) of the least-squares line through each resample of points (rows of `idx`)."""
        if idx.ndim == 2:
            resamples.append(idx)  # kept to count the different resamples
        idx = np.atleast_2d(idx)
        bx, by = lx[idx], ly[idx]
        dx = bx - bx.mean(axis=1, keepdims=True)
        dy = by - by.mean(axis=1, keepdims=True)
        sxx = np.einsum("ij,ij->i", dx, dx)
        ok = sxx > tiny
        slopes = np.full(len(idx), np.nan)
        slopes[ok] = np.einsum("ij,ij->i", dx[ok], dy[ok]) / sxx[ok]
        return np.stack([slopes, by.mean(axis=1) - slopes * bx.mean(axis=1)])

    # The points' indices are resampled, so each resample is a set of whole (x, y) points.
    slopes, log_as = bootstrap_distribution((np.arange(lx.size),), slope_and_intercept, n_boot, seed,
                                            vectorized=True)
    ok = np.isfinite(slopes)
    if not ok.any():
        raise ScalingError("every bootstrap resample had a single distinct x; add more points")
    (b_low, la_low), (b_high, la_high) = percentile_interval(np.stack([slopes, log_as]), level)
    # Resamples holding the same points (in any order, any multiplicity) give the same fit.
    idx = np.concatenate(resamples)
    distinct = int(np.unique(np.sort(idx[ok], axis=1), axis=0).shape[0])
    return BootstrapCI(
        a_low=float(np.exp(la_low)),
        a_high=float(np.exp(la_high)),
        b_low=float(b_low),
        b_high=float(b_high),
        level=float(level),
        n_boot=int(ok.sum()),
        points=int(np.unique(lx).size),
        distinct=distinct,
    )


def frontier(compute: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray) -> np.ndarray:
    """Indices of the compute-optimal frontier, sorted by compute: the points whose
    loss is lower than that of every other point with compute at or below theirs.

    Of points tied in compute only the lowest loss can qualify; of exact duplicates
    (same compute and loss) the first in input order is kept. Non-finite values are
    never on the frontier.
    """
    c = np.asarray(compute, dtype=np.float64)
    lo = np.asarray(loss, dtype=np.float64)
    if c.shape != lo.shape or c.ndim != 1:
        raise ScalingError(f"compute and loss must be 1-D and equal in length ({c.shape} vs {lo.shape})")
    finite = np.flatnonzero(np.isfinite(c) & np.isfinite(lo))
    order = finite[np.lexsort((finite, lo[finite], c[finite]))]
    best = math.inf
    kept: list[int] = []
    for i in order:
        if lo[i] < best:
            kept.append(int(i))
            best = lo[i]
    return np.asarray(kept, dtype=np.int64)


def uncontested(compute: Sequence[float] | np.ndarray, variants: Sequence[str], indices: Iterable[int]) -> list[int]:
    """Those of `indices` (frontier points) whose compute is above every other variant's
    largest: no other model was run that far, so the point is on the frontier for want
    of a competitor, and the frontier says nothing there about which model is optimal."""
    c = np.asarray(compute, dtype=np.float64)
    largest: dict[str, float] = {}
    for value, name in zip(c, variants):
        if math.isfinite(value):
            largest[name] = max(largest.get(name, -math.inf), float(value))
    out = []
    for i in indices:
        others = [top for name, top in largest.items() if name != variants[i]]
        if others and c[i] > max(others):
            out.append(int(i))
    return out


@dataclass(frozen=True)
class ComputeOptimal:
    """Compute-optimal allocation fitted on frontier points: `params_opt = k·C^p`
    and `epochs_opt = k·C^e` ([P1]: both grow with compute, at about the same rate).
    A fit is None where the frontier cannot support it (see `notes`)."""

    params: Fit | None
    epochs: Fit | None
    notes: tuple[str, ...]


def compute_optimal(
    compute: Sequence[float] | np.ndarray,
    params: Sequence[float] | np.ndarray,
    epochs: Sequence[float] | np.ndarray,
) -> ComputeOptimal:
    """Fit the parameter count and epoch budget of frontier points against compute.

    Takes the frontier points only (compute, and the params/epochs of each point);
    points with unknown (NaN) params are left out of the params fit. A fit needs
    `MIN_FIT_POINTS` distinct computes.
    """
    c = np.asarray(compute, dtype=np.float64)
    p = np.asarray(params, dtype=np.float64)
    e = np.asarray(epochs, dtype=np.float64)
    notes: list[str] = []

    def attempt(y: np.ndarray, what: str) -> Fit | None:
        usable = np.isfinite(y) & (y > 0) & np.isfinite(c) & (c > 0)
        try:
            check_fit_points(c[usable])
            return fit_power_law(c[usable], y[usable])
        except ScalingError as err:
            notes.append(f"no {what} fit: {err}")
            return None

    return ComputeOptimal(params=attempt(p, "params"), epochs=attempt(e, "epochs"), notes=tuple(notes))


@dataclass(frozen=True)
class LRCell:
    """The best learning rate found for one (variant, epoch budget)."""

    variant: str
    epochs: float
    lr: float
    val_loss: float  # mean over repeats at that LR
    n_lrs: int  # distinct LRs tried in the cell (rows' LRs and their `trial_lrs`)

    @property
    def measured(self) -> bool:
        """An optimum picked among 2 or more LRs; with one LR run it is not measured."""
        return self.n_lrs >= 2


@dataclass(frozen=True)
class LRTable:
    cells: tuple[LRCell, ...]
    # Per variant: does the optimal LR fall (non-increasing) as the epoch budget grows?
    # Over the cells whose optimum is measured (2 or more LRs run); None where fewer
    # than 2 such cells: a single epoch budget, or optima not measured.
    monotone_in_epochs: dict[str, bool | None]
    # Per epoch budget: does it fall as model size grows? As above, over measured cells.
    monotone_in_size: dict[float, bool | None]
    size_order: tuple[str, ...]  # variants from smallest to largest
    # Cells left out of those answers because only one LR was run there.
    not_measured_in_epochs: dict[str, tuple[float, ...]] = field(default_factory=dict)  # variant -> epochs
    not_measured_in_size: dict[float, tuple[str, ...]] = field(default_factory=dict)  # epochs -> variants


def _non_increasing(values: Sequence[float]) -> bool | None:
    if len(values) < 2:
        return None
    return all(later <= earlier for earlier, later in zip(values, values[1:]))


def size_order(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Variants ordered by parameter count when every variant has one, else by
    compute per epoch (a larger model costs more per epoch)."""
    params: dict[str, list[float]] = defaultdict(list)
    per_epoch: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        name = str(row["variant"])
        p = _as_float(row.get("params"))
        if math.isfinite(p) and p > 0:
            params[name].append(p)
        c, ep = _as_float(row.get("compute")), _as_float(row.get("epochs"))
        if math.isfinite(c) and math.isfinite(ep) and ep > 0:
            per_epoch[name].append(c / ep)
    names = sorted({str(row["variant"]) for row in rows})
    if all(params[n] for n in names):
        key = {n: float(np.median(params[n])) for n in names}
    else:
        key = {n: float(np.median(per_epoch[n])) if per_epoch[n] else math.inf for n in names}
    return tuple(sorted(names, key=lambda n: (key[n], n)))


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# LRs within this relative distance are one LR (the grid's LRs are computed, 0.1 × 2^k).
SAME_LR = 1e-6


def _tried_lrs(row: Mapping[str, Any]) -> list[float]:
    """The LRs a row stands for: its own, and the `trial_lrs` it carries (an lr_search
    row records its winner and lists every trial of its search)."""
    lrs = [_as_float(row.get("lr")), *(_as_float(lr) for lr in row.get("trial_lrs") or ())]
    return [lr for lr in lrs if math.isfinite(lr) and lr > 0]


def _count_distinct(values: Iterable[float]) -> int:
    kept: list[float] = []
    for value in sorted(values):
        if not kept or not math.isclose(value, kept[-1], rel_tol=SAME_LR):
            kept.append(value)
    return len(kept)


def optimal_lr_table(rows: Iterable[Mapping[str, Any]], tried: Iterable[Mapping[str, Any]] = ()) -> LRTable:
    """The LR with the lowest held-out loss per (variant, epochs), averaging repeats
    (seeds) at the same LR first; ties go to the smaller LR. Rows without a finite
    positive LR or a finite loss are ignored.

    A cell's `n_lrs` counts the distinct LRs tried in it: those of `rows`, of `tried`
    (rows that tried an LR without a usable loss: diverged, stopped) and the
    `trial_lrs` any of them lists (an lr_search row's trials). The trends in epochs
    and size are read off the cells whose optimum is measured (2 or more LRs).
    """
    rows = list(rows)
    usable = [
        r
        for r in rows
        if math.isfinite(_as_float(r.get("lr")))
        and _as_float(r.get("lr")) > 0
        and math.isfinite(_as_float(r.get("val_loss")))
        and math.isfinite(_as_float(r.get("epochs")))
    ]
    losses: dict[tuple[str, float], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in usable:
        losses[(str(r["variant"]), float(r["epochs"]))][float(r["lr"])].append(float(r["val_loss"]))
    lrs_tried: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in [*usable, *tried]:
        if math.isfinite(_as_float(r.get("epochs"))):
            lrs_tried[(str(r["variant"]), float(r["epochs"]))] += _tried_lrs(r)
    cells = []
    for (variant, epochs), by_lr in sorted(losses.items()):
        lr, loss = min(((lr, float(np.mean(v))) for lr, v in by_lr.items()), key=lambda t: (t[1], t[0]))
        n_lrs = _count_distinct([*by_lr, *lrs_tried[(variant, epochs)]])
        cells.append(LRCell(variant=variant, epochs=epochs, lr=lr, val_loss=loss, n_lrs=n_lrs))

    order = size_order(usable) if usable else ()
    rank = {name: i for i, name in enumerate(order)}
    cells.sort(key=lambda c: (rank[c.variant], c.epochs))
    in_epochs = {
        variant: _non_increasing(
            [c.lr for c in sorted(cells, key=lambda c: c.epochs) if c.variant == variant and c.measured]
        )
        for variant in order
    }
    budgets = sorted({c.epochs for c in cells})
    in_size = {
        epochs: _non_increasing(
            [c.lr for c in sorted(cells, key=lambda c: rank[c.variant]) if c.epochs == epochs and c.measured]
        )
        for epochs in budgets
    }
    by_variant = {v: tuple(c.epochs for c in cells if c.variant == v and not c.measured) for v in order}
    by_epochs = {e: tuple(c.variant for c in cells if c.epochs == e and not c.measured) for e in budgets}
    return LRTable(
        cells=tuple(cells),
        monotone_in_epochs=in_epochs,
        monotone_in_size=in_size,
        size_order=order,
        not_measured_in_epochs={v: e for v, e in by_variant.items() if e},
        not_measured_in_size={e: v for e, v in by_epochs.items() if v},
    )


def best_per_cell(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per (variant, epochs): the lowest finite `val_loss`, i.e. the run at
    the best LR tried. These are the points of [P1] Fig. 2. Sorted by compute."""
    best: dict[tuple[str, float], Mapping[str, Any]] = {}
    for row in rows:
        loss = _as_float(row.get("val_loss"))
        if not math.isfinite(loss):
            continue
        key = (str(row["variant"]), float(row["epochs"]))
        if key not in best or loss < float(best[key]["val_loss"]):
            best[key] = row
    return sorted(best.values(), key=lambda r: (float(r["compute"]), str(r["variant"])))


@dataclass(frozen=True)
class LRTrend:
    """log2(optimal LR) = c + s_epochs·log2(epochs) + s_size·log2(params), over cells.

    A cell's optimum is the vertex of the parabola in log2 LR through its best LR (lowest
    mean loss over seeds) and that LR's two neighbours, or the best LR itself where it is
    the smallest or largest one tried (`censored`: the optimum may lie beyond). Slopes are
    per doubling: −0.1 means the optimal LR falls by 2^−0.1 = 7% each time the budget
    (or the model) doubles. Intervals are percentile bootstraps that resample the cells
    and, within each cell and LR, its seeds.
    """

    slopes: dict[str, float]  # "epochs", "size": absent where that factor does not vary
    intervals: dict[str, tuple[float, float]]
    cells: int
    censored: int  # cells whose optimum is an end of the LRs tried
    level: float
    n_boot: int

    def verdict(self, factor: str) -> str:
        """"falls", "rises" or "flat within noise" (the interval holds 0); "not measured"."""
        if factor not in self.slopes:
            return "not measured"
        iv = self.intervals.get(factor)
        if iv is None:
            return "falls" if self.slopes[factor] < 0 else "rises"
        if iv[1] < 0:
            return "falls"
        if iv[0] > 0:
            return "rises"
        return "flat within noise"


MIN_TREND_CELLS = 4  # an intercept and up to two slopes, and one degree of freedom


def _cell_optimum(by_lr: Mapping[float, Sequence[float]]) -> tuple[float, bool]:
    """(log2 of a cell's optimal LR, censored) from its losses per LR."""
    lrs = sorted(by_lr)
    means = [float(np.mean(by_lr[lr])) for lr in lrs]
    best = int(np.argmin(means))
    if best in (0, len(lrs) - 1):
        return math.log2(lrs[best]), True
    x = np.log2(lrs[best - 1:best + 2])
    c2, c1, _ = np.polyfit(x, means[best - 1:best + 2], 2)
    if c2 <= 0:
        return math.log2(lrs[best]), False
    return float(np.clip(-c1 / (2 * c2), x[0], x[-1])), False


def _trend_fit(points: Sequence[tuple[float, float, float]], factors: Sequence[str]) -> dict[str, float] | None:
    """Least squares of log2 lr* on the varying factors' log2; None when singular."""
    y = np.array([p[0] for p in points])
    columns = {"epochs": [math.log2(p[1]) for p in points], "size": [math.log2(p[2]) for p in points]}
    X = np.column_stack([np.ones(len(points))] + [columns[f] for f in factors])
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return None
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return {f: float(c) for f, c in zip(factors, coef[1:])}


def lr_trend(rows: Iterable[Mapping[str, Any]], n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> LRTrend:
    """Does the optimal LR fall with the epoch budget and with the model size ([P1] Fig. 3)?

    Over the (variant, epochs) cells run at ≥ 3 LRs, from rows with `variant`, `epochs`,
    `lr`, `val_loss` and `params`. A ScalingError when fewer than MIN_TREND_CELLS cells
    qualify or neither factor varies.
    """
    cells: dict[tuple[str, float], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    params: dict[tuple[str, float], float] = {}
    for r in rows:
        lr, loss, p = _as_float(r.get("lr")), _as_float(r.get("val_loss")), _as_float(r.get("params"))
        if not (math.isfinite(lr) and lr > 0 and math.isfinite(loss) and math.isfinite(p) and p > 0):
            continue
        key = (str(r["variant"]), float(r["epochs"]))
        cells[key][lr].append(loss)
        params[key] = p
    usable = {k: v for k, v in cells.items() if _count_distinct(v) >= 3}
    if len(usable) < MIN_TREND_CELLS:
        raise ScalingError(
            f"an LR trend needs ≥ {MIN_TREND_CELLS} (variant, epochs) cells run at ≥ 3 LRs each; "
            f"the rows have {len(usable)}"
        )
    keys = sorted(usable)
    factors = [f for f, values in (("epochs", {k[1] for k in keys}), ("size", {params[k] for k in keys}))
               if len(values) >= 2]
    if not factors:
        raise ScalingError("an LR trend needs cells at ≥ 2 epoch budgets or ≥ 2 model sizes")

    def points(sample: Sequence[tuple[tuple[str, float], dict[float, list[float]]]]):
        out, censored = [], 0
        for key, by_lr in sample:
            opt, cut = _cell_optimum(by_lr)
            out.append((opt, key[1], params[key]))
            censored += cut
        return out, censored

    base, censored = points([(k, usable[k]) for k in keys])
    slopes = _trend_fit(base, factors)
    if slopes is None:
        raise ScalingError("the cells' epoch budgets and model sizes vary together: their LR trends cannot be told apart")
    intervals: dict[str, tuple[float, float]] = {}
    fitted = 0
    if n_boot:
        # By hand, not scipy.stats.bootstrap: this is a two-stage bootstrap (cells drawn with replacement,
        # then each drawn cell's seeds per LR), where a cell drawn twice gets two different resamples of
        # its seeds. scipy resamples each sample once per resample, independently of the others, and
        # cannot nest one resampling inside another.
        rng = np.random.default_rng(seed)
        draws: dict[str, list[float]] = defaultdict(list)
        for _ in range(n_boot):
            picked = rng.integers(0, len(keys), size=len(keys))
            sample = []
            for i in picked:
                by_lr = usable[keys[i]]
                sample.append((keys[i], {lr: [v[j] for j in rng.integers(0, len(v), size=len(v))]
                                         for lr, v in by_lr.items()}))
            fit = _trend_fit(points(sample)[0], factors)
            if fit is None:
                continue
            fitted += 1
            for f, s in fit.items():
                draws[f].append(s)
        tail = 100.0 * (1.0 - level) / 2.0
        intervals = {f: (float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail)))
                     for f, v in draws.items() if v}
    return LRTrend(slopes=slopes, intervals=intervals, cells=len(keys), censored=censored, level=level,
                   n_boot=fitted)
