"""`python -m tuner.sweep`: a compute-scaling study over variant × epoch budget × learning rate.

    python -m tuner.sweep --preset cpu-smoke                 # minutes on a laptop CPU
    python -m tuner.sweep --preset cpu-fashion --budget-device-hours 2
    python -m tuner.sweep --preset paper --cpu --grid        # the paper's grid, CPU-sized
    python -m tuner.sweep --preset cpu-smoke --resume        # continue the latest cpu-smoke sweep
    python -m tuner.sweep --preset cpu-smoke --dry-run       # the plan, run nothing

A sweep is one Ray Tune experiment: a searcher suggests cells (Optuna's TPE over the
preset's categorical space, or `--grid`: every cell once through Optuna's grid
sampler), `GroupedASHA` stops bad learning rates comparing only trials of the same
(variant, epoch budget) at the same fraction of their own schedule, and a compute
budget (`--budget-flops` / `--budget-device-hours`) starts no new trial once it is
spent (trials stopped early count what they used). Every trial that ends is one
ledger row (source `sweep`). `--resume` restores the experiment with
`Tuner.restore`: finished trials are kept, unfinished ones continue from their
checkpoints, the searcher continues its study and GroupedASHA rebuilds its rungs and
the budget from the trials' stored results. `--grid --skip-recorded` continues a grid
from its ledger alone (a new checkout, a new cluster, an experiment directory that is
gone): cells the ledger already holds as finished or diverged runs of the same
trainer settings are not run again. A resumed sweep runs as it was started
(preset, budget, searcher, ledger and placement come from the experiment directory);
only --address, --storage/--name/--preset (which sweep) and the fine-tuning flags apply.

The first trials of a searched sweep are distinct cells drawn at random (seeded)
and enqueued, after any `--point`s: TPE's random start-up phase would otherwise
repeat cells, and a repeated cell with the same seed is the same run.
"""

from __future__ import annotations

import argparse
import json
import sys

from search_spaces import known_presets
from tuner.errors import TunerError
from tuner.raytune.connection import DEFAULT_NODE_WAIT_S, NODE_WAIT_HELP
from tuner.raytune.experiment import INTERRUPTED_EXIT, DEFAULT_KEEP_CHECKPOINTS, KEEP_CHECKPOINTS_HELP
from tuner.placement.trial import ACCELERATOR_HELP
from tuner.cli import SetOverride, parse_lrs, run_command
from tuner.jobs.sweep import DEFAULT_PRESET, SweepOptions, plan_sweep, run_sweep

# A second Ctrl-C: Tune stopped without writing its last snapshot.
INTERRUPTED = ("interrupted (Ctrl-C) twice: Tune stopped without its last snapshot; `python -m tuner.sweep "
               "--resume` continues from the one before (add --name and --storage as you ran it)")


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser, resolution

    p = FlagParser(
        prog="python -m tuner.sweep",
        description="A compute-scaling study over variant × epoch budget × learning rate: Optuna (TPE) "
        "suggests cells of a preset, GroupedASHA stops bad LRs within each (variant, epochs), a compute "
        "budget ends the sweep, every trial is a ledger row.",
    )
    p.add_argument("--preset", default=None,
                   help=f"the study to run: a preset name ({', '.join(known_presets())}) or your own as "
                   f"package.module[:ATTR] / file.py[:ATTR] (default: {DEFAULT_PRESET})")
    p.add_argument("--cpu", action="store_true", help="run the preset's CPU form (small variants, small data)")
    p.add_argument("--grid", action="store_true", help="run every cell of the preset once (Optuna's grid sampler)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="trials of a searched sweep (default: the preset's)")
    p.add_argument("--point", dest="points", action="append", default=[], metavar="VARIANT,EPOCHS,LR",
                   help="a cell to try first (repeatable), e.g. nano,1,0.1")
    p.add_argument("--budget-flops", type=float, default=None,
                   help="stop starting trials once the sweep's training FLOPs reach this total (default: no budget)")
    p.add_argument("--budget-device-hours", type=float, default=None,
                   help="stop starting trials once the sweep's device-hours reach this total (default: no budget)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="most trials that run at the same time (default: as many as the resources allow)")
    p.add_argument("--accelerator", default="cpu", help=f"where trials run: {ACCELERATOR_HELP} (default: cpu)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs Ray reserves for each trial, per host on a TPU slice (default: 1.0)")
    compile_mode = p.add_mutually_exclusive_group()
    compile_mode.add_argument("--fast-compile", dest="fast_compile", action="store_true", default=None,
                              help="XLA with most optimisations off: faster compiles, slower steps "
                              "(default for CPU trials of a local Ray)")
    compile_mode.add_argument("--full-compile", dest="fast_compile", action="store_false",
                              help="XLA's full optimisations (default on clusters and accelerators)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial, from its last checkpoint (default: 2)")
    p.add_argument("--keep-checkpoints", type=int, default=DEFAULT_KEEP_CHECKPOINTS, metavar="K",
                   help=KEEP_CHECKPOINTS_HELP)
    p.add_argument("--wait-for-nodes", type=float, default=DEFAULT_NODE_WAIT_S, metavar="SECONDS", help=NODE_WAIT_HELP)
    p.add_argument("--resume", action="store_true",
                   help="continue the latest sweep (of --preset, if given) under --storage, or --name; "
                   "it runs with the settings it was started with")
    p.add_argument("--skip-recorded", action="store_true",
                   help="with --grid: leave out cells the ledger already holds as finished or diverged runs "
                   "of the same trainer settings (continue a grid from its ledger)")
    p.add_argument("--name", default=None, help="experiment name under --storage (default: sweep-<preset>-<time>)")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster to run on, host:port or auto (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.add_argument("--storage", default=None,
                   help="experiment storage, a directory or gs:// URI (default: results/)")
    p.add_argument("--ledger", default=None,
                   help="ledger directory or gs:// URI (default: $NFSCALE_LEDGER or results/ledger)")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="keep the Optuna study in this database, e.g. sqlite:///results/optuna.db "
                   "(default: in memory, kept with the experiment's searcher state for --resume)")
    p.add_argument("--study-name", default=None,
                   help="Optuna study name; an existing study of that name in --optuna-storage is continued "
                   "(default: the experiment name)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the sampler, the start-up cells and every trial (default: 0)")
    p.add_argument("--dataset", default=None,
                   help="train on this dataset instead of the preset's, e.g. digits or parquet:gs://... "
                   "(default: the preset's)")
    p.add_argument("--data-dir", default=None,
                   help="where the dataset is read from when its spec names no location, as nfnet.train "
                   "--data-dir (default: the dataset's usual place)")
    p.add_argument("--set", dest="overrides", action=SetOverride, default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field for every trial (repeatable), e.g. max_train_examples=2048")
    p.add_argument("--then-finetune", action="store_true",
                   help="after the sweep, fine-tune its best checkpoints as tuner.promote does (needs --finetune-dataset)")
    p.add_argument("--finetune-dataset", default=None,
                   help="dataset to fine-tune on with --then-finetune, e.g. digits")
    p.add_argument("--finetune-resolution", type=resolution, default=None,
                   help="fine-tuning image size in px, above the pre-training one (default: 1.5x it)")
    p.add_argument("--finetune-top-k", type=int, default=1,
                   help="fine-tune this many of the sweep's checkpoints, lowest held-out loss first (default: 1)")
    p.add_argument("--finetune-lrs", type=parse_lrs, default=(), metavar="LR,LR",
                   help="fine-tune each checkpoint once per LR of this comma-separated list "
                   "(default: the fine-tuning recipe's LR)")
    p.add_argument("--finetune-epochs", type=float, default=None,
                   help="epochs of each fine-tuning run (default: nfnet.finetune's)")
    p.add_argument("--json", action="store_true", help="print the plan or the result as one JSON object on stdout")
    p.add_argument("--dry-run", action="store_true", help="print the plan (space, start points, resources), run nothing")
    return p


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    values = vars(args).copy()
    for key in ("points", "overrides"):
        values[key] = tuple(values[key])
    values["finetune_lrs"] = tuple(values["finetune_lrs"])
    return SweepOptions(**values)


def run(options: SweepOptions) -> int:
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if options.json else print
    if options.dry_run:
        if options.resume:
            raise TunerError("--dry-run plans a new sweep; drop --resume")
        plan = plan_sweep(options)
        if options.json:
            print(json.dumps(plan.to_json(), indent=1))
        else:
            print(plan.describe())
            if plan.mode == "grid":
                cells = plan.points if options.skip_recorded else [
                    {"variant": c.label, "epochs": c.epochs, "lr": c.lr} for c in plan.preset.cells()]
                for cell in cells:
                    print(f"  cell {cell['variant']} epochs={cell['epochs']:g} lr={cell['lr']:g}")
        return 0
    result = run_sweep(options, log=log)
    if options.json:
        print(json.dumps(result.to_json(), indent=1))
    return INTERRUPTED_EXIT if result.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    options = options_from_args(build_parser().parse_args(argv))
    return run_command(lambda: run(options), interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
