"""The joint scaling law L(N, D) = E + A/N^α + B/D^β: Chinchilla's approach 3.

N is a run's parameter count, D the examples it saw (the ledger's `images_seen`; for
imported rows without it, epochs, which rescales B but leaves α and β unchanged).
Fitted as Hoffmann et al. (2022, §D.2) did and Besiroglu et al. (2024, "Chinchilla
Scaling: A replication attempt") corrected:

- the model in log space, log L̂ = LSE(a − α·log N, b − β·log D, e) with A = e^a,
  B = e^b, E = e^e, so every constant stays positive;
- a Huber loss (δ = 1e-3) of log L̂ − log L, **summed** over runs, not averaged
  (averaging shrinks the objective and its gradient by the number of runs, and
  L-BFGS then stops on its tolerance before it has converged, one of the causes
  of the implausibly narrow intervals Besiroglu et al. found);
- L-BFGS (scipy.optimize.minimize, L-BFGS-B, analytic gradient, tight tolerances)
  from Hoffmann's grid of starting points (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5,
  …, 1}, a, b ∈ {0, 5, …, 25}: 4,500 starts). The objective is evaluated at every
  grid point (one vectorised pass) and L-BFGS run from the `starts` best of them:
  from all 4,500 it takes seconds per fit, which 1,000 bootstrap refits cannot
  afford, and the tests check that the best few reach the same optimum;
- bootstrap intervals from resampling runs with replacement (scipy.stats.bootstrap,
  paired, percentile, ≥ 1,000 resamples), each resample refitted from the full
  fit's optimum and the best (on the resample) of the full fit's grid starts.

From the fit, the compute-optimal allocation. Chinchilla's, under C ∝ N·D: N* ∝ C^a,
D* ∝ C^b with a = β/(α+β), b = α/(α+β). A convnet's FLOPs per example need not
grow as its parameter count (at 16 px the stem and the early stages dominate, and
nano to small is 37× the parameters for 4× the FLOPs), so the cost of the runs is
also fitted, C = k·N^γ·D by least squares in log space, and the allocation under
measured FLOPs is N* ∝ C^(β/(α+γβ)), D* ∝ C^(α/(α+γβ)) (`a_flops`, `b_flops`;
the same as a and b when γ = 1). The paper's rule "scale the model size and the
epochs at the same rate" ([P1] §3) is a = b, i.e. α = β, whatever γ: `same_rate`
answers it from the interval of a − b.

Pure numpy and scipy; no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special, stats
from threadpoolctl import threadpool_limits

from tuner.study.scaling import ScalingError

HUBER_DELTA = 1e-3  # Hoffmann et al. (2022) §D.2
# Hoffmann et al. (2022) §D.2's initialisation grid, in the order of THETA.
START_GRID = {
    "a": np.arange(0.0, 25.0 + 1e-9, 5.0),
    "b": np.arange(0.0, 25.0 + 1e-9, 5.0),
    "e": np.arange(-1.0, 1.0 + 1e-9, 0.5),
    "alpha": np.arange(0.0, 2.0 + 1e-9, 0.5),
    "beta": np.arange(0.0, 2.0 + 1e-9, 0.5),
}
THETA = ("a", "b", "e", "alpha", "beta")
DEFAULT_STARTS = 32  # L-BFGS runs per full fit (the best grid points)
# Per bootstrap resample: the full fit's optimum and, of the full fit's `starts` grid
# points, the one best on the resample (re-ranking the whole grid per resample would
# cost more than the L-BFGS runs).
BOOT_STARTS = 2
N_BOOT = 1000
LEVEL = 0.95
# Five constants: a fit needs more runs than that, at ≥ 3 sizes and ≥ 3 data budgets
# (with 2 of either, a power law's exponent and its offset cannot be told apart).
MIN_RUNS = 6
MIN_LEVELS = 3
# Exponents beyond this are a law that does not depend on N or D in the data's range.
MAX_EXPONENT = 10.0
# L-BFGS-B options: the summed Huber objective is of order δ² × runs, far below
# scipy's default gradient tolerance (1e-5), which would stop it at the start.
# a − b within this of 0 is 0 (noiseless runs give an interval of width ~1e-10 around it).
SAME_RATE_TOL = 1e-6
# An interval of a − b (which lies in [−1, 1]) wider than this holds 0 for want of
# runs, not as evidence: a and b are each uncertain by more than ±0.125.
UNDETERMINED_WIDTH = 0.5
LBFGS_OPTIONS = {"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, ll: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """The summed Huber loss of log L̂ − log L and its gradient in θ = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * x, b - beta * y, np.full_like(x, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    total = w.sum(axis=0)
    w /= total  # softmax weights: ∂LSE/∂(term)
    r = top + np.log(total) - ll
    g = np.clip(r, -delta, delta)  # Huber's derivative
    grad = np.array([
        g @ w[0],
        g @ w[1],
        g @ w[2],
        -(g * w[0]) @ x,
        -(g * w[1]) @ y,
    ])
    return float(_huber(r, delta).sum()), grad


def _grid() -> np.ndarray:
    mesh = np.meshgrid(*(START_GRID[k] for k in THETA), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


GRID = _grid()


def _grid_values(points: np.ndarray, x: np.ndarray, y: np.ndarray, ll: np.ndarray, delta: float) -> np.ndarray:
    """The objective at each of `points` (rows of θ), in one vectorised pass."""
    g = points[:, :, None]
    terms = np.stack([g[:, 0] - g[:, 3] * x, g[:, 1] - g[:, 4] * y, np.broadcast_to(g[:, 2], (len(points), x.size))])
    r = special.logsumexp(terms, axis=0) - ll
    return _huber(r, delta).sum(axis=1)


def _minimise(x: np.ndarray, y: np.ndarray, ll: np.ndarray, starts: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    best_theta, best_value = starts[0], math.inf
    for start in starts:
        res = optimize.minimize(_objective, start, args=(x, y, ll, delta), jac=True, method="L-BFGS-B",
                                options=LBFGS_OPTIONS)
        if np.all(np.isfinite(res.x)) and res.fun < best_value:
            best_theta, best_value = res.x, float(res.fun)
    return np.asarray(best_theta, dtype=np.float64), best_value


def _best_starts(points: np.ndarray, x: np.ndarray, y: np.ndarray, ll: np.ndarray, delta: float, k: int) -> np.ndarray:
    """The `k` of `points` with the lowest objective."""
    values = _grid_values(points, x, y, ll, delta)
    return points[np.argsort(values, kind="stable")[:min(k, len(points))]]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class JointLaw:
    """L(N, D) = E + A/N^α + B/D^β fitted to runs, with bootstrap intervals."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    n: int  # runs fitted
    objective: float  # summed Huber loss at the optimum
    k: float  # C = k·N^γ·D: the runs' cost law (NaN, and γ 1, without compute)
    gamma: float
    data_unit: str  # what D counts: "examples" or "epochs"
    intervals: dict[str, Interval]  # E, A, B, alpha, beta, a, b, a_minus_b; empty without a bootstrap
    level: float
    n_boot: int  # resamples fitted

    @property
    def a(self) -> float:
        """N*(C) ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D*(C) ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def a_flops(self) -> float:
        """N*(C) ∝ C^a_flops with C the runs' FLOPs (C = k·N^γ·D)."""
        return self.beta / (self.alpha + self.gamma * self.beta)

    @property
    def b_flops(self) -> float:
        """D*(C) ∝ C^b_flops with C the runs' FLOPs."""
        return self.alpha / (self.alpha + self.gamma * self.beta)

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal(self, compute: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(N*, D*) minimising the law at a compute budget, under C = k·N^γ·D:
        N*^(α+γβ) = αA/(γβB) · (C/k)^β."""
        budget = np.asarray(compute, dtype=np.float64) / self.k
        scale = self.alpha * self.A / (self.gamma * self.beta * self.B)
        n_opt = (scale * budget**self.beta) ** (1.0 / (self.alpha + self.gamma * self.beta))
        return n_opt, budget / n_opt**self.gamma

    def same_rate(self) -> str:
        """Whether size and data should grow at the same rate, from the interval of a − b:
        "yes" (it holds 0), "undetermined" (it holds 0 but is wider than
        UNDETERMINED_WIDTH), "size faster", "data faster", or "unknown" without one."""
        iv = self.intervals.get("a_minus_b")
        if iv is None:
            return "unknown"
        if iv.low <= SAME_RATE_TOL and iv.high >= -SAME_RATE_TOL:
            return "undetermined" if iv.high - iv.low > UNDETERMINED_WIDTH else "yes"
        return "size faster" if iv.low > 0 else "data faster"

    def equation(self) -> str:
        unit = "D" if self.data_unit == "examples" else "epochs"
        return (f"L = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.4f} + {self.B:.4g}/{unit}^{self.beta:.4f}")


def _constants(theta: np.ndarray, gamma: float) -> np.ndarray:
    """(E, A, B, α, β, a, b, a − b, a_flops, b_flops) from θ = (a, b, e, α, β) and the cost law's γ."""
    la, lb, le, alpha, beta = theta
    total, flops = alpha + beta, alpha + gamma * beta
    share_n = beta / total if total > 0 else math.nan
    share_d = alpha / total if total > 0 else math.nan
    return np.array([math.exp(le), math.exp(la), math.exp(lb), alpha, beta, share_n, share_d, share_n - share_d,
                     beta / flops if flops > 0 else math.nan, alpha / flops if flops > 0 else math.nan])


CONSTANTS = ("E", "A", "B", "alpha", "beta", "a", "b", "a_minus_b", "a_flops", "b_flops")


def cost_law(x: np.ndarray, y: np.ndarray, lc: np.ndarray) -> tuple[float, float]:
    """(γ, log k) of C = k·N^γ·D, by least squares of log(C/D) on log N."""
    if np.ptp(x) <= 0:
        return 1.0, float(np.mean(lc - y - x))
    gamma, log_k = np.polyfit(x, lc - y, 1)
    return float(gamma), float(log_k)


def check_runs(N: np.ndarray, D: np.ndarray, L: np.ndarray) -> None:
    """A ScalingError unless the runs can support the five-constant fit."""
    for name, arr in (("params N", N), ("examples D", D), ("loss L", L)):
        bad = ~np.isfinite(arr) | (arr <= 0)
        if bad.any():
            raise ScalingError(f"the joint law needs finite positive {name}; {int(bad.sum())} run(s) have none")
    if N.size < MIN_RUNS:
        raise ScalingError(f"the joint law L(N, D) has 5 constants and needs ≥ {MIN_RUNS} runs; the rows have {N.size}")
    for name, arr in (("model sizes", N), ("data budgets", D)):
        levels = np.unique(arr).size
        if levels < MIN_LEVELS:
            raise ScalingError(
                f"the joint law L(N, D) needs runs at ≥ {MIN_LEVELS} {name}; the rows have {levels}: "
                f"run more {'variants (or width/depth multipliers)' if name == 'model sizes' else 'epoch budgets'}"
            )


# BLAS on one thread meanwhile: L-BFGS-B's steps on 5 numbers are tiny, and OpenBLAS
# waking its threads for each made a fit 5× slower on 2 cores.
@threadpool_limits.wrap(limits=1, user_api="blas")
def fit_joint_law(
    N: Sequence[float] | np.ndarray,
    D: Sequence[float] | np.ndarray,
    L: Sequence[float] | np.ndarray,
    compute: Sequence[float] | np.ndarray | None = None,
    *,
    data_unit: str = "examples",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
    starts: int = DEFAULT_STARTS,
    delta: float = HUBER_DELTA,
) -> JointLaw:
    """Fit L(N, D) = E + A/N^α + B/D^β to runs (one per row), with bootstrap intervals
    for every constant and for a, b, a − b, a_flops and b_flops (n_boot = 0: none)."""
    N, D, L = (np.asarray(v, dtype=np.float64) for v in (N, D, L))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ScalingError(f"N, D and L must be 1-D and equal in length ({N.shape}, {D.shape}, {L.shape})")
    check_runs(N, D, L)
    if n_boot < 0:
        raise ScalingError(f"n_boot must be ≥ 0, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ScalingError(f"level must lie strictly between 0 and 1, got {level}")
    x, y, ll = np.log(N), np.log(D), np.log(L)
    best_starts = _best_starts(GRID, x, y, ll, delta, starts)
    theta, value = _minimise(x, y, ll, best_starts, delta)
    if not (0 < theta[3] < MAX_EXPONENT and 0 < theta[4] < MAX_EXPONENT):
        raise ScalingError(
            f"the joint law's fit is degenerate (α = {theta[3]:.3g}, β = {theta[4]:.3g}): the loss does not fall "
            "as a power of both size and data over these runs; add runs that vary each over a wider range"
        )
    if compute is None:
        lc = x + y  # no cost recorded: C ∝ N·D, k unknown
        gamma, k = 1.0, math.nan
    else:
        c = np.asarray(compute, dtype=np.float64)
        if c.shape != N.shape or not np.all(np.isfinite(c) & (c > 0)):
            raise ScalingError("the joint law's compute must be finite and positive for every run")
        lc = np.log(c)
        gamma, log_k = cost_law(x, y, lc)
        k = math.exp(log_k)

    intervals: dict[str, Interval] = {}
    fitted = 0
    if n_boot:
        def statistic(bx: np.ndarray, by: np.ndarray, bl: np.ndarray, bc: np.ndarray) -> np.ndarray:
            boot_starts = np.vstack([theta[None, :], _best_starts(best_starts, bx, by, bl, delta, BOOT_STARTS - 1)])
            return _constants(_minimise(bx, by, bl, boot_starts, delta)[0], cost_law(bx, by, bc)[0])

        res = stats.bootstrap((x, y, ll, lc), statistic, paired=True, vectorized=False, n_resamples=n_boot,
                              confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
        dist = np.asarray(res.bootstrap_distribution)
        fitted = int(np.isfinite(dist).all(axis=0).sum())
        low, high = np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)
        intervals = {name: Interval(float(lo), float(hi)) for name, lo, hi in zip(CONSTANTS, low, high)}
    E, A, B, alpha, beta = _constants(theta, gamma)[:5]
    return JointLaw(E=float(E), A=float(A), B=float(B), alpha=float(alpha), beta=float(beta), n=int(N.size),
                    objective=value, k=k, gamma=gamma, data_unit=data_unit, intervals=intervals, level=level,
                    n_boot=fitted)


def law_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], str]:
    """The runs a joint law is fitted to, and what D counts ("examples" or "epochs").

    Every seed of each (variant, epochs) cell at that cell's best LR (the LR with the
    lowest mean loss over its seeds): the law is of the loss at a tuned LR, and runs
    at other LRs sit above it. D is `images_seen` where every run records it, else
    epochs (imported rows without it).
    """
    by_cell: dict[tuple[str, float], dict[float, list[Mapping[str, Any]]]] = {}
    for row in rows:
        lr = row.get("lr")
        lr = float(lr) if lr is not None and math.isfinite(float(lr)) else math.nan
        by_cell.setdefault((str(row["variant"]), float(row["epochs"])), {}).setdefault(lr, []).append(row)
    kept: list[Mapping[str, Any]] = []
    for by_lr in by_cell.values():
        best = min(by_lr.items(), key=lambda kv: (float(np.mean([float(r["val_loss"]) for r in kv[1]])),
                                                  kv[0] if math.isfinite(kv[0]) else math.inf))
        kept += best[1]
    seen = [row.get("images_seen") for row in kept]
    examples = all(v is not None and math.isfinite(float(v)) and float(v) > 0 for v in seen)
    return kept, "examples" if examples else "epochs"


def fit_rows(rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> JointLaw:
    """The joint law over report rows (keys `params`, `epochs`, `images_seen`,
    `val_loss`, `compute`, `lr`), as `law_rows` picks them."""
    kept, unit = law_rows(rows)
    D = [float(r["images_seen"]) if unit == "examples" else float(r["epochs"]) for r in kept]
    return fit_joint_law(
        [float(r.get("params") if r.get("params") is not None else math.nan) for r in kept], D,
        [float(r["val_loss"]) for r in kept],
        [float(r["compute"]) for r in kept],
        data_unit=unit, **kwargs,
    )
