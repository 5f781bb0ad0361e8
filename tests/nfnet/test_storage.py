"""gs:// for real, on a local GCS emulator (tests/gcs_emulator.py): nfnet.storage's filesystems and
checks, Parquet shards read from a bucket, orbax checkpoints saved, restored and interrupted there,
and a training run with its data and workdir in the bucket, resumed from its checkpoint there."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nfnet import storage
from nfnet.checkpoint import CheckpointStore, is_checkpoint, latest_checkpoint, read_meta, restore_checkpoint
from nfnet.config import TrainConfig
from nfnet.data import load_dataset
from nfnet.errors import NFNetError
from nfnet.loop import train
from nfnet.paths import dir_problem
from nfnet.train import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def objects(uri: str) -> list[str]:
    """Every object under `uri`, as paths relative to it (read with a fresh pyarrow client: no cache)."""
    fs, path = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


# ---------------------------------------------------------------- no emulator


@pytest.mark.parametrize("uri,message", [
    ("gs://", "names no bucket"),
    ("gs:///data", "names no bucket"),
    ("gs://Bad_Bucket/data", "'Bad_Bucket' is not a valid bucket name"),
])
def test_a_malformed_gs_uri_is_one_line_naming_it(uri, message):
    with pytest.raises(NFNetError, match=message) as info:
        storage.filesystem(uri)
    assert uri in str(info.value) and "gs://BUCKET/PATH" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("path", ["gs:/bucket/run", "gs:bucket/run", "s3:/bucket/run"])
def test_a_uri_missing_a_slash_is_not_taken_for_a_local_directory(path):
    assert "slash missing" in dir_problem(path)
    with pytest.raises(NFNetError, match="slash missing"):
        storage.filesystem(path)


def test_local_paths_open_as_absolute_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.filesystem("data/x")
    assert fs.type_name == "local" and path == f"{tmp_path}/data/x"
    assert storage.uri_of(fs, path) == path


def test_the_emulator_host_may_omit_its_scheme(monkeypatch):
    monkeypatch.setenv(storage.EMULATOR_ENV, "127.0.0.1:4443")
    assert storage.emulator_url() == "http://127.0.0.1:4443"
    monkeypatch.delenv(storage.EMULATOR_ENV)
    assert storage.emulator_url() is None


# ---------------------------------------------------------------- the emulator


def test_gs_opens_on_the_emulator_and_round_trips_bytes(gcs_bucket):
    fs, path = storage.filesystem(f"{gcs_bucket}/a/b.txt")
    assert fs.type_name == "gcs" and path == f"{gcs_bucket[5:]}/a/b.txt"
    with fs.open_output_stream(path) as f:
        f.write(b"hello")
    assert storage.uri_of(fs, path) == f"{gcs_bucket}/a/b.txt"
    assert objects(gcs_bucket) == ["a/b.txt"]
    # Every client sees the one bucket: gcsfs through etils (orbax's metadata) too.
    from etils import epath

    assert epath.Path(f"{gcs_bucket}/a/b.txt").read_bytes() == b"hello"


def test_uri_problem_names_a_missing_bucket_an_object_and_what_to_do(gcs_bucket):
    assert storage.uri_problem(f"{gcs_bucket}/new/run") is None
    missing = storage.uri_problem("gs://no-such-bucket-here/run")
    assert missing.startswith("gs://no-such-bucket-here/run: bucket gs://no-such-bucket-here does not exist")
    assert "gcloud storage buckets create gs://no-such-bucket-here" in missing and "\n" not in missing
    fs, path = storage.filesystem(f"{gcs_bucket}/file")
    with fs.open_output_stream(path) as f:
        f.write(b"x")
    assert "is an object (a file), not a directory" in storage.uri_problem(f"{gcs_bucket}/file")


def test_an_emulator_that_is_not_there_is_one_line_naming_the_path(monkeypatch):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv(storage.EMULATOR_ENV, f"http://127.0.0.1:{port}")
    problem = storage.uri_problem("gs://some-bucket/run")
    assert problem.startswith("cannot reach gs://some-bucket/run on the emulator at")
    assert storage.EMULATOR_ENV in problem and "\n" not in problem


# ---------------------------------------------------------------- Parquet shards in a bucket


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def shard_table(labels: list[int], size: int = 16, seed: int = 0) -> pa.Table:
    """Hugging Face's layout: `image` {bytes, path} of PNGs, `label`; each class its own brightness."""
    rng = np.random.default_rng(seed)
    images = [png(np.clip(25 * label + rng.integers(0, 20, (size, size, 3)), 0, 255).astype(np.uint8))
              for label in labels]
    image = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table({"image": image, "label": pa.array(labels, pa.int64())})


def write_shards(uri: str, splits: dict[str, list[list[int]]]) -> None:
    """`<split>-0000i-of-0000n.parquet` shards under `uri`, written through nfnet.storage's filesystem."""
    fs, root = storage.filesystem(uri)
    fs.create_dir(f"{root}/data", recursive=True)  # a local folder; nothing on a bucket
    for split, shards in splits.items():
        for i, labels in enumerate(shards):
            pq.write_table(shard_table(labels, seed=i + 7 * len(split)),
                           f"{root}/data/{split}-{i:05d}-of-{len(shards):05d}.parquet", filesystem=fs)


def test_parquet_shards_in_a_bucket_read_like_local_ones(gcs_bucket, tmp_path):
    splits = {"train": [[0, 1, 2, 3], [4, 5, 6]], "test": [[1, 0, 2]]}
    write_shards(f"{gcs_bucket}/hf", splits)
    write_shards(str(tmp_path), splits)
    assert objects(f"{gcs_bucket}/hf") == ["data/test-00000-of-00001.parquet",
                                           "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    for split in ("train", "test"):
        remote = load_dataset(f"parquet:{gcs_bucket}/hf", split)
        local = load_dataset(f"parquet:{tmp_path}", split)
        assert len(remote) == len(local) == sum(map(len, splits[split]))
        assert remote.num_classes == local.num_classes == 7
        indices = np.arange(len(remote))
        r_images, r_labels = remote.get(indices)
        l_images, l_labels = local.get(indices)
        np.testing.assert_array_equal(r_labels, l_labels)
        for a, b in zip(r_images, l_images):
            np.testing.assert_array_equal(a, b)


def test_parquet_in_a_missing_bucket_is_one_line_saying_so(gcs_bucket):
    with pytest.raises(NFNetError, match=r"bucket gs://no-such-bucket-here does not exist on the emulator"):
        load_dataset("parquet:gs://no-such-bucket-here/hf", "train")
    with pytest.raises(NFNetError, match=rf"Parquet dataset {gcs_bucket}/nothing not found"):
        load_dataset(f"parquet:{gcs_bucket}/nothing", "train")


# ---------------------------------------------------------------- orbax checkpoints in a bucket


def state_of(value: float) -> dict:
    return {"params": {"w": jnp.full((64, 64), value), "b": jnp.arange(4.0) * value},
            "step": jnp.array(int(value), jnp.int32)}


def test_checkpoints_save_and_restore_in_a_bucket(gcs_bucket):
    directory = f"{gcs_bucket}/run/checkpoints"
    store = CheckpointStore(directory, max_to_keep=2)
    for step in (1, 2, 3):
        assert store.save(step, state_of(float(step)), {"step": step}) == f"{directory}/{step}"
    assert store.steps() == [2, 3]  # retention works on the bucket too
    store.close()
    # orbax finalises a gs:// save with a commit file, written last, in place (no rename).
    names = objects(directory)
    assert "3/commit_success.txt" in names and not any(n.startswith("1/") for n in names)
    assert is_checkpoint(f"{directory}/3")
    assert latest_checkpoint(directory) == f"{directory}/3"
    state, meta = restore_checkpoint(f"{gcs_bucket}/run")  # a workdir resolves to its latest
    assert meta == {"step": 3} and read_meta(directory) == {"step": 3}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_of(3.0))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_save_left_without_its_commit_file_is_not_a_checkpoint(gcs_bucket):
    directory = f"{gcs_bucket}/run/checkpoints"
    store = CheckpointStore(directory)
    store.save(1, state_of(1.0), {"step": 1})
    store.save(2, state_of(2.0), {"step": 2})
    store.close()
    fs, path = storage.filesystem(directory)
    fs.delete_file(f"{path}/2/commit_success.txt")  # every item complete, the step never committed
    assert "2/state/commit_success.txt" in objects(directory)
    assert not is_checkpoint(f"{directory}/2")
    assert latest_checkpoint(directory) == f"{directory}/1"
    assert restore_checkpoint(directory)[1] == {"step": 1}


# The child saves step 1, then step 2 until orbax is about to write a commit file, and waits
# there (after writing `ready`) until the test SIGKILLs it: at the step's commit (every item
# complete and committed) or at the first item's (the arrays written, nothing committed).
KILLED_SAVE = textwrap.dedent("""
    import pathlib, sys, time
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from nfnet.checkpoint import CheckpointStore
    directory, where, ready = sys.argv[1:4]
    state = lambda v: {"params": {"w": jnp.full((64, 64), v), "b": jnp.arange(4.0) * v},
                       "step": jnp.array(int(v), jnp.int32)}
    store = CheckpointStore(directory)
    store.save(1, state(1.0), {"step": 1})
    finalize = atomicity.CommitFileTemporaryPath.finalize

    async def wait_for_the_kill(self):
        if where == "item" or self.get_final().name.isdigit():
            pathlib.Path(ready).write_text(str(self.get_final()))
            time.sleep(600)
        await finalize(self)

    atomicity.CommitFileTemporaryPath.finalize = wait_for_the_kill
    store.save(2, state(2.0), {"step": 2})
    print("the save was not interrupted")
""")


@pytest.mark.parametrize("where", ["step", "item"])
def test_a_save_killed_mid_write_is_never_restored_as_latest(gcs_bucket, tmp_path, where):
    directory = f"{gcs_bucket}/run/checkpoints"
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, directory, where, str(ready)], cwd=REPO,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL

    left = [n for n in objects(directory) if n.startswith("2/")]
    assert "2/state/_METADATA" in left and "2/commit_success.txt" not in left  # a half-made step 2
    assert ("2/state/commit_success.txt" in left) == (where == "step")
    assert not is_checkpoint(f"{directory}/2")
    assert latest_checkpoint(directory) == f"{directory}/1"
    state, meta = restore_checkpoint(directory)
    assert meta == {"step": 1} and float(state["params"]["w"][0, 0]) == 1.0
    # A store opened again (as a resumed run does) clears the debris and writes step 2 afresh.
    store = CheckpointStore(directory)
    assert store.steps() == [1]
    store.save(2, state_of(5.0), {"step": 2})
    store.close()
    assert read_meta(directory) == {"step": 2}
    assert float(restore_checkpoint(directory)[0]["params"]["w"][0, 0]) == 5.0


# ---------------------------------------------------------------- training with data and workdir in a bucket


class Stop(Exception):
    pass


def bucket_run(bucket: str, workdir: str, **overrides) -> TrainConfig:
    """6 steps of nano on 192 16-px images from the bucket's shards, evaluating every 2 steps."""
    fields = dict(variant="nano", dataset=f"parquet:{bucket}/hf", epochs=1.0, lr=0.1, batch_size=32, resolution=16,
                  max_eval_examples=64, evals_per_run=3, workdir=workdir, progress=False, num_workers=1, seed=3)
    fields.update(overrides)
    return TrainConfig(**fields)


@pytest.mark.slow
def test_training_reads_and_writes_a_bucket_and_resumes_from_it(gcs_bucket):
    rng = np.random.default_rng(0)
    write_shards(f"{gcs_bucket}/hf", {"train": [list(rng.integers(0, 4, 96)) for _ in range(2)],
                                      "test": [list(rng.integers(0, 4, 64))]})
    full = train(bucket_run(gcs_bucket, f"{gcs_bucket}/full"))
    assert full["status"] == "finished" and full["checkpoint_dir"] == f"{gcs_bucket}/full/checkpoints/6"

    def stop_after_second(metrics, checkpoint_dir):
        if metrics["step"] == 4:
            raise Stop

    cut = f"{gcs_bucket}/cut"
    with pytest.raises(Stop):
        train(bucket_run(gcs_bucket, cut), callback=stop_after_second)
    assert latest_checkpoint(f"{cut}/checkpoints") == f"{cut}/checkpoints/4"
    reports = []
    resumed = train(bucket_run(gcs_bucket, cut, resume=True), callback=lambda m, c: reports.append((m["step"], c)))

    assert reports == [(6, f"{cut}/checkpoints/6")]
    for key in ("train_loss", "val_loss", "val_top1", "lr", "flops", "images_seen"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6, abs=1e-7), key
    for a, b in zip(jax.tree.leaves(restore_checkpoint(full["checkpoint_dir"])[0]),
                    jax.tree.leaves(restore_checkpoint(resumed["checkpoint_dir"])[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # Everything the run writes is in the bucket: checkpoints, TensorBoard events, the summary.
    names = objects(cut)
    assert {"checkpoints/4/commit_success.txt", "checkpoints/6/commit_success.txt", "summary.json"} <= set(names)
    assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names)
    fs, path = storage.filesystem(f"{cut}/summary.json")
    with fs.open_input_stream(path) as f:
        assert json.loads(f.read())["val_loss"] == pytest.approx(resumed["val_loss"])


@pytest.mark.parametrize("flag,value,message", [
    ("--workdir", "gs://no-such-bucket-here/run",
     "error: --workdir gs://no-such-bucket-here/run: bucket gs://no-such-bucket-here does not exist on the emulator"),
    ("--workdir", "gs:/no-such-bucket-here/run", "error: --workdir gs:/no-such-bucket-here/run looks like a bucket URI"),
    ("--dataset", "parquet:gs://no-such-bucket-here/hf",
     "error: gs://no-such-bucket-here/hf: bucket gs://no-such-bucket-here does not exist on the emulator"),
])
def test_a_missing_bucket_or_bad_gs_path_is_one_line_from_the_command(gcs_bucket, capsys, tmp_path, flag, value,
                                                                      message):
    args = ["--variant", "nano", "--epochs", "1", "--batch-size", "32", "--resolution", "16",
            "--workdir", str(tmp_path / "run"), "--no-progress", flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    if "does not exist" in message:
        assert "create it (gcloud storage buckets create gs://no-such-bucket-here) or fix the path" in err
