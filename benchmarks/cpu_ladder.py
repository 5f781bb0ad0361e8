"""The CPU scaling study grown to answer with intervals (docs/cpu_ladder_study.md): its grids.

    bash benchmarks/cpu_ladder_study.sh      # every stage, resumable; about 3 h 15 min on 2 cores

The first study (docs/cpu_scaling_study.md) ran nano, mini and small at 0.125-2
epochs: three sizes, and small's 2-epoch points on the frontier for want of a
competitor. These grids add a ladder of six sizes over two decades of parameters
(49k to 4.3M at 16px and 10 classes), budgets of 4 and 8 epochs for the smaller
models (nano at 8 epochs costs what small costs at 2), and three seeds of every
cell at the LRs where the first study found every optimum (0.2, 0.4, 0.8). Each is
the cpu-scaling preset's recipe otherwise, so its rows and the first study's are
one ledger. Run each with --seed 0, 1 and 2:

    python -m tuner.sweep --preset benchmarks/cpu_ladder.py:SIZES --grid --seed 0 --ledger results/ladder/ledger

Cost on a 2-core CPU, per seed: SIZES (45 runs) about 60 min, LONG (18 runs) about
90 min, SMALL_SEEDS (15 runs, seeds 1 and 2 only: seed 0 is the first study's) about
40 min.
"""

import dataclasses

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

SMALL_SEEDS = dataclasses.replace(
    GRID,
    name="cpu-ladder-small-seeds",
    summary="small × 0.125-2 epochs × LRs 0.2-0.8, for seeds 1 and 2 (nano's and mini's are the first study's)",
    command="python -m tuner.sweep --preset benchmarks/cpu_ladder.py:SMALL_SEEDS --grid --seed 1",
    cost="about 40 minutes on a 2-core CPU per seed (15 runs)",
    variants=("small",),
    lr_exponents=WINDOW,
)
