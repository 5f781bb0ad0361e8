"""Train one NFNet from the command line: `python -m nfnet.train`.

    python -m nfnet.train --variant nano --epochs 0.25 --lr 0.4 --batch-size 256 \\
        --dataset fashion_mnist --resolution 32 --workdir runs/nano-fashion

prints a progress bar on stderr and one JSON summary line on stdout, and leaves
TensorBoard events (scalars by step, and the run's hparams) in `<workdir>/tensorboard`, orbax checkpoints in
`<workdir>/checkpoints/<step>` and the summary in `<workdir>/summary.json`.
`--resume` continues the run in `--workdir` exactly where its last checkpoint left it
(the other flags default to the checkpoint's); `--resume-from <checkpoint dir>` does
the same from a given checkpoint. The command above (59 steps, 8 evaluations over the
10k test images) takes 2-6 minutes on a 2-core CPU depending on what else runs there,
and reaches a held-out loss near 0.9 (top-1 ~0.67). The demo continues with
`python -m nfnet.finetune` (see there).

There is one flag per field of `nfnet.config.TrainConfig`; the run itself is
`nfnet.loop.train`. The flag building (`add_config_flags`), `config_from_args`,
`resume_base` and `run_command` also serve nfnet.finetune's command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable

import jax

from nfnet import cli
from nfnet.checkpoint import CHECKPOINTS_SUBDIR, latest_checkpoint, read_meta, resolve_checkpoint
from nfnet.config import TrainConfig
from nfnet.errors import NFNetError
from nfnet.loop import config_from_meta, train
from nfnet.metrics import json_safe
from nfnet import host_allocator

DESCRIPTION = ("Train one NFNet: print a progress bar on stderr and one JSON summary line on stdout, and "
               "leave checkpoints, TensorBoard events and summary.json in --workdir.")

# The command line's parser and flag types live in nfnet.cli (shared with the tuner commands).
FlagParser = cli.FlagParser

# One sentence per TrainConfig field: what it does, its units and allowed values. A text
# that states its own default (a None default means "derived from something else") ends
# with it; every other flag gets "(default: X)" appended from the config dataclass.
_HELP = {
    "variant": "NFNet variant: nano, micro, mini, small (CPU scale), F0..F7 or F0+..F7+, optionally "
               "with -w<mult>/-d<mult> width/depth suffixes; `python -m nfnet.summary --list` shows them",
    "width_mult": "multiply every stage's width (channels) by this factor; the conv group width scales "
                  "with it",
    "depth_mult": "multiply every stage's number of blocks by this factor (rounded, at least one block)",
    "dataset": "data to train and evaluate on: fashion_mnist, digits, synthetic[:n=..,classes=..], "
               "parquet:<uri> or imagefolder:<dir>",
    "data_dir": "where the dataset is read from when its spec names no location: Fashion-MNIST's IDX "
                "files, or the parquet/imagefolder location (default: $NFSCALE_FASHION_MNIST_DIR or the "
                "system copy for Fashion-MNIST)",
    "epochs": "training budget in passes over the training set; fractions such as 0.25 are fine",
    "lr": "peak learning rate, used as given: scale it for the batch size yourself (0.1 x batch/256)",
    "batch_size": "global batch size, split over all devices and hosts (a multiple of the device count)",
    "resolution": "training image size in px, at least 16 (default: the variant's training resolution, "
                  "32 for the small variants)",
    "eval_resolution": "image size in px of the held-out evaluation, at least 16 (default: --resolution)",
    "seed": "seed of the initial parameters, the data order, augmentation, dropout and stochastic depth "
            "(the --max-*-examples subsets do not depend on it)",
    "workdir": "directory or gs:// URI for this run's checkpoints/, tensorboard/ and summary.json",
    "warmup_fraction": "share of the run's steps over which the LR rises linearly to --lr before its "
                       "cosine decay to 0, in [0, 1)",
    "weight_decay": "coupled L2 weight decay on conv and linear kernels (not gains or biases); 0 turns "
                    "it off",
    "clipping": "adaptive gradient clipping (AGC) threshold: each unit's gradient norm is kept below this "
                "times its weight norm (classifier exempt); 'none' turns AGC off",
    "label_smoothing": "label smoothing of the cross-entropy targets, in [0, 1); 0 turns it off",
    "dtype": "precision of the activations: float32, or bfloat16 (parameters and logits stay float32)",
    "stochdepth_rate": "stochastic depth: the chance of dropping the last residual block, rising "
                       "linearly from 0 at the first block, in [0, 1); 0 turns it off",
    "dropout_rate": "dropout rate on the pooled features before the classifier, in [0, 1)",
    "evals_per_run": "held-out evaluations, evenly spaced over the run; only there the run reports, "
                     "checkpoints and can be stopped",
    "checkpoint_every": "write a checkpoint every N evaluations (the last evaluation always writes one)",
    "max_train_examples": "train on a fixed random subset of this many training examples, the same for "
                          "every seed (default: all of them)",
    "max_eval_examples": "evaluate on a fixed random subset of this many held-out examples (default: all "
                         "of them)",
    "num_workers": "threads that decode and augment batches ahead of the step; 0 loads them in the "
                   "training loop",
    "shuffle_window": "streamed Parquet datasets: row groups whose rows are shuffled together, after "
                      "each epoch's seeded row-group permutation; the loader holds at most twice this "
                      "many row groups in memory (other datasets ignore it)",
    "progress": "draw a progress bar on stderr (on by default; --no-progress turns it off)",
    "resume": "continue the run in --workdir from its latest checkpoint (the other flags default to "
              "the checkpoint's)",
    "resume_from": "continue a run from this checkpoint directory (default: start a new run)",
    "init_from": "start from this pre-trained checkpoint: load every parameter but the classifier "
                 "(default: random initial parameters)",
    "sam_rho": "radius of sharpness-aware minimisation (SAM); > 0 turns SAM on ([P2] fine-tunes with "
               "0.05), 0 turns it off",
    "sam_fraction": "share of each device's batch that computes SAM's ascent gradient, in (0, 1]; used "
                    "only with --sam-rho > 0",
    "ema_decay": "decay of an exponential moving average of the weights, evaluated alongside them "
                 "(ema_val_loss, ema_val_top1), in [0, 1); 0 turns it off",
    "conv_lowering": "how convolutions are lowered: auto (dense on CPU, native elsewhere), native "
                     "(XLA's grouped conv) or dense (per-group dense convs and matmuls); same results",
}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str] | None = None,
                     skip: frozenset[str] = frozenset()) -> None:
    """One flag per field of the config dataclass `cls` (`--batch-size` for `batch_size`), no defaults.

    Each flag's help is its sentence from `help_texts` (over `_HELP`) and, unless the
    sentence states its default or the flag is an on/off switch, "(default: X)" from `cls`.
    """
    help_texts = {**_HELP, **(help_texts or {})}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = help_texts[f.name]
        if f.type != "bool" and "default" not in help_text:
            help_text += f" (default: {f.default})"
        if f.name == "progress":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name == "clipping":
            parser.add_argument(flag, type=cli.number_or_none, metavar="NUMBER|none", help=help_text)
        elif f.type in ("int", "int | None"):
            parser.add_argument(flag, type=cli.integer, help=help_text)
        elif f.type in ("float", "float | None"):
            parser.add_argument(flag, type=cli.number, help=help_text)
        else:
            parser.add_argument(flag, type=str, help=help_text)


def build_parser(prog: str = "nfnet.train", description: str | None = None) -> argparse.ArgumentParser:
    """One flag per TrainConfig field (`--batch-size` for `batch_size`); unset flags stay unset.

    Defaults are left out of the namespace so `config_from_args` can lay the flags
    over any base config (TrainConfig's defaults, or a checkpoint's config on resume).
    """
    parser = FlagParser(prog=prog, description=description or DESCRIPTION, argument_default=argparse.SUPPRESS)
    add_config_flags(parser, TrainConfig)
    return parser


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """`base` (default: TrainConfig()) with every flag that was given laid over it."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    return dataclasses.replace(base or TrainConfig(), **given)


def resume_base(args: argparse.Namespace) -> TrainConfig | None:
    """The checkpoint's config when resuming (so `--workdir X --resume` needs no other flags)."""
    if getattr(args, "resume", False):
        workdir = getattr(args, "workdir", TrainConfig.workdir)
        path = latest_checkpoint(os.path.join(workdir, CHECKPOINTS_SUBDIR))
        if path is None:
            raise NFNetError(f"--resume: no checkpoint in {os.path.join(workdir, CHECKPOINTS_SUBDIR)}; "
                             "start the run without --resume")
    elif getattr(args, "resume_from", None):
        path = resolve_checkpoint(args.resume_from)
    else:
        return None
    return TrainConfig(**config_from_meta(read_meta(path)))


def print_summary(summary: dict) -> None:
    """The final summary as one JSON line on stdout (non-finite numbers as null)."""
    print(json.dumps(json_safe(summary)), flush=True)


def run_command(make_config: Callable[[], TrainConfig]) -> int:
    """Train the config a command line makes: one-line error and exit 2 on a user
    mistake, else the JSON summary line from the first process."""
    def body() -> int:
        summary = train(make_config())
        if jax.process_index() == 0:
            print_summary(summary)
        return 0

    return cli.run_main(body)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: config_from_args(args, resume_base(args)))


if __name__ == "__main__":
    host_allocator.command_start()  # jemalloc where installed: nfnet/host_allocator.py
    sys.exit(main())
