"""`python -m tuner.lr_audit`: does the LR search find what a full grid finds, and at what cost?

    python -m tuner.lr_audit --grid results/study/grid-ledger
    python -m tuner.lr_audit --grid results/study/grid-ledger --search results/study/walk-ledger --out lr_audit.md
    python -m tuner.lr_audit --grid results/study/grid-ledger --search results/study/walk-ledger --json

The replay and the audit are tuner/study/audit.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tuner.cli import run_command
from tuner.errors import TunerError
from tuner.study.planner import DEFAULT_MAX_TRIALS, DEFAULT_NOISE, DEFAULT_PARALLEL
from tuner.study.audit import DEFAULT_TOLERANCE, DEFAULT_TRIALS_PER_CELL, check_tolerance, audit, audit_json, read_ledger_rows, read_search_rows, replay, section_markdown, summary_sentence


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser

    p = FlagParser(
        prog="python -m tuner.lr_audit",
        description="Compare the LR search with a full LR grid: how often it finds each cell's "
        "optimum (or a loss within the tolerance of it), and at what share of the grid's compute.",
    )
    p.add_argument("--grid", required=True, metavar="LEDGER", help="ledger of the full grid (tuner.sweep --grid)")
    p.add_argument("--search", metavar="LEDGER", help="ledger a walk of tuner.lr_search wrote to, to audit that walk too (default: replay the grid only)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="relative loss gap that still counts as found (default 0.005 = 0.5%%)")
    p.add_argument("--trials-per-cell", type=int, default=DEFAULT_TRIALS_PER_CELL,
                   help="trials per cell of lr_search rows that carry no search record (older rows; default 2)")
    p.add_argument("--noise", type=float, default=None,
                   help=f"the replay's seed noise, as lr_search --noise (default {DEFAULT_NOISE:g})")
    p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help=f"trials per round, as lr_search --parallel (default {DEFAULT_PARALLEL})")
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help=f"trials per cell before a search stops, as lr_search --max-trials (default {DEFAULT_MAX_TRIALS})")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object on stdout")
    p.add_argument("--out", metavar="FILE.md", help="also write the Markdown report to this file (default: print it)")
    return p


def run(args: argparse.Namespace) -> int:
    check_tolerance(args.tolerance)
    if args.trials_per_cell < 1:
        raise TunerError(f"--trials-per-cell must be at least 1, got {args.trials_per_cell}")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise TunerError(f"--out {out} is a directory; give a file name such as lr_audit.md")
    grid_rows = read_ledger_rows(args.grid, "--grid")
    replayed = replay(grid_rows, args.tolerance, noise=args.noise, parallel=args.parallel, max_trials=args.max_trials)
    searched = None
    if args.search:
        searched = audit(grid_rows, read_search_rows(args.search, "--search"), args.tolerance, args.trials_per_cell)
    markdown = section_markdown(replayed, searched, level=1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
    if args.json:
        print(json.dumps(
            {
                "grid": args.grid,
                "search": args.search,
                "lr_search": None if searched is None else audit_json(searched),
                "lr_replay": audit_json(replayed),
            },
            allow_nan=False,
        ))
    elif out is None:
        print(markdown, end="")
    else:
        if searched is not None:
            print(f"walk: {summary_sentence(searched)}")
        print(f"replay: {summary_sentence(replayed)}")
        print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
