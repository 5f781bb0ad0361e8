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
import json
import sys
from collections.abc import Sequence
from pathlib import Path


from nfnet import storage
from tuner.cli import run_command
from tuner.errors import TunerError
from tuner.study.audit import summary_sentence
from tuner.rendering.report import write_report, output_dir, report_json
from tuner.study.analysis import grid_rows_from_csv, analyse, load_csv, lr_search_audit, pick_dataset, read_ledger_table, rows_from_table
from tuner.rendering.report import console_summary


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


def run(args: argparse.Namespace) -> int:
    if args.n_boot < 1:
        raise TunerError(f"--n-boot must be at least 1, got {args.n_boot}")
    if args.ledger:
        table = read_ledger_table(args.ledger)
        rows, grid_rows = rows_from_table(table, args.ledger), table.to_pylist()
    else:
        rows = load_csv(args.csv)
        grid_rows = grid_rows_from_csv(rows)
    source = f"ledger {args.ledger}" if args.ledger else f"CSV {args.csv}"
    rows, dataset = pick_dataset(rows, args.dataset, source)
    if grid_rows is not None and args.dataset is not None:
        grid_rows = [r for r in grid_rows if r.get("kind") == "finetune" or r.get("dataset") == dataset]
    report = analyse(rows, source, n_boot=args.n_boot, seed=args.seed, fit_on=args.fit_on, dataset=dataset)
    lrs_per_cell = max((c.n_lrs for c in report.lr_table.cells), default=0)
    lr_markdown, searched, replayed = lr_search_audit(grid_rows, args.lr_search_ledger, lrs_per_cell)

    with output_dir(args.out) as out:
        outputs = write_report(out, report, lr_markdown)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
