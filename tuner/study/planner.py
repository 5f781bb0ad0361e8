"""The learning-rate planner: predict a cell's optimum from the ledger, then bracket it.

[P2] Sec. 3: "one can efficiently tune the learning rate within 2 trials by assuming
that the optimal learning rate falls slowly but monotonically as both the model size
and the epoch budget increase". nfscale keeps the two trials as the common case and
drops the assumption that the optimum only falls:

- LRs live on a factor-2 grid anchored at the paper's 1.6 at batch 4096 and scaled
  linearly with the batch size (the reference code's lr × batch/256 rule).
- A cell is (variant with its width/depth multipliers, epochs); a cell tuned at one
  batch size gives a tuned point whose optimum is the LR of its lowest final
  held-out loss among finished (or imported) pre-training rows.
- `predict`: with 3 or more tuned cells (and one more than the law has terms), a
  least-squares law log2 lr* = a + b ln(params) + c ln(epochs) over the tuned cells,
  each moved to the target's batch size, with its residual spread; with fewer, the
  paper's monotone bound (`plan`: the smallest optimum of a tuned cell no larger and
  no longer); with only larger or longer cells, the largest of their optima as a
  floor; with nothing, the paper's default.
- `estimate_noise`: --noise, else the median relative seed-to-seed spread of the
  ledger's seed repeats, else 2%.
- `Bracket`: the pair of grid points around the prediction, then up or down while
  the best LR's neighbour loses by more than sqrt(2) × the noise, until the best is
  bracketed by run neighbours on both sides, or ties its only run neighbour.
- `plan_cell`: all of the above for one cell, plus what the ledger already holds
  for that very cell. tuner.lr_search runs it on Ray; tuner.lr_audit's replay runs
  it on a grid's recorded losses.

No Ray and no JAX here; `variant_params` imports `nfnet` lazily.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tuner.errors import TunerError
from tuner.records.cells import cell_label, cell_shape

# [P2] Sec. 3: peak LR 1.6 at batch 4096 (= 0.1 × 4096/256, linear scaling).
PAPER_LR = 1.6
PAPER_BATCH = 4096
# Snapping tolerance in log2 units, so 0.1 × 2^k computed in floating point stays on k.
GRID_TOLERANCE = 1e-6
# Relative tolerance for "the same LR" between a planned LR and a trial's or row's.
LR_SAME = 1e-6
# Statuses whose final held-out loss is a finished run's (imported rows are assumed finished).
TUNED_STATUSES = frozenset({"finished", "imported"})
# The seed noise assumed when the ledger holds no seed repeats and --noise is not
# given: the relative seed-to-seed standard deviation of a final held-out loss. The
# CPU study measured a median 2.25% (docs/cpu_scaling_study/seed_noise.md).
DEFAULT_NOISE = 0.02
# Trials one search may run before it stops unbracketed (a rerun continues it).
DEFAULT_MAX_TRIALS = 10
# Trials of a search that run at once (a round); the replay must be told the same.
DEFAULT_PARALLEL = 2
# The least-squares law needs this many tuned cells, and one more than it has coefficients.
MIN_FIT_CELLS = 3
# A win by more than this many times the noise is a steep trend: with room in the
# round, the search also runs the grid point beyond the next (one round saved when
# the optimum is two or more steps away, one trial spent when it is not).
STEEP = 3.0
# Around a fitted prediction the first pair's edge must win by this many times the
# noise of a difference to walk on: the law says the optimum lies near the pair.
FIT_FIRST_WIN = 2.0


def base_lr(batch_size: int) -> float:
    """The paper's 1.6 at batch 4096 scaled linearly to `batch_size` (0.1 × batch/256)."""
    if batch_size <= 0:
        raise TunerError(f"batch size must be positive, got {batch_size}")
    return PAPER_LR * batch_size / PAPER_BATCH


def snap_to_grid(lr: float, batch_size: int) -> float:
    """Round `lr` down to the grid base_lr(batch_size)·2^k (k integer)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise TunerError(f"learning rate must be a positive number, got {lr}")
    base = base_lr(batch_size)
    k = math.floor(math.log2(lr / base) + GRID_TOLERANCE)
    return base * 2.0**k


def next_lower(lr: float) -> float:
    """The next grid point below `lr` (the grid is spaced by factors of 2)."""
    return lr / 2.0


def transfer_lr(lr: float, from_batch: int, to_batch: int) -> float:
    """Linear LR scaling between batch sizes, snapped down to the target's grid."""
    return snap_to_grid(lr * to_batch / from_batch, to_batch)


@dataclass(frozen=True)
class TunedCell:
    """One (variant, epochs) cell tuned at one batch size: its best pre-training row."""

    variant: str
    width_mult: float
    depth_mult: float
    epochs: float
    batch_size: int
    params: int | None
    lr: float
    final_val_loss: float
    trial_id: str | None
    dataset: str | None

    @property
    def label(self) -> str:
        return cell_label(self.variant, self.width_mult, self.depth_mult)


class BoundingCell(NamedTuple):
    """A tuned cell that bounds the target: its optimum, and that optimum at the target's batch."""

    variant: str  # label with multipliers, e.g. "F0-w0.5"
    epochs: float
    lr: float
    batch_size: int
    transferred_lr: float


def _as_rows(rows: Any) -> list[Mapping[str, Any]]:
    # A pyarrow Table straight from Ledger.read() is accepted as well as a list of dicts.
    return rows.to_pylist() if hasattr(rows, "to_pylist") else list(rows)


def _float(value: Any, default: float) -> float:
    return default if value is None else float(value)


def tuned_cells(rows: Iterable[Mapping[str, Any]], dataset: str | None = None) -> list[TunedCell]:
    """Each (variant, multipliers, epochs, batch size)'s optimum from finished pre-training rows.

    Cells tuned at several batch sizes give one point per batch size: losses are
    compared only between runs that differ in the LR alone. Stopped and diverged
    rows never define an optimum (a stopped run's loss is not a final loss).
    """
    best: dict[tuple, TunedCell] = {}
    for row in _as_rows(rows):
        if row.get("kind", "pretrain") != "pretrain" or row.get("status") not in TUNED_STATUSES:
            continue
        if dataset is not None and row.get("dataset") != dataset:
            continue
        loss, lr = row.get("final_val_loss"), row.get("lr")
        if loss is None or lr is None or not math.isfinite(loss) or not lr > 0:
            continue
        cell = TunedCell(
            variant=row["variant"],
            width_mult=_float(row.get("width_mult"), 1.0),
            depth_mult=_float(row.get("depth_mult"), 1.0),
            epochs=float(row["epochs"]),
            batch_size=int(row["batch_size"]),
            params=None if row.get("params") is None else int(row["params"]),
            lr=float(lr),
            final_val_loss=float(loss),
            trial_id=row.get("trial_id"),
            dataset=row.get("dataset"),
        )
        key = (cell.variant, cell.width_mult, cell.depth_mult, cell.epochs, cell.batch_size)
        held = best.get(key)
        # Ties go to the lower LR: the conservative side of a falling optimum.
        if held is None or (cell.final_val_loss, cell.lr) < (held.final_val_loss, held.lr):
            best[key] = cell
    return list(best.values())


@dataclass(frozen=True)
class Plan:
    """The LRs to run for one target cell, and why."""

    variant: str
    epochs: float
    batch_size: int
    params: int | None
    lrs: tuple[float, ...]
    upper_bound: float
    bounding_cells: list[BoundingCell] = field(default_factory=list)
    binding_cell: BoundingCell | None = None
    already_tuned: bool = False
    tuned_lr: float | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lrs"] = list(self.lrs)
        out["bounding_cells"] = [c._asdict() for c in self.bounding_cells]
        out["binding_cell"] = self.binding_cell._asdict() if self.binding_cell else None
        return out


def _no_larger(cell: TunedCell, variant: str, width: float, depth: float, params: int | None) -> bool:
    if cell.params is not None and params is not None:
        return cell.params <= params
    # Without both sizes only the target's own shape is known to be no larger.
    return (cell.variant, cell.width_mult, cell.depth_mult) == (variant, width, depth)


def plan(
    rows: Iterable[Mapping[str, Any]],
    variant: str,
    epochs: float,
    batch_size: int,
    params: int | None,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    dataset: str | None = None,
) -> Plan:
    """The paper's monotone bound for a target cell and its two trials (ub, ub/2).

    `variant` may carry its multipliers (`F0-w0.5`); `dataset` restricts the
    bounding cells to rows of that dataset.
    """
    if epochs <= 0:
        raise TunerError(f"epochs must be positive, got {epochs}")
    base, width_mult, depth_mult = cell_shape(variant, width_mult, depth_mult)
    label = cell_label(base, width_mult, depth_mult)

    bounding: list[BoundingCell] = []
    tuned_here: list[float] = []
    for cell in tuned_cells(rows, dataset=dataset):
        if cell.epochs > epochs or not _no_larger(cell, base, width_mult, depth_mult, params):
            continue
        moved = transfer_lr(cell.lr, cell.batch_size, batch_size)
        bounding.append(BoundingCell(cell.label, cell.epochs, cell.lr, cell.batch_size, moved))
        if (cell.variant, cell.width_mult, cell.depth_mult, cell.epochs) == (base, width_mult, depth_mult, float(epochs)):
            tuned_here.append(moved)
    bounding.sort(key=lambda c: (c.transferred_lr, c.epochs, c.variant))

    if bounding:
        binding = bounding[0]
        ub = binding.transferred_lr
        reason = (
            f"ub {ub:g} from {binding.variant} at {binding.epochs:g} epochs "
            f"(lr {binding.lr:g} at batch {binding.batch_size}, {ub:g} at batch {batch_size}); "
            f"{len(bounding)} bounding cell(s)"
        )
    else:
        binding = None
        ub = base_lr(batch_size)
        reason = f"no prior cell: ub = paper's 1.6 at batch 4096 scaled to batch {batch_size} = {ub:g}"
    tuned_lr = min(tuned_here) if tuned_here else None
    if tuned_lr is not None:
        reason += f"; {label} at {epochs:g} epochs is already tuned (best lr {tuned_lr:g} at batch {batch_size})"
    lrs = (ub, ub / 2)
    return Plan(
        variant=label,
        epochs=float(epochs),
        batch_size=batch_size,
        params=params,
        lrs=lrs,
        upper_bound=ub,
        bounding_cells=bounding,
        binding_cell=binding,
        already_tuned=tuned_lr is not None,
        tuned_lr=tuned_lr,
        reason=reason,
    )


# ---------------------------------------------------------------- seed noise


@dataclass(frozen=True)
class Noise:
    """The relative seed-to-seed spread of a final loss that a win must exceed."""

    value: float
    source: str  # "ledger" (seed repeats), "flag" (--noise) or "default"
    points: int = 0  # (cell, LR) points run at 2 or more seeds behind a ledger estimate

    def describe(self) -> str:
        if self.source == "ledger":
            return (f"{100 * self.value:.3g}% (the median seed-to-seed spread of {self.points} repeated "
                    "(cell, lr) point(s) in the ledger)")
        if self.source == "flag":
            return f"{100 * self.value:.3g}% (--noise)"
        return f"{100 * self.value:.3g}% (the default; the ledger has no seed repeats, --noise sets it)"


def seed_repeats(
    rows: Iterable[Mapping[str, Any]], dataset: str | None = None
) -> dict[tuple[str, float, int, str | None], dict[float, dict[int, float]]]:
    """(label, epochs, batch, dataset) -> lr -> seed -> final loss, for LRs run at 2 or more seeds.

    Finished pre-training rows only; `dataset` keeps that dataset's rows. This is
    the method of benchmarks/seed_noise.py, which prints it as a table.
    """
    found: dict[tuple, dict[float, dict[int, float]]] = {}
    for row in _as_rows(rows):
        if row.get("kind", "pretrain") != "pretrain" or row.get("status") != "finished":
            continue
        if dataset is not None and row.get("dataset") != dataset:
            continue
        loss, lr, seed = row.get("final_val_loss"), row.get("lr"), row.get("seed")
        if loss is None or lr is None or seed is None or not math.isfinite(loss) or row.get("batch_size") is None:
            continue
        label = cell_label(row["variant"], _float(row.get("width_mult"), 1.0), _float(row.get("depth_mult"), 1.0))
        key = (label, float(row["epochs"]), int(row["batch_size"]), row.get("dataset"))
        found.setdefault(key, {}).setdefault(round(float(lr), 12), {})[int(seed)] = float(loss)
    return {key: {lr: seeds for lr, seeds in lrs.items() if len(seeds) >= 2}
            for key, lrs in found.items() if any(len(seeds) >= 2 for seeds in lrs.values())}


def relative_spreads(repeats: Mapping[Any, Mapping[float, Mapping[int, float]]]) -> list[float]:
    """Each repeated point's sample standard deviation over its mean."""
    import statistics

    out = []
    for lrs in repeats.values():
        for by_seed in lrs.values():
            values = list(by_seed.values())
            mean = statistics.fmean(values)
            if mean > 0:
                out.append(statistics.stdev(values) / mean)
    return out


def estimate_noise(
    rows: Iterable[Mapping[str, Any]], dataset: str | None = None, flag: float | None = None
) -> Noise:
    """`--noise` when given; else the median spread of the ledger's seed repeats; else DEFAULT_NOISE."""
    if flag is not None:
        if not (math.isfinite(flag) and 0 <= flag < 1):
            raise TunerError(f"--noise must be a relative spread in [0, 1) (0.02 is 2%), got {flag}")
        return Noise(float(flag), "flag")
    import statistics

    spreads = relative_spreads(seed_repeats(rows, dataset))
    if spreads:
        return Noise(float(statistics.median(spreads)), "ledger", len(spreads))
    return Noise(DEFAULT_NOISE, "default")


# ---------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Prediction:
    """Where the search starts: a predicted optimum at the target's batch size, and its source.

    `source` is "fit" (the least-squares law over the tuned cells), "bound" (the
    paper's monotone bound: the smallest optimum of a tuned cell no larger and no
    longer), "floor" (only larger or longer cells are tuned: the largest of their
    optima bounds the target from below), or "default" (nothing tuned: the paper's
    1.6 at batch 4096, scaled).
    """

    lr: float
    source: str
    detail: str
    spread: float | None = None  # the fit's residual standard deviation, in factor-2 grid steps
    cells: int = 0  # tuned cells behind it
    coefficients: tuple[float, ...] = ()  # the fit's log2 lr = a + b ln(params) + c ln(epochs) (unused terms 0)
    bound: Plan | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "source": self.source, "detail": self.detail, "spread": self.spread,
                "cells": self.cells, "coefficients": list(self.coefficients)}


def _fit_law(points: list[tuple[float | None, float, float]], params: int | None, epochs: float):
    """Least squares of log2 lr on ln(params) and ln(epochs); terms with one value are dropped.

    Returns (log2 lr at the target, residual std, coefficients) or None when the
    points cannot support a fit with a residual (too few, or a needed size unknown).
    """
    import numpy as np

    use_params = params is not None and all(p is not None for p, _, _ in points) and \
        len({p for p, _, _ in points}) > 1
    use_epochs = len({e for _, e, _ in points}) > 1
    columns = [np.ones(len(points))]
    target = [1.0]
    if use_params:
        columns.append(np.log([float(p) for p, _, _ in points]))
        target.append(math.log(params))
    if use_epochs:
        columns.append(np.log([e for _, e, _ in points]))
        target.append(math.log(epochs))
    x = np.stack(columns, axis=1)
    y = np.array([y for _, _, y in points])
    if len(points) < max(MIN_FIT_CELLS, x.shape[1] + 1):
        return None
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coef
    spread = float(math.sqrt(float(residual @ residual) / (len(points) - x.shape[1])))
    full = [float(coef[0]), 0.0, 0.0]
    i = 1
    if use_params:
        full[1] = float(coef[i])
        i += 1
    if use_epochs:
        full[2] = float(coef[i])
    return float(np.dot(coef, target)), spread, tuple(full)


def predict(
    rows: Iterable[Mapping[str, Any]],
    variant: str,
    epochs: float,
    batch_size: int,
    params: int | None,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    dataset: str | None = None,
) -> Prediction:
    """The target's predicted optimum from every tuned cell of `dataset` but the target itself.

    With MIN_FIT_CELLS or more tuned cells (and one more than the law has terms) a
    least-squares law for log lr* in log params and log epochs, each cell's optimum
    moved to the target's batch size by linear scaling; else the paper's bound; else
    a floor from larger or longer cells; else the paper's default.
    """
    rows = _as_rows(rows)
    base, width_mult, depth_mult = cell_shape(variant, width_mult, depth_mult)
    me = (base, width_mult, depth_mult, float(epochs))
    other_rows = [r for r in rows if r.get("variant") is None or r.get("epochs") is None or
                  (r["variant"], _float(r.get("width_mult"), 1.0), _float(r.get("depth_mult"), 1.0),
                   float(r["epochs"])) != me]
    others = tuned_cells(other_rows, dataset=dataset)
    bound = plan(other_rows, base, epochs, batch_size, params, width_mult=width_mult, depth_mult=depth_mult,
                 dataset=dataset) if others else None
    # One point per (shape, epochs): a cell tuned at several batch sizes counts once (its best).
    by_cell: dict[tuple, TunedCell] = {}
    for c in others:
        key = (c.variant, c.width_mult, c.depth_mult, c.epochs)
        if key not in by_cell or c.final_val_loss < by_cell[key].final_val_loss:
            by_cell[key] = c
    points = [(c.params, c.epochs, math.log2(c.lr * batch_size / c.batch_size)) for c in by_cell.values()]
    fitted = _fit_law(points, params, epochs) if len(points) >= MIN_FIT_CELLS else None
    if fitted is not None:
        log2_lr, spread, coef = fitted
        lr = 2.0**log2_lr
        terms = [name for name, c in zip(("params", "epochs"), coef[1:]) if c != 0.0]
        return Prediction(
            lr, "fit",
            f"predicted {lr:.3g} by a least-squares law of log lr in log {' and log '.join(terms) or 'nothing'} "
            f"over {len(points)} tuned cell(s), residual spread {spread:.2f} grid steps",
            spread=spread, cells=len(points), coefficients=coef, bound=bound,
        )
    if bound is not None and bound.binding_cell is not None:
        return Prediction(bound.upper_bound, "bound", f"the paper's monotone bound: {bound.reason}",
                          cells=len(bound.bounding_cells), bound=bound)
    if others:
        # Only larger or longer cells are tuned: by the paper's monotone fall their optima are floors.
        floors = [transfer_lr(c.lr, c.batch_size, batch_size) for c in others]
        lr = max(floors)
        return Prediction(lr, "floor", f"{lr:g}: the highest optimum of {len(others)} larger or longer tuned "
                          f"cell(s), at batch {batch_size} (a floor by the paper's monotone fall)",
                          cells=len(others), bound=bound)
    lr = base_lr(batch_size)
    return Prediction(lr, "default", f"nothing tuned: the paper's 1.6 at batch 4096 scaled to batch {batch_size} "
                      f"= {lr:g}", bound=bound)


def grid_index(lr: float, batch_size: int) -> float:
    """log2(lr / base_lr(batch_size)): an integer for an LR on the grid."""
    return math.log2(lr / base_lr(batch_size))


def on_grid(lr: float, batch_size: int) -> int | None:
    """The grid index of `lr`, or None when it lies off the factor-2 grid."""
    k = grid_index(lr, batch_size)
    return round(k) if abs(k - round(k)) < 1e-6 else None


def grid_lr(k: int, batch_size: int) -> float:
    return base_lr(batch_size) * 2.0**k


def first_pair(prediction: Prediction, batch_size: int) -> tuple[float, float]:
    """The first two trials: the grid points either side of the prediction.

    A prediction on the grid (the bound, the floor, the default) gives the paper's
    pair, the prediction and half of it; a floor gives it and twice it.
    """
    k = grid_index(prediction.lr, batch_size)
    low = math.floor(k + 1e-6)
    if abs(k - low) < 1e-6:
        if prediction.source == "floor":
            return grid_lr(low, batch_size), grid_lr(low + 1, batch_size)
        return grid_lr(low, batch_size), grid_lr(low - 1, batch_size)
    return grid_lr(low + 1, batch_size), grid_lr(low, batch_size)


# ---------------------------------------------------------------- the bracketing search


@dataclass(frozen=True)
class Trial:
    """One LR's outcome: a finished run's final held-out loss, or a divergence (loss None)."""

    lr: float
    loss: float | None
    status: str = "finished"  # "finished" or "diverged"
    flops: float | None = None

    @property
    def diverged(self) -> bool:
        return self.status == "diverged" or self.loss is None or not math.isfinite(self.loss)

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "loss": None if self.diverged else self.loss,
                "status": "diverged" if self.diverged else "finished", "flops": self.flops}


@dataclass(frozen=True)
class Verdict:
    """Where a search stands: the best LR so far and why the search stopped (or not yet)."""

    lr: float | None
    loss: float | None
    done: bool
    bracketed: bool  # the best LR's grid neighbours on both sides were run (or diverged)
    tied: bool  # stopped because the best beat its neighbour by less than the noise
    stop: str  # "bracketed", "tied", "max-trials", "running", "all-diverged"
    runner_up: float | None
    gap: float | None  # the runner-up's loss over the best's, minus 1
    message: str


class Bracket:
    """A two-way search on the factor-2 LR grid, as a state machine of rounds.

    `next_round()` gives the LRs to run now (at most `parallel`, none when the search
    is over); `record()` takes their outcomes. The first round is the pair around the
    prediction. After it, the best LR's neighbours decide:

    - both neighbours run (or diverged): bracketed, done;
    - one neighbour not run: if the nearest run LR on the other side is worse by more
      than sqrt(2) × `noise` (relative) or diverged, the trend continues: run it; if
      worse by less, the two tie within the noise: done, keeping the lower loss;
    - a trend steeper than STEEP times that, with room in the round, also runs the
      grid point beyond the next, when the search started from the paper's default
      (`eager`: no prior at all) or has already walked a round from its first pair;
    - from the paper's default (`eager`), trials that all lie within the noise of the
      best, none diverged, are a plateau, not a tie (most likely LRs too low to learn
      at all): the search walks up, two at a time;
    - an unrun gap next to the best is always filled; after every trial diverged the
      search continues below the lowest.

    The choice is the lowest loss among finished trials (an exact tie goes to the
    lower LR). lr_search runs it on Ray; lr_audit's replay runs it on a grid's
    recorded losses: the same rounds, trial for trial.
    """

    def __init__(
        self,
        batch_size: int,
        start: Iterable[float],
        noise: float,
        known: Iterable[Trial] = (),
        parallel: int = DEFAULT_PARALLEL,
        max_trials: int = DEFAULT_MAX_TRIALS,
        eager: bool = False,
        first_win: float = 1.0,
    ):
        if parallel < 1:
            raise TunerError(f"--parallel must be at least 1, got {parallel}")
        if max_trials < 2:
            raise TunerError(f"--max-trials must be at least 2, got {max_trials}")
        self.batch_size = batch_size
        self.noise = noise
        self.parallel = parallel
        self.max_trials = max_trials
        self.eager = eager
        self.first_win = first_win
        self.trials: dict[int, Trial] = {}
        self.known: set[int] = set()
        self.skipped: set[int] = set()  # LRs that cannot be run (a replayed grid lacks them)
        self.rounds: list[tuple[float, ...]] = []
        for trial in known:
            k = on_grid(trial.lr, batch_size)
            if k is not None:
                self.trials[k] = trial
                self.known.add(k)
        self._start = [k for k in (on_grid(lr, batch_size) for lr in start) if k is not None]

    # -- state

    @property
    def run(self) -> int:
        """Trials this search ran (not those it knew from the ledger)."""
        return len(self.trials) - len(self.known)

    def _alive(self) -> dict[int, float]:
        return {k: t.loss for k, t in self.trials.items() if not t.diverged}

    def _best(self) -> int | None:
        alive = self._alive()
        return min(alive, key=lambda k: (alive[k], k)) if alive else None

    def _worse(self, k: int, best: int, times: float = 1.0) -> bool:
        """Trial k is worse than the best by more than `times` the noise of a difference (or diverged).

        Two single-seed losses that each carry a relative spread `noise` differ by a
        spread of sqrt(2) × noise: a smaller gap is not a win.
        """
        t, b = self.trials[k], self.trials[best].loss
        return t.diverged or (t.loss - b) > times * self.threshold * abs(b)

    @property
    def threshold(self) -> float:
        """The relative gap a win must exceed: sqrt(2) × the noise of one loss."""
        return math.sqrt(2.0) * self.noise

    def _needs(self) -> tuple[list[int], list[int], bool]:
        """(LRs the bracket needs, speculative ones beyond them, closed by a tie)."""
        pending = [k for k in self._start if k not in self.trials and k not in self.skipped]
        if pending:
            return pending, [], False
        if not self.trials:
            return [], [], False
        best = self._best()
        if best is None:
            low = min(self.trials)
            return [k for k in (low - 1,) if k not in self.skipped], [low - 2], False
        if self.eager and not any(self._worse(k, best) for k in self.trials if k != best):
            # From the paper's default, with every trial within the noise of the best and none
            # diverged, nothing says the search is near an optimum: a plateau, most likely LRs too
            # low to learn at all (too high an LR diverges or blows the loss up). Walk up; where
            # the LRs above cannot run, down.
            alive = sorted(self._alive())
            for k, beyond in ((alive[-1] + 1, alive[-1] + 2), (alive[0] - 1, alive[0] - 2)):
                if k not in self.skipped and k not in self.trials:
                    return [k], [beyond], False
            return [], [], False
        needs, spec, tied = [], [], False
        for step in (-1, 1):
            neighbour = best + step
            if neighbour in self.trials or neighbour in self.skipped:
                continue
            beyond = [k for k in self.trials if (k - best) * step > 1]
            if beyond:
                needs.append(neighbour)  # a gap next to the best
                continue
            behind = [k for k in self.trials if (k - best) * step < 0]
            if not behind:
                needs.append(neighbour)  # nothing on either side yet: look both ways
                continue
            nearest = max(behind, key=lambda k: (k - best) * step)
            if self._worse(nearest, best, self.first_win if len(self.rounds) <= 1 else 1.0):
                needs.append(neighbour)
                if self._worse(nearest, best, STEEP) and (self.eager or len(self.rounds) >= 2):
                    # A steep trend, from a weak start or one already walked from: likely more
                    # than one step to go.
                    spec.append(neighbour + step)
            else:
                tied = True
        return needs, spec, tied

    def verdict(self) -> Verdict:
        needs, _, tied = self._needs()
        best = self._best()
        over = len(self.trials) - len(self.known) >= self.max_trials
        done = not needs or over
        if best is None:
            stop = "all-diverged" if self.trials and done else "running"
            msg = (f"every trial diverged ({', '.join(f'{t.lr:g}' for t in self._sorted())})"
                   if self.trials else "no trial yet")
            return Verdict(None, None, done and bool(self.trials), False, False, stop, None, None, msg)
        loss = self.trials[best].loss
        bracketed = (best - 1) in self.trials and (best + 1) in self.trials
        alive = self._alive()
        others = sorted((v, k) for k, v in alive.items() if k != best)
        runner_up = grid_lr(others[0][1], self.batch_size) if others else None
        gap = (others[0][0] / loss - 1.0) if others and loss > 0 else None
        lr = self.trials[best].lr
        blocked = any(best + step in self.skipped for step in (-1, 1))
        if not needs:
            stop = "tied" if tied else ("bracketed" if bracketed else "off-grid" if blocked else "bracketed")
        else:
            stop = "max-trials" if over else "running"
        msg = f"lr {lr:g} is best with val_loss {loss:.4g}"
        if stop == "bracketed":
            msg += (f", bracketed by lr {grid_lr(best - 1, self.batch_size):g} and "
                    f"{grid_lr(best + 1, self.batch_size):g}")
        elif stop == "tied":
            msg += (f"; it beat lr {runner_up:g} by {100 * gap:.2g}%, within the noise of a difference "
                    f"({100 * self.threshold:.3g}%): the two tie, and the lower loss is kept")
        elif stop == "max-trials":
            msg += f"; not bracketed after {self.max_trials} trials (--max-trials): rerun to continue"
        return Verdict(lr, loss, done, bracketed, stop == "tied", stop, runner_up, gap, msg)

    def _sorted(self) -> list[Trial]:
        return [self.trials[k] for k in sorted(self.trials)]

    # -- rounds

    def next_round_preview(self) -> list[float]:
        """What `next_round` would return, without starting a round."""
        needs, spec, _ = self._needs()
        room = min(self.parallel, self.max_trials - self.run)
        if not needs or room <= 0:
            return []
        chosen = list(dict.fromkeys(needs + [k for k in spec if k not in self.trials]))[:room]
        return [grid_lr(k, self.batch_size) for k in chosen]

    def next_round(self) -> list[float]:
        """The LRs to run now: what the bracket needs, then speculative ones, at most `parallel`."""
        lrs = tuple(self.next_round_preview())
        if lrs:
            self.rounds.append(lrs)
        return list(lrs)

    def skip(self, lrs: Iterable[float]) -> None:
        """LRs that cannot be run: never asked for again (tuner.lr_audit's replay, for LRs its grid lacks)."""
        for lr in lrs:
            k = on_grid(lr, self.batch_size)
            if k is not None:
                self.skipped.add(k)

    def record(self, trials: Iterable[Trial]) -> None:
        for trial in trials:
            k = on_grid(trial.lr, self.batch_size)
            if k is None:
                raise TunerError(f"lr {trial.lr:g} is not on the factor-2 grid of batch {self.batch_size}")
            self.trials[k] = trial

    def history(self) -> list[Trial]:
        """Every trial, known ones included, by LR."""
        return self._sorted()


def run_bracket(bracket: Bracket, evaluate) -> Verdict:
    """Drive a bracket to its end: `evaluate(lrs)` returns each LR's Trial, or None to stop."""
    while True:
        lrs = bracket.next_round()
        if not lrs:
            return bracket.verdict()
        outcomes = evaluate(lrs)
        if outcomes is None:
            return bracket.verdict()
        bracket.record(outcomes)


# ---------------------------------------------------------------- one cell's search, as lr_search and lr_audit plan it

SEARCH_SOURCE = "lr_search"  # the ledger `source` of lr_search's rows
SEARCH_RECORD_VERSION = 1
COMPLETE_STOPS = frozenset({"bracketed", "tied"})


def search_record(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `search` column of an lr_search row, parsed; None for rows without one."""
    import json

    text = row.get("search")
    if not text:
        return None
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def latest_row(rows: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The row with the latest `time`; rows without a time count as older, ties go to the later one."""
    return max(enumerate(rows), key=lambda ir: (ir[1].get("time") is not None, ir[1].get("time") or 0, ir[0]))[1]


def _cell_key(row: Mapping[str, Any]) -> tuple:
    return (row["variant"], _float(row.get("width_mult"), 1.0), _float(row.get("depth_mult"), 1.0),
            float(row["epochs"]), int(row["batch_size"]) if row.get("batch_size") is not None else None,
            row.get("dataset"))


@dataclass(frozen=True)
class CellSearch:
    """Everything planned for one cell before a trial runs: where to start, what is known, what noise."""

    label: str
    variant: str
    width_mult: float
    depth_mult: float
    epochs: float
    batch_size: int
    params: int | None
    dataset: str | None
    prediction: Prediction
    noise: Noise
    start: tuple[float, ...]
    known: tuple[Trial, ...]  # this cell's outcomes the ledger already holds
    previous: dict[str, Any] | None  # the latest lr_search record of this cell
    status: str  # "new", "continue" (an earlier search stopped unbracketed) or "done"
    parallel: int = DEFAULT_PARALLEL
    max_trials: int = DEFAULT_MAX_TRIALS

    def bracket(self) -> Bracket:
        return Bracket(self.batch_size, self.start, self.noise.value, self.known, self.parallel, self.max_trials,
                       eager=self.prediction.source == "default",
                       first_win=FIT_FIRST_WIN if self.prediction.source == "fit" else 1.0)

    def describe(self) -> str:
        if self.status == "done":
            rec = self.previous or {}
            return (f"already tuned: lr {rec.get('chosen'):g} ({rec.get('stop')}, {len(rec.get('trials', []))} "
                    "trials); --force searches it again")
        known = ""
        if self.known:
            known = f"; the ledger already holds lr {', '.join(f'{t.lr:g}' for t in sorted(self.known, key=lambda t: t.lr))}"
        if self.status == "continue":
            return f"continuing an unbracketed search{known}"
        return (f"first pair lr {' and '.join(f'{lr:g}' for lr in self.start)} around the prediction "
                f"{self.prediction.lr:.3g}{known}" if self.start else f"starting from the ledger's runs{known}")


def plan_cell(
    rows: Iterable[Mapping[str, Any]],
    variant: str,
    epochs: float,
    batch_size: int,
    params: int | None,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    dataset: str | None = None,
    seed: int | None = None,
    noise: float | None = None,
    parallel: int = DEFAULT_PARALLEL,
    max_trials: int = DEFAULT_MAX_TRIALS,
    force: bool = False,
) -> CellSearch:
    """Plan one cell's LR search from the ledger rows: the code lr_search and lr_audit's replay share.

    The prediction comes from every other tuned cell (`predict`); the noise from
    `noise` (--noise) or the ledger's seed repeats (`estimate_noise`). Outcomes the
    ledger already holds for this very cell (any source, this seed; the trials an
    earlier lr_search recorded) start the bracket, so nothing is trained twice. A
    cell whose latest lr_search record is complete (bracketed, or tied within the
    noise) is "done" unless `force`, which also forgets the cell's own outcomes.
    """
    if epochs <= 0:
        raise TunerError(f"epochs must be positive, got {epochs}")
    rows = _as_rows(rows)
    base, width_mult, depth_mult = cell_shape(variant, width_mult, depth_mult)
    me = (base, width_mult, depth_mult, float(epochs), int(batch_size), dataset)
    prediction = predict(rows, base, epochs, batch_size, params, width_mult, depth_mult, dataset)
    estimate = estimate_noise(rows, dataset, noise)
    mine = [r for r in rows if (r.get("kind") or "pretrain") == "pretrain" and r.get("variant") is not None
            and r.get("epochs") is not None and _cell_key(r) == me]
    previous = None
    known: dict[int, list[Trial]] = {}
    if not force:
        searches = [r for r in mine if r.get("source") == SEARCH_SOURCE and search_record(r) is not None]
        if searches:
            previous = search_record(latest_row(searches))
            for t in previous.get("trials", []):
                k = on_grid(float(t["lr"]), batch_size)
                if k is not None:
                    known.setdefault(k, []).append(Trial(float(t["lr"]), t.get("loss"), t.get("status", "finished"),
                                                         t.get("flops")))
        for r in mine:
            if r.get("source") == SEARCH_SOURCE and search_record(r) is not None:
                continue  # its trials came from its record
            if seed is not None and r.get("seed") is not None and int(r["seed"]) != seed:
                continue
            status, lr = r.get("status"), r.get("lr")
            if lr is None or status not in TUNED_STATUSES | {"diverged"}:
                continue
            k = on_grid(float(lr), batch_size)
            if k is None:
                continue
            loss = r.get("final_val_loss")
            diverged = status == "diverged" or loss is None or not math.isfinite(loss)
            known.setdefault(k, []).append(Trial(float(lr), None if diverged else float(loss),
                                                 "diverged" if diverged else "finished", r.get("flops")))
    merged = []
    for k, trials in sorted(known.items()):
        finished = [t for t in trials if not t.diverged]
        if finished:
            merged.append(Trial(finished[0].lr, sum(t.loss for t in finished) / len(finished), "finished",
                                finished[0].flops))
        else:
            merged.append(trials[0])
    status = "new"
    if previous is not None:
        status = "done" if previous.get("stop") in COMPLETE_STOPS and previous.get("chosen") else "continue"
    start = () if merged else first_pair(prediction, batch_size)
    return CellSearch(
        label=cell_label(base, width_mult, depth_mult), variant=base, width_mult=width_mult,
        depth_mult=depth_mult, epochs=float(epochs), batch_size=int(batch_size), params=params, dataset=dataset,
        prediction=prediction, noise=estimate, start=tuple(start), known=tuple(merged), previous=previous,
        status=status, parallel=parallel, max_trials=max_trials,
    )


def make_record(cell: CellSearch, bracket: Bracket, verdict: Verdict, failed: Iterable[float] = ()) -> dict[str, Any]:
    """The `search` column of the row lr_search records: how its LR was chosen."""
    failed = list(failed)
    return {
        "version": SEARCH_RECORD_VERSION,
        "chosen": verdict.lr,
        "loss": verdict.loss,
        "stop": "failed" if failed and verdict.stop not in COMPLETE_STOPS else verdict.stop,
        "bracketed": verdict.bracketed,
        "tied": verdict.tied,
        "runner_up": verdict.runner_up,
        "gap": verdict.gap,
        "trials": [t.to_dict() for t in bracket.history()],
        "trials_run": bracket.run,
        "known": sorted(t.lr for t in cell.known),
        "failed": failed,
        "rounds": [list(r) for r in bracket.rounds],
        "parallel": cell.parallel,
        "prediction": cell.prediction.to_dict(),
        "noise": {"value": cell.noise.value, "source": cell.noise.source, "points": cell.noise.points},
        "message": verdict.message,
    }
