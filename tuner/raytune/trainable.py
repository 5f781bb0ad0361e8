"""The Ray Tune function trainable around `nfnet.loop.train`, and its ledger rows.

`train_trial(config)` runs one trial: the config's keys that are `TrainConfig`
fields become the trainer's config (other keys are ignored, so a search space may
carry labels of its own), the trial's directory is the trainer's workdir, and
every evaluation is reported to Tune with the trainer's checkpoint. The trainer's
TensorBoard events (scalars and hparams) go straight into the trial's directory,
so each trial is one TensorBoard run named after that directory. A trial that
Ray restarts after a failure resumes from its latest reported checkpoint, so it
continues exactly where that checkpoint left off.

Checkpoints, and why there is one copy of each: `tune.report(checkpoint=...)`
copies the directory it is given into the experiment's storage
(`checkpoint_00000N`) before it returns, and Ray's `CheckpointConfig(num_to_keep)`
prunes those copies. Everything the trial writes in its trial directory is also
copied to storage by Ray's syncer, which never deletes there; orbax checkpoints
written in the trial directory were therefore a second full copy of every step,
half-written temporary directories included, kept forever. So the trainer writes
its orbax checkpoints to a node-local scratch directory outside the trial
directory (`local_checkpoint_root`), keeps only the newest one there
(`LOCAL_CHECKPOINTS`: the one being handed to Ray; Ray's copy is the durable
one), and the directory is removed when the trial's function returns or raises.
A trial whose process is ended from outside (ASHA stopping it, a kill) cannot
remove its own; each directory has an owner file naming its process, and every
trial that starts on the node removes the directories of owners that are gone
(`claim_local_checkpoints`), so scratch holds at most the running trials' newest
checkpoints and those of trials ended since the last start.
A retry after the process was killed outright (a preemption) on the same node
finds that newest local checkpoint (it may be newer than the last reported one,
by a kill between save and report) and resumes from it; otherwise it resumes from
Ray's copy. Either is exact. Multi-host slice trials (`tuner/raytune/slice_trial.py`)
keep their checkpoints in the shared workdir as before.

What a trial reports is the trainer's metrics with two changes:
- `done` (the trainer reached the end of its schedule) is reported as
  `schedule_done`: Ray reads a reported `done=True` as "stop this trial now" and
  would end the trainer before its final work (closing writers) is through, and
  Ray overwrites `done` in the last result when the function returns anyway.
- `best_val_loss`, the lowest held-out loss reported so far in this process.
- `compile_seconds` and `compile_cache_hits`: time JAX spent tracing, lowering and
  compiling (or fetching from the persistent cache) in this process so far, and
  how many programs came from the cache: the compile overhead a trial carries.

JAX and the trainer (`nfnet.config`, `nfnet.loop`) are imported inside `train_trial`
only: the driver must not import JAX, or on a TPU host it would hold the chips the
trials need.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from typing import Any
from tuner.raytune.compile_cache import COMPILE_CACHE_HITS, COMPILE_SECONDS, CompileClock, apply_compilation_cache
from tuner.records.rows import BEST_VAL_LOSS, SCHEDULE_DONE


FAST_COMPILE = "fast_compile"
# Orbax checkpoints a trial keeps on its node: the newest, which Ray copies to storage.
LOCAL_CHECKPOINTS = 1
# Where trials keep them (default: the system's temporary directory).
SCRATCH_ENV = "NFSCALE_SCRATCH"


def local_checkpoint_root(trial_dir: str, trial_id: str) -> str:
    """A node-local directory for one trial's orbax checkpoints, outside the trial
    directory that Ray copies to storage; the same for every attempt of the trial on a
    node within one run of the driver."""
    import hashlib
    import tempfile

    scratch = os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), "nfscale-checkpoints")
    tag = hashlib.sha1(os.path.abspath(trial_dir).encode()).hexdigest()[:10]
    return os.path.join(scratch, f"{trial_id}-{tag}")


OWNER_SUFFIX = ".owner"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_local_checkpoints(root: str) -> list[str]:
    """Mark `root` as this process's and remove the checkpoint directories in the same scratch
    whose owner process is gone (trials stopped or killed before they could clean up); returns
    what was removed. A retry of a killed trial that finds its directory gone resumes from Ray's
    copy instead, which is exact too."""
    import shutil

    scratch = os.path.dirname(root)
    os.makedirs(scratch, exist_ok=True)
    removed = []
    for entry in sorted(os.listdir(scratch)):
        if not entry.endswith(OWNER_SUFFIX):
            continue
        owner = os.path.join(scratch, entry)
        directory = owner[: -len(OWNER_SUFFIX)]
        if directory == root:
            continue
        try:
            with open(owner) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            continue  # being written, or not ours
        if _alive(pid):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(owner)
        removed.append(directory)
    with open(root + OWNER_SUFFIX, "w") as handle:
        handle.write(str(os.getpid()))
    return removed


def _train_config(config: Mapping[str, Any], workdir: str, resume_from: str | None, checkpoint_root: str):
    import dataclasses

    from nfnet.checkpoint import latest_checkpoint
    from nfnet.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in config.items() if k in names}
    # A restarted attempt on the same node may find a checkpoint written after the
    # last one it reported; continuing from it is as exact and loses less.
    resume = resume_from is None and latest_checkpoint(checkpoint_root) is not None
    values.update(workdir=workdir, resume_from=resume_from, resume=resume, progress=False)
    return TrainConfig(**values)


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: train one NFNet and report every evaluation.

    `config["fast_compile"]` (not a TrainConfig field) turns most of XLA's
    optimizations off: compiles several times faster, steps run somewhat slower,
    which pays on a CPU when compilation is most of a short run.
    """
    from ray import tune

    apply_compilation_cache()
    if config.get(FAST_COMPILE):
        import jax

        jax.config.update("jax_disable_most_optimizations", True)
    from nfnet.loop import train

    context = tune.get_context()
    workdir = context.get_trial_dir()
    checkpoint_root = local_checkpoint_root(workdir, context.get_trial_id())
    claim_local_checkpoints(checkpoint_root)
    best = math.inf
    clock = CompileClock()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        nonlocal best
        out = dict(metrics)
        out[SCHEDULE_DONE] = bool(out.pop("done", False))
        loss = out.get("val_loss")
        if loss is not None and math.isfinite(loss):
            best = min(best, float(loss))
        out[BEST_VAL_LOSS] = best if math.isfinite(best) else float("nan")
        out[COMPILE_SECONDS] = clock.seconds
        out[COMPILE_CACHE_HITS] = clock.cache_hits
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(out, checkpoint=checkpoint)

    def run(resume_from: str | None) -> None:
        train(_train_config(config, workdir, resume_from, checkpoint_root), callback=report,
              tensorboard_dir=workdir, checkpoint_root=checkpoint_root, keep_checkpoints=LOCAL_CHECKPOINTS)

    restored = tune.get_checkpoint()
    try:
        with clock:
            if restored is None:
                run(None)
                return
            # Local storage hands over the checkpoint in place; a bucket's is downloaded
            # and kept for the length of the run.
            with restored.as_directory() as checkpoint_dir:
                run(checkpoint_dir)
    finally:
        # Every checkpoint the trial reported is in storage; the local copy only served the next report.
        import shutil

        shutil.rmtree(checkpoint_root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(checkpoint_root + OWNER_SUFFIX)


