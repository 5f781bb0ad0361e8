"""The tuner's gs:// paths on a local GCS emulator (tests/gcs_emulator.py): the ledger appended and
read in a bucket, one-line errors for a missing bucket, and a sweep whose Ray Tune storage is the
bucket, interrupted and resumed by a new driver from the experiment state it left there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.fs as pafs
import pytest

from nfnet import storage
from tuner.errors import TunerError
from tuner.raytune.experiment import INTERRUPTED_EXIT, check_storage, ray_location
from tuner.records.ledger import PART_PREFIX, Ledger
from tuner.ledger import main as ledger_main
from tuner.jobs.sweep import SETTINGS_FILE
from tuner.sweep import main as sweep_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MISSING = "gs://no-such-bucket-here"


def row(trial_id: str, lr: float = 0.1, loss: float = 1.0) -> dict:
    return {"trial_id": trial_id, "experiment": "exp", "kind": "pretrain", "variant": "nano", "params": 300_000,
            "epochs": 1.0, "lr": lr, "batch_size": 256, "dataset": "digits", "final_val_loss": loss,
            "status": "finished", "source": "sweep"}


def objects(uri: str) -> list[str]:
    """Every object under `uri`, relative to it, read with a fresh pyarrow client."""
    fs, path = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


# ---------------------------------------------------------------- the ledger in a bucket


def test_the_ledger_appends_and_reads_in_a_bucket(gcs_bucket, capsys):
    uri = f"{gcs_bucket}/nfscale/ledger"
    ledger = Ledger(uri)
    assert ledger.fs.type_name == "gcs" and ledger.check().num_rows == 0
    assert ledger.append([row("a", lr=0.1, loss=1.0), row("b", lr=0.2, loss=0.9)]) == 2
    assert ledger.append([row("b"), row("c", lr=0.4, loss=1.1)]) == 1  # b is there already
    parts = objects(uri)
    assert len(parts) == 2 and all(p.startswith(PART_PREFIX) and p.endswith(".parquet") for p in parts)
    # Another process (a new client) reads the same rows, in append order.
    fresh = Ledger(uri).read().to_pylist()
    assert [(r["trial_id"], r["lr"]) for r in fresh] == [("a", 0.1), ("b", 0.2), ("c", 0.4)]
    assert ledger_main(["show", "--ledger", uri, "--json"]) == 0
    assert {r["trial_id"] for r in json.loads(capsys.readouterr().out)} == {"a", "b", "c"}


def test_a_ledger_in_a_missing_bucket_is_one_line_before_any_work(gcs_bucket):
    with pytest.raises(TunerError) as info:
        Ledger(f"{MISSING}/ledger").check()
    message = str(info.value)
    assert message.startswith(f"--ledger {MISSING}/ledger: bucket {MISSING} does not exist on the emulator")
    assert f"create it (gcloud storage buckets create {MISSING}) or fix the path" in message
    assert "\n" not in message


# ---------------------------------------------------------------- Ray Tune's storage in a bucket


def test_ray_gets_the_buckets_filesystem_and_a_path_without_scheme(gcs_bucket, tmp_path):
    path, fs = ray_location(f"{gcs_bucket}/ray")
    assert path == f"{gcs_bucket[5:]}/ray" and fs.type_name == "gcs"
    assert ray_location(str(tmp_path)) == (str(tmp_path), None)
    check_storage(f"{gcs_bucket}/ray")  # an existing bucket: nothing to say
    with pytest.raises(TunerError, match=rf"^--storage {MISSING}/ray: bucket {MISSING} does not exist"):
        check_storage(f"{MISSING}/ray")


@pytest.mark.parametrize("flag,value,message", [
    ("--storage", f"{MISSING}/ray", f"error: --storage {MISSING}/ray: bucket {MISSING} does not exist on the emulator"),
    ("--ledger", f"{MISSING}/ledger", f"error: --ledger {MISSING}/ledger: bucket {MISSING} does not exist on the"),
    ("--storage", "gs://Bad_Bucket/ray", "error: --storage gs://Bad_Bucket/ray: 'Bad_Bucket' is not a valid bucket"),
    ("--storage", "gs:/bucket/ray", "error: --storage gs:/bucket/ray looks like a bucket URI with a slash missing"),
])
def test_sweep_flags_naming_a_missing_bucket_or_a_bad_gs_path_are_one_line(gcs_bucket, capsys, tmp_path, flag,
                                                                             value, message):
    argv = ["--preset", "cpu-smoke", "--dry-run", "--storage", str(tmp_path / "results"),
            "--ledger", str(tmp_path / "ledger"), flag, value]
    assert sweep_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists() and not (tmp_path / "ledger").exists()


# The sweep: nano on 256 digits at 16 px, batch 64 (4 steps a run, evaluated at 1/2 and at the
# end); a grid of two LRs run one at a time.
PRESET = textwrap.dedent("""
    from search_spaces import Preset

    PRESET = Preset(
        name="gcs-tiny", summary="a test study in a bucket", command="python -m tuner.sweep --preset gcs-tiny",
        cost="a minute", variants=("nano",), epochs=(1,), lr_exponents=(2, 3), batch_size=64, dataset="digits",
        resolution=16, num_samples=2, grace_period=0.5,
        overrides={"evals_per_run": 2, "max_train_examples": 256, "max_eval_examples": 64, "num_workers": 1},
    )
""")


def result_lines(experiment_uri: str) -> dict[str, int]:
    """Ray trial id -> the number of results Ray stored for it in the bucket."""
    fs, path = storage.filesystem(experiment_uri)
    out = {}
    for name in objects(experiment_uri):
        if name.endswith("/result.json"):
            with fs.open_input_stream(f"{path}/{name}") as f:
                lines = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
            if lines:
                out[lines[0]["trial_id"]] = len(lines)
    return out


def sweep(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner.sweep", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_sweep_stored_in_a_bucket_resumes_from_it_in_a_new_driver(gcs_bucket, tmp_path, tmp_path_factory):
    preset = tmp_path / "gcs_preset.py"
    preset.write_text(PRESET)
    storage_uri, ledger_uri = f"{gcs_bucket}/ray", f"{gcs_bucket}/ledger"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax-cache")}
    where = ["--storage", storage_uri, "--ledger", ledger_uri, "--name", "in-a-bucket"]

    # The first driver runs the grid until the first trial is in the ledger, then gets Ctrl-C.
    first = sweep("--preset", str(preset), "--grid", "--max-concurrent", "1", "--num-cpus", "2", *where, env=env)
    try:
        deadline = time.monotonic() + 420
        while first.poll() is None and time.monotonic() < deadline and not Ledger(ledger_uri).read().num_rows:
            time.sleep(1)
        assert first.poll() is None and Ledger(ledger_uri).read().num_rows == 1, (
            "the first trial did not finish alone in time")
        os.kill(first.pid, signal.SIGINT)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.communicate()
    assert first.returncode == INTERRUPTED_EXIT, out[-3000:]
    before = Ledger(ledger_uri).read().to_pylist()
    assert len(before) == 1, out[-3000:]
    # Ray kept the experiment in the bucket: its state, the sweep's settings, the trials' checkpoints.
    names = objects(f"{storage_uri}/in-a-bucket")
    assert SETTINGS_FILE in names and "tuner.pkl" in names
    assert any(n.startswith("experiment_state-") for n in names)
    assert any("/checkpoint_" in n and n.endswith("commit_success.txt") for n in names)
    first_trial = before[0]["trial_id"].split("/", 1)[1]
    first_results = result_lines(f"{storage_uri}/in-a-bucket")[first_trial]

    # A new driver (a new Ray instance, nothing local from the first) continues from the bucket.
    second = sweep("--resume", *where[:2], "--name", "in-a-bucket", env=env)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert f"resuming sweep in-a-bucket at {storage_uri}/in-a-bucket" in out
    rows = Ledger(ledger_uri).read().to_pylist()
    assert len(rows) == len({r["trial_id"] for r in rows}) == 2
    assert sorted(r["lr"] for r in rows) == pytest.approx([0.1, 0.2])  # base_lr(64) = 0.025, × 2^2 and 2^3
    assert rows[0] == before[0]  # the finished trial is not recorded again ...
    assert result_lines(f"{storage_uri}/in-a-bucket")[first_trial] == first_results  # ... nor run again
    # Grouped ASHA may stop the worse LR at half its run; either way its checkpoint is in the bucket.
    for r in rows:
        assert r["status"] in ("finished", "stopped"), r
        assert r["checkpoint_uri"].startswith(f"{storage_uri}/in-a-bucket/"), r


# ---------------------------------------------------------------- a report read from and written to a bucket


def test_a_report_reads_its_ledger_from_a_bucket_and_writes_there(gcs_bucket, capsys):
    from tuner.report import main as report_main

    ledger_uri, out = f"{gcs_bucket}/ledger", f"{gcs_bucket}/report"
    Ledger(ledger_uri).append([{**row(f"t{i}", lr=lr, loss=loss), "flops": 1e12, "epochs": 1.0}
                               for i, (lr, loss) in enumerate([(0.1, 1.0), (0.2, 0.9), (0.4, 1.1)])])
    for _ in range(2):  # a second report replaces the first's TensorBoard events
        assert report_main(["--ledger", ledger_uri, "--out", out, "--n-boot", "20"]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}/summary.md" in stdout and f"wrote {out}/loss_vs_compute.png" in stdout
    names = objects(out)
    assert {"summary.md", "loss_vs_compute.png"} <= set(names)
    assert len([n for n in names if n.startswith("tensorboard/events.out.tfevents.")]) == 1
    fs, path = storage.filesystem(f"{out}/summary.md")
    with fs.open_input_stream(path) as f:
        assert "too few points for a fit" in f.read().decode()
