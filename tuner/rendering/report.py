"""Writing a scaling report: the plots, the Markdown summary, the JSON and the
TensorBoard images of a `tuner.study.analysis.ScalingReport`, and the console summary
`python -m tuner.report` prints (the command is tuner/report.py).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from nfnet import storage
from nfnet.metrics import json_safe
from tuner.errors import TunerError
from tuner.study.audit import Audit, audit_json
from tuner.study.loss_law import JointLaw
from tuner.study.scaling import Fit, frontier
from tuner.study.analysis import ScalingReport
from tuner.study.analysis import excluded_text

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")

LOSS_PLOT = "loss_vs_compute.png"
LR_PLOT = "lr_vs_epochs.png"
FINETUNE_PLOT = "finetune_vs_compute.png"
ISOFLOP_PLOT = "isoflop.png"


# ---------------------------------------------------------------- reading runs


# ---------------------------------------------------------------- analysis


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


def _label_axes(ax: Any, xlabel: str, ylabel: str, title: str, legend_size: int = 8) -> None:
    """What every plot's axes get: axis labels, a title, a light grid and the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


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
    _label_axes(ax, "training compute (FLOPs)", "held-out loss", "Held-out loss vs compute")
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
    _label_axes(ax, "epoch budget", "optimal learning rate", "Optimal learning rate vs epoch budget")
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
    _label_axes(left, "parameters N", "held-out loss at that compute", "IsoFLOP profiles", legend_size=7)
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
    _label_axes(right, "training compute (FLOPs)", "compute-optimal parameters", "Compute-optimal model size")
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
    _label_axes(ax, "pre-training compute (FLOPs)", "fine-tuned top-1", "Fine-tuned accuracy vs pre-training compute")
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
        f"Left out of the fits: {excluded_text(report.excluded) or 'nothing'}.",
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
    return json_safe(
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


def write_report(out: Path, report: ScalingReport, lr_markdown: str) -> dict[str, Any]:
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
