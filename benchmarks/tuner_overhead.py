"""Where an lr_search's wall time goes: training, compilation, and Ray around them.

    .venv/bin/python benchmarks/tuner_overhead.py                    # lr_search's default, cold then warm cache
    .venv/bin/python benchmarks/tuner_overhead.py --full-compile     # any lr_search flag passes through
    .venv/bin/python benchmarks/tuner_overhead.py --runs 1 --dataset digits --epochs 1

Runs the same search `--runs` times (default 2) against one fresh JAX compilation
cache, each from an empty ledger so every run plans the same two LRs: the first
run compiles, later ones find the programs in the persistent cache. For every run
it prints lr_search's wall time against its trials' own figures, read from the
trials' reported results:

- train: time in training steps (the trainer's images / images_per_sec per report),
- compile: time JAX spent tracing, lowering and compiling or fetching from the cache,
- other: the rest of the trial (data loading, evaluation, checkpoints),
- ray: the wall time not covered by the longest trial (Ray start, actor start,
  scheduling, result sync, shutdown): the trials run at once.

Everything is written under a temporary directory (or `--keep DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tuner.errors import TunerError
from tuner.lr_search import build_parser, options_from_args
from tuner.jobs.lr_search import plan_search, run_search


def trial_figures(trial_dir: Path) -> dict[str, float]:
    """A trial's wall, training, compile and cache figures from its result.json."""
    results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    train = 0.0
    seen = 0
    for result in results:
        images = result["images_seen"] - seen
        seen = result["images_seen"]
        if images > 0 and result.get("images_per_sec", 0) > 0:
            train += images / result["images_per_sec"]
    last = results[-1]
    return {
        "lr": last["config"]["lr"],
        "wall": last["time_total_s"],
        "train": train,
        "compile": last["compile_seconds"],
        "cache_hits": last["compile_cache_hits"],
        "val_loss": last["val_loss"],
    }


def one_run(args: argparse.Namespace, root: Path, index: int) -> dict:
    options = options_from_args(args)
    options = replace(
        options,
        ledger=str(root / f"ledger-{index}"),
        storage=str(root / "results"),
        experiment_name=f"overhead-{index}",
    )
    start = time.perf_counter()
    search = plan_search(options)
    result = run_search(search, log=lambda text: print(text, file=sys.stderr, flush=True), to_stderr=True)
    wall = time.perf_counter() - start
    trials = [trial_figures(p) for p in sorted(Path(result.experiment_dir).iterdir()) if (p / "result.json").is_file()]
    return {"wall": wall, "trials": trials, "chosen_lr": result.chosen_lr}


def report(runs: list[dict]) -> str:
    header = f"{'run':<6}{'wall':>8}{'trial':>8}{'train':>8}{'compile':>9}{'hits':>6}{'other':>8}{'ray':>8}"
    lines = [header]
    for i, run in enumerate(runs):
        longest = max(t["wall"] for t in run["trials"])
        for j, t in enumerate(run["trials"]):
            other = t["wall"] - t["train"] - t["compile"]
            name = ("cold" if i == 0 else f"warm{i}") if j == 0 else ""
            wall = f"{run['wall']:.0f}s" if j == 0 else ""
            ray = f"{run['wall'] - longest:.0f}s" if j == 0 else ""
            lines.append(
                f"{name:<6}{wall:>8}{t['wall']:>7.0f}s{t['train']:>7.0f}s{t['compile']:>8.1f}s"
                f"{t['cache_hits']:>6d}{other:>7.0f}s{ray:>8}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--runs", type=int, default=2, help="searches against one compilation cache (first is cold)")
    parser.add_argument("--keep", default=None, help="write here instead of a temporary directory")
    own, rest = parser.parse_known_args(argv)
    args = build_parser().parse_args(rest)
    for flag in ("ledger", "storage", "experiment_name", "dry_run", "json"):
        if getattr(args, flag):
            print(f"error: --{flag.replace('_', '-')} is set by the benchmark", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="nfscale-overhead-") as tmp:
        root = Path(own.keep or tmp).absolute()
        # A fresh cache that every run (and every trial: Ray passes the variable on) shares.
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(root / "jax-cache")
        try:
            runs = [one_run(args, root, i) for i in range(own.runs)]
        except TunerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"lr_search {' '.join(rest) or '(default)'}; {os.cpu_count()} CPUs, load average {load}")
    print(report(runs))
    first, *later = runs
    cold = max(t["compile"] for t in first["trials"])
    print(f"compile per trial: first run {cold:.1f}s", end="")
    if later:
        warm = max(t["compile"] for t in later[-1]["trials"])
        print(f", repeated {warm:.1f}s (the persistent cache saves {cold - warm:.1f}s a trial)")
    else:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
