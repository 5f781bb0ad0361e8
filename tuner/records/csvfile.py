"""Typed CSV files, read with pyarrow.csv: the one reader behind `tuner.ledger import` and `tuner.report --csv`.

Every cell is read as text (stripped) and each column is then converted with pyarrow.compute, so a bad
cell is reported by its file line and column with the text it holds: pyarrow's own typed reading
(`ConvertOptions(column_types=...)`) stops at the first bad value with "In CSV column #2: CSV conversion
error to double: invalid value 'abc'", naming neither the line nor the column.

    csv = read_csv("runs.csv", label="runs.csv")
    values, problem = csv.convert({"variant": Column(str, required=True), "lr": Column(float, finite=True)})
    if problem is not None:
        raise TunerError(problem.message)   # "runs.csv line 3: column 'lr' is not a number: 'fast'"
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tuner.errors import TunerError


@dataclass(frozen=True)
class Column:
    """How a column's cells are read: `kind` str, float, or int (a whole number, `256` or `256.0`)."""

    kind: type = float
    required: bool | Sequence[bool] = False  # an empty cell is an error (per row, with one flag a row)
    finite: bool = False  # nan and inf are errors
    empty_hint: str = ""  # said after "column 'x' is empty"
    finite_hint: str = ""  # said after "column 'x' is not a finite number: 'inf'"


@dataclass(frozen=True)
class Problem:
    """The first bad cell: its row (0 is the first row after the header) and the one-line message."""

    row: int
    message: str


class CSVFile:
    """A CSV file's header (names stripped) and its rows as text, with each row's line in the file."""

    def __init__(self, label: str, header: Sequence[str], table: pa.Table, lines: Sequence[int]):
        self.label = label
        self.header = tuple(header)
        self.num_rows = table.num_rows
        self.lines = tuple(lines)
        self._table = table

    def where(self, row: int) -> str:
        """`<label> line <n>`: how messages name a row."""
        return f"{self.label} line {self.lines[row]}"

    def text(self, name: str) -> pa.StringArray:
        """A column's cells, stripped; "" in every row when the file has no such column."""
        if name not in self.header:
            return pa.array([""] * self.num_rows, pa.string())
        return pc.utf8_trim_whitespace(self._table.column(self.header.index(name)).combine_chunks())

    def convert(self, columns: Mapping[str, Column]) -> tuple[dict[str, list[Any]], Problem | None]:
        """Each named column's values (None for an empty cell, and for a bad one), and the first bad
        cell in reading order: by row, then in the order of `columns`."""
        values: dict[str, list[Any]] = {}
        first: tuple[int, int, str] | None = None
        for position, (name, spec) in enumerate(columns.items()):
            values[name], bad = self._column(name, spec)
            if bad is not None and (first is None or (bad[0], position) < first[:2]):
                first = (bad[0], position, bad[1])
        return values, None if first is None else Problem(first[0], first[2])

    def _column(self, name: str, spec: Column) -> tuple[list[Any], tuple[int, str] | None]:
        texts = self.text(name)
        empty = pc.equal(texts, "").to_numpy(zero_copy_only=False)
        required = np.broadcast_to(np.asarray(spec.required, dtype=bool), empty.shape)
        cells = pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), texts)
        checks = [(empty & required, f"is empty{spec.empty_hint}")]
        if spec.kind is str:
            out = cells.to_pylist()
        else:
            numbers, unparsable = _to_float(cells)
            checks.append((unparsable, "is not a number: {text!r}"))
            present = ~(empty | unparsable)
            if spec.finite:
                finite = pc.is_finite(numbers).fill_null(True).to_numpy(zero_copy_only=False)
                checks.append((present & ~finite, "is not a finite number: {text!r}" + spec.finite_hint))
            out = numbers.to_pylist()
            if spec.kind is int:
                whole = pc.equal(numbers, pc.trunc(numbers)).fill_null(True).to_numpy(zero_copy_only=False)
                checks.append((present & ~whole, "is not a whole number: {text!r}"))
                out = [int(v) if v is not None and math.isfinite(v) and v == int(v) else None for v in out]
        bad = np.zeros(empty.shape, dtype=bool)
        for mask, _ in checks:
            bad |= mask
        if not bad.any():
            return out, None
        row = int(np.argmax(bad))
        # Of the checks failing there, the first (empty, then not a number, not finite, not whole).
        message = next(message for mask, message in checks if mask[row])
        text = texts[row].as_py()
        return out, (row, f"{self.where(row)}: column {name!r} {message.format(text=text)}")


def _to_float(cells: pa.StringArray) -> tuple[pa.DoubleArray, np.ndarray]:
    """The cells as float64 (null where empty or unparsable) and where they were unparsable."""
    try:
        return pc.cast(cells, pa.float64()), np.zeros(len(cells), dtype=bool)
    except pa.ArrowInvalid:
        pass
    # Only when some cell is bad: cast cell by cell to find which (Arrow's error says only its text).
    unparsable = np.zeros(len(cells), dtype=bool)
    for i, text in enumerate(cells.to_pylist()):
        if text is not None:
            try:
                pa.scalar(text).cast(pa.float64())
            except pa.ArrowInvalid:
                unparsable[i] = True
    return pc.cast(pc.if_else(pa.array(unparsable), pa.scalar(None, pa.string()), cells), pa.float64()), unparsable


def read_csv(path: str | Path, label: str | None = None) -> CSVFile:
    """The file's header and rows, every cell as text; `label` names the file in messages (default: the path).

    An empty file (no line that is not blank) has no header and no rows. A row with more or
    fewer cells than the header is an error naming its line, as are an unreadable file, text
    that is not UTF-8 and a header naming one column twice.
    """
    path = Path(path)
    label = str(path) if label is None else label
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TunerError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # pyarrow skips blank lines; a row's line in the file is the line of the row-th non-blank one
    # after the header (a quoted cell that spans lines shifts this, and then rows count from line 2).
    nonblank = [i for i, line in enumerate(data.splitlines(), start=1) if line]
    if not nonblank:
        return CSVFile(label, (), pa.table({}), ())
    ragged: list[pacsv.InvalidRow] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        ragged.append(row)
        return "error"

    read = pacsv.ReadOptions(use_threads=False)
    parse = pacsv.ParseOptions(invalid_row_handler=on_invalid_row)
    try:
        with pacsv.open_csv(io.BytesIO(data), read_options=read, parse_options=parse) as reader:
            names = reader.schema.names
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names},
                                       strings_can_be_null=False)
        table = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        if ragged:
            row = ragged[0]
            # pyarrow numbers rows among the non-blank lines, the header being row 1.
            line = nonblank[row.number - 1] if row.number and row.number <= len(nonblank) else row.number
            raise TunerError(f"{label} line {line}: {row.actual_columns} cell(s) where the header names "
                             f"{row.expected_columns} columns") from None
        raise TunerError(f"{path} is not a readable CSV file: {' '.join(str(exc).split())}") from None
    header = [name.strip() for name in names]
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise TunerError(f"{path} names column(s) {', '.join(repr(n) for n in twice)} more than once")
    lines = nonblank[1:] if len(nonblank) == table.num_rows + 1 else range(2, table.num_rows + 2)
    return CSVFile(label, header, table, lines)
