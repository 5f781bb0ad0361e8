"""Ledger rows (or any dicts) as an aligned plain-text table: the one printer behind
`tuner.ledger show` (`records.ledger.format_table`) and the results table the
commands print after their trials (`raytune.experiment.results_table`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from tuner.records.cells import cell_label


def cell_text(value: Any, column: str = "") -> str:
    """One cell: `-` for a missing value, floats to 4 significant digits, a `params` count as 300k / 71.5M."""
    if value is None:
        return "-"
    if column == "params":
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Mapping[str, str] | None = None,
    numeric: Collection[str] | None = None,
) -> str:
    """A header line (a column's name, or its entry in `headers`) and one line per row, columns
    two spaces apart, `numeric` columns right-aligned (default: every column where some row
    holds a number). A row's `variant` reads with its multipliers (`nano-w2`) when the row has them."""
    rows = list(rows)
    headers = headers or {}
    lines = []
    for row in rows:
        shown = dict(row)
        if "variant" in shown and ("width_mult" in shown or "depth_mult" in shown):
            shown["variant"] = cell_label(shown["variant"], shown.get("width_mult") or 1.0,
                                          shown.get("depth_mult") or 1.0)
        lines.append([cell_text(shown.get(col), col) for col in columns])
    names = [headers.get(col, col) for col in columns]
    widths = [max([len(name)] + [len(line[i]) for line in lines]) for i, name in enumerate(names)]
    if numeric is None:
        numeric = [col for col in columns if any(isinstance(r.get(col), (int, float)) for r in rows)]
    right = {i for i, col in enumerate(columns) if col in numeric}

    def fmt(line: list[str]) -> str:
        return "  ".join(
            text.rjust(widths[i]) if i in right else text.ljust(widths[i]) for i, text in enumerate(line)
        ).rstrip()

    return "\n".join([fmt(names), *(fmt(line) for line in lines)])
