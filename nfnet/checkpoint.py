"""Train-state checkpoints with orbax.

A checkpoint is one directory `<workdir>/checkpoints/<step>` holding two orbax items:
`state` (params, optimizer state, EMA, step, RNG: arrays) and `meta` (JSON: the run's
config, counters to resume with, the metrics of that evaluation). That directory is
what `TrainConfig(resume_from=...)` and `init_from=...` accept and what the tuner
hands to Ray as a checkpoint.

A save counts only once orbax has finalised it, by orbax's own rule
(`orbax.checkpoint.utils.is_checkpoint_finalized`): on local disks orbax writes
`<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` when every item is complete;
on `gs://` an object store has no atomic rename, so orbax writes `<step>/` in place and
writes `<step>/commit_success.txt` last. A crash mid-save leaves the previous checkpoint
as the latest: a temporary directory, or a `gs://` step directory without its commit
file (items and all), is never taken for a checkpoint, and is removed when the next
`CheckpointStore` is opened on that directory.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from nfnet import storage
from nfnet.errors import NFNetError

STATE = "state"
META = "meta"
CHECKPOINTS_SUBDIR = "checkpoints"
MAX_TO_KEEP = 2


def _abs(path: str) -> str:
    """A local path made absolute; a URI as it is, its clients pointed at an emulator when one is set."""
    if storage.is_uri(path):
        storage.prepare(path)
        return path
    return os.path.abspath(path)


def is_checkpoint(path: str) -> bool:
    """Whether `path` is one finished checkpoint directory: both items there and the save finalised."""
    p = epath.Path(_abs(path))
    return (p.is_dir() and (p / STATE).is_dir() and (p / META).is_dir()
            and ocp.utils.is_checkpoint_finalized(p))


def _finished_steps(directory: epath.Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(d.name) for d in directory.iterdir()
                  if d.name.isdigit() and is_checkpoint(os.fspath(d)))


def latest_checkpoint(directory: str) -> str | None:
    """The newest finished checkpoint in a checkpoints directory, or None."""
    d = epath.Path(_abs(directory))
    steps = _finished_steps(d)
    return os.fspath(d / str(steps[-1])) if steps else None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from any of: itself, a checkpoints directory, or a workdir.

    A workdir or checkpoints directory resolves to its newest finished checkpoint.
    """
    if is_checkpoint(path):
        return _abs(path)
    p = epath.Path(_abs(path))
    if not p.exists():
        raise NFNetError(f"checkpoint path {path} does not exist")
    for directory in (p / CHECKPOINTS_SUBDIR, p):
        found = latest_checkpoint(os.fspath(directory))
        if found:
            return found
    raise NFNetError(f"no checkpoint in {path}: expected a finished checkpoint directory (with {STATE}/ and "
                     f"{META}/, saved to the end), a directory of them, or a training workdir with "
                     f"{CHECKPOINTS_SUBDIR}/")


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def read_meta(path: str) -> dict[str, Any]:
    """The JSON metadata of a checkpoint directory."""
    path = resolve_checkpoint(path)
    with _checkpointer() as ckpt:
        restored = ckpt.restore(path, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    return dict(restored[META])


def restore_checkpoint(path: str, target: Any = None,
                       fallback_sharding: jax.sharding.Sharding | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of a checkpoint directory.

    `target` is a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings) that the
    state is restored into, structure included (optimizer NamedTuples and all). Without
    it the state comes back as nested dicts and lists, placed by the saved sharding or
    else `fallback_sharding`.
    """
    path = resolve_checkpoint(path)
    if target is not None:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target, fallback_sharding=fallback_sharding),
        META: ocp.args.JsonRestore(),
    })
    try:
        with _checkpointer() as ckpt:
            restored = ckpt.restore(path, args=args)
    except (ValueError, KeyError, TypeError) as e:
        raise NFNetError(f"checkpoint {path} does not match this run's model and optimizer: {e}") from e
    return restored[STATE], dict(restored[META])


class CheckpointStore:
    """The checkpoints of one run: `<directory>/<step>`, the newest `max_to_keep` kept.

    Saves are synchronous, so the returned directory is complete when `save` returns
    (the train loop hands it straight to its callback).
    """

    def __init__(self, directory: str, max_to_keep: int = MAX_TO_KEEP) -> None:
        self.directory = _abs(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, META))

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> str:
        """Write the checkpoint of `step` and return its directory."""
        self._manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            META: ocp.args.JsonSave(meta),
        }), force=True)
        self._manager.wait_until_finished()
        return os.fspath(epath.Path(self.directory) / str(step))

    def delete_after(self, step: int) -> list[int]:
        """Remove checkpoints newer than `step` (a run resumed from an earlier one rewrites them)."""
        stale = [s for s in self.steps() if s > step]
        for s in stale:
            self._manager.delete(s)
        return stale

    def close(self) -> None:
        self._manager.close()
