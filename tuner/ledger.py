"""`python -m tuner.ledger`: show the results ledger, import a CSV of results into it, or check its files.

    python -m tuner.ledger show [--ledger URI] [--kind pretrain|finetune] [--json]
    python -m tuner.ledger import results.csv [--ledger URI] [--dataset NAME]
    python -m tuner.ledger check [--ledger URI]

The ledger itself (part files, appends, concurrent writers, the CSV import) is
tuner/records/ledger.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from nfnet.metrics import json_safe
from tuner.cli import run_command
from tuner.errors import TunerError
from tuner.records.ledger import CORRUPT_DIR, CSV_REQUIRED, DEFAULT_LEDGER, LEDGER_ENV, Ledger, format_table, read_results_csv, sort_rows
from tuner.records.ledger import KINDS


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser

    parser = FlagParser(
        prog="python -m tuner.ledger",
        description="Show the results ledger, import results into it, or check its files. The ledger is a directory of "
        "Parquet files, local or gs://bucket/path; rows are only ever appended.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{show,import,check}")
    ledger_help = f"ledger directory or gs:// URI (default: ${LEDGER_ENV} or {DEFAULT_LEDGER})"

    show = sub.add_parser(
        "show",
        help="print the ledger as a table",
        description="Print the ledger, sorted by model size (params), then epochs, then learning rate.",
    )
    show.add_argument("--ledger", default=None, help=ledger_help)
    show.add_argument("--kind", choices=KINDS, default=None,
                      help="show only pre-training or only fine-tuning rows (default: both)")
    show.add_argument("--json", action="store_true", help="print the rows as a JSON list (all columns)")

    imp = sub.add_parser(
        "import",
        help="append results from a CSV file",
        description="Append pre-training results from a CSV file with columns "
        f"{', '.join(CSV_REQUIRED)} and optionally compute (FLOPs), top1, params, dataset, "
        "width_mult, depth_mult. Rows get status 'imported' and a trial_id hashed from their "
        "content, so importing the same file twice adds nothing. Each line is checked (a known variant, "
        "positive lr, finite val_loss, params matching the dataset's head); without a params column the "
        "count is computed for the dataset's class count.",
    )
    imp.add_argument("csv", help="the results CSV file to append, one run per line")
    imp.add_argument("--ledger", default=None, help=ledger_help)
    imp.add_argument("--dataset", default=None, help="dataset for rows whose dataset column is absent or empty")
    imp.add_argument("--source", default="import", help="value of the source column (default: import)")
    imp.add_argument("--num-classes", type=int, default=None,
                     help="classes of the rows' dataset, for their parameter counts (default: known for "
                     "fashion_mnist, digits, synthetic, imagenet; else guessed as 1000, with a warning)")

    chk = sub.add_parser(
        "check",
        help="move unreadable part files aside into <ledger>/_corrupt/",
        description=f"Read every part file of the ledger; move each one that cannot be read (truncated, not "
        f"Parquet, a column of the wrong type) into <ledger>/{CORRUPT_DIR}/, where it is kept and readers no longer "
        "look. Prints one line per moved file and a summary; exits 1 when it moved something, 0 when the "
        "ledger was clean. Temporary files of appends in progress are left alone.",
    )
    chk.add_argument("--ledger", default=None, help=ledger_help)
    return parser


def run_check(ledger: Ledger) -> int:
    """`tuner.ledger check`: 1 when it moved a part file aside, 0 when every part reads."""
    total = len(ledger._part_files())
    moved = ledger.move_corrupt_aside()
    for target, problem in moved:
        print(f"moved {target.rsplit('/', 1)[-1]} to {target}: {problem}")
    if moved:
        print(f"ledger {ledger.uri}: moved {len(moved)} of {total} part files aside into "
              f"{ledger._join(CORRUPT_DIR)} (kept); the other {total - len(moved)} read")
        return 1
    print(f"ledger {ledger.uri}: all {total} part files read")
    return 0


def run(args: argparse.Namespace) -> int:
    ledger = Ledger(args.ledger)
    if args.command in ("check", "show") and not ledger.exists():
        raise TunerError(
            f"no ledger at {ledger.uri}; check the path (a sweep or `python -m tuner.lr_search` makes it "
            "with its first run, `python -m tuner.ledger import` from a CSV)"
        )
    if args.command == "check":
        return run_check(ledger)
    if args.command == "import":
        rows = read_results_csv(args.csv, dataset=args.dataset, source=args.source,
                                num_classes=args.num_classes, warn=lambda text: print(text, file=sys.stderr))
        written = ledger.append(rows)
        print(f"imported {written} of {len(rows)} rows into {ledger.uri} ({len(rows) - written} already present)")
        return 0
    table = ledger.read()
    rows = table.to_pylist()
    if args.kind:
        rows = [r for r in rows if r["kind"] == args.kind]
    rows = sort_rows(rows)
    if args.json:
        print(json.dumps(json_safe(rows), indent=1))
    elif rows:
        print(format_table(rows))
    else:
        print(f"ledger {ledger.uri} has no rows", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
