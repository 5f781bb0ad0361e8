"""Fine-tune a pre-trained NFNet on a new dataset: `finetune(config)` and `python -m nfnet.finetune`.

The demo moves between two real datasets with different label sets, pre-training
at 32px and fine-tuning at 48px (5-10 minutes in all on a 2-core CPU):

    python -m nfnet.train --variant nano --dataset fashion_mnist --epochs 0.25 \\
        --lr 0.4 --batch-size 256 --resolution 32 --workdir runs/pretrain
    python -m nfnet.finetune --from runs/pretrain --dataset digits --resolution 48 \\
        --workdir runs/finetune

The fine-tuning run (113 steps) reaches a digits top-1 near 0.74 for raw and EMA weights.
`--from` takes a checkpoint directory, or a pre-training workdir (its latest checkpoint).
The variant and its multipliers come from the checkpoint; every parameter but the
classifier is loaded, and the classifier is new, sized to the new dataset's classes.
The run records the checkpoint it started from as `parent` in its summary.

The recipe follows [P1]'s fine-tuning (values it leaves unstated from [P2]'s
JFT-300M -> ImageNet transfer): SAM with ρ 0.05 whose ascent gradient uses 20% of
each device's batch, stochastic depth 0.1, dropout 0.25, label smoothing 0.1, weight
decay 1e-5, warmup then cosine decay, an EMA of the weights evaluated alongside them
(`ema_val_loss`, `ema_val_top1`), and a training resolution higher than pre-training
([P1]: 384 vs 224 px; a lower or equal one is an error). Unstated or rescaled here:
- EMA decay 0.999 with a warm-up, min(0.999, (1+t)/(10+t)) after t steps, so a run
  of a hundred steps still averages usefully ([P1] gives no value).
- Default resolution 1.5x the pre-training one, rounded to a multiple of 8 (32 -> 48).
- LR 0.1 peak and batch 64: the paper's 0.1 is at batch 2048 for 50 ImageNet epochs;
  on digits (1437 training images) a short run needs the larger per-example LR.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

from nfnet.checkpoint import read_meta, resolve_checkpoint
from nfnet.config import TrainConfig
from nfnet.errors import NFNetError
from nfnet.loop import train
from nfnet.train import FlagParser, add_config_flags, config_from_args, resume_base, run_command
from nfnet.variants import MIN_RESOLUTION, check_resolution
from nfnet import host_allocator

# Default fine-tuning resolution: this multiple of the pre-training one ([P1] 224 -> 384 is 1.7x).
RESOLUTION_FACTOR = 1.5


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run: `init_from` is the pre-trained checkpoint (or its workdir)."""

    init_from: str
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: float = 5.0
    lr: float = 0.1
    batch_size: int = 64
    resolution: int | None = None       # None: 1.5x the pre-training resolution, multiple of 8
    eval_resolution: int | None = None  # None: same as resolution
    seed: int = 0
    workdir: str = "runs/finetune"
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-5          # [P2] transfer
    clipping: float | None = 0.01
    label_smoothing: float = 0.1
    dtype: str = "float32"
    stochdepth_rate: float = 0.1        # [P2] transfer
    dropout_rate: float = 0.25          # [P2] transfer
    sam_rho: float = 0.05               # [P2] transfer
    sam_fraction: float = 0.2           # [P2]: ascent on 20% of the batch
    ema_decay: float = 0.999
    evals_per_run: int = 8
    checkpoint_every: int = 1
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    num_workers: int = 2
    progress: bool = True


def default_resolution(pretrain_resolution: int) -> int:
    """1.5x the pre-training resolution rounded (half up) to a multiple of 8 (24 -> 40, 32 -> 48, 224 -> 336)."""
    return max(MIN_RESOLUTION, math.floor(pretrain_resolution * RESOLUTION_FACTOR / 8 + 0.5) * 8)


def to_train_config(config: FinetuneConfig) -> TrainConfig:
    """The TrainConfig that runs `config`: variant and multipliers from the checkpoint's config."""
    if config.resolution is not None:
        check_resolution(config.resolution, "--resolution")
    if config.eval_resolution is not None:
        check_resolution(config.eval_resolution, "--eval-resolution")
    source = resolve_checkpoint(config.init_from)
    meta = read_meta(source)
    saved = meta.get("config", {})
    pre_resolution = meta.get("resolution") or saved.get("resolution")
    if "variant" not in saved or not pre_resolution:
        raise NFNetError(f"{source} is not an nfnet training checkpoint (its metadata has no config)")
    resolution = config.resolution or default_resolution(int(pre_resolution))
    if resolution <= int(pre_resolution):
        raise NFNetError(f"fine-tuning resolution {resolution} must be higher than the pre-training "
                         f"resolution {pre_resolution} ([P1] fine-tunes at 384 after 224); "
                         f"pass --resolution {default_resolution(int(pre_resolution))}")
    fields = dataclasses.asdict(config)
    fields.update(
        init_from=source,
        resolution=resolution,
        variant=saved["variant"],
        width_mult=float(saved.get("width_mult", 1.0)),
        depth_mult=float(saved.get("depth_mult", 1.0)),
    )
    return TrainConfig(**fields)


def finetune(config: FinetuneConfig, callback: Callable[[dict, str | None], None] | None = None) -> dict:
    """Fine-tune as `train` does (same callback and summary), with `parent` in the summary."""
    return train(to_train_config(config), callback)


DESCRIPTION = ("Fine-tune a pre-trained NFNet checkpoint on a new dataset at a higher resolution: a new "
               "classifier for its classes, SAM, EMA weights; prints the JSON summary as nfnet.train does.")

_HELP = {
    "init_from": "pre-trained checkpoint directory, or the workdir of a pre-training run (its latest "
                 "checkpoint); required unless resuming",
    "resolution": "fine-tuning image size in px; must be higher than the pre-training resolution "
                  "(default: 1.5x it, rounded to a multiple of 8)",
    "resume": "continue the fine-tuning run in --workdir from its latest checkpoint",
    "resume_from": "continue a fine-tuning run from this checkpoint directory (default: start a new run)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="nfnet.finetune", description=DESCRIPTION, argument_default=argparse.SUPPRESS)
    parser.add_argument("--from", "--init-from", dest="init_from", metavar="CHECKPOINT", help=_HELP["init_from"])
    add_config_flags(parser, FinetuneConfig, _HELP, skip=frozenset({"init_from"}))
    parser.add_argument("--resume", action="store_true", help=_HELP["resume"])
    parser.add_argument("--resume-from", help=_HELP["resume_from"])
    return parser


def config_from_finetune_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a fine-tuning command line (a resumed run takes its checkpoint's config)."""
    base = resume_base(args)
    if base is not None:
        return config_from_args(args, base)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig) if hasattr(args, f.name)}
    if "init_from" not in given:
        raise NFNetError("pass --from <pre-trained checkpoint or workdir>")
    return to_train_config(FinetuneConfig(**given))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: config_from_finetune_args(args))


if __name__ == "__main__":
    host_allocator.command_start()  # jemalloc where installed: nfnet/host_allocator.py
    sys.exit(main())
