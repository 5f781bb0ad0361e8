"""The LR audit: does the LR search find what a full grid finds, and at what cost?
(The command is tuner/lr_audit.py.)

The grid ledger holds every LR of a factor-2 grid run to its end for each
(variant, epochs) cell (`tuner.sweep --grid`); each cell's optimum is its
lowest final held-out loss. Two comparisons with it:

- the replay (always): the walk of `tuner.lr_search` through the grid's cells,
  smallest model and shortest budget first, simulated on the grid itself by
  lr_search's own planner code: each cell is planned by `tuner.study.planner.plan_cell`
  over the rows replayed so far (starting from an empty ledger, i.e. from the
  paper's 1.6 at batch 4096), and its `Bracket` runs round by round with every
  trial's loss looked up among the grid's runs. The winner's row, with its search
  record, bounds and fits the cells after it. No training; LRs the grid did not
  run are charged their compute and reported as off the grid.
- the audit (with `--search`): the rows a real walk wrote (source `lr_search`,
  one row per cell, with the trials its search ran) against the grid's optimum of
  the same cell. Each trial of a cell trains the same model for the same steps, so
  a cell's compute is its trials × the winner's FLOPs.

A cell counts as found when the chosen LR is the grid's optimum, and as within
the tolerance when its loss is at most `tolerance` (0.5%) above the optimum's.
An optimum at the edge of the LRs the grid tried is only a bound, and is marked.
No Ray and no JAX here.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nfnet.metrics import json_safe
from tuner.errors import TunerError
from tuner.study.planner import DEFAULT_MAX_TRIALS, DEFAULT_PARALLEL, SEARCH_SOURCE, TUNED_STATUSES, Trial, make_record, plan_cell, search_record
from tuner.records.cells import cell_label, parse_label
from tuner.study.scaling import size_order

DEFAULT_TOLERANCE = 0.005
# What lr_search ran per cell before its rows recorded their search (the bound and half of it).
DEFAULT_TRIALS_PER_CELL = 2
# Statuses of runs that reached a verdict on their LR: a stopped run was judged worse
# by the scheduler, a diverged one was too high. Both count as tried for the grid's edges.
TRIED_STATUSES = TUNED_STATUSES | {"diverged", "stopped"}
# Planned LRs are computed (0.1 × 2^k); the grid's are too, possibly by another route.
LR_MATCH = 1e-6
SAME_LR = 1e-9

CellKey = tuple[str, float, int, str | None]  # (label, epochs, batch_size, dataset)


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class GridCell:
    """One (variant, epochs, batch size, dataset) cell of the grid: its runs and its optimum."""

    label: str
    variant: str
    width_mult: float
    depth_mult: float
    epochs: float
    batch_size: int
    dataset: str | None
    params: int | None
    losses: Mapping[float, float]  # lr -> final held-out loss of its finished runs (mean of repeats)
    diverged: tuple[float, ...]  # LRs whose every run diverged
    run_flops: Mapping[float, float]  # lr -> one run's training FLOPs at that LR
    best_lr: float | None  # lowest loss; ties to the lower LR (as planner.tuned_cells)
    best_loss: float | None
    edge: str | None  # "low" / "high": no LR below / above the optimum was tried; "both": only one LR
    flops: float  # every pre-training run of the cell, stopped and diverged ones too: compute spent
    runs: int

    @property
    def key(self) -> CellKey:
        return (self.label, self.epochs, self.batch_size, self.dataset)

    @property
    def name(self) -> str:
        return cell_name(self.key)

    def _find(self, lrs: Iterable[float], lr: float) -> float | None:
        return next((held for held in lrs if math.isclose(held, lr, rel_tol=LR_MATCH)), None)

    def outcome(self, lr: float) -> tuple[float, float | None, str] | None:
        """The grid's (lr, loss, status) at `lr` as `planner.decide` takes it; None when not run there."""
        held = self._find(self.losses, lr)
        if held is not None:
            return held, self.losses[held], "finished"
        held = self._find(self.diverged, lr)
        return None if held is None else (held, None, "diverged")

    def flops_at(self, lr: float) -> float | None:
        held = self._find(self.run_flops, lr)
        return None if held is None else self.run_flops[held]


def cell_name(key: CellKey) -> str:
    label, epochs, batch_size, dataset = key
    return f"{label} at {epochs:g} epochs (batch {batch_size}, {dataset or 'no dataset'})"


def _as_rows(rows: Any) -> list[Mapping[str, Any]]:
    # A pyarrow Table straight from Ledger.read() is accepted as well as a list of dicts.
    return rows.to_pylist() if hasattr(rows, "to_pylist") else list(rows)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _row_key(row: Mapping[str, Any]) -> CellKey:
    if row.get("batch_size") is None:
        raise TunerError(
            f"ledger row {row.get('trial_id')!r} has no batch_size; the planner's bounds depend on the batch size"
        )
    width = 1.0 if row.get("width_mult") is None else float(row["width_mult"])
    depth = 1.0 if row.get("depth_mult") is None else float(row["depth_mult"])
    return (cell_label(row["variant"], width, depth), float(row["epochs"]), int(row["batch_size"]), row.get("dataset"))


def _is_pretrain(row: Mapping[str, Any]) -> bool:
    return (row.get("kind") or "pretrain") == "pretrain"


def _same_lr(lrs: Iterable[float], lr: float) -> float:
    """The LR already held within LR_MATCH of `lr`, else `lr`: repeats group on one key."""
    return next((held for held in lrs if math.isclose(held, lr, rel_tol=LR_MATCH)), lr)


def _grid_cell(key: CellKey, rows: list[Mapping[str, Any]]) -> GridCell:
    label, epochs, batch_size, dataset = key
    finished: dict[float, list[float]] = defaultdict(list)
    run_flops: dict[float, float] = {}
    tried: list[float] = []
    diverged: list[float] = []
    flops = 0.0
    for row in rows:
        row_flops = _number(row.get("flops"))
        flops += row_flops or 0.0
        lr, status = _number(row.get("lr")), row.get("status")
        if lr is None or not lr > 0 or status not in TRIED_STATUSES:
            continue
        tried.append(lr)
        if status == "stopped":
            continue
        loss = _number(row.get("final_val_loss"))
        if status in TUNED_STATUSES and loss is not None:
            finished[_same_lr(finished, lr)].append(loss)
        else:
            diverged.append(lr)  # a NaN loss counts as diverged, as in planner.decide
        # A finished run's FLOPs are what a trial at this LR costs; a diverged run's, what it cost.
        if row_flops is not None:
            run_flops.setdefault(_same_lr(run_flops, lr), row_flops)
    losses = {lr: sum(values) / len(values) for lr, values in sorted(finished.items())}
    best_lr = min(losses, key=lambda lr: (losses[lr], lr)) if losses else None
    edge = None
    if best_lr is not None:
        below = any(lr < best_lr and not math.isclose(lr, best_lr, rel_tol=LR_MATCH) for lr in tried)
        above = any(lr > best_lr and not math.isclose(lr, best_lr, rel_tol=LR_MATCH) for lr in tried)
        edge = {(False, False): "both", (False, True): "low", (True, False): "high"}.get((below, above))
    params = next((int(r["params"]) for r in rows if r.get("params") is not None), None)
    variant, width, depth = parse_label(label)
    return GridCell(
        label=label,
        variant=variant,
        width_mult=width,
        depth_mult=depth,
        epochs=epochs,
        batch_size=batch_size,
        dataset=dataset,
        params=params,
        losses=losses,
        diverged=tuple(sorted({lr for lr in diverged if _same_lr(losses, lr) not in losses})),
        run_flops=run_flops,
        best_lr=best_lr,
        best_loss=None if best_lr is None else losses[best_lr],
        edge=edge,
        flops=flops,
        runs=len(rows),
    )


def grid_cells(rows: Iterable[Mapping[str, Any]]) -> dict[CellKey, GridCell]:
    """Each cell of a grid ledger, keyed by (label, epochs, batch size, dataset).

    Pre-training rows only. Rows written by lr_search are left out: they re-run
    grid points, and a ledger shared by the grid and the walk would count them twice.
    Repeats at one LR (seeds) are averaged before the optimum is picked.
    """
    by_cell: dict[CellKey, list[Mapping[str, Any]]] = defaultdict(list)
    for row in _as_rows(rows):
        if _is_pretrain(row) and row.get("source") != SEARCH_SOURCE:
            by_cell[_row_key(row)].append(row)
    return {key: _grid_cell(key, cell_rows) for key, cell_rows in by_cell.items()}


def walk_order(cells: Iterable[GridCell]) -> list[GridCell]:
    """The order lr_search walks cells in: by model size (params, else as `scaling.size_order`), then epochs."""
    cells = list(cells)
    if not cells:
        return []
    sizes = [
        {"variant": c.label, "params": c.params, "epochs": c.epochs, "compute": c.flops / max(c.runs, 1)}
        for c in cells
    ]
    rank = {label: i for i, label in enumerate(size_order(sizes))}
    return sorted(cells, key=lambda c: (rank[c.label], c.epochs, c.batch_size, c.dataset or ""))


GRID_NEEDS = (
    "the audit needs a grid: runs of the factor-2 LR grid per (variant, epochs) cell, each to the end of its "
    "schedule, as `tuner.sweep --grid` writes"
)


def _graded(cells: Mapping[CellKey, GridCell], rows: Iterable[Mapping[str, Any]]) -> list[GridCell]:
    """The cells with an optimum (a finished run with a finite loss), in walk order; a TunerError
    saying what the ledger holds and lacks when there is none."""
    graded = [c for c in cells.values() if c.best_lr is not None]
    if graded:
        return walk_order(graded)
    rows = _as_rows(rows)
    pretrain = [r for r in rows if _is_pretrain(r)]
    if not pretrain:
        raise TunerError(f"the grid ledger has no pre-training runs ({len(rows)} fine-tuning row(s)); {GRID_NEEDS}")
    searched = [r for r in pretrain if r.get("source") == SEARCH_SOURCE]
    if len(searched) == len(pretrain):
        finished = sum(r.get("status") in TUNED_STATUSES and _number(r.get("final_val_loss")) is not None
                       for r in searched)
        runs = f"{finished} finished pre-training run(s)"
        if finished < len(searched):
            runs += f" ({len(searched)} in all)"
        raise TunerError(
            f"the grid ledger has {runs}, but all were written by tuner.lr_search (source {SEARCH_SOURCE}): "
            f"the audit checks those against a grid, it does not take them for one; {GRID_NEEDS}; "
            "pass lr_search's ledger as --search, with a grid's as --grid"
        )
    statuses = Counter(str(r.get("status")) for r in pretrain if r.get("source") != SEARCH_SOURCE)
    listing = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    raise TunerError(
        f"the grid has no finished pre-training run with a finite loss (its {sum(statuses.values())} "
        f"run(s) outside lr_search's: {listing}); {GRID_NEEDS}"
    )


# ---------------------------------------------------------------- audit and replay


@dataclass(frozen=True)
class AuditCell:
    """One cell: the grid's optimum, what the search chose, and what each cost."""

    label: str
    epochs: float
    batch_size: int
    dataset: str | None
    params: int | None
    grid_best_lr: float
    grid_best_loss: float
    grid_edge: str | None
    found_lr: float | None
    found_loss: float | None
    grid_loss_at_found: float | None  # the grid's own run at the chosen LR, when it has one
    gap: float | None  # found_loss / grid_best_loss - 1
    exact: bool
    within: bool
    trials: int
    lrs_run: tuple[float, ...]  # the replay's looked-up LRs; empty for a real walk (only the winner is recorded)
    off_grid: tuple[float, ...]  # planned LRs the grid never ran
    search_flops: float | None
    grid_flops: float
    note: str = ""
    rounds: tuple[tuple[float, ...], ...] = ()  # the replay's rounds (trials run at once)
    prediction: float | None = None  # where the search started (the planner's predicted optimum)
    prediction_source: str | None = None  # "fit", "bound", "floor" or "default"
    bracketed: bool | None = None  # the chosen LR's neighbours both ran (None: not recorded)


@dataclass(frozen=True)
class Audit:
    """Every audited cell, and how often and how cheaply the search found the grid's optimum."""

    kind: str  # "search": lr_search's rows; "replay": the walk simulated on the grid
    tolerance: float
    cells: tuple[AuditCell, ...]
    n_cells: int
    n_exact: int
    n_within: int
    search_flops: float | None  # None when a cell's compute is unknown (rows without flops)
    grid_flops_audited: float
    grid_flops_total: float
    share: float | None  # search_flops / grid_flops_total
    unmatched: tuple[str, ...] = ()  # search rows with no grid cell (another size, budget, batch or dataset)
    unsearched: tuple[str, ...] = ()  # grid cells the search ledger does not tune
    anchors: tuple[str, ...] = ()  # grid cells the search ledger tunes by other rows (e.g. the walk's anchor)
    anchor_flops: float = 0.0  # the grid's compute of those cells: what tuning them by a grid cost
    ungraded: tuple[str, ...] = ()  # grid cells with no finished run: no optimum to compare with


def check_tolerance(tolerance: float) -> None:
    """A TunerError unless `tolerance` (a relative loss gap) is a finite number >= 0."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise TunerError(f"tolerance must be a number >= 0 (0.005 is 0.5%), got {tolerance}")


def _audit_cell(
    cell: GridCell,
    found_lr: float | None,
    found_loss: float | None,
    tolerance: float,
    trials: int,
    search_flops: float | None,
    lrs_run: tuple[float, ...] = (),
    off_grid: tuple[float, ...] = (),
    note: str = "",
    **extra: Any,
) -> AuditCell:
    exact = found_lr is not None and math.isclose(found_lr, cell.best_lr, rel_tol=SAME_LR)
    gap = None if found_loss is None else found_loss / cell.best_loss - 1.0
    at_found = cell.outcome(found_lr) if found_lr is not None else None
    return AuditCell(
        label=cell.label,
        epochs=cell.epochs,
        batch_size=cell.batch_size,
        dataset=cell.dataset,
        params=cell.params,
        grid_best_lr=cell.best_lr,
        grid_best_loss=cell.best_loss,
        grid_edge=cell.edge,
        found_lr=found_lr,
        found_loss=found_loss,
        grid_loss_at_found=at_found[1] if at_found else None,
        gap=gap,
        exact=exact,
        within=exact or (gap is not None and gap <= tolerance),
        trials=trials,
        lrs_run=lrs_run,
        off_grid=off_grid,
        search_flops=search_flops,
        grid_flops=cell.flops,
        note=note,
        **extra,
    )


def _summarise(
    kind: str, tolerance: float, audited: list[AuditCell], cells: Mapping[CellKey, GridCell], **lists: Any
) -> Audit:
    spent = [c.search_flops for c in audited]
    search_flops = None if None in spent else float(sum(spent))
    grid_total = float(sum(c.flops for c in cells.values()))
    return Audit(
        kind=kind,
        tolerance=tolerance,
        cells=tuple(audited),
        n_cells=len(audited),
        n_exact=sum(c.exact for c in audited),
        n_within=sum(c.within for c in audited),
        search_flops=search_flops,
        grid_flops_audited=float(sum(c.grid_flops for c in audited)),
        grid_flops_total=grid_total,
        share=search_flops / grid_total if search_flops is not None and grid_total > 0 else None,
        ungraded=tuple(c.name for c in walk_order(c for c in cells.values() if c.best_lr is None)),
        **lists,
    )


def _latest(rows: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The row with the latest `time`; without times, the last one."""
    if all(r.get("time") is not None for r in rows):
        return max(enumerate(rows), key=lambda ir: (ir[1]["time"], ir[0]))[1]
    return rows[-1]


def audit(
    grid_rows: Iterable[Mapping[str, Any]],
    search_rows: Iterable[Mapping[str, Any]],
    tolerance: float = DEFAULT_TOLERANCE,
    trials_per_cell: int = DEFAULT_TRIALS_PER_CELL,
) -> Audit:
    """lr_search's winners (source `lr_search`, finished pre-training rows) against the grid's optima.

    A cell searched more than once is judged by its latest row. Its compute is the
    trials its row's search record says it ran × the winner's FLOPs (each trial of a
    cell trains the same model for the same steps); rows written before lr_search
    kept a record count `trials_per_cell` trials.
    """
    check_tolerance(tolerance)
    if trials_per_cell < 1:
        raise TunerError(f"trials per cell must be at least 1, got {trials_per_cell}")
    grid_rows = _as_rows(grid_rows)
    cells = grid_cells(grid_rows)
    graded = _graded(cells, grid_rows)
    searched: dict[CellKey, list[Mapping[str, Any]]] = defaultdict(list)
    other: set[CellKey] = set()
    for row in _as_rows(search_rows):
        if not _is_pretrain(row) or row.get("status") not in TUNED_STATUSES:
            continue
        if row.get("source") == SEARCH_SOURCE:
            searched[_row_key(row)].append(row)
        else:
            other.add(_row_key(row))

    audited = []
    for cell in graded:
        if cell.key not in searched:
            continue
        row = _latest(searched[cell.key])
        flops = _number(row.get("flops"))
        record = search_record(row)
        extra: dict[str, Any] = {}
        trials = trials_per_cell
        if record is not None:
            # The row records every trial its search ran; each cost what the winner did.
            trials = int(record.get("trials_run", trials_per_cell))
            extra = dict(lrs_run=tuple(sorted(float(t["lr"]) for t in record.get("trials", []))),
                         rounds=tuple(tuple(r) for r in record.get("rounds", [])),
                         prediction=(record.get("prediction") or {}).get("lr"),
                         prediction_source=(record.get("prediction") or {}).get("source"),
                         bracketed=record.get("bracketed"), note=record.get("stop", ""))
        audited.append(
            _audit_cell(
                cell, float(row["lr"]), _number(row.get("final_val_loss")), tolerance, trials,
                None if flops is None else trials * flops, **extra,
            )
        )
    anchors = [c for c in graded if c.key in other and c.key not in searched]
    unmatched = [k for k in searched if k not in cells or cells[k].best_lr is None]
    return _summarise(
        "search",
        tolerance,
        audited,
        cells,
        unmatched=tuple(cell_name(k) for k in sorted(unmatched, key=_sort_key)),
        unsearched=tuple(c.name for c in graded if c.key not in searched and c.key not in other),
        anchors=tuple(c.name for c in anchors),
        anchor_flops=float(sum(c.flops for c in anchors)),
    )


def _sort_key(key: CellKey) -> tuple:
    label, epochs, batch_size, dataset = key
    return (label, epochs, batch_size, dataset or "")


def _tuned_row(cell: GridCell, record: dict[str, Any]) -> dict[str, Any]:
    """The row lr_search would record for the cell: its winner, with the search's record."""
    import json

    return {
        "trial_id": f"replay-{cell.label}-{cell.epochs:g}-{record['chosen']:g}",
        "kind": "pretrain",
        "status": "finished",
        "source": SEARCH_SOURCE,
        "variant": cell.variant,
        "width_mult": cell.width_mult,
        "depth_mult": cell.depth_mult,
        "params": cell.params,
        "epochs": cell.epochs,
        "lr": record["chosen"],
        "batch_size": cell.batch_size,
        "dataset": cell.dataset,
        "final_val_loss": record["loss"],
        "search": json.dumps(record),
    }


def _trial_flops(cell: GridCell) -> float | None:
    """What one trial of the cell costs: every LR trains the same model for the same steps."""
    values = sorted(cell.run_flops.values())
    return values[len(values) // 2] if values else None


def replay(
    grid_rows: Iterable[Mapping[str, Any]],
    tolerance: float = DEFAULT_TOLERANCE,
    noise: float | None = None,
    parallel: int = DEFAULT_PARALLEL,
    max_trials: int = DEFAULT_MAX_TRIALS,
) -> Audit:
    """lr_search's walk simulated on the grid, at no compute beyond the grid's.

    Cells are walked smallest model first, then shortest budget, from an empty
    ledger. Each cell is planned by `tuner.study.planner.plan_cell` over the rows the
    replay has recorded so far, exactly as lr_search plans it over its ledger, and
    its `Bracket` runs round by round with every trial's loss looked up in the grid:
    the same LRs, rounds and choice as lr_search on the same losses. A trial at an
    LR the grid never ran is charged its compute (every LR of a cell costs the same)
    and reported as off the grid; the search goes on without it (a side it would
    have closed stays open: the cell stops "off-grid"). The winner's row, with its search record, joins
    the ledger the later cells are planned from.
    """
    check_tolerance(tolerance)
    grid_rows = _as_rows(grid_rows)
    cells = grid_cells(grid_rows)
    so_far: list[dict[str, Any]] = []
    audited = []
    for cell in _graded(cells, grid_rows):
        planned = plan_cell(so_far, cell.label, cell.epochs, cell.batch_size, cell.params, dataset=cell.dataset,
                            noise=noise, parallel=parallel, max_trials=max_trials)
        bracket = planned.bracket()
        off_grid: list[float] = []
        per_trial = _trial_flops(cell)
        spent: float | None = 0.0
        while True:
            lrs = bracket.next_round()
            if not lrs:
                break
            outcomes = []
            for lr in lrs:
                spent = None if spent is None or per_trial is None else spent + per_trial
                outcome = cell.outcome(lr)
                if outcome is None:
                    off_grid.append(lr)
                else:
                    outcomes.append(Trial(outcome[0], outcome[1], outcome[2], cell.flops_at(lr)))
            bracket.skip(off_grid)
            bracket.record(outcomes)
        verdict = bracket.verdict()
        notes = []
        if off_grid:
            notes.append(f"lr {', '.join(f'{lr:g}' for lr in off_grid)} not in the grid")
        if verdict.lr is None:
            notes.append("every trial diverged: nothing tuned" if bracket.history()
                         else "no LR it asked for is in the grid: nothing tuned")
        else:
            if verdict.stop not in ("bracketed", "tied"):
                notes.append(f"stopped {verdict.stop}")
            elif verdict.tied:
                notes.append(f"tied with lr {verdict.runner_up:g} within the noise")
            so_far.append(_tuned_row(cell, make_record(planned, bracket, verdict)))
        run = [t.lr for t in bracket.history()] + off_grid
        audited.append(
            _audit_cell(
                cell,
                verdict.lr,
                verdict.loss,
                tolerance,
                bracket.run + len(off_grid),
                spent,
                lrs_run=tuple(sorted(run)),
                off_grid=tuple(off_grid),
                note="; ".join(notes),
                rounds=tuple(tuple(r) for r in bracket.rounds),
                prediction=planned.prediction.lr,
                prediction_source=planned.prediction.source,
                bracketed=verdict.bracketed,
            )
        )
    return _summarise("replay", tolerance, audited, cells)


# ---------------------------------------------------------------- output


def _pct(value: float) -> str:
    return f"{100 * value:.3g}%"


def summary_sentence(result: Audit) -> str:
    """One line: found the grid optimum in X of N cells, within 0.5% in Y of N, using Z% of its compute."""
    n = result.n_cells
    if n == 0:
        return "no cell of the grid was searched: nothing to compare"
    compute = (
        f"using {_pct(result.share)} of the grid's compute"
        if result.share is not None
        else "at a compute the rows do not record (no flops)"
    )
    return (
        f"found the grid optimum in {result.n_exact} of {n} cells, within {_pct(result.tolerance)} "
        f"in {result.n_within} of {n}, {compute}"
    )


def _num(value: float | None, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def _row_markdown(c: AuditCell, kind: str) -> str:
    edge = {"low": " (low edge)", "high": " (high edge)", "both": " (only lr)"}.get(c.grid_edge or "", "")
    gap = "–" if c.gap is None else f"{100 * c.gap:+.2f}%"
    within = "yes (exact)" if c.exact else ("yes" if c.within else "no")
    if c.rounds:
        trials = " / ".join(", ".join(f"{lr:g}" for lr in r) for r in c.rounds)
    elif c.lrs_run:
        trials = ", ".join(f"{lr:g}" for lr in c.lrs_run)
    else:
        trials = f"{c.trials} × the winner's"
    start = "–" if c.prediction is None else f"{c.prediction:.3g} ({c.prediction_source})"
    return (
        f"| {c.label} | {c.epochs:g} | {c.grid_best_lr:g}{edge} | {c.grid_best_loss:.4f} | {start} | "
        f"{trials or '–'} | {_num(c.found_lr, 'g')} | {_num(c.found_loss, '.4f')} | {gap} | {within} | "
        f"{_num(c.search_flops, '.3g')} |"
    )


def audit_markdown(result: Audit, title: str, level: int = 2) -> str:
    """A Markdown section: one table row per cell and the summary sentence."""
    heading = "#" * level
    if result.kind == "replay":
        about = (
            "lr_search's walk replayed on the grid by lr_search's own planner (`tuner.study.planner.plan_cell` and "
            "its `Bracket`): cells by size then epoch budget, from an empty ledger, each predicted from the "
            "cells replayed before it; each round's LRs are looked up among the grid's runs (no new training). "
            "Trials lists the rounds, separated by /."
        )
    else:
        about = (
            "The lr_search rows of a real walk (one row per cell, with the trials its search ran) against the "
            "grid's optimum; a cell's compute is its trials × the winner's FLOPs (every trial of a cell trains "
            "the same steps)."
        )
    lines = [f"{heading} {title}", "", about, ""]
    if result.cells:
        lines += [
            f"| cell | epochs | grid optimum lr | grid loss | start | trials | found lr | found loss | gap | "
            f"within {_pct(result.tolerance)}? | compute (FLOPs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_row_markdown(c, result.kind) for c in result.cells]
        lines.append("")
    sentence = summary_sentence(result)
    lines.append(f"**{sentence[0].upper()}{sentence[1:]}**" + (
        f" ({result.search_flops:.3g} of {result.grid_flops_total:.3g} FLOPs; the audited cells' grid runs "
        f"took {result.grid_flops_audited:.3g})." if result.share is not None else "."
    ))
    notes = [f"{c.label} at {c.epochs:g} epochs: {c.note}" for c in result.cells if c.note]
    if any(c.grid_edge for c in result.cells):
        notes.append("an optimum at the edge of the grid's LRs is only a bound: the grid tried nothing beyond it")
    if result.anchors:
        notes.append(
            f"tuned outside lr_search (e.g. the walk's anchor), not in the share: {'; '.join(result.anchors)} "
            f"(their grid runs took {result.anchor_flops:.3g} FLOPs)"
        )
    if result.unsearched:
        notes.append(f"grid cells with no lr_search row: {'; '.join(result.unsearched)}")
    if result.unmatched:
        notes.append(f"lr_search rows with no grid cell to compare with: {'; '.join(result.unmatched)}")
    if result.ungraded:
        notes.append(f"grid cells with no finished run (no optimum): {'; '.join(result.ungraded)}")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def section_markdown(replayed: Audit | None, searched: Audit | None, level: int = 2, note: str = "") -> str:
    """The report's section: the real walk's audit (if any), then the replay (or why there is none)."""
    lines = [f"{'#' * level} The LR search against the grid", ""]
    parts = ["\n".join(lines)]
    if searched is not None:
        parts.append(audit_markdown(searched, "The walk's lr_search rows", level + 1))
    if replayed is not None:
        parts.append(audit_markdown(replayed, "The walk replayed on the grid", level + 1))
    if note:
        parts.append(note + "\n")
    return "\n".join(parts)


def audit_json(result: Audit) -> dict[str, Any]:
    """The audit as a JSON-safe dict (NaN becomes null), with its summary sentence."""
    return json_safe({**dataclasses.asdict(result), "summary": summary_sentence(result)})


# ---------------------------------------------------------------- reading ledgers


def read_ledger_rows(uri: str, flag: str) -> list[dict[str, Any]]:
    """Every row of a ledger as written (no renaming), or a TunerError naming `flag`."""
    from tuner.records.ledger import Ledger

    rows = Ledger(uri).read().to_pylist()
    if not rows:
        raise TunerError(f"the ledger at {uri} ({flag}) is empty or does not exist; check the path")
    return rows


def read_search_rows(uri: str, flag: str) -> list[dict[str, Any]]:
    """A walk's ledger: it must hold at least one finished lr_search pre-training row."""
    rows = read_ledger_rows(uri, flag)
    if not any(
        r.get("source") == SEARCH_SOURCE and _is_pretrain(r) and r.get("status") in TUNED_STATUSES for r in rows
    ):
        raise TunerError(
            f"the ledger at {uri} ({flag}) has no finished lr_search pre-training rows; "
            "pass the ledger tuner.lr_search wrote to"
        )
    return rows


# ---------------------------------------------------------------- command line
