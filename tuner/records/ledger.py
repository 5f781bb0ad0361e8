"""The results ledger: an append-only Parquet table of every finished, stopped or diverged trial.

A ledger is a directory (a local path or `gs://bucket/path`) of Parquet part files.
Each append writes one new file `part-<utc time>-<uuid>.parquet` under a temporary
name in the same directory and moves it into place, so a crash leaves at most a
temporary file that readers ignore, never half a row; existing files are never
rewritten. Appends skip rows whose `trial_id` is already present, so a resumed
sweep or a retried trial never duplicates a row.

Concurrent writers (two sweeps, or a sweep and an import, appending at once) need
no lock, which an object store could not give: gs:// has no file locking, and a
lease file would need conditional writes (`ifGenerationMatch`) that pyarrow's
filesystems do not expose. Instead every append writes a file of its own (the
uuid makes the name unique on any host, whatever its clock), so no append can
overwrite or truncate another's rows, and a file becomes visible whole (a rename on
a local disk; an object is only listed once its upload is finished). Two writers can
still both write one trial_id, since each checks the ledger before the other's file
lands; every read collapses such repeats, keeping the row of the first part file in
name order, so all readers agree on one row per trial_id. The price is that a
duplicate may sit on disk; nothing is lost.

Readers list the part files and scan them as one pyarrow dataset in `LEDGER_SCHEMA`, so a
column that files written before it existed lack reads as null.

A part file that cannot be read stops every reader with a one-line error naming it;
`tuner.ledger check` moves such files aside into `<ledger>/_corrupt/` (kept, for
inspection or repair), which readers never look into.

    python -m tuner.ledger show [--ledger URI] [--kind pretrain|finetune] [--json]
    python -m tuner.ledger import results.csv [--ledger URI] [--dataset NAME]
    python -m tuner.ledger check [--ledger URI]
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nfnet import storage
from nfnet.errors import NFNetError, one_line
from tuner.errors import TunerError
from tuner.records.cells import cell_label, parse_label, variant_params
from tuner.records.tables import text_table
from tuner.records.csvfile import Column, read_csv

DEFAULT_LEDGER = "results/ledger"
LEDGER_ENV = "NFSCALE_LEDGER"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
# Hidden prefix: pyarrow datasets and readers of this module both skip such files.
TMP_PREFIX = ".tmp-"
# Where `tuner.ledger check` moves unreadable part files; readers list only the top level.
CORRUPT_DIR = "_corrupt"

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("experiment", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("parent_trial_id", pa.string()),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("width_mult", pa.float64(), nullable=False),
        pa.field("depth_mult", pa.float64(), nullable=False),
        pa.field("params", pa.int64()),
        pa.field("epochs", pa.float64(), nullable=False),
        pa.field("lr", pa.float64(), nullable=False),
        pa.field("batch_size", pa.int64(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("resolution", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("final_val_loss", pa.float64()),
        pa.field("best_val_loss", pa.float64()),
        pa.field("top1", pa.float64()),
        pa.field("train_loss", pa.float64()),
        pa.field("flops", pa.float64()),
        pa.field("device_hours", pa.float64()),
        pa.field("images_seen", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("checkpoint_uri", pa.string()),
        # lr_search's rows: how the LR was chosen (JSON: trials, rounds, prediction, noise, bracketed).
        pa.field("search", pa.string()),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
# Columns an append must supply; width/depth multipliers default to 1, code_version
# and time are filled in, every other column defaults to null.
REQUIRED_COLUMNS = ("trial_id", "kind", "variant", "epochs", "lr", "batch_size", "status")
KINDS = ("pretrain", "finetune")
STATUSES = ("finished", "stopped", "diverged", "imported")


def default_ledger_uri() -> str:
    """$NFSCALE_LEDGER when set, else `results/ledger` under the working directory."""
    return os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """nfscale's version, plus `+g<commit>` when the package sits in a git checkout."""
    try:
        version = metadata.version("nfscale")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+g{commit}" if commit else version


def _resolve(uri: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, uri
    if "://" not in uri:
        # Plain paths (relative or absolute) are local directories.
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())
    try:
        return storage.filesystem(uri)
    except NFNetError as exc:
        raise TunerError(f"--ledger {exc}") from None  # the message names the URI and what to do


class Ledger:
    """An append-only directory of Parquet part files with the `LEDGER_SCHEMA` columns.

    `filesystem` opens `uri` as a path inside that pyarrow filesystem instead of
    parsing it as a URI; tests pass a `SubTreeFileSystem` over a local folder to stand
    in for a cloud bucket, which cannot be reached here.
    """

    def __init__(self, uri: str | os.PathLike[str] | None = None, filesystem: pafs.FileSystem | None = None):
        self.uri = str(uri) if uri is not None else default_ledger_uri()
        self.fs, self.path = _resolve(self.uri, filesystem)

    def __repr__(self) -> str:
        return f"Ledger({self.uri!r})"

    def _join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}" if self.path else name

    def exists(self) -> bool:
        """Whether the ledger's directory is there (a sweep makes it with its first row)."""
        try:
            return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound
        except OSError as exc:
            raise TunerError(f"cannot reach ledger {self.uri}: {exc}; check the path and its permissions") from exc

    def _part_files(self) -> list[str]:
        """Committed part files in name (= time) order; [] when the ledger does not exist."""
        try:
            info = self.fs.get_file_info(self.path)
            if info.type == pafs.FileType.NotFound:
                return []
            if info.type != pafs.FileType.Directory:
                raise TunerError(
                    f"ledger {self.uri} is a file, not a directory; pass a directory path for --ledger"
                )
            listing = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        except OSError as exc:
            raise TunerError(f"cannot list ledger {self.uri}: {exc}; check the path and its permissions") from exc
        names = [
            info.base_name
            for info in listing
            if info.type == pafs.FileType.File
            and info.base_name.startswith(PART_PREFIX)
            and info.base_name.endswith(PART_SUFFIX)
        ]
        return [self._join(name) for name in sorted(names)]

    def _check_hint(self) -> str:
        return f"run `python -m tuner.ledger check --ledger {self.uri}` to move it aside"

    def _scan(self, paths: list[str], columns: list[str] | None = None) -> pa.Table:
        """The rows of part files in LEDGER_SCHEMA, in file order (pyarrow.dataset: a column a file
        lacks, written before the column existed, reads as null)."""
        dataset = ds.FileSystemDataset.from_paths(paths, schema=LEDGER_SCHEMA, format=ds.ParquetFileFormat(),
                                                  filesystem=self.fs)
        return dataset.to_table(columns=columns)

    def _part_problem(self, path: str) -> tuple[pa.Table | None, str | None]:
        """(the part's rows in LEDGER_SCHEMA, None), or (None, why it cannot be read)."""
        try:
            return self._scan([path]), None
        except (OSError, pa.ArrowException) as exc:
            problem = one_line(exc)
        # A cast the schema needs failed; Arrow's message does not say in which column.
        try:
            physical = pq.read_schema(path, filesystem=self.fs)
        except (OSError, pa.ArrowException):
            return None, problem
        for fld in LEDGER_SCHEMA:
            if fld.name in physical.names and physical.field(fld.name).type != fld.type:
                try:
                    self._scan([path], columns=[fld.name])
                except (OSError, pa.ArrowException):
                    return None, (f"column {fld.name!r} is of type {physical.field(fld.name).type}, "
                                  f"expected {fld.type}")
        return None, problem

    def _gone(self, path: str) -> bool:
        try:
            return self.fs.get_file_info(path).type == pafs.FileType.NotFound
        except OSError:
            return False

    def _read_parts(self, paths: list[str]) -> pa.Table:
        """The parts' rows, one file at a time: which part cannot be read, one that vanished since
        the listing (`check` moved it aside) left out."""
        tables = []
        for path in paths:
            table, problem = self._part_problem(path)
            if table is not None:
                tables.append(table)
            elif not self._gone(path):
                raise TunerError(f"cannot read ledger file {path}: {problem}; {self._check_hint()}")
        return pa.concat_tables(tables) if tables else LEDGER_SCHEMA.empty_table()

    def read(self) -> pa.Table:
        """Every row, in append order; an empty table with the schema when there is no ledger yet.

        Should two writers race to append the same trial, the first file's row (in part-file
        name order) is the one every reader sees.
        """
        paths = self._part_files()
        if not paths:
            return LEDGER_SCHEMA.empty_table()
        try:
            table = self._scan(paths)
        except (OSError, pa.ArrowException):
            table = self._read_parts(paths)
        seen: set[str] = set()
        keep = []
        for trial_id in table.column("trial_id").to_pylist():
            keep.append(trial_id not in seen)
            seen.add(trial_id)
        return table if all(keep) else table.filter(pa.array(keep))

    def check(self) -> pa.Table:
        """`read()`, after checking that a local ledger can be written: what a command
        calls before its first trial, so neither a damaged part file nor an unwritable
        path surfaces only when a finished trial is recorded. Creates nothing."""
        from nfnet.paths import dir_problem

        if self.fs.type_name == "local":
            problem = dir_problem(self.path)
            if problem is not None:
                raise TunerError(f"--ledger {problem}; pass a directory (it is created when missing)")
        elif storage.is_uri(self.uri) and (problem := storage.uri_problem(self.uri)) is not None:
            raise TunerError(f"--ledger {problem}")
        return self.read()

    def move_corrupt_aside(self) -> list[tuple[str, str]]:
        """Moves every part file that cannot be read into `<ledger>/_corrupt/`; returns
        (where it now is, why it was moved) per file, [] when every part reads.

        Temporary files are left alone: one may be another writer's append in progress.
        A name already taken in `_corrupt/` gets a numbered suffix, so nothing is overwritten.
        """
        moved = []
        for path in self._part_files():
            table, problem = self._part_problem(path)
            if table is not None or self._gone(path):
                continue
            aside_dir = self._join(CORRUPT_DIR)
            name = path.rsplit("/", 1)[-1]
            target, n = f"{aside_dir}/{name}", 1
            try:
                self.fs.create_dir(aside_dir, recursive=True)
                while self.fs.get_file_info(target).type != pafs.FileType.NotFound:
                    target, n = f"{aside_dir}/{name}.{n}", n + 1
                self.fs.move(path, target)
            except OSError as exc:
                raise TunerError(f"cannot move {path} into {aside_dir}: {one_line(exc)}; "
                                 "check the ledger's permissions") from exc
            moved.append((target, problem))
        return moved

    def trial_ids(self) -> set[str]:
        return set(self.read().column("trial_id").to_pylist())

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows whose trial_id is new; returns how many were written."""
        existing = self.trial_ids()
        fresh: list[dict[str, Any]] = []
        for row in rows:
            full = _complete_row(row)
            if full["trial_id"] not in existing:
                existing.add(full["trial_id"])
                fresh.append(full)
        if not fresh:
            return 0
        table = _to_table(fresh)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{PART_PREFIX}{stamp}-{uuid.uuid4().hex}{PART_SUFFIX}"
        final, tmp = self._join(name), self._join(TMP_PREFIX + name)
        try:
            self.fs.create_dir(self.path, recursive=True)
            pq.write_table(table, tmp, filesystem=self.fs)
            # A rename on local disks; on object stores the final object appears whole.
            self.fs.move(tmp, final)
        except (OSError, pa.ArrowException) as exc:
            raise TunerError(f"cannot write to ledger {self.uri}: {exc}; check the path and its permissions") from exc
        return len(fresh)


def _complete_row(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(row) - set(LEDGER_SCHEMA.names))
    if unknown:
        raise TunerError(f"unknown ledger column(s) {', '.join(unknown)}; known: {', '.join(LEDGER_SCHEMA.names)}")
    missing = [name for name in REQUIRED_COLUMNS if row.get(name) is None]
    if missing:
        raise TunerError(f"ledger row {row.get('trial_id')!r} lacks {', '.join(missing)}")
    if row["kind"] not in KINDS:
        raise TunerError(f"ledger row {row['trial_id']!r} has kind {row['kind']!r}; use one of {', '.join(KINDS)}")
    if row["status"] not in STATUSES:
        raise TunerError(
            f"ledger row {row['trial_id']!r} has status {row['status']!r}; use one of {', '.join(STATUSES)}"
        )
    full = {name: row.get(name) for name in LEDGER_SCHEMA.names}
    full["width_mult"] = 1.0 if full["width_mult"] is None else full["width_mult"]
    full["depth_mult"] = 1.0 if full["depth_mult"] is None else full["depth_mult"]
    full["code_version"] = full["code_version"] or code_version()
    full["time"] = full["time"] or datetime.now(timezone.utc)
    return full


def _to_table(rows: list[dict[str, Any]]) -> pa.Table:
    arrays = []
    for fld in LEDGER_SCHEMA:
        try:
            arrays.append(pa.array([row[fld.name] for row in rows], type=fld.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise TunerError(f"ledger column {fld.name!r} expects {fld.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=LEDGER_SCHEMA)


# ---------------------------------------------------------------- CSV import

CSV_REQUIRED = ("variant", "epochs", "lr", "batch_size", "val_loss")
# CSV column -> (ledger column, type)
CSV_COLUMNS: dict[str, tuple[str, type]] = {
    "variant": ("variant", str),
    "epochs": ("epochs", float),
    "lr": ("lr", float),
    "batch_size": ("batch_size", int),
    "val_loss": ("final_val_loss", float),
    "compute": ("flops", float),
    "top1": ("top1", float),
    "params": ("params", int),
    "dataset": ("dataset", str),
    "width_mult": ("width_mult", float),
    "depth_mult": ("depth_mult", float),
}


# Datasets whose class count is known without reading them (a `[n]` subset suffix is ignored).
KNOWN_CLASSES = {"fashion_mnist": 10, "digits": 10, "imagenet": 1000, "imagenet2012": 1000, "jft": 18291}
# The head the paper's variants are counted with when a row's dataset is unknown.
GUESS_CLASSES = 1000


def dataset_classes(dataset: str | None) -> int | None:
    """The class count of a dataset spec nfscale knows by name, else None."""
    if not dataset:
        return None
    name = re.sub(r"\[\d+\]$", "", dataset.strip())
    if name.startswith("synthetic"):
        match = re.search(r"classes=(\d+)", name)
        return int(match.group(1)) if match else 10
    if "num_classes=" in name:
        return int(re.search(r"num_classes=(\d+)", name).group(1))
    return KNOWN_CLASSES.get(name.split(":", 1)[0].lower())


def _csv_column(column: str) -> Column:
    kind = CSV_COLUMNS[column][1]
    return Column(kind, required=column in CSV_REQUIRED, finite=kind is not str,
                  finite_hint="; leave diverged runs out of the CSV" if column == "val_loss" else "")


def read_results_csv(
    path: str | os.PathLike[str],
    dataset: str | None = None,
    source: str = "import",
    num_classes: int | None = None,
    warn: Any = None,
) -> list[dict[str, Any]]:
    """Ledger rows from a results CSV (one pre-training run a line, status `imported`).

    Each row's trial_id hashes the row's content (and the dataset it is filed
    under), so importing the same file again adds nothing. Every line is checked:
    a known variant, a positive LR, batch size and epoch budget, a finite loss,
    and a parameter count equal to what nfscale trains for the row's dataset
    (`num_classes`, else the dataset's known class count). A row whose class count
    is unknown gets the count with a 1000-way head, and `warn` (a callable taking
    one line) says that it is a guess.
    """
    path = Path(path)
    if num_classes is not None and num_classes < 2:
        raise TunerError(f"--num-classes must be at least 2, got {num_classes}")
    table = read_csv(path, label=path.name)
    header = table.header
    missing = [name for name in CSV_REQUIRED if name not in header]
    if missing:
        raise TunerError(f"{path} lacks column(s) {', '.join(missing)}; required: {', '.join(CSV_REQUIRED)}")
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown:
        raise TunerError(
            f"{path} has unknown column(s) {', '.join(unknown)}; accepted: {', '.join(CSV_COLUMNS)}"
        )
    # In the file's own column order, so the first bad cell of a line is the leftmost.
    values, problem = table.convert({column: _csv_column(column) for column in header})
    texts = {column: table.text(column).to_pylist() for column in ("lr", "epochs", "batch_size")}
    rows = []
    guessed: list[int] = []
    for i in range(table.num_rows):
        if problem is not None and problem.row == i:
            raise TunerError(problem.message)
        where, line = table.where(i), table.lines[i]
        row: dict[str, Any] = {CSV_COLUMNS[c][0]: values[c][i] for c in header if values[c][i] is not None}
        for column, target in (("lr", "lr"), ("epochs", "epochs"), ("batch_size", "batch_size")):
            if not row[target] > 0:
                raise TunerError(f"{where}: column {column!r} must be positive, got {texts[column][i]!r}")
        variant, width, depth = parse_label(row["variant"])
        row["variant"] = variant
        row["width_mult"] = row.get("width_mult", 1.0) * width
        row["depth_mult"] = row.get("depth_mult", 1.0) * depth
        if variant_params(variant, row["width_mult"], row["depth_mult"]) is None:
            raise TunerError(f"{where}: unknown variant {cell_label(variant, row['width_mult'], row['depth_mult'])!r}; "
                             "python -m nfnet.summary --list names the variants")
        row.setdefault("dataset", dataset)
        classes = num_classes or dataset_classes(row["dataset"])
        if classes is None:
            guessed.append(line)
            classes = GUESS_CLASSES
        expected = variant_params(variant, row["width_mult"], row["depth_mult"], classes)
        if row.get("params") is None:
            row["params"] = expected
        elif line not in guessed and row["params"] != expected:
            raise TunerError(
                f"{where}: params {row['params']:,} but {cell_label(variant, row['width_mult'], row['depth_mult'])} "
                f"with a {classes}-way head ({row['dataset'] or 'no dataset'}) has {expected:,}; fix the column, "
                "or pass --num-classes"
            )
        content = json.dumps({k: row[k] for k in sorted(row) if k != "params"}, sort_keys=True)
        row["trial_id"] = "import-" + hashlib.sha256(content.encode()).hexdigest()[:16]
        row.update(experiment=f"import:{path.name}", kind="pretrain", status="imported", source=source)
        rows.append(row)
    if guessed and warn is not None:
        shown = ", ".join(str(n) for n in guessed[:5]) + (" ..." if len(guessed) > 5 else "")
        warn(f"warning: {len(guessed)} row(s) (line {shown}) name no dataset whose class count nfscale knows; "
             f"their params are GUESSED with a {GUESS_CLASSES}-way head (or taken from the params column). "
             "Pass --dataset or --num-classes so the planner compares sizes right")
    return rows


# ---------------------------------------------------------------- show

SHOW_COLUMNS = (
    "variant",
    "params",
    "epochs",
    "lr",
    "batch_size",
    "dataset",
    "final_val_loss",
    "top1",
    "flops",
    "device_hours",
    "status",
    "kind",
    "trial_id",
)
SHOW_HEADERS = {"batch_size": "batch", "final_val_loss": "val_loss", "device_hours": "dev_h"}


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By model size (params; unknown sizes last, by variant name), then epochs, then lr."""
    return sorted(
        rows,
        key=lambda r: (
            r["params"] is None,
            r["params"] or 0,
            _natural_key(r["variant"]),
            r["width_mult"],
            r["depth_mult"],
            r["epochs"],
            r["lr"],
        ),
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """An aligned plain-text table of ledger rows (the schema's number columns right-aligned)."""
    numeric = [col for col in SHOW_COLUMNS if LEDGER_SCHEMA.field(col).type != pa.string()]
    return text_table(rows, SHOW_COLUMNS, SHOW_HEADERS, numeric)


# ---------------------------------------------------------------- command line
