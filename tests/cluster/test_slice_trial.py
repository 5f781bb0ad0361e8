"""A Tune trial gang-scheduled on a whole (fake) multi-host TPU slice through Ray Train.

Two raylets pose as the two hosts of a v4-16 slice (tests/cluster/fake_cluster.py);
Ray Train's JaxTrainer reserves the slice by its head resource and slice-name
label exactly as on TPU VMs, starts one worker per host and runs
`jax.distributed.initialize` on each, on CPU devices (JAX_PLATFORMS=cpu stands in
for the TPU runtime, which does not exist here). The trial's metrics reach Tune.
When one host's worker dies mid-run, as on a preempted TPU VM, Ray Train restarts
the whole worker group and the run resumes from the checkpoint in its shared workdir.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from nfnet.checkpoint import latest_checkpoint, read_meta
from fake_cluster import fake_cluster, tpu_hosts
from tuner.placement.trial import placement_for_config
from tuner.raytune.slice_trial import tune_trainable
from tuner.raytune.slice_trial import CHECKPOINT_DIR, PROCESSES
from tuner.records.rows import SCHEDULE_DONE
from tuner.raytune.trainable import train_trial

pytestmark = pytest.mark.slow

CONFIG = dict(variant="nano", dataset="digits", epochs=1.0, lr=0.2, batch_size=32, resolution=16,
              max_train_examples=128, max_eval_examples=64, evals_per_run=2, num_workers=0, seed=1)
# JAX on CPU devices in place of the TPU runtime; quick compiles; Ray Train waits
# longer for workers to start on a loaded 2-core machine.
WORKER_ENV = {"JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
              "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}


def test_slice_trial_runs_one_process_per_host_and_reports_to_tune(tmp_path):
    import ray
    from ray import tune

    placement = placement_for_config(CONFIG, "v4-16", cpus_per_trial=1)
    assert placement.is_slice and placement.hosts == 2
    with fake_cluster(tpu_hosts("v4-16", "slice-a", cpus=2), env=WORKER_ENV) as cluster:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        tuner = tune.Tuner(
            tune_trainable(train_trial, "v4-16", cpus_per_trial=1),
            param_space=CONFIG,
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="slice", verbose=0),
        )
        results = tuner.fit()
        result = results[0]
        assert result.error is None, result.error
        history = result.metrics_dataframe
    last = result.metrics
    assert last[PROCESSES] == 2
    assert last[SCHEDULE_DONE] is True and last["step"] == 4
    assert len(history) == 2 and list(history["step"]) == [2, 4]
    # Both hosts wrote the checkpoints together in the trial's directory in storage.
    workdir = os.path.join(result.path, "slice")
    assert last[CHECKPOINT_DIR] == latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert read_meta(last[CHECKPOINT_DIR])["step"] == 4


def _train_worker_pids(cluster) -> list[int]:
    """Ray Train workers running on this cluster's fake hosts (children of their raylets)."""
    raylets = {node.all_processes["raylet"][0].process.pid for node in cluster.worker_nodes}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid in raylets and "RayTrainWorker" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_slice_trial_survives_a_lost_host(tmp_path):
    """SIGKILL one host's worker after the first checkpoint: the run resumes from it."""
    import ray
    from ray import tune

    config = {**CONFIG, "max_train_examples": 384, "evals_per_run": 4, "resolution": 32, "eval_resolution": 32}
    killed: list[int] = []
    stop = threading.Event()

    def kill_a_host_after_the_first_checkpoint(cluster) -> None:
        while not stop.is_set():
            if list(tmp_path.glob("loss/*/slice/checkpoints/[0-9]*")):
                pids = _train_worker_pids(cluster)
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
                    return
            time.sleep(0.1)

    with fake_cluster(tpu_hosts("v4-16", "slice-a", cpus=2), env=WORKER_ENV) as cluster:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        killer = threading.Thread(target=kill_a_host_after_the_first_checkpoint, args=(cluster,), daemon=True)
        killer.start()
        try:
            tuner = tune.Tuner(
                tune_trainable(train_trial, "v4-16", cpus_per_trial=1),
                param_space=config,
                run_config=tune.RunConfig(storage_path=str(tmp_path), name="loss", verbose=0),
            )
            result = tuner.fit()[0]
        finally:
            stop.set()
            killer.join()
    assert killed, "no checkpoint appeared while the run was going"
    assert result.error is None, result.error
    steps = list(result.metrics_dataframe["step"])
    # Every evaluation reported once and in order: the restarted hosts continued
    # from the checkpoint instead of starting over.
    assert steps == sorted(set(steps)) and steps[-1] == result.metrics["step"]
    assert result.metrics[SCHEDULE_DONE] is True and result.metrics[PROCESSES] == 2
