"""Preemption and restarts: a killed trial resumes from its checkpoint; a killed driver resumes.

Both run `python -m tuner.sweep` as a subprocess joined to a real multi-node Ray
cluster on this machine (a head that takes no trials and two fake TPU v4-8 hosts,
tests/cluster/fake_cluster.py), two trials of nano in different (variant, epochs)
groups so GroupedASHA never stops one for the other.

- Worker: once a trial has checkpointed, its process (the Tune trial actor, found
  by the `pid` Tune reports with every result) is killed with SIGKILL, as a
  preempted host would lose it. Tune retries it (`--max-failures`) from its latest
  checkpoint, the trainer resumes exactly there, and the sweep ends with every
  trial in the ledger once.
- Driver: the sweep's own process is killed with SIGKILL after the first
  checkpoint (its trials die with it); `--resume` restores the experiment and
  finishes it, again with every trial in the ledger once. Evaluations the dead
  driver logged after Tune's last snapshot of the experiment run again.

A trial that resumed, not restarted, reports under a new pid steps that continue
after its last checkpoint; a restart from scratch would report the first
evaluation's step again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_cluster import client_env, fake_cluster, tpu_hosts
from tuner.records.ledger import Ledger

pytestmark = pytest.mark.slow

PRESET = "cpu-smoke"
# Two cells of the preset's grid in different ASHA groups.
POINTS = ["nano,1,0.1", "nano,0.5,0.1"]
# 128 (64) steps at batch 32 on 4096 Fashion-MNIST images at 32px, an evaluation and
# checkpoint every 16 (8) steps: long enough after the first checkpoint to be killed
# mid-run even on a quiet machine (a 1437-image digits run ended in ~5 s, too soon).
OVERRIDES = ["batch_size=32", "max_train_examples=4096", "max_eval_examples=64", "evals_per_run=8",
             "resolution=32", "eval_resolution=32"]
RUN_TIMEOUT_S = 900
KILL_TIMEOUT_S = 600


def sweep_command(tmp_path: Path, name: str, address: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "tuner.sweep", "--preset", PRESET, "--dataset", "fashion_mnist", "--name", name,
           "--num-samples", str(len(POINTS)), "--address", address, "--storage", str(tmp_path / "results"),
           "--ledger", str(tmp_path / "ledger"), "--accelerator", "v4-8", "--cpus-per-trial", "1",
           "--max-failures", "2", *extra]
    for point in POINTS:
        cmd += ["--point", point]
    for item in OVERRIDES:
        cmd += ["--set", item]
    return cmd


def results_of(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_first_checkpoint(experiment: Path, driver: subprocess.Popen) -> tuple[Path, int]:
    """(trial directory, trial actor pid) of the first trial that reports a checkpoint."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            out, _ = driver.communicate()
            pytest.fail(f"the sweep ended before any trial checkpointed:\n{out[-3000:]}")
        for checkpoint in sorted(experiment.glob("*/checkpoint_000000")):
            results = results_of(checkpoint.parent)
            if results and not results[-1].get("schedule_done"):
                return checkpoint.parent, int(results[-1]["pid"])
        time.sleep(0.2)
    pytest.fail("no trial checkpointed in time")


def wait_until_gone(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(f"process {pid} outlived its driver")


@contextlib.contextmanager
def sweep_process(cmd: list[str]) -> Iterator[subprocess.Popen]:
    """`python -m tuner.sweep` joined to the cluster; killed on the way out if still running."""
    proc = subprocess.Popen(cmd, env=client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen) -> str:
    """Its output once it ends (a timeout raises; `sweep_process` then kills it)."""
    out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, out[-4000:]
    return out


def assert_resumed(trial_dir: Path, killed_pid: int, repeats_allowed: bool = False) -> None:
    """The trial continued from a checkpoint under a new process and ran to its end.

    A killed trial resumes from the last checkpoint it reported: no evaluation is
    repeated. A killed driver's trials resume from the checkpoints in Tune's last
    snapshot of the experiment (`repeats_allowed`), which can be older than the
    last result the driver wrote to result.json before it died: the evaluations
    in between run again, but none from scratch.
    """
    results = results_of(trial_dir)
    steps = [r["step"] for r in results]
    before = [r["step"] for r in results if r["pid"] == killed_pid]
    after = [r["step"] for r in results if r["pid"] != killed_pid]
    assert before and after, results
    assert len({r["pid"] for r in results if r["pid"] != killed_pid}) == 1
    assert after == sorted(set(after)), steps
    if repeats_allowed:
        # Continued from a checkpoint the killed run made: its first evaluation is not run again.
        assert min(after) > min(before), steps
    else:
        # Continued after the last reported checkpoint: no evaluation repeated, none from scratch.
        assert steps == sorted(set(steps)) and min(after) > max(before), steps
    assert results[-1]["progress"] == pytest.approx(1.0) and results[-1]["schedule_done"] is True


def assert_ledger_once(tmp_path: Path, name: str) -> list[dict]:
    experiment = tmp_path / "results" / name
    trial_ids = {f"{name}/{results_of(d)[0]['trial_id']}" for d in experiment.iterdir()
                 if d.is_dir() and results_of(d)}
    rows = [r for r in Ledger(str(tmp_path / "ledger")).read().to_pylist() if r["experiment"] == name]
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(POINTS)
    assert set(ids) == trial_ids
    assert all(r["status"] == "finished" for r in rows), rows
    return rows


def fake_hosts() -> list[dict]:
    return tpu_hosts("v4-8", "host-a", cpus=1) + tpu_hosts("v4-8", "host-b", cpus=1)


CLUSTER_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}


def test_killed_trial_resumes_from_its_checkpoint(tmp_path):
    name = "ft-worker"
    with fake_cluster(fake_hosts(), env=CLUSTER_ENV) as cluster:
        with sweep_process(sweep_command(tmp_path, name, cluster.address)) as driver:
            trial_dir, pid = wait_for_first_checkpoint(tmp_path / "results" / name, driver)
            os.kill(pid, signal.SIGKILL)
            finish(driver)
    assert_resumed(trial_dir, pid)
    assert_ledger_once(tmp_path, name)


def test_killed_driver_resumes_with_resume(tmp_path):
    name = "ft-driver"
    with fake_cluster(fake_hosts(), env=CLUSTER_ENV) as cluster:
        with sweep_process(sweep_command(tmp_path, name, cluster.address)) as driver:
            trial_dir, pid = wait_for_first_checkpoint(tmp_path / "results" / name, driver)
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        # Ray ends the trials of a driver that died; they must be gone before the resume.
        wait_until_gone(pid)
        with sweep_process(sweep_command(tmp_path, name, cluster.address, "--resume")) as resumed:
            out = finish(resumed)
    assert f"resuming sweep {name}" in out
    assert_resumed(trial_dir, pid, repeats_allowed=True)
    assert_ledger_once(tmp_path, name)


# Every fault in one run: three trials of different ASHA groups (none stops another),
# two trial workers killed and then the driver, then a third worker after the resume.
ALL_FAULTS_POINTS = ["nano,1,0.1", "nano,0.5,0.1", "micro,0.5,0.1"]
FINAL_METRICS = ("final_val_loss", "best_val_loss", "top1", "train_loss", "images_seen", "status")


def all_faults_command(tmp_path: Path, name: str, address: str, *extra: str) -> list[str]:
    cmd = sweep_command(tmp_path, name, address, "--max-failures", "3", *extra)
    # Swap the two-point grid for the three points of this test.
    points = [i for i, arg in enumerate(cmd) if arg == "--point"]
    for i in reversed(points):
        del cmd[i:i + 2]
    cmd[cmd.index("--num-samples") + 1] = str(len(ALL_FAULTS_POINTS))
    for point in ALL_FAULTS_POINTS:
        cmd += ["--point", point]
    return cmd


def running_trials(experiment: Path) -> list[tuple[Path, int, int]]:
    """(trial directory, actor pid, results so far) of each trial still running."""
    live = []
    for trial_dir in sorted(d for d in experiment.glob("*") if d.is_dir()):
        results = results_of(trial_dir)
        if results and not results[-1].get("schedule_done"):
            live.append((trial_dir, int(results[-1]["pid"]), len(results)))
    return live


def kill_a_worker(experiment: Path, driver: subprocess.Popen, rng, killed: list[int]) -> bool:
    """SIGKILL a random running trial's actor a random time after a random result; False if none was left."""
    wait_results = rng.randint(1, 2)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    seen: dict[Path, int] = {}
    while time.monotonic() < deadline and driver.poll() is None:
        live = [t for t in running_trials(experiment) if t[1] not in killed]
        for trial_dir, _, count in live:
            seen.setdefault(trial_dir, count)
        ready = [t for t in live if t[2] - seen[t[0]] >= wait_results]
        if ready:
            _, pid, _ = rng.choice(ready)
            time.sleep(rng.uniform(0.0, 1.5))  # mid-step or mid-save, not only just after a report
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
            return True
        time.sleep(0.1)
    return False


def final_rows(tmp_path: Path, name: str, ledger: str) -> dict[tuple, dict]:
    rows = [r for r in Ledger(str(tmp_path / ledger)).read().to_pylist() if r["experiment"] == name]
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(ALL_FAULTS_POINTS), ids
    return {(r["variant"], r["epochs"], r["lr"]): {k: r[k] for k in FINAL_METRICS} for r in rows}


def test_every_fault_in_one_run_matches_the_clean_run(tmp_path):
    """Three trial workers killed at random points and the driver killed once, then resumed:
    every trial is in the ledger exactly once with the metrics of the same sweep run clean."""
    import random

    rng = random.Random(2310)
    faulted, clean = "ft-all", "ft-clean"
    killed: list[int] = []
    timings = {}
    with fake_cluster(fake_hosts(), env=CLUSTER_ENV) as cluster:
        experiment = tmp_path / "results" / faulted
        start = time.monotonic()
        with sweep_process(all_faults_command(tmp_path, faulted, cluster.address)) as driver:
            for _ in range(2):
                assert kill_a_worker(experiment, driver, rng, killed), "the sweep ended before two kills"
            wait_for_first_checkpoint(experiment, driver)
            time.sleep(rng.uniform(0.0, 1.5))
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        for _, pid, _ in running_trials(experiment):
            wait_until_gone(pid)
        with sweep_process(all_faults_command(tmp_path, faulted, cluster.address, "--resume")) as resumed:
            third = kill_a_worker(experiment, resumed, rng, killed)
            out = finish(resumed)
        timings["faulted_s"] = time.monotonic() - start
        assert third, "the resumed sweep ended before the third kill:\n" + out[-3000:]
        start = time.monotonic()
        with sweep_process(all_faults_command(tmp_path, clean, cluster.address)) as proc:
            finish(proc)
        timings["clean_s"] = time.monotonic() - start
    assert f"resuming sweep {faulted}" in out
    assert len(killed) == 3
    # Every killed trial continued under a new process and ran to its end.
    restarted = [d for d in experiment.iterdir() if d.is_dir() and len({r["pid"] for r in results_of(d)}) > 1]
    assert restarted, "no trial ran under a second process"
    got, want = final_rows(tmp_path, faulted, "ledger"), final_rows(tmp_path, clean, "ledger")
    assert got.keys() == want.keys()
    for cell, metrics in want.items():
        assert got[cell]["status"] == metrics["status"] == "finished", (cell, got[cell])
        assert got[cell]["images_seen"] == metrics["images_seen"], cell
        for key in ("final_val_loss", "best_val_loss", "top1", "train_loss"):
            assert got[cell][key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), (cell, key, got[cell], metrics)
    print(f"every fault in one run: {len(killed)} workers and the driver killed; "
          f"faulted {timings['faulted_s']:.0f} s, clean {timings['clean_s']:.0f} s")
