"""benchmarks/compare_commit.py: another commit's trainer against this checkout's, side by side."""

import subprocess
import sys

import pytest
from bench_modules import BENCHMARKS, load_benchmark

SCRIPT = str(BENCHMARKS / "compare_commit.py")


def worktrees() -> str:
    return subprocess.run(["git", "-C", str(BENCHMARKS.parent), "worktree", "list", "--porcelain"],
                          capture_output=True, text=True, check=True).stdout


def test_step_is_read_from_either_version_of_the_summary_line():
    cc = load_benchmark("compare_commit")
    old = ("nano 32px batch 256 float32 on 1 x cpu: 493 images/s, step 519.5 ms (median of 5), 9.63 GFLOP/step, "
           "18.5 GFLOP/s achieved, compile 11.6 s; CPU time 0.77 s/step (12.5 GFLOP per CPU-second)")
    new = ("F0 64px batch 16 float32 dense convs on 1 x cpu: 20 images/s, step 1,407.0 ms (median of 3), 68.63 "
           "GFLOP/step (XLA's cost analysis: 72.58), 48.8 GFLOP/s achieved, compile 34.7 s; host allocator: jemalloc")
    assert cc.parse_step_ms("compiling...\n" + old + "\n") == 519.5
    assert cc.parse_step_ms(new) == 1407.0
    assert cc.parse_step_ms("Traceback (most recent call last):\n  step 3 ms\n") is None


def test_an_unknown_base_is_a_one_line_error():
    out = subprocess.run([sys.executable, SCRIPT, "--base", "no-such-commit-here"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --base 'no-such-commit-here' is not a commit of this repository (see `git log --oneline`)"]


def in_git_checkout() -> bool:
    return subprocess.run(["git", "-C", str(BENCHMARKS.parent), "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not in_git_checkout(), reason="needs a git checkout with a HEAD commit to check out")
def test_both_sides_run_and_the_worktree_is_removed():
    before = worktrees()
    out = subprocess.run([sys.executable, SCRIPT, "--base", "HEAD", "--variant", "nano", "--resolution", "16",
                          "--batch-size", "8", "--steps", "2", "--warmup", "1", "--rounds", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[1].startswith("  round 1 base: nano 16px batch 8")
    assert lines[2].startswith("  round 1 this checkout: nano 16px batch 8")
    assert lines[-1].startswith("base ") and lines[-1].endswith("x")
    assert worktrees() == before
