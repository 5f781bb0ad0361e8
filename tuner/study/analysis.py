"""The analysis of a scaling report: runs read from a ledger or a CSV, one pre-training
dataset picked, and the fits (frontier power law, compute-optimal size and epochs,
the joint law L(N, D), IsoFLOP profiles, the optimal-LR table and trends, the
LR search's audit) gathered into a `ScalingReport` that tuner/rendering/report.py
writes out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tuner.errors import TunerError
from tuner.records.csvfile import Column, read_csv
from tuner.records.ledger import Ledger
from tuner.study.audit import Audit, audit, grid_cells, read_search_rows, replay, section_markdown
from tuner.study.isoflop import IsoFLOP, isoflop_rows
from tuner.study.loss_law import JointLaw, fit_rows, law_rows
from tuner.records.cells import cell_label, parse_label
from tuner.study.planner import search_record
from tuner.study.scaling import BootstrapCI, ComputeOptimal, Fit, LRTable, LRTrend, MIN_FIT_POINTS, ScalingError, best_per_cell, bootstrap_ci, check_fit_points, compute_optimal, fit_power_law, frontier, lr_trend, optimal_lr_table, size_order, uncontested


REQUIRED_CSV_COLUMNS = ("variant", "epochs", "compute", "val_loss")


OPTIONAL_NUMERIC_COLUMNS = ("lr", "top1", "params", "batch_size", "images_seen")


OPTIONAL_TEXT_COLUMNS = ("kind", "trial_id", "parent_trial_id", "status", "dataset")


# Ledger column -> report column (docs/architecture.md, ledger schema).
LEDGER_COLUMNS = {
    "variant": "variant",
    "epochs": "epochs",
    "flops": "compute",
    "final_val_loss": "val_loss",
    "lr": "lr",
    "top1": "top1",
    "params": "params",
    "kind": "kind",
    "trial_id": "trial_id",
    "parent_trial_id": "parent_trial_id",
    "status": "status",
    "dataset": "dataset",
    "source": "source",
    "images_seen": "images_seen",
}


REQUIRED_LEDGER_COLUMNS = ("variant", "epochs", "flops", "final_val_loss")


# A stopped run's loss is mid-schedule and a diverged run's is meaningless: neither
# measures what its epoch budget reaches.
EXCLUDED_STATUSES = ("diverged", "stopped")


def load_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows from a CSV with columns variant, epochs, compute, val_loss and optionally
    lr, top1, params, batch_size, kind, trial_id, parent_trial_id, status, dataset."""
    p = Path(path)
    if not p.is_file():
        raise TunerError(f"CSV file {p} does not exist; pass an existing file to --csv")
    table = read_csv(p)
    header = table.header
    if not header:
        raise TunerError(f"CSV file {p} is empty; it needs a header row with {', '.join(REQUIRED_CSV_COLUMNS)}")
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
    if missing:
        raise TunerError(
            f"CSV file {p} lacks required column(s) {', '.join(missing)}; "
            f"it needs {', '.join(REQUIRED_CSV_COLUMNS)}"
        )
    text = {col: table.text(col).to_pylist() for col in OPTIONAL_TEXT_COLUMNS}
    # A fine-tuning row is plotted at its parent's compute: its own may be blank.
    pretrain = [kind != "finetune" for kind in text["kind"]]
    number = "; every row needs a number there"
    values, problem = table.convert({
        "variant": Column(str, required=True, empty_hint="; name the model variant"),
        **{col: Column(float, required=pretrain, empty_hint=number) for col in REQUIRED_CSV_COLUMNS[1:]},
        **{col: Column(float) for col in OPTIONAL_NUMERIC_COLUMNS},
    })
    if problem is not None:
        raise TunerError(problem.message)
    if not table.num_rows:
        raise TunerError(f"CSV file {p} has a header but no rows; add one row per run")
    numeric = (*REQUIRED_CSV_COLUMNS[1:], *OPTIONAL_NUMERIC_COLUMNS)
    return [
        {"variant": values["variant"][i],
         **{col: math.nan if values[col][i] is None else values[col][i] for col in numeric},
         **{col: text[col][i] or None for col in OPTIONAL_TEXT_COLUMNS}}
        for i in range(table.num_rows)
    ]


def read_ledger_table(uri: str) -> pa.Table:
    """The ledger's rows as written (a pyarrow Table), checked to hold rows of nfscale's schema."""
    table = Ledger(uri).read()
    if table.num_rows == 0:
        raise TunerError(
            f"the ledger at {uri} is empty or does not exist; check the path, "
            "or run a sweep or `python -m tuner.ledger import` first"
        )
    missing = [c for c in REQUIRED_LEDGER_COLUMNS if c not in table.column_names]
    if missing:
        raise TunerError(f"the ledger at {uri} lacks column(s) {', '.join(missing)}; is it an nfscale ledger?")
    return table


def load_ledger(uri: str) -> list[dict[str, Any]]:
    """Rows from an nfscale ledger, renamed to the report's columns (see LEDGER_COLUMNS)."""
    return rows_from_table(read_ledger_table(uri), uri)


def rows_from_table(table: pa.Table, uri: str) -> list[dict[str, Any]]:
    """A ledger table's rows renamed to the report's columns (see LEDGER_COLUMNS)."""
    present = [c for c in (*LEDGER_COLUMNS, "width_mult", "depth_mult", "search") if c in table.column_names]
    rows = []
    for raw in table.select(present).to_pylist():
        row: dict[str, Any] = {LEDGER_COLUMNS[k]: v for k, v in raw.items() if k in LEDGER_COLUMNS}
        for col in ("epochs", "compute", "val_loss", "lr", "top1", "params", "images_seen"):
            value = row.get(col)
            row[col] = math.nan if value is None else float(value)
        for col in OPTIONAL_TEXT_COLUMNS:
            row.setdefault(col, None)
        if row["variant"] is None:
            raise TunerError(f"the ledger at {uri} has a row with no variant (trial {row.get('trial_id')})")
        # A width/depth-scaled variant is a different model: label it as the planner does.
        row["variant"] = cell_label(row["variant"], raw.get("width_mult") or 1.0, raw.get("depth_mult") or 1.0)
        # An lr_search row is its search's winner; its `search` record lists every LR the search tried.
        record = search_record(raw)
        trials = record.get("trials") if record else None
        row["trial_lrs"] = [t["lr"] for t in trials if isinstance(t, dict) and t.get("lr") is not None] \
            if isinstance(trials, list) else []
        rows.append(row)
    return rows


@dataclass(frozen=True)
class ScalingReport:
    """Everything the plots, the summary and the JSON output are made from."""

    source: str
    dataset: str | None  # the pre-training dataset of every point (None: the rows record none)
    n_rows: int
    n_pretrain: int
    n_finetune: int
    excluded: dict[str, int]  # reason -> pre-training rows left out of the fits
    points: tuple[Mapping[str, Any], ...]  # best run per (variant, epochs), by compute
    frontier: tuple[int, ...]  # indices into points
    uncontested: tuple[int, ...]  # frontier points beyond every other variant's largest compute
    fit_on: str
    fit: Fit | None  # None with too few points (see fit_note)
    ci: BootstrapCI | None
    optimal: ComputeOptimal
    # The same fits over the frontier without its uncontested points, when they leave
    # MIN_FIT_POINTS or more computes (None otherwise, and when every frontier point is contested).
    contested_fit: Fit | None
    contested_optimal: ComputeOptimal | None
    lr_table: LRTable
    variants: tuple[str, ...]  # smallest to largest
    finetune: tuple[tuple[Mapping[str, Any], Mapping[str, Any]], ...]  # (pretrain parent, finetune row)
    fit_note: str = ""  # why there is no fit, and what it needs
    ci_note: str = ""  # why the bootstrap interval says little (too few distinct points), if it does
    # Chinchilla's approach 3, L(N, D) = E + A/N^α + B/D^β over each cell's runs at its best LR
    # (tuner/study/loss_law.py); None with joint_note saying why.
    joint: JointLaw | None = None
    joint_note: str = ""
    # Approach 2, IsoFLOP profiles over the same runs (tuner/study/isoflop.py); None with iso_note saying why.
    iso: IsoFLOP | None = None
    iso_note: str = ""
    # Does the optimal LR fall with epochs and with size: slopes with intervals (scaling.lr_trend).
    trend: LRTrend | None = None
    trend_note: str = ""


def _exclusion_reason(row: Mapping[str, Any]) -> str | None:
    status = (row.get("status") or "").lower()
    if status in EXCLUDED_STATUSES:
        return status
    if not (math.isfinite(row["val_loss"]) and row["val_loss"] > 0):
        return "no finite positive loss"
    if not (math.isfinite(row["compute"]) and row["compute"] > 0):
        return "no positive compute"
    if not (math.isfinite(row["epochs"]) and row["epochs"] > 0):
        return "no positive epochs"
    return None


def _is_finetune(row: Mapping[str, Any]) -> bool:
    return row.get("kind") == "finetune"


def _dataset_listing(counts: Mapping[str | None, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    return ", ".join(f"{name or 'no dataset recorded'}: {n} run(s)" for name, n in ordered)


def pick_dataset(
    rows: Sequence[Mapping[str, Any]], wanted: str | None, source: str
) -> tuple[list[Mapping[str, Any]], str | None]:
    """The rows of one pre-training dataset, and its name: `wanted`, else the only one.

    A loss-vs-compute law belongs to one dataset (losses on two are not comparable,
    and a frontier across them is nonsense), so rows of several are refused unless
    `wanted` picks one. Fine-tuning rows stay unless their parent is a pre-training
    run of another dataset (their own dataset is the fine-tuning target).
    """
    counts = Counter(r.get("dataset") for r in rows if not _is_finetune(r))
    if wanted is None:
        if len(counts) <= 1:
            return list(rows), next(iter(counts), None)
        raise TunerError(
            f"the {source} holds pre-training runs of {len(counts)} datasets ({_dataset_listing(counts)}); "
            "a scaling fit is per dataset: pick one with --dataset NAME"
        )
    if wanted not in counts:
        raise TunerError(
            f"the {source} has no pre-training runs of dataset {wanted!r} (--dataset); "
            f"it holds {_dataset_listing(counts) or 'no pre-training runs'}"
        )
    others = {r.get("trial_id") for r in rows if not _is_finetune(r) and r.get("dataset") != wanted}
    others.discard(None)
    kept = [
        r for r in rows
        if (r.get("dataset") == wanted if not _is_finetune(r) else r.get("parent_trial_id") not in others)
    ]
    return kept, wanted


def _fit_needs(n_cells: int, n_front: int, n_levels: int, fit_on: str) -> str:
    """What a fit needs, given what the rows have."""
    more = "run tuner.lr_search for more (variant, epochs) cells, or tuner.sweep"
    cells = f"{n_cells} cell{'s' if n_cells != 1 else ''}"
    if fit_on == "all":
        return (f"A fit needs the best runs of (variant, epochs) cells at ≥ {MIN_FIT_POINTS} compute levels; "
                f"the rows have {cells} at {n_levels} compute level(s): {more}")
    have = f"the rows have {cells}" + (f", {n_front} of them on the frontier" if n_front < n_cells else "")
    if n_cells < MIN_FIT_POINTS:
        advice = more
    else:
        advice = ("the others cost more without a lower loss: run larger models or longer epoch budgets, "
                  "or fit every cell with --fit-on all")
    return (f"A fit needs the best runs of (variant, epochs) cells at ≥ {MIN_FIT_POINTS} compute levels on "
            f"the compute-optimal frontier; {have}: {advice}")


def analyse(
    rows: Sequence[Mapping[str, Any]],
    source: str,
    n_boot: int = 1000,
    seed: int = 0,
    fit_on: str = "frontier",
    dataset: str | None = None,
) -> ScalingReport:
    """Best run per (variant, epochs) → frontier → power-law fit with bootstrap CI,
    compute-optimal params/epochs exponents, optimal-LR table, fine-tuning pairs.

    The rows are of one pre-training dataset (`pick_dataset`), named by `dataset`.
    With fewer than `MIN_FIT_POINTS` compute levels to fit there is no fit (`fit` is
    None and `fit_note` says what it needs); the rest of the report still stands.
    """
    if fit_on not in ("frontier", "all"):
        raise ValueError(f"fit_on must be 'frontier' or 'all', got {fit_on!r}")
    pretrain = [r for r in rows if not _is_finetune(r)]
    finetune_rows = [r for r in rows if _is_finetune(r)]
    excluded: Counter[str] = Counter()
    usable, unusable = [], []
    for row in pretrain:
        reason = _exclusion_reason(row)
        if reason is None:
            usable.append(row)
        else:
            excluded[reason] += 1
            unusable.append(row)
    points = best_per_cell(usable)
    if not points:
        raise ScalingError(
            f"no usable pre-training run to report among {len(rows)} row(s) "
            f"({excluded_text(excluded) + ' left out' if excluded else 'no pre-training rows'}); "
            "a report needs finished pre-training runs with a final loss and compute"
        )
    compute = np.array([p["compute"] for p in points])
    loss = np.array([p["val_loss"] for p in points])
    front = frontier(compute, loss)
    chosen = front if fit_on == "frontier" else np.arange(len(points))
    fit = ci = None
    fit_note = ci_note = ""
    try:
        check_fit_points(compute[chosen])
    except ScalingError as err:
        levels = int(np.unique(compute[chosen]).size)
        fit_note = f"{err}. {_fit_needs(len(points), len(front), levels, fit_on)}"
    else:
        fit = fit_power_law(compute[chosen], loss[chosen])
        try:
            ci = bootstrap_ci(compute[chosen], loss[chosen], n_boot=n_boot, seed=seed)
        except ScalingError as err:
            ci_note = f"no bootstrap interval: {err}"
        else:
            ci_note = ci.caveat()

    def allocation(indices: Sequence[int]) -> ComputeOptimal:
        return compute_optimal(
            compute[indices],
            np.array([points[i].get("params", math.nan) for i in indices], dtype=np.float64),
            np.array([points[i]["epochs"] for i in indices], dtype=np.float64),
        )

    optimal = allocation(front)
    lone = uncontested(compute, [p["variant"] for p in points], front)
    contested = np.array([i for i in front if i not in lone], dtype=np.int64)
    contested_fit = contested_optimal = None
    if lone and np.unique(compute[contested]).size >= MIN_FIT_POINTS:
        contested_fit = fit_power_law(compute[contested], loss[contested])
        contested_optimal = allocation(contested)
    joint, joint_note, iso, iso_note = _chinchilla(usable, n_boot=n_boot, seed=seed)
    trend, trend_note = None, ""
    try:
        trend = lr_trend(usable, n_boot=n_boot, seed=seed)
    except ScalingError as err:
        trend_note = str(err)
    by_id = {r["trial_id"]: r for r in pretrain if r.get("trial_id")}
    pairs = tuple(
        (by_id[f["parent_trial_id"]], f)
        for f in finetune_rows
        if f.get("parent_trial_id") in by_id
        and math.isfinite(f.get("top1", math.nan))
        and (f.get("status") or "").lower() != "diverged"
        and math.isfinite(by_id[f["parent_trial_id"]]["compute"])
        and by_id[f["parent_trial_id"]]["compute"] > 0
    )
    return ScalingReport(
        source=source,
        dataset=dataset,
        n_rows=len(rows),
        n_pretrain=len(pretrain),
        n_finetune=len(finetune_rows),
        excluded=dict(excluded),
        points=tuple(points),
        frontier=tuple(int(i) for i in front),
        uncontested=tuple(lone),
        fit_on=fit_on,
        fit=fit,
        ci=ci,
        optimal=optimal,
        contested_fit=contested_fit,
        contested_optimal=contested_optimal,
        # Runs left out of the fits still tried their LR (a diverged run, a stopped one).
        lr_table=optimal_lr_table(usable, tried=unusable),
        variants=size_order(usable),
        finetune=pairs,
        fit_note=fit_note,
        ci_note=ci_note,
        joint=joint,
        joint_note=joint_note,
        iso=iso,
        iso_note=iso_note,
        trend=trend,
        trend_note=trend_note,
    )


def _chinchilla(usable: Sequence[Mapping[str, Any]], n_boot: int, seed: int
                ) -> tuple[JointLaw | None, str, IsoFLOP | None, str]:
    """Approaches 3 and 2 over the runs at each cell's best LR, or why each cannot be fitted."""
    runs, _ = law_rows(usable)
    with_params = [r for r in runs if math.isfinite(r.get("params", math.nan)) and r["params"] > 0]
    if len(with_params) < len(runs):
        note = (f"{len(runs) - len(with_params)} of the {len(runs)} runs record no parameter count; "
                "both need N for every run (the ledger's params column, or a params column in the CSV)")
        return None, note, None, note
    joint = iso = None
    joint_note = iso_note = ""
    try:
        joint = fit_rows(runs, n_boot=n_boot, seed=seed)
    except ScalingError as err:
        joint_note = str(err)
    try:
        iso = isoflop_rows(runs, n_boot=n_boot, seed=seed)
    except ScalingError as err:
        iso_note = str(err)
    return joint, joint_note, iso, iso_note


def grid_rows_from_csv(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """CSV rows as ledger rows for tuner.lr_audit; None when a pre-training row has no batch size."""
    out = []
    for i, row in enumerate(rows):
        if (row.get("kind") or "pretrain") != "pretrain":
            continue
        if not math.isfinite(row["batch_size"]):
            return None
        variant, width, depth = parse_label(row["variant"])
        out.append({
            "trial_id": row.get("trial_id") or f"csv-{i}",
            "kind": "pretrain",
            "variant": variant,
            "width_mult": width,
            "depth_mult": depth,
            "params": int(row["params"]) if math.isfinite(row["params"]) else None,
            "epochs": row["epochs"],
            "lr": row["lr"] if math.isfinite(row["lr"]) else None,
            "batch_size": int(row["batch_size"]),
            "dataset": row.get("dataset"),
            "final_val_loss": row["val_loss"],
            "flops": row["compute"],
            # A CSV row without a status is a finished run, as `tuner.ledger import` files it.
            "status": row.get("status") or "imported",
        })
    return out


def lr_search_audit(
    grid_rows: list[dict[str, Any]] | None, search_uri: str | None, lrs_per_cell: int
) -> tuple[str, Audit | None, Audit | None]:
    """The Markdown section, the walk's audit and the replay: the replay when some cell was run
    at 2 or more LRs (`lrs_per_cell`, the most of any cell), the audit with a search ledger."""
    if grid_rows is None:
        if search_uri:
            raise TunerError("--lr-search-ledger needs the grid's batch sizes; add a batch_size column to the CSV")
        if lrs_per_cell < 2:
            return "", None, None
        note = "Not replayed: the CSV has no batch_size column, and the planner's bounds depend on the batch size."
        return section_markdown(None, None, note=note), None, None
    searched = audit(grid_rows, read_search_rows(search_uri, "--lr-search-ledger")) if search_uri else None
    replayed = replay(grid_rows) if any(len(c.losses) >= 2 for c in grid_cells(grid_rows).values()) else None
    if searched is None and replayed is None:
        return "", None, None
    return section_markdown(replayed, searched), searched, replayed


def excluded_text(excluded: Mapping[str, int]) -> str:
    """`2 diverged, 1 stopped`: the rows left out of the fits, by reason."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(excluded.items()))
