"""Seed repeats of the CPU ladder: each cell at its best LR of seed 0.

Written by `python benchmarks/cpu_ladder.py seed-cells` from the study's ledger; run it
with --grid --skip-recorded --seed 1 (and 2): cells already run at that seed are skipped.
"""

import dataclasses

from search_spaces.cpu_scaling import PRESET as GRID

SEEDS = dataclasses.replace(
    GRID,
    name="cpu-ladder-seeds",
    summary="every ladder cell at its best LR of seed 0, for seeds 1 and 2",
    command="python -m tuner.sweep --preset seed_cells.py:SEEDS --grid --skip-recorded --seed 1",
    cost="about 45 minutes on a 2-core CPU per seed (36 cells, fewer once some are run)",
    variants=('nano-w0.5', 'nano', 'micro', 'mini', 'mini-w1.5', 'small'),
    epochs=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    lr_exponents=(2, 3, 4),
    only_cells=(
        ('nano-w0.5', 0.125, 2),
        ('nano-w0.5', 0.25, 3),
        ('nano-w0.5', 0.5, 3),
        ('nano-w0.5', 1.0, 4),
        ('nano-w0.5', 2.0, 4),
        ('nano', 0.125, 3),
        ('nano', 0.25, 4),
        ('nano', 0.5, 4),
        ('nano', 1.0, 3),
        ('nano', 2.0, 4),
        ('micro', 0.125, 4),
        ('micro', 0.25, 3),
        ('micro', 0.5, 3),
        ('micro', 1.0, 3),
        ('micro', 2.0, 3),
        ('mini', 0.125, 4),
        ('mini', 0.25, 3),
        ('mini', 0.5, 3),
        ('mini', 1.0, 4),
        ('mini', 2.0, 3),
        ('mini-w1.5', 0.125, 2),
        ('mini-w1.5', 0.25, 3),
        ('mini-w1.5', 0.5, 3),
        ('mini-w1.5', 1.0, 3),
        ('mini-w1.5', 2.0, 4),
        ('small', 0.125, 3),
        ('small', 0.25, 2),
        ('small', 0.5, 3),
        ('small', 1.0, 3),
        ('small', 2.0, 4),
        ('nano-w0.5', 4.0, 4),
        ('nano-w0.5', 8.0, 4),
        ('nano', 4.0, 4),
        ('nano', 8.0, 4),
        ('micro', 4.0, 4),
        ('micro', 8.0, 4),
    ),
)
