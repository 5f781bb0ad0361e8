"""The paper's study: NFNet F0, F1, F3, F3+, F7, F7+ × 0.25–8 epochs × LR 1.6·2^k ([P1] Fig. 2-3).

    python -m tuner.sweep --preset paper --grid --dataset parquet:gs://BUCKET/jft-shards \
        --address auto --accelerator tpu \
        --storage gs://BUCKET/nfscale/results --ledger gs://BUCKET/nfscale/ledger

Cost: [P1] reports 0.4k TPU-v4 core-hours for F0 at 0.25 epochs and ~110k for F7+ at
8 epochs on JFT-4B; cost grows with MACs × epochs, so one LR of every (variant,
epochs) cell is ~0.6M core-hours and the full grid (216 runs, 6 LRs) ~3.6M. The
LR search (`tuner.lr_search`, 2 to 3 trials a cell) needs ~1.2-1.8M; an Optuna sweep costs what
`--budget-device-hours` allows. The dataset is a placeholder: JFT-4B is not public,
so pass `--dataset parquet:<uri>` with image shards of your own.

CPU form (`--cpu`): the same grid shape on Fashion-MNIST with the small variants
standing in for the paper's (F0→nano, F1→micro, F3→mini, F3+→mini-w1.5,
F7→small, F7+→small-w1.5; "+" widens by 1.5 as F3+/F7+ widen F3/F7):

    python -m tuner.sweep --preset paper --cpu --grid

which is 216 runs of up to 8 epochs of Fashion-MNIST: about 10 days on a 2-core CPU
(the small-w1.5 runs dominate). Without `--grid`, 32 Optuna trials with grouped
ASHA take about a day and a half; `--budget-device-hours` caps it.
"""

from search_spaces.preset import Preset

PRESET = Preset(
    name="paper",
    summary="[P1]'s grid: F0, F1, F3, F3+, F7, F7+ × 0.25-8 epochs × LR 1.6·2^k on JFT-like data",
    command=(
        "python -m tuner.sweep --preset paper --grid --dataset parquet:gs://BUCKET/jft-shards "
        "--address auto --accelerator tpu --storage gs://BUCKET/nfscale/results "
        "--ledger gs://BUCKET/nfscale/ledger"
    ),
    cost="~3.6M TPU-v4 core-hours for the full grid (~0.6M per LR value)",
    variants=("F0", "F1", "F3", "F3+", "F7", "F7+"),
    # [P1]: epoch budgets 0.25 ... 8 on JFT-4B.
    epochs=(0.25, 0.5, 1, 2, 4, 8),
    # [P1]: LRs on a factor-2 grid; the best is ~1.6 at small budgets and falls with
    # size and epochs, so the grid runs from 1.6 down to 1.6/32.
    lr_exponents=(-5, -4, -3, -2, -1, 0),
    # [P1]: batch 4096; train at 224px, evaluate at 256px.
    batch_size=4096,
    dataset="parquet:gs://BUCKET/jft-shards",
    dataset_required=True,
    resolution=224,
    eval_resolution=256,
    # [P1]/PAPER.md: weight decay 1e-6 for the JFT runs, bf16 activations. 8
    # evaluations per run give GroupedASHA rungs at 1/4 and 1/2 of every run; a
    # checkpoint every 4th (at 1/2 and the end) keeps F7+'s ~10 GB states to two a run.
    overrides={"weight_decay": 1e-6, "dtype": "bfloat16", "evals_per_run": 8, "checkpoint_every": 4},
    num_samples=64,
    cpu_changes={
        "summary": "the paper's grid shape on Fashion-MNIST with the small CPU variants",
        "command": "python -m tuner.sweep --preset paper --cpu --grid",
        "cost": "about 10 days on a 2-core CPU for the grid; 32 Optuna trials about 1.5 days",
        "variants": ("nano", "micro", "mini", "mini-w1.5", "small", "small-w1.5"),
        # 0.1 × 256/256: the paper's LR rule at batch 256; the grid keeps its 6 points
        # but is centred higher, as small models on short runs favour larger LRs.
        "lr_exponents": (-3, -2, -1, 0, 1, 2),
        "batch_size": 256,
        "dataset": "fashion_mnist",
        "dataset_required": False,
        "fallback_dataset": "digits",
        "resolution": 32,
        "eval_resolution": 32,
        "overrides": {"weight_decay": 1e-6, "evals_per_run": 8},
        "num_samples": 32,
    },
)
