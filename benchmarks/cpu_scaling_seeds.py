"""Seed repeats for the CPU-scale study (docs/cpu_scaling_study.md): how much of a cell's LR ranking is noise.

    python -m tuner.sweep --preset benchmarks/cpu_scaling_seeds.py --grid --seed 1 --ledger results/study/seeds-ledger

Cost: about 9 minutes on a 2-core CPU per seed (30 runs: nano and mini × the
cpu-scaling preset's five epoch budgets × LRs 0.2, 0.4, 0.8, where their grid optima
lie). Everything else is the cpu-scaling preset's, so seed 0 of these cells is the
grid's own run and `--seed 1`, `--seed 2` add two more.
"""

import dataclasses

from search_spaces.cpu_scaling import PRESET as GRID

PRESET = dataclasses.replace(
    GRID,
    name="cpu-scaling-seeds",
    summary="nano, mini × 0.125-2 epochs × LRs 0.2-0.8 of the cpu-scaling grid, for repeats at other seeds",
    command="python -m tuner.sweep --preset benchmarks/cpu_scaling_seeds.py --grid --seed 1",
    cost="about 9 minutes on a 2-core CPU per seed (30 runs)",
    variants=("nano", "mini"),
    lr_exponents=(2, 3, 4),
)
