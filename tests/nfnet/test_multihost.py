"""The multi-host code path: two JAX processes on CPU give the result of one.

On a multi-host TPU slice every host runs one JAX process that calls
`jax.distributed.initialize`, loads only its own rows of each global batch
(`jax.process_index()`/`jax.process_count()`) and runs the same SPMD step over
all devices of all hosts. Here two processes with one CPU device each (gloo
collectives over a local coordinator) stand in for two hosts, and one process
with two CPU devices is the reference: same global batch, same seed, so the same
losses and parameters. A process that read the wrong rows, or a gradient that was
not averaged across processes, would change them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from nfnet.checkpoint import latest_checkpoint, restore_checkpoint

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 400

# 4 steps of nano on 128 digits at 16px, global batch 32, checkpoints at steps 2 and 4.
CONFIG = dict(variant="nano", dataset="digits", epochs=1.0, lr=0.4, batch_size=32, resolution=16,
              max_train_examples=128, max_eval_examples=64, evals_per_run=2, progress=False,
              num_workers=0, seed=1)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(local_devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}",
               PYTHONPATH=REPO)
    return env


def _start(config: dict, out: str, local_devices: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, WORKER, "--config", json.dumps(config), "--out", out, *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(local_devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            logs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"worker exited with {p.returncode}:\n{log[-3000:]}"


def run_single(workdir: str, out: str, **overrides) -> dict:
    """One process, two local CPU devices."""
    proc = _start({**CONFIG, "workdir": workdir, **overrides}, out, 2)
    _finish([proc])
    with open(out) as f:
        return json.load(f)


def run_two_processes(workdir: str, out_prefix: str, **overrides) -> list[dict]:
    """Two processes with one CPU device each, joined by jax.distributed."""
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        _start({**CONFIG, "workdir": workdir, **overrides}, f"{out_prefix}{i}.json", 1,
               "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i))
        for i in range(2)
    ]
    _finish(procs)
    summaries = []
    for i in range(2):
        with open(f"{out_prefix}{i}.json") as f:
            summaries.append(json.load(f))
    return summaries


def _params(checkpoint_dir: str) -> list[np.ndarray]:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state, _ = restore_checkpoint(checkpoint_dir, fallback_sharding=device)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state["params"])]


def _assert_same_params(a: str, b: str) -> None:
    pa, pb = _params(a), _params(b)
    assert len(pa) == len(pb) > 0
    for x, y in zip(pa, pb):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    single = run_single(str(root / "single"), str(root / "single.json"))
    multi = run_two_processes(str(root / "multi"), str(root / "multi"))
    return root, single, multi


def test_two_processes_match_one_process_with_two_devices(runs):
    root, single, multi = runs
    assert single["process_count"] == 1 and single["global_devices"] == 2
    assert [m["process_index"] for m in multi] == [0, 1]
    assert all(m["process_count"] == 2 and m["local_devices"] == 1 and m["global_devices"] == 2 for m in multi)
    assert single["status"] == "finished" and single["steps"] == 4
    for m in multi:
        assert m["steps"] == single["steps"] and m["images_seen"] == single["images_seen"] == 128
        for key in ("train_loss", "val_loss", "val_top1", "best_val_loss"):
            assert m[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    # Both processes wrote one checkpoint together, in the shared workdir.
    assert multi[0]["checkpoint_dir"] == multi[1]["checkpoint_dir"] == latest_checkpoint(str(root / "multi" / "checkpoints"))
    _assert_same_params(single["checkpoint_dir"], multi[0]["checkpoint_dir"])
    # The run trained: the parameters moved away from a fresh initialisation.
    first = _params(os.path.join(str(root / "single"), "checkpoints", "2"))
    last = _params(single["checkpoint_dir"])
    assert any(not np.allclose(a, b) for a, b in zip(first, last))


def test_two_processes_resume_from_a_shared_checkpoint(runs):
    """Both processes restore the step-2 checkpoint and finish with the uninterrupted result."""
    root, single, multi = runs
    workdir = root / "resumed"
    shutil.copytree(root / "multi" / "checkpoints" / "2", workdir / "checkpoints" / "2")
    resumed = run_two_processes(str(workdir), str(root / "resumed"), resume=True)
    for r in resumed:
        assert r["steps"] == 4 and r["status"] == "finished"
        assert r["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5, abs=1e-6)
    _assert_same_params(single["checkpoint_dir"], resumed[0]["checkpoint_dir"])
