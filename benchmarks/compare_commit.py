"""The trainer's step at another commit against this checkout's, on the same machine, side by side.

    .venv/bin/python benchmarks/compare_commit.py --base 8da6f50                 # nano 32px batch 256
    .venv/bin/python benchmarks/compare_commit.py --base 8da6f50 --variant F0 --resolution 64 --batch-size 16
    .venv/bin/python benchmarks/compare_commit.py --base 8da6f50 --allocator system   # both on glibc's malloc

"N x faster than the trainer was" is only a measurement when both run on one machine in one
sitting: these VMs differ by 2x between hosts of the same name and drift by 10% within an
hour. This checks `--base` out into a temporary git worktree (removed afterwards) and runs
`benchmarks/train_throughput.py` of each tree in a process of its own, base and this
checkout in turn, `--rounds` times, with the arguments every version of that script takes
(variant, batch size, resolution, steps, warmup). Each prints its median step; this prints
the median over rounds of each and the ratio. Uncommitted changes of this checkout count as
this side's.

The host allocator (nfnet/host_allocator.py) is part of what changed: `--allocator own` (the
default) runs each side as its own code starts (a base from before the allocator change runs
on glibc's malloc, this checkout on jemalloc where installed); `system` or `jemalloc` put both
on the same one. 8da6f50 is the trainer when docs/benchmarks.md's speed targets were set.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nfnet import host_allocator  # noqa: E402
from nfnet.errors import NFNetError  # noqa: E402

ALLOCATORS = ("own", "system", "jemalloc")
_STEP = re.compile(r"step ([\d,]+(?:\.\d+)?) ms")
_IMAGES = re.compile(r"([\d,]+(?:\.\d+)?) images/s")


def parse_step_ms(output: str) -> float | None:
    """The median step in ms from train_throughput.py's summary line (every version prints
    '..., N images/s, step X ms (median of K), ...'); None when it printed no such line."""
    for line in reversed(output.strip().splitlines()):
        m = _STEP.search(line)
        if m and _IMAGES.search(line):
            return float(m.group(1).replace(",", ""))
    return None


def resolve_commit(rev: str) -> str:
    """The full hash of `rev` in this repository, or an NFNetError saying why not."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                             capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise NFNetError("git is not installed: compare_commit.py checks the base commit out with git") from None
    if out.returncode != 0:
        raise NFNetError(f"--base {rev!r} is not a commit of this repository (see `git log --oneline`)")
    return out.stdout.strip()


def side_env(tree: Path, allocator: str, is_base: bool) -> dict[str, str]:
    """The environment of one side's process: its own tree first on the import path."""
    env = {k: v for k, v in os.environ.items() if k != host_allocator.REEXEC_MARK}
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if allocator == "system" or (allocator == "own" and host_allocator.REEXEC_MARK in os.environ):
        # No preload for either side: `system` asks for none, and a preload this process was
        # started under (`python -m nfnet.host_allocator ...`) is not a base's own.
        env.pop("LD_PRELOAD", None)
        env.pop("MALLOC_CONF", None)
    if allocator == "system":
        env[host_allocator.ENV] = "system"  # this checkout's script honours it; a base without it uses glibc
    elif allocator == "jemalloc":
        env[host_allocator.ENV] = "jemalloc"
        if is_base:  # a base from before the allocator change starts no allocator of its own
            env.update(host_allocator.allocator_env("jemalloc", env))
    return env


def run_side(tree: Path, args: argparse.Namespace, is_base: bool) -> tuple[float, str]:
    cmd = [sys.executable, str(tree / "benchmarks" / "train_throughput.py"), "--variant", args.variant,
           "--batch-size", str(args.batch_size), "--resolution", str(args.resolution), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, cwd=tree, env=side_env(tree, args.allocator, is_base), capture_output=True,
                         text=True, check=False)
    ms = parse_step_ms(out.stdout)
    if out.returncode != 0 or ms is None:
        last = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        raise NFNetError(f"{'the base' if is_base else 'this checkout'}'s train_throughput.py failed "
                         f"(exit {out.returncode}): {last}")
    return ms, out.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (a hash, tag or branch)")
    parser.add_argument("--variant", default="nano")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (each prints its median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--rounds", type=int, default=3, help="processes of each side, alternating")
    parser.add_argument("--allocator", default="own", choices=ALLOCATORS,
                        help="own: each side as its code starts; system or jemalloc: both on that one")
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.batch_size, args.resolution) < 1 or args.warmup < 0:
        print("error: --steps, --rounds, --batch-size and --resolution must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    try:
        if args.allocator == "jemalloc":
            host_allocator.allocator_env("jemalloc")  # not installed: the one-line error now, not per side
        commit = resolve_commit(args.base)
    except NFNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {"base": [], "this checkout": []}
    with tempfile.TemporaryDirectory(prefix="nfscale-base-") as tmp:
        tree = Path(tmp) / "tree"
        added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), commit],
                               capture_output=True, text=True, check=False)
        if added.returncode != 0:
            print(f"error: git worktree add failed: {added.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 2
        try:
            print(f"{args.variant} {args.resolution}px batch {args.batch_size}: base {commit[:10]} against this "
                  f"checkout ({ROOT.name}), allocator {args.allocator}, {args.rounds} rounds", flush=True)
            for r in range(args.rounds):
                for name, side, is_base in (("base", tree, True), ("this checkout", ROOT, False)):
                    ms, line = run_side(side, args, is_base)
                    times[name].append(ms)
                    print(f"  round {r + 1} {name}: {line}", flush=True)
        except NFNetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True, check=False)
    base, now = statistics.median(times["base"]), statistics.median(times["this checkout"])
    print(f"base {base:,.1f} ms/step ({args.batch_size / base * 1e3:,.0f} images/s), this checkout {now:,.1f} "
          f"ms/step ({args.batch_size / now * 1e3:,.0f} images/s): {base / now:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
