"""The smallest study that exercises everything: 2 variants × 2 budgets × 3 LRs on a data subset.

    python -m tuner.sweep --preset cpu-smoke

Cost: about 5 minutes on a 2-core CPU: 8 Optuna trials of nano and micro on 2048
Fashion-MNIST images at 16px, grouped ASHA stopping the worst LRs at half their run.
Compiling each variant's step is most of it; trials share JAX's persistent
compilation cache, so only the first trial of a shape compiles.
Without the Debian package `dataset-fashion-mnist` it uses scikit-learn's digits
and says so.
"""

from search_spaces.preset import Preset

PRESET = Preset(
    name="cpu-smoke",
    summary="nano, micro × 0.5, 1 epochs × 3 LRs on 2048 Fashion-MNIST images (minutes on a CPU)",
    command="python -m tuner.sweep --preset cpu-smoke",
    cost="about 5 minutes on a 2-core CPU",
    variants=("nano", "micro"),
    epochs=(0.5, 1),
    # base_lr(128) = 0.05; the grid 0.05, 0.1, 0.2.
    lr_exponents=(0, 1, 2),
    batch_size=128,
    dataset="fashion_mnist",
    fallback_dataset="digits",
    resolution=16,
    eval_resolution=16,
    overrides={"evals_per_run": 4, "max_train_examples": 2048, "max_eval_examples": 512},
    num_samples=8,
    grace_period=0.5,
)
