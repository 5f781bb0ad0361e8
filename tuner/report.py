"""`python -m tuner.report`: scaling-law plots, TensorBoard images and a Markdown
summary from a ledger or a CSV of runs.

    python -m tuner.report --ledger results/ledger --out report/
    python -m tuner.report --csv runs.csv --out report/ --json > fit.json
    python -m tuner.report --ledger results/study/grid-ledger --lr-search-ledger results/study/walk-ledger --out report/

Held-out loss is each run's *final* validation loss (ledger `final_val_loss`): the
paper reports the loss at the end of each epoch budget's cosine schedule, and the
best-seen loss of a run can come from mid-schedule. Compute is training FLOPs (ledger
`flops`). Diverged and early-stopped runs are left out of the fits and LR table.

A report is of one pre-training dataset: rows of several are refused unless
`--dataset NAME` picks one. A power law is fitted on 3 or more compute levels
(`scaling.MIN_FIT_POINTS`); with fewer (a ledger of one lr_search cell, say) the
report still lists the cells, their best LRs and losses and the LRs each tried,
and says what a fit needs. An lr_search row counts every LR its search tried
(its `search` column), and a cell with one LR tried has no measured optimum: the
"does the optimal LR fall" answers leave it out.

When some (variant, epochs) cell was run at 2 or more LRs the rows are taken for a
grid, and the summary ends with `tuner.lr_audit`'s replay of the LR
search on it; `--lr-search-ledger` adds the audit of a real walk's rows.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from nfnet import storage
from tuner.errors import TunerError
from tuner.ledger import Ledger
from tuner.lr_audit import (
    Audit,
    audit,
    audit_json,
    grid_cells,
    read_search_rows,
    replay,
    section_markdown,
    summary_sentence,
)
from tuner.isoflop import IsoFLOP, isoflop_rows
from tuner.loss_law import JointLaw, fit_rows, law_rows
from tuner.planner import cell_label, parse_label, search_record
from tuner.scaling import (
    BootstrapCI,
    ComputeOptimal,
    Fit,
    LRTable,
    LRTrend,
    MIN_FIT_POINTS,
    ScalingError,
    best_per_cell,
    bootstrap_ci,
    check_fit_points,
    compute_optimal,
    fit_power_law,
    frontier,
    lr_trend,
    optimal_lr_table,
    size_order,
    uncontested,
)

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
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")

LOSS_PLOT = "loss_vs_compute.png"
LR_PLOT = "lr_vs_epochs.png"
FINETUNE_PLOT = "finetune_vs_compute.png"
ISOFLOP_PLOT = "isoflop.png"


# ---------------------------------------------------------------- reading runs


def _number(raw: str, column: str, line: int, source: str, required: bool) -> float:
    text = raw.strip() if raw is not None else ""
    if not text:
        if required:
            raise TunerError(f"{source} line {line}: column '{column}' is empty; every row needs a number there")
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise TunerError(f"{source} line {line}: column '{column}' is not a number: {text!r}") from None


def load_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows from a CSV with columns variant, epochs, compute, val_loss and optionally
    lr, top1, params, batch_size, kind, trial_id, parent_trial_id, status, dataset."""
    p = Path(path)
    if not p.is_file():
        raise TunerError(f"CSV file {p} does not exist; pass an existing file to --csv")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in (reader.fieldnames or [])]
        if not header:
            raise TunerError(f"CSV file {p} is empty; it needs a header row with {', '.join(REQUIRED_CSV_COLUMNS)}")
        reader.fieldnames = header
        missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
        if missing:
            raise TunerError(
                f"CSV file {p} lacks required column(s) {', '.join(missing)}; "
                f"it needs {', '.join(REQUIRED_CSV_COLUMNS)}"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            if not (raw.get("variant") or "").strip():
                raise TunerError(f"{p} line {line}: column 'variant' is empty; name the model variant")
            row: dict[str, Any] = {"variant": raw["variant"].strip()}
            # A fine-tuning row is plotted at its parent's compute: its own may be blank.
            finetune = (raw.get("kind") or "").strip() == "finetune"
            for col in REQUIRED_CSV_COLUMNS[1:]:
                row[col] = _number(raw[col], col, line, str(p), required=not finetune)
            for col in OPTIONAL_NUMERIC_COLUMNS:
                row[col] = _number(raw.get(col) or "", col, line, str(p), required=False)
            for col in OPTIONAL_TEXT_COLUMNS:
                value = (raw.get(col) or "").strip()
                row[col] = value or None
            rows.append(row)
    if not rows:
        raise TunerError(f"CSV file {p} has a header but no rows; add one row per run")
    return rows


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


# ---------------------------------------------------------------- analysis


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
    # (tuner/loss_law.py); None with joint_note saying why.
    joint: JointLaw | None = None
    joint_note: str = ""
    # Approach 2, IsoFLOP profiles over the same runs (tuner/isoflop.py); None with iso_note saying why.
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
            f"({_excluded_text(excluded) + ' left out' if excluded else 'no pre-training rows'}); "
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


def _excluded_text(excluded: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(excluded.items()))


# ---------------------------------------------------------------- plots


def _style(variants: Sequence[str]) -> dict[str, tuple[str, str]]:
    return {v: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, v in enumerate(variants)}


def _plain_log_labels(axis: Any) -> None:
    """Label a log axis with plain numbers (0.6, 0.7, 2, 3) rather than 6e-01 or 2×10⁰."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        # LogFormatter decides which ticks get a label; its own text for values below 1 is 6e-01.
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:.3g}"

    axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _ticks_at(axis: Any, values: Sequence[float]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis.set_major_locator(FixedLocator(values))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _figure() -> Any:
    # The object-oriented API renders with Agg and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    return fig, fig.add_subplot()


def plot_loss_vs_compute(report: ScalingReport, path: Path) -> None:
    """[P1] Fig. 2: held-out loss vs compute per model, log-log, frontier and fit."""
    fig, ax = _figure()
    style = _style(report.variants)
    for variant in report.variants:
        pts = [p for p in report.points if p["variant"] == variant]
        if not pts:
            continue
        color, marker = style[variant]
        ax.plot([p["compute"] for p in pts], [p["val_loss"] for p in pts], marker=marker, color=color, label=variant)
        for p in pts:
            ax.annotate(
                f"{p['epochs']:g}ep", (p["compute"], p["val_loss"]), textcoords="offset points",
                xytext=(4, 4), fontsize=7, color=color,
            )
    fc = [report.points[i]["compute"] for i in report.frontier]
    fl = [report.points[i]["val_loss"] for i in report.frontier]
    ax.plot(fc, fl, linestyle="none", marker="o", markersize=12, markerfacecolor="none",
            markeredgecolor="black", label="compute-optimal frontier")
    if report.fit is not None:
        compute = np.array([p["compute"] for p in report.points])
        xs = np.geomspace(compute.min(), compute.max(), 100)
        ax.plot(xs, report.fit.predict(xs), "k--",
                label=f"fit ({report.fit_on}): {report.fit.equation()}, R²={report.fit.r2:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("held-out loss")
    ax.set_title("Held-out loss vs compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_lr_vs_epochs(report: ScalingReport, path: Path) -> None:
    """[P1] Fig. 3: optimal LR vs epoch budget per model, both axes log2."""
    fig, ax = _figure()
    style = _style(report.variants)
    for variant in report.variants:
        cells = sorted((c for c in report.lr_table.cells if c.variant == variant), key=lambda c: c.epochs)
        if not cells:
            continue
        color, marker = style[variant]
        ax.plot([c.epochs for c in cells], [c.lr for c in cells], marker=marker, color=color, label=variant)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    # Tick at the budgets and LRs that occur (a factor-2 grid), labelled as numbers.
    _ticks_at(ax.xaxis, sorted({c.epochs for c in report.lr_table.cells}))
    _ticks_at(ax.yaxis, sorted({c.lr for c in report.lr_table.cells}))
    ax.set_xlabel("epoch budget")
    ax.set_ylabel("optimal learning rate")
    ax.set_title("Optimal learning rate vs epoch budget")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_isoflop(report: ScalingReport, path: Path) -> None:
    """Chinchilla's Fig. 3 (left and centre): loss against size at each compute level with its
    parabola and minimum, and N_opt against compute with the fit."""
    import matplotlib
    from matplotlib.figure import Figure

    iso = report.iso
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    cmap = matplotlib.colormaps["viridis"]
    shown = [p for p in iso.profiles if len(p.params) >= 2]
    for i, p in enumerate(shown):
        color = cmap(i / max(1, len(shown) - 1))
        left.plot(p.params, p.loss, marker="o", linestyle="none", color=color, label=f"C = {p.compute:.3g}")
        if p.coeffs is not None and p.n_opt is not None:
            c0, c1, c2 = p.coeffs
            xs = np.geomspace(min(p.fitted), max(p.fitted), 100)
            lx = np.log(xs)
            left.plot(xs, c0 + c1 * lx + c2 * lx * lx, color=color, linewidth=1)
            left.axvline(p.n_opt, color=color, linestyle=":", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("parameters N")
    left.set_ylabel("held-out loss at that compute")
    left.set_title("IsoFLOP profiles")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    found = [p for p in iso.profiles if p.n_opt is not None]
    right.plot([p.compute for p in found], [p.n_opt for p in found], "ko", label="profile minima (approach 2)")
    if found:
        xs = np.geomspace(min(p.compute for p in found), max(p.compute for p in found), 100)
        if iso.fit is not None:
            right.plot(xs, iso.fit.predict(xs), "k--", label=f"N_opt = {iso.fit.a:.3g}·C^{iso.fit.b:.3f}")
        law = report.joint
        if law is not None and math.isfinite(law.k):
            right.plot(xs, law.optimal(xs)[0], color="tab:red",
                       label=f"approach 3: N* ∝ C^{law.a_flops:.3f}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("training compute (FLOPs)")
    right.set_ylabel("compute-optimal parameters")
    right.set_title("Compute-optimal model size")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_finetune_vs_compute(report: ScalingReport, path: Path) -> None:
    """[P1] Fig. 1: fine-tuned top-1 vs the pre-training compute of its parent run."""
    fig, ax = _figure()
    # A parent may be of a variant with no usable pre-training point of its own.
    names = [*report.variants, *sorted({p["variant"] for p, _ in report.finetune} - set(report.variants))]
    style = _style(names)
    for variant in names:
        pairs = [(parent, ft) for parent, ft in report.finetune if parent["variant"] == variant]
        if not pairs:
            continue
        color, marker = style[variant]
        ax.plot([p["compute"] for p, _ in pairs], [f["top1"] for _, f in pairs],
                linestyle="none", marker=marker, color=color, label=variant)
    compute = np.array([p["compute"] for p, _ in report.finetune])
    top1 = np.array([f["top1"] for _, f in report.finetune])
    best = frontier(compute, -top1)
    ax.plot(compute[best], top1[best], color="black", linewidth=1, label="best at or below compute")
    ax.set_xscale("log")
    ax.set_xlabel("pre-training compute (FLOPs)")
    ax.set_ylabel("fine-tuned top-1")
    ax.set_title("Fine-tuned accuracy vs pre-training compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- summaries


def _trend(answer: bool | None, cells: int, not_measured: Sequence[str]) -> str:
    """A trend's answer over the measured cells of a group of `cells` cells; `not_measured`
    names the cells with one LR run (an optimum not measured, left out of the answer)."""
    if cells < 2:
        return "n/a (a single cell)"
    where = ", ".join(not_measured)
    if answer is None:
        return f"not measured: only one LR was run at {where}"
    return ("yes" if answer else "no") + (f" (not measured at {where}: only one LR run)" if not_measured else "")


def _name(report: ScalingReport) -> str:
    return report.dataset or "no dataset recorded"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fit_markdown(report: ScalingReport) -> list[str]:
    fit, ci = report.fit, report.ci
    if fit is None:
        return [f"**No fit: {report.fit_note}**"]
    lines = [
        f"Fitted on {fit.n} {'frontier points' if report.fit_on == 'frontier' else '(variant, epochs) points'} "
        f"(least squares in log-log space): **{fit.equation()}**",
        "",
    ]
    if ci is None:
        lines.append(f"- exponent b = {fit.b:.4f}")
        lines.append(f"- coefficient a = {fit.a:.4g}")
    else:
        pct = f"{100 * ci.level:g}%"
        lines += [
            f"- exponent b = {fit.b:.4f} ({pct} bootstrap CI [{ci.b_low:.4f}, {ci.b_high:.4f}], "
            f"{ci.n_boot} resamples)",
            f"- coefficient a = {fit.a:.4g} ({pct} CI [{ci.a_low:.4g}, {ci.a_high:.4g}])",
        ]
    lines.append(f"- R² (log space) = {fit.r2:.4f}")
    if report.ci_note:
        lines.append(f"- note: {report.ci_note}")
    return lines


def _iv(law: JointLaw, name: str, digits: str = ".4f") -> str:
    iv = law.intervals.get(name)
    return "" if iv is None else f" [{iv.low:{digits}}, {iv.high:{digits}}]"


SAME_RATE_ANSWERS = {
    "yes": "**yes**: the interval of a − b holds 0, so the runs cannot tell the two rates apart",
    "size faster": "**no, the model size faster**: the interval of a − b lies above 0",
    "data faster": "**no, the epochs (data) faster**: the interval of a − b lies below 0",
    "unknown": "not answered: no bootstrap interval (--n-boot 0)",
    "undetermined": "**undetermined**: the interval of a − b holds 0 but is too wide to say so (over 0.5): "
                    "the runs cannot tell; more model sizes and epoch budgets would",
}


def same_rate_sentence(law: JointLaw) -> str:
    """[P1] §3's rule, answered from the joint law: should size and epochs grow at the same rate?"""
    return (f"Should the model size and the epochs grow at the same rate ([P1]: yes)? "
            f"N* ∝ C^{law.a:.3f}{_iv(law, 'a', '.3f')}, D* ∝ C^{law.b:.3f}{_iv(law, 'b', '.3f')}, "
            f"a − b = {law.a - law.b:+.3f}{_iv(law, 'a_minus_b', '+.3f')}: {SAME_RATE_ANSWERS[law.same_rate()]}.")


def _trend_markdown(report: ScalingReport) -> list[str]:
    t = report.trend
    if t is None:
        return [f"Trend of the optimal LR: not fitted: {report.trend_note}."]
    lines = [f"Trend of the optimal LR over the {t.cells} cells run at ≥ 3 LRs ([P1] Fig. 3: it falls slowly "
             "with both): log2 lr* fitted on log2 epochs and log2 params; a slope is the change of log2 lr* per "
             f"doubling, with its {100 * t.level:g}% bootstrap interval over cells and seeds ({t.n_boot} resamples).",
             ""]
    for factor, label in (("epochs", "epoch budget"), ("size", "model size")):
        if factor not in t.slopes:
            lines.append(f"- with the {label}: not measured (one value in the cells)")
            continue
        iv = t.intervals.get(factor)
        interval = "" if iv is None else f" [{iv[0]:+.3f}, {iv[1]:+.3f}]"
        lines.append(f"- with the {label}: slope {t.slopes[factor]:+.3f}{interval}: **{t.verdict(factor)}**")
    if t.censored:
        lines.append(f"- {t.censored} cell(s) had their best loss at the smallest or largest LR tried: their "
                     "optimum may lie beyond, and the slopes are pulled toward the LRs tried")
    return lines


def _chinchilla_markdown(report: ScalingReport) -> list[str]:
    lines = ["## Joint law L(N, D) (Chinchilla's approach 3)", ""]
    law = report.joint
    if law is None:
        lines.append(f"Not fitted: {report.joint_note}.")
    else:
        unit = "examples seen" if law.data_unit == "examples" else "epochs (the rows record no images_seen)"
        pct = f"{100 * law.level:g}%"
        boot = (f"{pct} bootstrap intervals from {law.n_boot} resamples of the runs" if law.intervals
                else "no intervals (--n-boot 0)")
        lines += [
            f"Fitted to {law.n} runs (every seed of each (variant, epochs) cell at its best LR), N the parameter "
            f"count, D the {unit}; Huber loss (δ = 1e-3) on log L, summed, L-BFGS from a grid of starts; {boot}:",
            "",
            f"**{law.equation()}**",
            "",
            "| constant | value | interval |",
            "|---|---|---|",
        ]
        for name, value in (("E", law.E), ("A", law.A), ("B", law.B), ("alpha", law.alpha), ("beta", law.beta),
                            ("a = β/(α+β)", law.a), ("b = α/(α+β)", law.b)):
            key = name.split(" ")[0]
            lines.append(f"| {name} | {value:.4g} | {_iv(law, key, '.4g').strip() or '–'} |")
        lines += ["", same_rate_sentence(law)]
        if math.isfinite(law.k):
            lines += ["", f"The runs' cost: C = {law.k:.3g}·N^{law.gamma:.3f}·D FLOPs (least squares in log space; "
                      "Chinchilla's C = 6·N·D has γ = 1). Against these FLOPs the compute-optimal split is "
                      f"N* ∝ C^{law.a_flops:.3f}{_iv(law, 'a_flops', '.3f')}, "
                      f"D* ∝ C^{law.b_flops:.3f}{_iv(law, 'b_flops', '.3f')}."]
    lines += ["", "## IsoFLOP profiles (Chinchilla's approach 2)", ""]
    iso = report.iso
    if iso is None:
        lines.append(f"Not fitted: {report.iso_note}.")
        return lines
    lines += ["| compute (FLOPs) | sizes | N_opt | note |", "|---|---|---|---|"]
    for p in iso.profiles:
        n_opt = "–" if p.n_opt is None else f"{p.n_opt:.4g}"
        lines.append(f"| {p.compute:.4g} | {len(p.params)} | {n_opt} | {p.note or ''} |")
    lines.append("")
    if iso.fit is None:
        lines.append(f"No fit of N_opt against C: {iso.note}.")
        return lines
    interval = "" if iso.interval is None else (
        f" ({100 * iso.level:g}% bootstrap interval of a [{iso.interval[0]:.4f}, {iso.interval[1]:.4f}], "
        f"{iso.n_boot} resamples of the {'runs within each cell' if iso.method == 'runs' else 'levels'})")
    lines.append(f"**N_opt = {iso.fit.a:.4g} · C^{iso.fit.b:.4f}**{interval}, R² = {iso.fit.r2:.4f}, "
                 f"{iso.fit.n} levels.")
    if iso.note:
        lines.append(f"- note: {iso.note}")
    if report.joint is not None:
        law = report.joint
        agree = ""
        if law.intervals.get("a_flops") is not None and iso.interval is not None:
            lo, hi = law.intervals["a_flops"].low, law.intervals["a_flops"].high
            overlap = max(lo, iso.interval[0]) <= min(hi, iso.interval[1])
            agree = ": the intervals " + ("overlap" if overlap else "do not overlap")
        lines.append(f"- approach 3 gives N* ∝ C^{law.a_flops:.4f}{_iv(law, 'a_flops')} against the runs' FLOPs, "
                     f"approach 2 C^{iso.fit.b:.4f}{agree}")
    return lines


def summary_markdown(report: ScalingReport, notes: Sequence[str]) -> str:
    opt = report.optimal
    lines = [
        "# Scaling report",
        "",
        f"Dataset: **{_name(report)}** (pre-training).",
        "",
        f"Source: {report.source} — {report.n_rows} rows ({report.n_pretrain} pre-training, "
        f"{report.n_finetune} fine-tuning). Held-out loss is each run's final validation loss; "
        "compute is training FLOPs; each point is the best learning rate of one (variant, epochs).",
        f"Left out of the fits: {_excluded_text(report.excluded) or 'nothing'}.",
        "",
        "## Loss vs compute",
        "",
        *_fit_markdown(report),
        "",
        "### Compute-optimal frontier",
        "",
        "| compute (FLOPs) | variant | epochs | lr | params | held-out loss |",
        "|---|---|---|---|---|---|",
    ]
    for i in report.frontier:
        p = report.points[i]
        params = int(p["params"]) if math.isfinite(p.get("params", math.nan)) else None
        mark = " *" if i in report.uncontested else ""
        lines.append(
            f"| {p['compute']:.4g} | {p['variant']}{mark} | {p['epochs']:g} | {_fmt(p.get('lr'))} | "
            f"{_fmt(params)} | {p['val_loss']:.4f} |"
        )
    if report.uncontested:
        lines += ["", f"\\* uncontested: no other model was run at this much compute, so these "
                  f"{len(report.uncontested)} point(s) are on the frontier for want of a competitor and "
                  "say nothing about which model is compute-optimal there; run the other models longer "
                  "to contest them."]
    lines += ["", "## Compute-optimal model size and epoch budget", ""]
    for name, label, sym in (("params", "params_opt", "p"), ("epochs", "epochs_opt", "e")):
        f = getattr(opt, name)
        if f is None:
            lines.append(f"- {label}: not fitted")
        else:
            lines.append(
                f"- {label} = {f.a:.4g} · C^{f.b:.4f} ({sym} = {f.b:.4f}, R² = {f.r2:.3f}, {f.n} frontier points)"
            )
    lines += [f"- {n}" for n in opt.notes]
    if report.contested_fit is not None:
        cf, co = report.contested_fit, report.contested_optimal
        lines += ["", f"Without the uncontested point(s), on the {cf.n} frontier points where more than one model "
                  f"competed: **{cf.equation()}** (R² = {cf.r2:.4f})"]
        for name, label in (("params", "params_opt"), ("epochs", "epochs_opt")):
            f = getattr(co, name)
            lines.append(f"- {label}: " + ("not fitted" if f is None else
                                            f"{f.a:.4g} · C^{f.b:.4f} (R² = {f.r2:.3f}, {f.n} points)"))
    lines += ["", *_chinchilla_markdown(report)]
    lines += ["", "## Optimal learning rate", ""]
    table = report.lr_table
    if not table.cells:
        lines.append("No runs with a learning rate: the LR table is empty.")
    else:
        lines += ["| variant | epochs | optimal lr | held-out loss | LRs tried |", "|---|---|---|---|---|"]
        lines += [
            f"| {c.variant} | {c.epochs:g} | {c.lr:g} | {c.val_loss:.4f} | {c.n_lrs} |" for c in table.cells
        ]
        lines += ["", "LRs tried: the distinct LRs the cell's runs tried (an lr_search row's every trial, "
                  "diverged and early-stopped runs included). With one LR tried a cell's optimum is not measured, "
                  "and the trends below leave it out."]
        lines += ["", "Does the optimal LR fall (non-increasing) as the epoch budget grows?", ""]
        lines += [
            f"- {v}: " + _trend(a, sum(c.variant == v for c in table.cells),
                                [f"{e:g} epochs" for e in table.not_measured_in_epochs.get(v, ())])
            for v, a in table.monotone_in_epochs.items()
        ]
        lines += ["", f"Does it fall as the model grows ({' < '.join(table.size_order)}), at fixed epochs?", ""]
        lines += [
            f"- {e:g} epochs: " + _trend(a, sum(c.epochs == e for c in table.cells),
                                         list(table.not_measured_in_size.get(e, ())))
            for e, a in table.monotone_in_size.items()
        ]
    lines += ["", *_trend_markdown(report)]
    lines += ["", "## Plots", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fit_dict(f: Fit | None) -> dict[str, Any] | None:
    return None if f is None else {"coefficient": f.a, "exponent": f.b, "r2": f.r2, "n": f.n}


def _joint_json(report: ScalingReport) -> dict[str, Any]:
    law = report.joint
    if law is None:
        return {"fitted": False, "note": report.joint_note}
    return {
        "fitted": True, "E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
        "a": law.a, "b": law.b, "a_flops": law.a_flops, "b_flops": law.b_flops, "k": law.k, "gamma": law.gamma,
        "n": law.n, "data_unit": law.data_unit,
        "objective": law.objective, "level": law.level, "n_boot": law.n_boot,
        "intervals": {name: iv.as_list() for name, iv in law.intervals.items()},
        "same_rate": law.same_rate(),
    }


def _iso_json(report: ScalingReport) -> dict[str, Any]:
    iso = report.iso
    if iso is None:
        return {"fitted": False, "note": report.iso_note}
    return {
        "fitted": iso.fit is not None,
        "a": iso.a,
        "coefficient": None if iso.fit is None else iso.fit.a,
        "r2": None if iso.fit is None else iso.fit.r2,
        "interval": None if iso.interval is None else list(iso.interval),
        "level": iso.level, "n_boot": iso.n_boot, "resampled": iso.method or None, "note": iso.note or None,
        "profiles": [{"compute": p.compute, "params": list(p.params), "loss": list(p.loss), "n_opt": p.n_opt,
                      "note": p.note or None} for p in iso.profiles],
    }


def report_json(
    report: ScalingReport,
    outputs: Mapping[str, str],
    skipped: Sequence[str],
    lr_search: Audit | None = None,
    lr_replay: Audit | None = None,
) -> dict[str, Any]:
    table = report.lr_table
    point_keys = ("variant", "epochs", "compute", "val_loss", "lr", "params", "trial_id")
    fit, ci = report.fit, report.ci
    return _clean(
        {
            "source": report.source,
            "dataset": report.dataset,
            "fit_on": report.fit_on,
            "coefficient": None if fit is None else fit.a,
            "exponent": None if fit is None else fit.b,
            "r2": None if fit is None else fit.r2,
            "n": None if fit is None else fit.n,
            "fit_note": report.fit_note or None,
            "ci": None if ci is None else {
                "level": ci.level,
                "n_boot": ci.n_boot,
                "coefficient": [ci.a_low, ci.a_high],
                "exponent": [ci.b_low, ci.b_high],
                "points": ci.points,
                "collapsed": ci.collapsed,
            },
            "ci_note": report.ci_note or None,
            "frontier": [{k: report.points[i].get(k) for k in point_keys} | {"uncontested": i in report.uncontested}
                         for i in report.frontier],
            "params_exponent": None if report.optimal.params is None else report.optimal.params.b,
            "epochs_exponent": None if report.optimal.epochs is None else report.optimal.epochs.b,
            "compute_optimal": {
                "params": _fit_dict(report.optimal.params),
                "epochs": _fit_dict(report.optimal.epochs),
                "notes": list(report.optimal.notes),
            },
            "contested": None if report.contested_fit is None else {
                "fit": _fit_dict(report.contested_fit),
                "params": _fit_dict(report.contested_optimal.params),
                "epochs": _fit_dict(report.contested_optimal.epochs),
            },
            "joint_law": _joint_json(report),
            "lr_trend": None if report.trend is None else {
                "slopes": report.trend.slopes,
                "intervals": {f: list(iv) for f, iv in report.trend.intervals.items()},
                "verdicts": {f: report.trend.verdict(f) for f in ("epochs", "size")},
                "cells": report.trend.cells, "censored": report.trend.censored, "n_boot": report.trend.n_boot,
            },
            "lr_trend_note": report.trend_note or None,
            "isoflop": _iso_json(report),
            "lr_table": [
                {"variant": c.variant, "epochs": c.epochs, "lr": c.lr, "val_loss": c.val_loss, "n_lrs": c.n_lrs,
                 "measured": c.measured}
                for c in table.cells
            ],
            # null where there is no answer: a single cell, or optima not measured (see lr_not_measured_*).
            "lr_monotone_in_epochs": table.monotone_in_epochs,
            "lr_monotone_in_size": {f"{e:g}": a for e, a in table.monotone_in_size.items()},
            "lr_not_measured_in_epochs": {v: list(e) for v, e in table.not_measured_in_epochs.items()},
            "lr_not_measured_in_size": {f"{e:g}": list(v) for e, v in table.not_measured_in_size.items()},
            "size_order": list(table.size_order),
            "excluded": report.excluded,
            "outputs": dict(outputs),
            "skipped": list(skipped),
            "lr_search": None if lr_search is None else audit_json(lr_search),
            "lr_replay": None if lr_replay is None else audit_json(lr_replay),
        }
    )


def write_tensorboard(logdir: Path, images: Sequence[Path], markdown: str, report: ScalingReport) -> None:
    """The plots as images, the summary as text and the fitted numbers as scalars."""
    from PIL import Image
    from tensorboardX import SummaryWriter

    # A report re-run into the same directory replaces its events rather than adding a
    # second set that TensorBoard would show side by side.
    if logdir.is_dir():
        for stale in logdir.glob("events.out.tfevents.*"):
            stale.unlink()
    writer = SummaryWriter(logdir=str(logdir))
    try:
        for path in images:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
            writer.add_image(f"scaling/{path.stem}", pixels, global_step=0, dataformats="HWC")
        writer.add_text("scaling/summary", markdown, global_step=0)
        if report.fit is not None:
            writer.add_scalar("scaling/exponent", report.fit.b, global_step=0)
            writer.add_scalar("scaling/coefficient", report.fit.a, global_step=0)
            writer.add_scalar("scaling/r2", report.fit.r2, global_step=0)
        for name in ("params", "epochs"):
            f = getattr(report.optimal, name)
            if f is not None:
                writer.add_scalar(f"scaling/{name}_exponent", f.b, global_step=0)
        if report.joint is not None:
            for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
                writer.add_scalar(f"joint_law/{name}", getattr(report.joint, name), global_step=0)
        if report.iso is not None and report.iso.fit is not None:
            writer.add_scalar("isoflop/a", report.iso.fit.b, global_step=0)
    finally:
        writer.close()


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser

    parser = FlagParser(
        prog="python -m tuner.report",
        description="Fit the loss-vs-compute power law of a ledger's (or a CSV's) runs and write its plots, "
        "summary.md and TensorBoard images to a directory.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ledger", metavar="URI", help="read the runs from this ledger directory (local path or gs://…)")
    source.add_argument(
        "--csv", metavar="FILE",
        help="read the runs from a CSV with columns variant, epochs, compute, val_loss [, lr, top1, params, kind, trial_id, "
        "parent_trial_id, status]",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="directory to write the plots, summary.md and tensorboard/ to (created if missing)"
    )
    parser.add_argument(
        "--dataset", metavar="NAME",
        help="report the pre-training runs of this dataset (needed when the rows hold several: "
        "a scaling fit is per dataset)",
    )
    parser.add_argument("--json", action="store_true", help="print the fitted numbers as one JSON object on stdout")
    parser.add_argument("--n-boot", type=int, default=1000, metavar="N", help="bootstrap resamples behind the confidence interval of the fitted exponent (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    parser.add_argument(
        "--fit-on", choices=("frontier", "all"), default="frontier",
        help="fit the power law to the frontier points (default) or to every (variant, epochs) point",
    )
    parser.add_argument(
        "--lr-search-ledger", metavar="URI",
        help="ledger a walk of tuner.lr_search wrote to: compare its LRs with the grid's optima (tuner.lr_audit)",
    )
    return parser


def _grid_rows_from_csv(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
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


def run(args: argparse.Namespace) -> int:
    if args.n_boot < 1:
        raise TunerError(f"--n-boot must be at least 1, got {args.n_boot}")
    if args.ledger:
        table = read_ledger_table(args.ledger)
        rows, grid_rows = rows_from_table(table, args.ledger), table.to_pylist()
    else:
        rows = load_csv(args.csv)
        grid_rows = _grid_rows_from_csv(rows)
    source = f"ledger {args.ledger}" if args.ledger else f"CSV {args.csv}"
    rows, dataset = pick_dataset(rows, args.dataset, source)
    if grid_rows is not None and args.dataset is not None:
        grid_rows = [r for r in grid_rows if r.get("kind") == "finetune" or r.get("dataset") == dataset]
    report = analyse(rows, source, n_boot=args.n_boot, seed=args.seed, fit_on=args.fit_on, dataset=dataset)
    lrs_per_cell = max((c.n_lrs for c in report.lr_table.cells), default=0)
    lr_markdown, searched, replayed = lr_search_audit(grid_rows, args.lr_search_ledger, lrs_per_cell)

    with output_dir(args.out) as out:
        outputs = _write_report(out, report, lr_markdown)
    skipped = outputs.pop("skipped")
    if storage.is_uri(args.out):
        outputs = {k: f"{args.out.rstrip('/')}/{Path(v).relative_to(out)}" for k, v in outputs.items()}

    if args.json:
        print(json.dumps(report_json(report, outputs, skipped, searched, replayed), allow_nan=False))
    else:
        for line in console_summary(report):
            print(line)
        if searched is not None:
            print(f"LR walk: {summary_sentence(searched)}")
        if replayed is not None:
            print(f"LR replay: {summary_sentence(replayed)}")
        for path in outputs.values():
            print(f"wrote {path}")
        for line in skipped:
            print(line)
    return 0


@contextlib.contextmanager
def output_dir(uri: str) -> Iterator[Path]:
    """The local directory to write a report into: `uri` itself, or for a bucket a temporary
    directory copied there when the block ends (its old TensorBoard events replaced)."""
    if not storage.is_uri(uri):
        if storage.mistyped_uri(uri):
            raise TunerError(f"--out {storage.mistyped_uri(uri)}")
        out = Path(uri)
        if out.exists() and not out.is_dir():
            raise TunerError(f"--out {out} is a file; give a directory")
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    problem = storage.uri_problem(uri)
    if problem is not None:
        raise TunerError(f"--out {problem}")
    fs, path = storage.filesystem(uri)
    with tempfile.TemporaryDirectory(prefix="nfscale-report-") as tmp:
        yield Path(tmp)
        stale = fs.get_file_info(pafs.FileSelector(f"{path}/tensorboard", allow_not_found=True))
        for info in stale:
            if info.base_name.startswith("events.out.tfevents."):
                fs.delete_file(info.path)
        pafs.copy_files(tmp, path, destination_filesystem=fs)


def _write_report(out: Path, report: ScalingReport, lr_markdown: str) -> dict[str, Any]:
    """Plots, summary.md and tensorboard/ under `out`: {name: path} of what was written, and "skipped"."""
    images: list[Path] = []
    notes: list[str] = []
    skipped: list[str] = []

    plot_loss_vs_compute(report, out / LOSS_PLOT)
    images.append(out / LOSS_PLOT)
    notes.append(f"`{LOSS_PLOT}`: held-out loss vs compute, frontier" + (" and fit" if report.fit else ""))
    if report.lr_table.cells:
        plot_lr_vs_epochs(report, out / LR_PLOT)
        images.append(out / LR_PLOT)
        notes.append(f"`{LR_PLOT}`: optimal LR vs epoch budget")
    else:
        skipped.append(f"{LR_PLOT} skipped: no runs record a learning rate")
    if report.iso is not None and any(p.n_opt is not None for p in report.iso.profiles):
        plot_isoflop(report, out / ISOFLOP_PLOT)
        images.append(out / ISOFLOP_PLOT)
        notes.append(f"`{ISOFLOP_PLOT}`: IsoFLOP profiles and the compute-optimal model size (approaches 2 and 3)")
    else:
        skipped.append(f"{ISOFLOP_PLOT} skipped: no IsoFLOP profile with an interior minimum")
    if report.finetune:
        plot_finetune_vs_compute(report, out / FINETUNE_PLOT)
        images.append(out / FINETUNE_PLOT)
        notes.append(
            f"`{FINETUNE_PLOT}`: fine-tuned top-1 vs pre-training compute (fine-tuned runs: {len(report.finetune)})"
        )
    else:
        skipped.append(
            f"{FINETUNE_PLOT} skipped: no fine-tuning rows with a top-1 linked to a pre-training row by parent_trial_id"
        )
    notes += skipped

    markdown = summary_markdown(report, notes) + ("\n" + lr_markdown if lr_markdown else "")
    (out / "summary.md").write_text(markdown)
    write_tensorboard(out / "tensorboard", images, markdown, report)
    outputs: dict[str, Any] = {p.stem: str(p) for p in images}
    outputs |= {"summary": str(out / "summary.md"), "tensorboard": str(out / "tensorboard")}
    return outputs | {"skipped": skipped}


def console_summary(report: ScalingReport) -> list[str]:
    """The first lines `tuner.report` prints: the dataset and its fit, or why there is none and the cells."""
    fit, ci = report.fit, report.ci
    head = f"dataset {_name(report)}: "
    if fit is None:
        lines = [head + "no fit: " + report.fit_note]
        cells = report.lr_table.cells
        if cells:
            plural = "s" if len(cells) != 1 else ""
            lines.append(f"{len(cells)} cell{plural} (best lr, final held-out loss, LRs tried):")
            lines += [f"  {c.variant} at {c.epochs:g} epochs: lr {c.lr:g}, loss {c.val_loss:.4f}, "
                      f"{c.n_lrs} LR{'s' if c.n_lrs != 1 else ''} tried" for c in cells]
        return lines
    interval = "" if ci is None else (
        f"b {int(100 * ci.level)}% CI [{ci.b_low:.4f}, {ci.b_high:.4f}], ")
    lines = [head + f"{fit.equation()}  ({interval}R² {fit.r2:.4f}, {fit.n} points)"]
    if report.ci_note:
        lines.append(f"note: {report.ci_note}")
    law = report.joint
    if law is not None:
        lines.append(f"joint law: {law.equation()}; a = {law.a:.3f}{_iv(law, 'a', '.3f')}, "
                     f"b = {law.b:.3f}{_iv(law, 'b', '.3f')}; size and epochs at the same rate: {law.same_rate()}")
    if report.iso is not None and report.iso.fit is not None:
        iv = report.iso.interval
        lines.append(f"IsoFLOP: N_opt ∝ C^{report.iso.fit.b:.3f}" + ("" if iv is None else f" [{iv[0]:.3f}, {iv[1]:.3f}]"))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except TunerError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
