"""The learning-rate search: `python -m tuner.lr_search`.

    python -m tuner.lr_search                                  # the embedded default
    python -m tuner.lr_search --variant micro --epochs 0.25 --dry-run
    python -m tuner.lr_search --variant F0 --epochs 1 --batch-size 4096 --dataset parquet:gs://bucket/imagenet \\
        --address auto --storage gs://bucket/nfscale --ledger gs://bucket/nfscale/ledger --cpus-per-trial 8 --accelerator tpu

For a target cell (variant, epoch budget) the planner (`tuner.study.planner.plan_cell`)
reads the ledger: it predicts the cell's optimal LR from every tuned cell (a
least-squares law in log params and log epochs, else the paper's monotone bound,
else the paper's 1.6 at batch 4096 scaled), takes the seed noise from the ledger's
seed repeats (else `--noise`), and starts from what the ledger already holds for
the cell. The search (`tuner.study.planner.Bracket`) runs the pair of grid LRs around the
prediction at once as Ray Tune trials, then continues up or down on the factor-2
grid while a neighbour wins by more than the noise, until the best LR is bracketed
by a worse neighbour on each side (or ties its neighbour within the noise). The
best is recorded as ONE ledger row (source `lr_search`) whose `search` column
says how it was chosen: every trial, the rounds, the prediction and its source,
the noise, whether it was bracketed. The other trials stay in the Ray results
and TensorBoard. A cell already searched to its end is not searched again
(`--force` does); one that stopped unbracketed continues where it stopped.

With no arguments it runs the embedded default: Ray in-process, `nano` on
Fashion-MNIST (scikit-learn's digits when the Debian package is missing) for a
fraction of an epoch at batch 128 (docs/benchmarks.md, "Tuner overhead").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from nfnet.errors import NFNetError
from nfnet.metrics import json_safe
from tuner.cli import run_command
from tuner.errors import TunerError
from tuner.raytune.connection import DEFAULT_NODE_WAIT_S, NODE_WAIT_HELP
from tuner.raytune.experiment import INTERRUPTED_EXIT
from tuner.placement.trial import ACCELERATOR_HELP
from tuner.study.planner import COMPLETE_STOPS, DEFAULT_MAX_TRIALS, DEFAULT_NOISE, DEFAULT_PARALLEL
from tuner.jobs.lr_search import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_EVALS, DEFAULT_MAX_EVAL, DEFAULT_VARIANT, LRSearchOptions, OTHER_EPOCHS, SearchPlan, SearchResult, plan_search, run_search


def describe_plan(search: SearchPlan) -> list[str]:
    o, cell = search.options, search.cell
    pred = cell.prediction
    lines = [
        f"target: {search.label} ({search.params:,} params) on {search.dataset_label}, "
        f"{search.epochs:g} epochs at batch {o.batch_size}",
        *(f"note: {note}" for note in search.notes),
        f"ledger: {search.ledger_uri} ({search.ledger_rows} rows)",
        f"prediction ({pred.source}): {pred.detail}",
    ]
    if pred.bound is not None:
        for b in pred.bound.bounding_cells:
            mark = "  <- binds" if b == pred.bound.binding_cell else ""
            lines.append(f"  bound: {b.variant} at {b.epochs:g} epochs: lr {b.lr:g} at batch {b.batch_size} "
                         f"-> {b.transferred_lr:g} at batch {o.batch_size}{mark}")
    lines.append(f"noise: {cell.noise.describe()}; a win needs a gap over "
                 f"{100 * math.sqrt(2) * cell.noise.value:.3g}% (sqrt 2 x the noise)")
    lines.append(f"search: {cell.describe()}")
    if cell.status != "done":
        lines.append(f"placement: {search.placement().describe()}")
        mode = " (XLA fast compile)" if o.fast_compile else ""
        lines.append(f"rounds of up to {cell.parallel} trials at once, at most {cell.max_trials} trials{mode}")
    return lines


def describe_result(result: SearchResult, rerun: str | None = None) -> list[str]:
    """The closing lines; `rerun` is the command that ran (default: this process's), for advice."""
    from tuner.raytune.experiment import command_line, results_table

    rerun = rerun or command_line("tuner.lr_search")
    v = result.verdict
    lines = []
    if result.trials:
        lines += ["", "results:", results_table(result.trials), ""]
    if result.record is not None and result.record.get("rounds"):
        rounds = " / ".join(", ".join(f"{lr:g}" for lr in r) for r in result.record["rounds"])
        lines.append(f"rounds: {rounds}")
    if result.interrupted:
        lines.append("interrupted (Ctrl-C)")
    if v.lr is None:
        lines.append(f"no LR chosen: {v.message}; nothing recorded")
        if result.interrupted:
            lines.append(f"no trial finished; start the search again with: {rerun}")
    elif result.experiment is None:
        lines.append(f"chosen lr: {v.lr:g} (val_loss {v.loss:.4g}); already tuned, nothing run")
        lines.append(f"  {v.message}")
        lines.append(f"to search it again from scratch: {rerun} --force")
    else:
        lines.append(f"chosen lr: {v.lr:g} (val_loss {v.loss:.4g}), {v.stop}")
        lines.append(f"  {v.message}")
        if result.incomplete:
            missing = ", ".join(f"{lr:g}" for lr in result.incomplete)
            lines.append(f"note: the trial(s) at lr {missing} did not finish: the search stopped unbracketed")
            lines.append(f"continue it with: {rerun}")
        elif v.stop not in COMPLETE_STOPS:
            lines.append("note: not bracketed")
            lines.append(f"continue the search with: {rerun}")
        if result.recorded is not None:
            lines.append(f"recorded in ledger {result.search.ledger_uri} as {result.recorded['trial_id']}")
    for path in result.failed:
        lines.append(f"failed trial: {path}")
    if result.experiment_dir:
        lines += [f"TensorBoard logs: {result.experiment_dir}", f"  {result.tensorboard}"]
    if result.ok and not result.interrupted:
        ledger = result.search.ledger_uri
        lines.append(f"next: tune another cell (e.g. {_other_cell(result.search)}), then summarise the ledger "
                     f"with: python -m tuner.report --ledger {ledger} --out report")
    lines.append(f"took {result.wall_seconds:.0f}s")
    return lines


def _other_cell(search: SearchPlan) -> str:
    """A command for the same search at twice the epoch budget: the next cell of a scaling study."""
    parts = ["python -m tuner.lr_search", f"--variant {search.label}", f"--epochs {2 * search.epochs:g}"]
    o = search.options
    if o.dataset:
        parts.append(f"--dataset {o.dataset}")
    if o.ledger:
        parts.append(f"--ledger {o.ledger}")
    return "`" + " ".join(parts) + "`"


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser, resolution

    p = FlagParser(
        prog="python -m tuner.lr_search",
        description="Tune one (variant, epoch budget) cell's learning rate: predict its optimum from the ledger, "
        "run the pair of grid LRs around it at once on Ray, continue up or down until the best is bracketed "
        "(or ties within the seed noise), and record the best with how it was chosen.",
    )
    p.add_argument("--variant", default=DEFAULT_VARIANT,
                   help="model variant to tune: nano, micro, mini, small, F0..F7 or F0+..F7+, optionally with "
                   f"-w<mult>/-d<mult> suffixes (default: {DEFAULT_VARIANT})")
    p.add_argument("--width-mult", type=float, default=1.0,
                   help="multiply the variant's widths by this factor; the ledger files the cell as "
                   "<variant>-w<mult> (default: 1.0)")
    p.add_argument("--depth-mult", type=float, default=1.0,
                   help="multiply the variant's block counts by this factor; the ledger files the cell as "
                   "<variant>-d<mult> (default: 1.0)")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"epoch budget of every trial (default: {DEFAULT_EPOCHS['fashion_mnist']:g} on "
                   f"Fashion-MNIST, {DEFAULT_EPOCHS['digits']:g} on digits, else {OTHER_EPOCHS:g})")
    p.add_argument("--dataset", default=None,
                   help="dataset spec, as nfnet.train --dataset (default: fashion_mnist when installed, else digits)")
    p.add_argument("--data-dir", default=None,
                   help="where the dataset is read from when its spec names no location, as nfnet.train "
                   "--data-dir (default: the dataset's usual place)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="global batch size of every trial; the planner scales LRs tuned at other batch sizes "
                   f"linearly (default: {DEFAULT_BATCH})")
    p.add_argument("--resolution", type=resolution, default=None,
                   help="training image size in px, at least 16 (default: the variant's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every trial's initial parameters and data order (default: 0)")
    p.add_argument("--max-train-examples", type=int, default=None,
                   help="train on a fixed subset of this many examples; the ledger files it as dataset[n] "
                   "(default: the whole training set)")
    p.add_argument("--max-eval-examples", type=int, default=DEFAULT_MAX_EVAL,
                   help="evaluate every trial on a fixed subset of this many held-out examples "
                   f"(default: {DEFAULT_MAX_EVAL})")
    p.add_argument("--evals-per-run", type=int, default=DEFAULT_EVALS,
                   help="held-out evaluations per trial, evenly spaced; a trial reports and checkpoints "
                   f"there (default: {DEFAULT_EVALS})")
    p.add_argument("--ledger", default=None, help="ledger directory or gs:// URI (default: $NFSCALE_LEDGER or results/ledger)")
    p.add_argument("--storage", default=None, help="Ray results directory or gs:// URI (default: results/)")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster to run on, host:port or auto (default: Ray in-process)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the in-process Ray (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs Ray reserves for each trial, per host on a TPU slice (default: 1.0)")
    p.add_argument("--accelerator", default="cpu", help=f"where trials run: {ACCELERATOR_HELP} (default: cpu)")
    p.add_argument("--experiment-name", default=None,
                   help="name of the Ray experiment under --storage (default: lr_search-<variant>-e<epochs>-<time>)")
    p.add_argument("--fast-compile", action="store_true",
                   help="XLA with most optimizations off: compiles ~2x faster, steps run ~2x slower; "
                   "pays only for very short CPU runs (see docs/benchmarks.md)")
    p.add_argument("--noise", type=float, default=None,
                   help="relative seed-to-seed spread of a final loss; a win needs a gap over sqrt(2) x it "
                   f"(default: the median of the ledger's seed repeats of this dataset, else {DEFAULT_NOISE:g})")
    p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help=f"trials per round, run at once when the cluster has room (default: {DEFAULT_PARALLEL})")
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help="trials this search may run before it stops unbracketed; a rerun continues "
                   f"(default: {DEFAULT_MAX_TRIALS})")
    p.add_argument("--stagger", choices=("auto", "on", "off"), default="auto",
                   help="start the first trial alone and the others after its first report, so they take its "
                   "compiled program from the persistent cache; auto: on with Ray in-process, off on a cluster "
                   "(default: auto)")
    p.add_argument("--force", action="store_true",
                   help="search a cell the ledger already tunes, from scratch (its own runs are not reused)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial from its last checkpoint (default: 2)")
    p.add_argument("--wait-for-nodes", type=float, default=DEFAULT_NODE_WAIT_S, metavar="SECONDS", help=NODE_WAIT_HELP)
    p.add_argument("--dry-run", action="store_true", help="print the LRs and the ledger cells that bound them; run nothing")
    p.add_argument("--json", action="store_true", help="print the plan or the result as one JSON object on stdout")
    return p


def options_from_args(args: argparse.Namespace) -> LRSearchOptions:
    names = {f.name for f in dataclasses.fields(LRSearchOptions)}
    return LRSearchOptions(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    from tuner.raytune.experiment import command_line

    args = build_parser().parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    rerun = command_line("tuner.lr_search", argv)

    def log(text: str) -> None:
        print(text, file=out, flush=True)

    searched: list[SearchResult] = []

    def plan_and_run() -> int:
        search = plan_search(options_from_args(args))
        for line in describe_plan(search):
            log(line)
        if args.dry_run:
            if args.json:
                print(json.dumps(json_safe({"dry_run": True, **search.to_dict()})))
            return 0
        searched.append(run_search(search, log, to_stderr=args.json))
        return 0

    # A second Ctrl-C: Tune stopped without its last snapshot, and nothing was recorded.
    interrupted = f"interrupted (Ctrl-C) before the search was recorded; start it again with: {rerun}"
    status = run_command(plan_and_run, interrupted, errors=(TunerError, NFNetError))
    if not searched:
        return status
    (result,) = searched
    for line in describe_result(result, rerun):
        log(line)
    if args.json:
        print(json.dumps(json_safe({"dry_run": False, **result.to_dict()})))
    if result.interrupted:
        return INTERRUPTED_EXIT
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
