"""A CPU-scale scaling study: nano, micro, mini × 0.25–2 epochs × 6 LRs on Fashion-MNIST.

    python -m tuner.sweep --preset cpu-fashion

Cost: about 4 hours on a 2-core CPU for the default 32 Optuna trials (of the grid's
72 cells): at 32px nano trains ~350 images/s, micro ~100, mini ~80, and grouped
ASHA stops the worst LRs at a quarter or half of their run. `--grid` runs all 72
cells, about 11 hours. Without the Debian package
`dataset-fashion-mnist` it uses scikit-learn's digits and says so. Fit the result
with `python -m tuner.report`.
"""

from search_spaces.preset import Preset

PRESET = Preset(
    name="cpu-fashion",
    summary="nano, micro, mini × 0.25-2 epochs × 6 LRs on Fashion-MNIST (a study for one CPU)",
    command="python -m tuner.sweep --preset cpu-fashion",
    cost="about 4 hours on a 2-core CPU (32 trials); --grid about 11 hours",
    variants=("nano", "micro", "mini"),
    epochs=(0.25, 0.5, 1, 2),
    # base_lr(256) = 0.1 (the paper's 1.6 at 4096, scaled linearly); 0.0125 ... 0.4.
    lr_exponents=(-3, -2, -1, 0, 1, 2),
    batch_size=256,
    dataset="fashion_mnist",
    fallback_dataset="digits",
    resolution=32,
    eval_resolution=32,
    overrides={"evals_per_run": 8, "max_eval_examples": 2000},
    num_samples=32,
)
