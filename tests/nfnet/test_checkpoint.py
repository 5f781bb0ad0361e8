"""Orbax checkpoints of the train state: round trip, lookup, retention, atomicity under a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet.checkpoint import (
    CheckpointStore,
    is_checkpoint,
    latest_checkpoint,
    read_meta,
    resolve_checkpoint,
    restore_checkpoint,
)
from nfnet.errors import NFNetError
from nfnet.optim import OptimConfig, make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_state(scale: float = 1.0) -> dict:
    params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), scale), "gain": jnp.ones(4)},
              "classifier": {"kernel": jnp.full((4, 3), -scale), "bias": jnp.zeros(3)}}
    tx = make_optimizer(OptimConfig(lr=0.1, total_steps=10))
    opt_state = tx.update(params, tx.init(params), params)[1]  # non-trivial momentum buffers
    return {"params": params, "opt_state": opt_state, "step": jnp.array(7, jnp.int32),
            "rng": jax.random.PRNGKey(3)}


def test_round_trip_restores_values_and_optimizer_structure(tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    state = small_state(0.5)
    path = store.save(7, state, {"step": 7, "config": {"lr": 0.1}, "best_val_loss": None})
    store.close()
    assert is_checkpoint(path) and path.endswith("checkpoints/7")

    restored, meta = restore_checkpoint(path, target=small_state(0.0))
    assert meta == {"step": 7, "config": {"lr": 0.1}, "best_val_loss": None}
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert read_meta(path)["step"] == 7


def test_restore_into_a_different_model_is_a_user_error(tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    path = store.save(1, small_state(), {"step": 1})
    store.close()
    other = small_state()
    other["params"]["conv"]["kernel"] = jnp.zeros((3, 3, 2, 8))
    with pytest.raises(NFNetError, match="does not match"):
        restore_checkpoint(path, target=other)


def test_lookup_from_a_workdir_and_retention_of_the_newest_two(tmp_path):
    workdir = tmp_path / "run"
    store = CheckpointStore(str(workdir / "checkpoints"))
    for step in (2, 4, 6):
        store.save(step, small_state(step), {"step": step})
    assert store.steps() == [4, 6]
    for where in (workdir, workdir / "checkpoints", workdir / "checkpoints" / "6"):
        assert resolve_checkpoint(str(where)) == str(workdir / "checkpoints" / "6")
    assert store.delete_after(4) == [6]
    assert latest_checkpoint(str(workdir / "checkpoints")) == str(workdir / "checkpoints" / "4")
    store.close()

    with pytest.raises(NFNetError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NFNetError, match="no checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"))


# The child saves step 1, then dies (os._exit, no cleanup) in the middle of saving step 2:
# either just before orbax's commit (every file written, the rename not yet done) or
# while the arrays are being written.
CRASH = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from nfnet.checkpoint import CheckpointStore
    directory, where = sys.argv[1], sys.argv[2]
    state = lambda v: {"params": {"w": jnp.full((64, 64), v)}, "step": jnp.array(int(v), jnp.int32)}
    store = CheckpointStore(directory)
    store.save(1, state(1.0), {"step": 1})

    def die(*args, **kwargs):
        os._exit(17)

    if where == "commit":
        from orbax.checkpoint._src.path import atomicity
        atomicity.AtomicRenameTemporaryPath.finalize = die
    else:
        from orbax.checkpoint._src.handlers import json_checkpoint_handler
        json_checkpoint_handler.JsonCheckpointHandler.async_save = die
    store.save(2, state(2.0), {"step": 2})
    os._exit(0)
""")


@pytest.mark.parametrize("where", ["commit", "write"])
def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, where):
    directory = tmp_path / "checkpoints"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CRASH, str(directory), where], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 17, proc.stderr[-2000:]
    leftovers = [name for name in os.listdir(directory) if name != "1"]
    assert leftovers and all("tmp" in name for name in leftovers)  # the half-written step 2

    assert latest_checkpoint(str(directory)) == str(directory / "1")
    state, meta = restore_checkpoint(str(directory))
    assert meta == {"step": 1} and float(state["params"]["w"][0, 0]) == 1.0
    # A store opened again (as a resumed run does) ignores the debris, clears it, and writes step 2.
    store = CheckpointStore(str(directory))
    assert store.steps() == [1]
    store.save(2, {"params": {"w": jnp.zeros((64, 64))}, "step": jnp.array(2, jnp.int32)}, {"step": 2})
    store.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]
    assert read_meta(str(directory))["step"] == 2
