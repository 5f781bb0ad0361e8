"""What one compile buys across an LR grid: the same cell trained at several LRs, one
after another, sharing a fresh persistent compilation cache.

    .venv/bin/python benchmarks/lr_grid_compile.py                        # nano, 0.25 epochs, 7 LRs
    .venv/bin/python benchmarks/lr_grid_compile.py --variant mini --lrs 0.1,0.2,0.4
    .venv/bin/python benchmarks/lr_grid_compile.py --repo ../other-checkout  # another version's trainer

Each LR is one `python -m nfnet.train` process (the cpu-scaling preset's settings:
Fashion-MNIST at 16px, batch 128, 4 evaluations on 5,000 test images, XLA fast
compile unless --full-compile), so the figures are wall time of whole runs: start,
data, compile or cache fetch, training, evaluation, checkpoints. The cache holds
every program (as trials under Ray do). `--repo` runs the trainer of another checkout
with this interpreter, to compare versions on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(repo: Path, args: argparse.Namespace, lr: float, cache: str, workdir: str) -> tuple[float, dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    if not args.full_compile:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    command = [sys.executable, "-m", "nfnet.train", "--variant", args.variant, "--epochs", str(args.epochs),
               "--lr", str(lr), "--batch-size", "128", "--resolution", "16", "--eval-resolution", "16",
               "--dataset", args.dataset, "--max-eval-examples", "5000", "--evals-per-run", "4",
               "--workdir", workdir, "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: nfnet.train failed at lr {lr}: {done.stderr.strip().splitlines()[-1]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="nano")
    parser.add_argument("--epochs", type=float, default=0.25)
    parser.add_argument("--lrs", default="0.025,0.05,0.1,0.2,0.4,0.8,1.6")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--full-compile", action="store_true", help="XLA's full optimisations")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose nfnet to run (default: this one)")
    args = parser.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "jax-cache")
        print(f"{args.variant}, {args.epochs:g} epochs, {'full' if args.full_compile else 'fast'} compile, "
              f"trainer from {args.repo}")
        print("| lr | wall (s) | cache entries after | val loss |")
        print("|---|---|---|---|")
        walls = []
        for i, lr in enumerate(lrs):
            wall, summary = run(args.repo.resolve(), args, lr, cache, os.path.join(tmp, f"run{i}"))
            walls.append(wall)
            entries = len(os.listdir(cache)) if os.path.isdir(cache) else 0
            print(f"| {lr:g} | {wall:.1f} | {entries} | {summary['val_loss']:.4f} |", flush=True)
    rest = walls[1:]
    print(f"first run {walls[0]:.1f} s; the others {min(rest):.1f}-{max(rest):.1f} s "
          f"(mean {sum(rest) / len(rest):.1f} s); all {sum(walls):.1f} s" if rest else f"one run {walls[0]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
