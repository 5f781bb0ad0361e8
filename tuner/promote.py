"""`python -m tuner.promote`: fine-tune the best pre-trained checkpoints, recorded in the ledger.

    python -m tuner.promote --dataset digits --resolution 48
    python -m tuner.promote --dataset digits --resolution 48 --top-k 3 --lrs 0.05,0.1
    python -m tuner.promote --dataset digits --budget-flops 1e12 --dry-run

Candidates are the ledger's pre-training rows that finished (not stopped, not
diverged) with a checkpoint, at or under the compute budget when one is given
(per run, in FLOPs or device-hours); the `--top-k` with the lowest final held-out
loss are promoted. Each is fine-tuned on `--dataset` with nfnet's fine-tuning recipe
(new head, higher resolution, SAM, stochastic depth, dropout, EMA: see
`nfnet.finetune`), as Ray Tune trials, at each of `--lrs` (default: the recipe's
LR). Every fine-tuning trial is a ledger row of kind `finetune`, source `promote`,
whose `parent_trial_id` is the pre-training row it started from, and whose `top1`
is the fine-tuned accuracy. [P1] found fine-tuning favours slightly larger models
with fewer epochs than the pre-training optimum: `--top-k` > 1 tests that, and
`--per-cell` makes the k candidates k different (model, epoch budget) cells, each
at its best LR, rather than the k best runs (which may all be one cell's LRs).
`--skip-promoted` leaves out candidates the ledger already holds a fine-tuning row
of on the same target dataset (and `--resolution`, when given), so a rerun with a
larger `--top-k` fine-tunes only the new ones.

Losses are comparable only on one pre-training dataset: when the candidates come
from several, `--pretrain-dataset` picks one. `tuner.sweep --then-finetune` calls
`promote` on the sweep's own rows.
"""

from __future__ import annotations

import argparse
import sys

from tuner.raytune.experiment import DEFAULT_KEEP_CHECKPOINTS, INTERRUPTED_EXIT, KEEP_CHECKPOINTS_HELP
from tuner.raytune.connection import DEFAULT_NODE_WAIT_S, NODE_WAIT_HELP
from tuner.placement.trial import ACCELERATOR_HELP
from tuner.cli import SetOverride, parse_lrs, run_command
from nfnet.metrics import json_safe
from tuner.jobs.promote import PromoteOptions, plan_promotion, promote

# A second Ctrl-C: Tune stopped; the trials that finished are recorded.
INTERRUPTED = ("interrupted (Ctrl-C) twice; finished fine-tuning trials are in the ledger: run the same command "
               "with --skip-promoted to fine-tune the rest")


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser, resolution

    p = FlagParser(
        prog="python -m tuner.promote",
        description="Fine-tune the pre-trained checkpoints with the lowest held-out loss (within a budget) on a "
        "target dataset, as Ray Tune trials; record each as a finetune row linked to its pre-training row.",
    )
    p.add_argument("--dataset", required=True, help="target dataset (e.g. digits, fashion_mnist, parquet:<uri>)")
    p.add_argument("--resolution", type=resolution, default=None,
                   help="fine-tuning image size in px, above the pre-training one (default: 1.5x it, a multiple of 8)")
    p.add_argument("--eval-resolution", type=resolution, default=None,
                   help="image size in px of the fine-tuning runs' held-out evaluation (default: --resolution)")
    p.add_argument("--ledger", default=None,
                   help="ledger directory or gs:// URI (default: $NFSCALE_LEDGER or results/ledger)")
    p.add_argument("--top-k", type=int, default=1,
                   help="promote this many checkpoints, lowest held-out loss first (default: 1)")
    p.add_argument("--per-cell", action="store_true",
                   help="candidates are the best run of each (model, epoch budget), so --top-k promotes k cells")
    p.add_argument("--skip-promoted", action="store_true",
                   help="leave out candidates already fine-tuned on --dataset (at --resolution, when given)")
    p.add_argument("--budget-flops", type=float, default=None,
                   help="only candidates whose pre-training used at most this many FLOPs (default: any)")
    p.add_argument("--budget-device-hours", type=float, default=None,
                   help="only candidates whose pre-training used at most this many device-hours (default: any)")
    p.add_argument("--experiment", default=None,
                   help="only candidates from this experiment (default: any experiment)")
    p.add_argument("--pretrain-dataset", default=None,
                   help="only candidates pre-trained on this dataset (needed when the ledger holds several)")
    p.add_argument("--lrs", type=parse_lrs, default=(), metavar="LR,LR",
                   help="a small LR search: one trial per LR and candidate (default: the recipe's LR)")
    p.add_argument("--epochs", type=float, default=None, help="epochs of each fine-tuning run (default: nfnet.finetune's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch size of each fine-tuning run (default: nfnet.finetune's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of each fine-tuning run's new classifier, data order and augmentation (default: 0)")
    p.add_argument("--data-dir", default=None,
                   help="where the target dataset is read from when its spec names no location, as "
                   "nfnet.train --data-dir (default: the dataset's usual place)")
    p.add_argument("--set", dest="overrides", action=SetOverride, default=[], metavar="KEY=VALUE",
                   help="a trainer field for every trial (repeatable), e.g. max_train_examples=512")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster to run on, host:port or auto (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.add_argument("--storage", default=None,
                   help="experiment storage, a directory or gs:// URI (default: results/)")
    p.add_argument("--name", default=None,
                   help="experiment name under --storage (default: promote-<dataset>-<time>)")
    p.add_argument("--accelerator", default="cpu", help=f"where trials run: {ACCELERATOR_HELP} (default: cpu)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs Ray reserves for each trial, per host on a TPU slice (default: 1.0)")
    compile_mode = p.add_mutually_exclusive_group()
    compile_mode.add_argument("--fast-compile", dest="fast_compile", action="store_true", default=None,
                              help="XLA with most optimisations off (default for CPU trials of a local Ray)")
    compile_mode.add_argument("--full-compile", dest="fast_compile", action="store_false",
                              help="XLA's full optimisations (default on clusters and accelerators)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="fine-tuning trials at a time (default: as many as the resources allow)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial, from its last checkpoint (default: 2)")
    p.add_argument("--keep-checkpoints", type=int, default=DEFAULT_KEEP_CHECKPOINTS, metavar="K",
                   help=KEEP_CHECKPOINTS_HELP)
    p.add_argument("--wait-for-nodes", type=float, default=DEFAULT_NODE_WAIT_S, metavar="SECONDS", help=NODE_WAIT_HELP)
    p.add_argument("--json", action="store_true", help="print the result (or plan) as one JSON object on stdout")
    p.add_argument("--dry-run", action="store_true", help="print the candidates and trial configs, run nothing")
    return p


def run(options: PromoteOptions) -> int:
    import json

    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if options.json else print
    if options.dry_run:
        candidates, configs, placements = plan_promotion(options)
        if options.json:
            print(json.dumps({"candidates": [json_safe(c) for c in candidates], "configs": configs,
                              "lrs": list(options.lrs),
                              "placements": {k: p.describe() for k, p in placements.items()},
                              "resources_per_trial": {k: p.resources for k, p in placements.items()}},
                             indent=1))
        else:
            for c in candidates:
                config = configs[c["trial_id"]]
                print(f"{c['trial_id']}: val_loss={c['final_val_loss']:.4g} -> fine-tune "
                      + ", ".join(f"{k}={v}" for k, v in sorted(config.items())))
                print(f"  placement: {placements[c['trial_id']].describe()}")
        return 0
    result = promote(options, log=log)
    if options.json:
        print(json.dumps({"experiment": result.experiment, "path": result.path,
                          "candidates": [json_safe(c) for c in result.candidates],
                          "rows": [json_safe(r) for r in result.rows],
                          "interrupted": result.interrupted}, indent=1))
    return INTERRUPTED_EXIT if result.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = vars(args)
    values["overrides"] = tuple(values["overrides"])
    options = PromoteOptions(**values)
    return run_command(lambda: run(options), interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
