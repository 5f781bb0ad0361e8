"""IsoFLOP profiles: Chinchilla's approach 2.

At each of several compute levels C, the loss each model size N reaches with C
FLOPs, against log N; a parabola through the sizes nearest the profile's lowest
point, and its minimum as N_opt(C); then N_opt ∝ C^a by least squares in log-log
space, with a bootstrap interval (Hoffmann et al. 2022, §3.2).

Chinchilla trained each size at fixed FLOP budgets. A grid of (size, epoch budget)
runs hits no common budget exactly, so a size's loss at C is read off its own
loss-vs-compute curve: the best run of each of its epoch budgets, interpolated
linearly in (log C, log L), and only inside the computes it was run at (no
extrapolation). A level is profiled where ≥ 3 sizes reach it and the lowest point
is not at the smallest or largest of them (the minimum would lie outside the sizes
run); the others are listed with the reason.

The interval of a is a bootstrap over runs: resample every cell's runs (its seeds at
its best LR) with replacement (scipy.stats.bootstrap, one sample per cell), rebuild the
profiles and refit. With one run per cell there is no noise to resample, and the interval
is that of the levels (resampling the (C, N_opt) points), which the caveat says.

numpy and scipy; no Ray.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner.study.scaling import (Fit, MIN_FIT_POINTS, ScalingError, bootstrap_ci, bootstrap_distribution, fit_power_law,
                                 percentile_interval)

MIN_SIZES = 3  # a parabola through 3 points at least
WINDOW = 2  # sizes each side of a profile's lowest point that its parabola goes through
N_LEVELS = 8  # compute levels profiled (log-spaced over the computes that ≥ MIN_SIZES sizes reach)


@dataclass(frozen=True)
class Profile:
    """One IsoFLOP profile: the loss of each size at `compute`."""

    compute: float
    params: tuple[float, ...]  # sizes that reach this compute, ascending
    loss: tuple[float, ...]
    n_opt: float | None  # the parabola's minimum (None: not profiled, see note)
    curvature: float | None  # the parabola's coefficient of (log N)²
    coeffs: tuple[float, float, float] | None  # L = c0 + c1·log N + c2·(log N)² (None: not fitted)
    note: str = ""
    fitted: tuple[float, ...] = ()  # the sizes the parabola went through


@dataclass(frozen=True)
class IsoFLOP:
    profiles: tuple[Profile, ...]
    fit: Fit | None  # N_opt = k · C^a
    interval: tuple[float, float] | None  # interval of a
    level: float
    n_boot: int  # resamples fitted
    method: str  # "runs" or "levels" (what the bootstrap resampled)
    note: str = ""  # why there is no fit, or what the interval rests on

    @property
    def a(self) -> float | None:
        return None if self.fit is None else self.fit.b


def _curves(cells: Mapping[tuple[float, float], float], computes: Mapping[tuple[float, float], float]
            ) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Per size N: (log C, log L) of its cells, sorted by compute."""
    by_size: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for (n, epochs), loss in cells.items():
        by_size[n].append((math.log(computes[(n, epochs)]), math.log(loss)))
    out = {}
    for n, pts in by_size.items():
        pts.sort()
        out[n] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def _levels(curves: Mapping[float, tuple[np.ndarray, np.ndarray]], n_levels: int) -> np.ndarray:
    """Log-spaced compute levels over the range that ≥ MIN_SIZES sizes' curves cover."""
    spans = [(lc[0], lc[-1]) for lc, _ in curves.values() if lc.size >= 2]
    if len(spans) < MIN_SIZES:
        return np.array([])
    candidates = np.linspace(min(s[0] for s in spans), max(s[1] for s in spans), 200)
    covered = [c for c in candidates if sum(lo <= c <= hi for lo, hi in spans) >= MIN_SIZES]
    if not covered:
        return np.array([])
    return np.linspace(covered[0], covered[-1], n_levels) if len(covered) > 1 else np.array(covered[:1])


def _profile(log_c: float, curves: Mapping[float, tuple[np.ndarray, np.ndarray]]) -> Profile:
    sizes, losses = [], []
    for n in sorted(curves):
        lc, ll = curves[n]
        if lc.size >= 2 and lc[0] <= log_c <= lc[-1]:
            sizes.append(n)
            losses.append(float(np.exp(np.interp(log_c, lc, ll))))
    compute = float(math.exp(log_c))
    base = dict(compute=compute, params=tuple(sizes), loss=tuple(losses))
    if len(sizes) < MIN_SIZES:
        return Profile(**base, n_opt=None, curvature=None, coeffs=None,
                       note=f"{len(sizes)} size(s) reach this compute (need ≥ {MIN_SIZES})")
    lowest = int(np.argmin(losses))
    if lowest in (0, len(sizes) - 1):
        where = "smallest" if lowest == 0 else "largest"
        return Profile(**base, n_opt=None, curvature=None, coeffs=None,
                       note=f"the lowest loss is at the {where} size that reaches it: the optimum lies beyond the sizes run")
    lo, hi = max(0, lowest - WINDOW), min(len(sizes), lowest + WINDOW + 1)
    x = np.log(np.array(sizes[lo:hi]))
    c2, c1, c0 = np.polyfit(x, np.array(losses[lo:hi]), 2)
    if c2 <= 0:
        return Profile(**base, n_opt=None, curvature=float(c2), coeffs=(float(c0), float(c1), float(c2)),
                       note="the parabola through the lowest points opens downwards: no minimum",
                       fitted=tuple(sizes[lo:hi]))
    vertex = -c1 / (2 * c2)
    return Profile(**base, n_opt=float(math.exp(vertex)), curvature=float(c2),
                   coeffs=(float(c0), float(c1), float(c2)), fitted=tuple(sizes[lo:hi]))


def _cells(runs: Sequence[tuple[float, float, float, float]]) -> tuple[dict, dict]:
    """(N, epochs) -> mean loss and -> mean compute, from runs (N, epochs, compute, loss)."""
    losses: dict[tuple[float, float], list[float]] = defaultdict(list)
    computes: dict[tuple[float, float], list[float]] = defaultdict(list)
    for n, epochs, c, loss in runs:
        losses[(n, epochs)].append(loss)
        computes[(n, epochs)].append(c)
    return ({k: float(np.mean(v)) for k, v in losses.items()}, {k: float(np.mean(v)) for k, v in computes.items()})


def profiles(runs: Sequence[tuple[float, float, float, float]], n_levels: int = N_LEVELS) -> list[Profile]:
    """IsoFLOP profiles of runs (N, epochs, compute, loss); a cell's repeats are averaged."""
    cells, computes = _cells(runs)
    curves = _curves(cells, computes)
    return [_profile(float(c), curves) for c in _levels(curves, n_levels)]


def _fit_minima(found: Sequence[Profile]) -> Fit | None:
    if len({p.compute for p in found}) < MIN_FIT_POINTS:
        return None
    return fit_power_law([p.compute for p in found], [p.n_opt for p in found])


def isoflop(
    runs: Sequence[tuple[float, float, float, float]],
    n_levels: int = N_LEVELS,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> IsoFLOP:
    """Approach 2 over runs (N, epochs, compute, loss): the profiles, the fit of
    N_opt against C, and a bootstrap interval of its exponent a."""
    runs = [tuple(float(v) for v in r) for r in runs]
    bad = [r for r in runs if not all(math.isfinite(v) and v > 0 for v in r)]
    if bad:
        raise ScalingError(f"IsoFLOP profiles need finite positive N, epochs, compute and loss; {len(bad)} run(s) lack them")
    found_all = profiles(runs, n_levels)
    found = [p for p in found_all if p.n_opt is not None]
    fit = _fit_minima(found)
    if fit is None:
        sizes = len({r[0] for r in runs})
        return IsoFLOP(profiles=tuple(found_all), fit=None, interval=None, level=level, n_boot=0, method="",
                       note=(f"{len(found)} compute level(s) with an interior minimum (need ≥ {MIN_FIT_POINTS}) "
                             f"from {sizes} model size(s): run more sizes around the optimum, each at several epoch "
                             "budgets, so that profiles at ≥ 3 computes have a size either side of their lowest loss"))
    repeated = len(runs) > len(_cells(runs)[0])
    if n_boot < 1:
        return IsoFLOP(profiles=tuple(found_all), fit=fit, interval=None, level=level, n_boot=0, method="")
    if not repeated:
        ci = bootstrap_ci([p.compute for p in found], [p.n_opt for p in found], n_boot=n_boot, level=level, seed=seed)
        note = ("one run per (size, epochs) cell: no run noise to resample, so the interval resamples the "
                f"{len(found)} levels' minima (which share runs, so it is optimistic)")
        if ci.caveat():
            note += "; " + ci.caveat()
        return IsoFLOP(profiles=tuple(found_all), fit=fit, interval=(ci.b_low, ci.b_high), level=level,
                       n_boot=ci.n_boot, method="levels", note=note)
    by_cell: dict[tuple[float, float], list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        by_cell[(r[0], r[1])].append(i)
    cells = [np.array(ids) for ids in by_cell.values()]
    # One sample of run indices per cell, resampled within the cell; a cell of one run is always
    # itself, and is left out of the samples (scipy.stats.bootstrap needs two or more in each).
    seeded = [i for i, ids in enumerate(cells) if ids.size >= 2]

    def slope(*resampled: np.ndarray) -> float:
        picked = list(cells)
        for i, ids in zip(seeded, resampled):
            picked[i] = ids
        f = _fit_minima([p for p in profiles([runs[int(j)] for ids in picked for j in ids], n_levels)
                         if p.n_opt is not None])
        return math.nan if f is None else f.b

    slopes = bootstrap_distribution([cells[i] for i in seeded], slope, n_boot, seed)
    fitted = int(np.isfinite(slopes).sum())
    if not fitted:
        return IsoFLOP(profiles=tuple(found_all), fit=fit, interval=None, level=level, n_boot=0, method="runs",
                       note="no bootstrap resample had ≥ 3 profiled levels")
    low, high = percentile_interval(slopes, level)
    note = "" if fitted == n_boot else f"{n_boot - fitted} resample(s) had < 3 profiled levels and were left out"
    return IsoFLOP(profiles=tuple(found_all), fit=fit, interval=(float(low), float(high)), level=level,
                   n_boot=fitted, method="runs", note=note)


def isoflop_rows(rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> IsoFLOP:
    """Approach 2 over report rows (keys `params`, `epochs`, `compute`, `val_loss`)."""
    return isoflop([(r["params"], r["epochs"], r["compute"], r["val_loss"]) for r in rows], **kwargs)
