"""The CPU scaling study grown to answer with intervals (docs/cpu_ladder_study.md): its grids.

    bash benchmarks/cpu_ladder_study.sh      # every stage, resumable; about 4 h on 2 cores

The first study (docs/cpu_scaling_study.md) ran nano, mini and small at 0.125-2
epochs: three sizes, and small's 2-epoch points on the frontier for want of a
competitor. These grids add a ladder of six sizes over two decades of parameters
(49k to 4.3M at 16px and 10 classes) and budgets of 4 and 8 epochs for the smaller
models (nano at 8 epochs costs what small costs at 2), at seed 0 and the LRs where
the first study found every optimum (0.2, 0.4, 0.8). Each is the cpu-scaling
preset's recipe otherwise, so its rows and the first study's are one ledger:

    python -m tuner.sweep --preset benchmarks/cpu_ladder.py:SIZES --grid --seed 0 --ledger results/ladder/ledger

Cost on a 2-core CPU: SIZES (45 runs) about 60 min, LONG (18 runs) about 90 min.

Seeds 1 and 2 run every ladder cell at its best LR of seed 0 only (three seeds of
each cell's best LR, a third of the cost of all three LRs): once seed 0 is in the
ledger, `seed-cells` writes that grid as a preset file (`Preset.only_cells`), and
the study script runs it at seeds 1 and 2 with --skip-recorded (the first study ran
nano's and mini's seeds already):

    python benchmarks/cpu_ladder.py seed-cells --ledger results/ladder/ledger > results/ladder/seed_cells.py
    python -m tuner.sweep --preset results/ladder/seed_cells.py:SEEDS --grid --skip-recorded --seed 1 \\
        --ledger results/ladder/ledger
"""

import argparse
import dataclasses
import math
import sys

from search_spaces.cpu_scaling import PRESET as GRID

# LRs 0.2, 0.4, 0.8: base_lr(128) = 0.05 × 2^k. Every optimum of the first study's
# 15 cells (7 LRs each) was one of these.
WINDOW = (2, 3, 4)

SIZES = dataclasses.replace(
    GRID,
    name="cpu-ladder-sizes",
    summary="nano-w0.5, micro, mini-w1.5 × 0.125-2 epochs × LRs 0.2-0.8: the ladder's new sizes",
    command="python -m tuner.sweep --preset benchmarks/cpu_ladder.py:SIZES --grid --seed 0",
    cost="about 60 minutes on a 2-core CPU per seed (45 runs)",
    variants=("nano-w0.5", "micro", "mini-w1.5"),
    lr_exponents=WINDOW,
)

LONG = dataclasses.replace(
    GRID,
    name="cpu-ladder-long",
    summary="nano-w0.5, nano, micro × 4 and 8 epochs × LRs 0.2-0.8: contest the largest model's frontier",
    command="python -m tuner.sweep --preset benchmarks/cpu_ladder.py:LONG --grid --seed 0",
    cost="about 90 minutes on a 2-core CPU per seed (18 runs)",
    variants=("nano-w0.5", "nano", "micro"),
    epochs=(4, 8),
    lr_exponents=WINDOW,
)

# Every (model, epochs) of the ladder: the six sizes at 0.125-2 epochs, the three
# smallest at 4 and 8 too.
LADDER = ("nano-w0.5", "nano", "micro", "mini", "mini-w1.5", "small")


def ladder_cells() -> list[tuple[str, float]]:
    """(variant label, epochs) of every cell of the study, in ladder order."""
    return [(label, epochs) for label in LADDER for epochs in GRID.epochs] + [
        (label, epochs) for label in LONG.variants for epochs in LONG.epochs]


def best_lr_exponents(rows, seed: int = 0) -> dict[tuple[str, float], int]:
    """(label, epochs) -> the LR exponent k (lr = base_lr·2^k) of the lowest final loss at
    `seed`, over the finished pre-training rows of the grid's recipe; cells the ledger
    lacks at that seed are left out."""
    from search_spaces.preset import base_lr
    from tuner.records.cells import cell_label

    base = base_lr(GRID.batch_size)
    best: dict[tuple[str, float], tuple[float, int]] = {}
    for row in rows:
        if (row.get("kind") != "pretrain" or row.get("status") != "finished" or row.get("seed") != seed
                or row.get("batch_size") != GRID.batch_size or row.get("final_val_loss") is None):
            continue
        label = cell_label(row["variant"], row.get("width_mult") or 1.0, row.get("depth_mult") or 1.0)
        key = (label, float(row["epochs"]))
        k = round(math.log2(float(row["lr"]) / base))
        loss = float(row["final_val_loss"])
        if key not in best or loss < best[key][0]:
            best[key] = (loss, k)
    return {key: k for key, (_, k) in best.items()}


def seed_cells_source(rows, seed: int = 0) -> str:
    """The text of a preset file: SEEDS, every ladder cell at its best LR of `seed`."""
    best = best_lr_exponents(rows, seed)
    missing = [f"{label} at {epochs:g} epochs" for label, epochs in ladder_cells() if (label, epochs) not in best]
    if missing:
        raise SystemExit(f"error: the ledger lacks seed {seed} of {len(missing)} ladder cell(s) "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); run those grids first")
    cells = [(label, epochs, best[(label, epochs)]) for label, epochs in ladder_cells()]
    exponents = sorted({k for _, _, k in cells})
    epochs = sorted({e for _, e, _ in cells})
    lines = ",\n".join(f"        ({label!r}, {e!r}, {k})" for label, e, k in cells)
    return f'''"""Seed repeats of the CPU ladder: each cell at its best LR of seed {seed}.

Written by `python benchmarks/cpu_ladder.py seed-cells` from the study's ledger; run it
with --grid --skip-recorded --seed 1 (and 2): cells already run at that seed are skipped.
"""

import dataclasses

from search_spaces.cpu_scaling import PRESET as GRID

SEEDS = dataclasses.replace(
    GRID,
    name="cpu-ladder-seeds",
    summary="every ladder cell at its best LR of seed {seed}, for seeds 1 and 2",
    command="python -m tuner.sweep --preset seed_cells.py:SEEDS --grid --skip-recorded --seed 1",
    cost="about 45 minutes on a 2-core CPU per seed ({len(cells)} cells, fewer once some are run)",
    variants={tuple(LADDER)!r},
    epochs={tuple(epochs)!r},
    lr_exponents={tuple(exponents)!r},
    only_cells=(
{lines},
    ),
)
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/cpu_ladder.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("seed-cells", help="print a preset file of every ladder cell at its best LR of seed 0")
    cmd.add_argument("--ledger", required=True, help="the study's ledger")
    cmd.add_argument("--seed", type=int, default=0, help="the seed whose best LRs are kept (default 0)")
    args = parser.parse_args(argv)
    from tuner.records.ledger import Ledger

    sys.stdout.write(seed_cells_source(Ledger(args.ledger).read().to_pylist(), args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
