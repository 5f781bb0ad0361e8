"""How much of a grid's LR ranking is seed noise: repeats of grid cells at other seeds.

    .venv/bin/python benchmarks/seed_noise.py --ledger results/study/grid-ledger --ledger results/study/seeds-ledger

Reads finished pre-training rows from one or more ledgers, keeps the (variant,
epochs, lr) points run at 2 or more seeds, and prints a Markdown report: each point's
final held-out loss per seed, mean and standard deviation; per cell, the best LR of
each seed against the best of the mean; and the spread as a share of the loss, to set
beside the 0.5% tolerance that tuner.lr_audit grades the LR search with; tuner.lr_search
estimates its noise the same way (tuner.study.planner.seed_repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from tuner.errors import TunerError
from tuner.records.ledger import Ledger
from tuner.study.planner import seed_repeats


def points(ledgers: list[str]) -> dict[tuple[str, float], dict[float, dict[int, float]]]:
    """(label, epochs) -> lr -> seed -> final loss, for points with 2 or more seeds.

    The grouping is the planner's (`tuner.study.planner.seed_repeats`), which lr_search
    uses for its noise estimate: the same points, the same median.
    """
    rows = [row for uri in ledgers for row in Ledger(uri).read().to_pylist()]
    found: dict[tuple[str, float], dict[float, dict[int, float]]] = {}
    for (label, epochs, _batch, _dataset), lrs in seed_repeats(rows).items():
        for lr, by_seed in lrs.items():
            found.setdefault((label, epochs), {}).setdefault(lr, {}).update(by_seed)
    return found


def report(found: dict[tuple[str, float], dict[float, dict[int, float]]]) -> str:
    seeds = sorted({s for lrs in found.values() for by_seed in lrs.values() for s in by_seed})
    table = ["| variant | epochs | lr | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | std/mean |",
             "|---|---|---|" + "---|" * len(seeds) + "---|---|---|"]
    spreads: list[float] = []
    verdicts: list[str] = []
    picks = agree = 0
    gaps: list[float] = []
    for (label, epochs), lrs in sorted(found.items()):
        for lr, by_seed in sorted(lrs.items()):
            values = list(by_seed.values())
            mean, std = statistics.fmean(values), statistics.stdev(values)
            spreads.append(std / mean)
            table.append(f"| {label} | {epochs:g} | {lr:g} | "
                         + " | ".join(f"{by_seed[s]:.4f}" if s in by_seed else "–" for s in seeds)
                         + f" | {mean:.4f} | {std:.4f} | {100 * std / mean:.2f}% |")
        # Rank a cell's LRs only over the seeds every one of them was run at.
        common = [s for s in seeds if all(s in by_seed for by_seed in lrs.values())]
        if len(lrs) < 2 or len(common) < 2:
            continue
        means = {lr: statistics.fmean(by_seed[s] for s in common) for lr, by_seed in lrs.items()}
        best = min(means, key=lambda lr: (means[lr], lr))
        per_seed = [min(lrs, key=lambda lr: (lrs[lr][s], lr)) for s in common]
        picks += len(per_seed)
        agree += sum(b == best for b in per_seed)
        ranked = sorted(means.values())
        gaps.append((ranked[1] - ranked[0]) / ranked[0])
        verdicts.append(f"{label} at {epochs:g} epochs: best LR of the mean {best:g}; of each seed "
                        + ", ".join(f"{s}: {b:g}" for s, b in zip(common, per_seed)))
    out = ["# Seed noise", "", *table, "", "## The best LR of each cell, seed by seed", ""]
    out += [f"- {line}" for line in verdicts]
    out += ["", f"Across {len(spreads)} (cell, LR) points the seed-to-seed standard deviation of the final "
            f"loss is a median {100 * statistics.median(spreads):.2f}% of the loss "
            f"(max {100 * max(spreads):.2f}%)."]
    if verdicts:
        out.append(f"Over {len(verdicts)} cells a single seed picks the mean's best LR {agree} times in {picks}; "
                   f"the best two LRs' mean losses differ by a median {100 * statistics.median(gaps):.2f}%.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/seed_noise.py", description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", action="append", required=True, help="a ledger (repeatable)")
    args = parser.parse_args(argv)
    try:
        found = points(args.ledger)
        if not found:
            raise TunerError("no (variant, epochs, lr) point was run at 2 or more seeds in " + ", ".join(args.ledger))
    except TunerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(found), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
