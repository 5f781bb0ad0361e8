"""Full LR grids generated from a known law plus seed noise, written as results CSVs.

A cell (variant, epochs) has a continuous optimum k*(params, epochs) in factor-2
grid steps above the paper's LR at the grid's batch size; its final loss at grid
point k is

    L(k) = L0(params, epochs) * (1 + CURVATURE * (k - k*)^2) * (1 + noise * z),

with z a standard normal draw per run (one seed per run, as a grid has). Far above
the optimum a run diverges (no row). Each run's compute is params x epochs, so
bigger and longer cells cost more, as they do. The four shapes the LR planner must
handle (issue: the paper's Fig. 3, the CPU study, a rise with epochs, noise):
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

from tuner.study.planner import base_lr

BATCH = 128
DATASET = "fashion_mnist"
# The sizes of nfscale's small variants with a 10-way head.
VARIANTS = {"nano": 117_350, "micro": 482_959, "mini": 706_034, "small": 4_340_806}
EPOCHS = (0.125, 0.25, 0.5, 1.0, 2.0)
CURVATURE = 0.04  # one grid step from the optimum costs 4%, two steps 16%: the CPU study's shape
DIVERGE_STEPS = 3.5  # a run this many steps above the optimum diverges


def _k_falling(params: int, epochs: float) -> float:
    # [P1] Fig. 3: the optimum falls slowly with size and budget, from about the paper's LR.
    return 1.2 - 0.25 * math.log2(params / 117_350) - 0.3 * math.log2(epochs / 0.125)


def _k_flat_high(params: int, epochs: float) -> float:
    # The CPU study: flat, 8-16x above the paper's LR (k = 3..4).
    return 3.4 + 0.1 * math.sin(params + 3 * epochs)


def _k_rising(params: int, epochs: float) -> float:
    # Rises with the epoch budget.
    return 0.2 + 0.45 * math.log2(epochs / 0.125) - 0.1 * math.log2(params / 117_350)


SHAPES = {
    "falling": (_k_falling, range(-4, 4), 0.003),
    "flat-high": (_k_flat_high, range(-1, 7), 0.003),
    "rising": (_k_rising, range(-2, 6), 0.003),
    "noisy": (_k_falling, range(-4, 4), 0.02),
}


def grid_rows(shape: str, seed: int) -> list[dict]:
    """One CSV row per (variant, epochs, grid LR) run of the shape's grid."""
    law, ks, noise = SHAPES[shape]
    rng = random.Random(f"{shape}-{seed}")
    rows = []
    for variant, params in VARIANTS.items():
        for epochs in EPOCHS:
            k_star = law(params, epochs)
            floor = 0.3 + 1.5 * (params / 1e5) ** -0.15 * epochs**-0.3
            for k in ks:
                if k - k_star > DIVERGE_STEPS:
                    continue
                loss = floor * (1 + CURVATURE * (k - k_star) ** 2) * (1 + noise * rng.gauss(0, 1))
                rows.append({"variant": variant, "epochs": epochs, "lr": base_lr(BATCH) * 2.0**k,
                             "batch_size": BATCH, "val_loss": loss, "compute": params * epochs * 1e6,
                             "params": params, "dataset": DATASET})
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
