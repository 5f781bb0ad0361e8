"""`python -m tuner.lr_search --address ...` on a real multi-node Ray cluster on this machine.

A head that takes no trials (0 CPUs, as on the TPU clusters) and two worker
raylets, each posing as a TPU v4-8 host (tests/cluster/fake_cluster.py), run as
separate processes. The LR search joins the cluster from a subprocess with token
auth, its two trials run at once, one on each fake host (each asks for the host's 4
chips), and its winner lands in the ledger. Results go to a directory every node
can reach (one machine: a local path; on a real cluster, a bucket).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_cluster import client_env, fake_cluster, node_ip, tpu_hosts
from tuner.records.ledger import Ledger

pytestmark = pytest.mark.slow

EXPERIMENT = "lr-multinode"
# Two trials of nano for 4 steps each on 128 digits at 16px. An imported row of the subset
# bounds the cell (so the first pair is 0.1 and 0.05, not the paper's default, from which
# a plateau would walk on), and a noise of 50% makes the pair tie: one round, two trials.
SEARCH_FLAGS = [
    "--variant", "nano", "--epochs", "1", "--dataset", "digits", "--batch-size", "32", "--resolution", "16",
    "--max-train-examples", "128", "--max-eval-examples", "64", "--evals-per-run", "2",
    "--cpus-per-trial", "1", "--accelerator", "v4-8", "--noise", "0.5",
]
PRIOR = {"trial_id": "prior", "kind": "pretrain", "variant": "nano", "epochs": 0.5, "lr": 0.1, "batch_size": 32,
         "dataset": "digits[128]", "final_val_loss": 2.0, "status": "imported", "params": 117350, "source": "import"}
TIMEOUT_S = 900


def trial_results(experiment_dir: Path) -> list[list[dict]]:
    """Every trial's reported results (Tune's result.json), trial by trial."""
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in sorted(experiment_dir.glob("*/result.json"))]


def test_lr_search_places_its_trials_on_the_workers_and_writes_the_ledger(tmp_path):
    hosts = tpu_hosts("v4-8", "host-a", cpus=1) + tpu_hosts("v4-8", "host-b", cpus=1)
    with fake_cluster(hosts, env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}) as cluster:
        ledger = tmp_path / "ledger"
        Ledger(str(ledger)).append([PRIOR])
        proc = subprocess.run(
            [sys.executable, "-m", "tuner.lr_search", *SEARCH_FLAGS, "--address", cluster.address,
             "--storage", str(tmp_path / "results"), "--ledger", str(ledger), "--experiment-name", EXPERIMENT],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=client_env(),
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"joined the Ray cluster at {cluster.address}" in proc.stdout
    trials = trial_results(tmp_path / "results" / EXPERIMENT)
    assert len(trials) == 2 and all(len(results) == 2 for results in trials)
    # Both trials ran on the fake TPU hosts, one per host (each took the
    # host's 4 chips), none on the head; each trial stayed on its host.
    hosts_used = [{r["node_ip"] for r in results} for results in trials]
    assert sorted(ip for ips in hosts_used for ip in ips) == [node_ip(0), node_ip(1)]
    rows = [r for r in Ledger(str(ledger)).read().to_pylist() if r["source"] == "lr_search"]
    assert len(rows) == 1 and json.loads(rows[0]["search"])["rounds"] == [[0.1, 0.05]]
    row = rows[0]
    assert row["source"] == "lr_search" and row["experiment"] == EXPERIMENT
    assert row["variant"] == "nano" and row["status"] == "finished" and row["images_seen"] == 128
    assert row["trial_id"].startswith(f"{EXPERIMENT}/")
