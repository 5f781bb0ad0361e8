"""The trainable, its ledger rows, and the plumbing every tuner command shares.

Pure parts (row mapping, status, resources, naming, tables) run without Ray. The
Ray tests start a local Ray in-process: the callbacks are checked with a trivial
function trainable that reports the trainer's metric keys, and `train_trial`
itself trains a tiny NFNet twice, once through a failure and a retry from its
checkpoint, which must end exactly where the uninterrupted trial does.
"""

import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import ray
from ray import cloudpickle, tune

from tuner.errors import TunerError
from tuner.raytune.callbacks import LedgerCallback, NoTuneTensorBoard, checkpoint_uri, ledger_trial_id
from tuner.raytune.compile_cache import compilation_cache_env
from tuner.raytune.connection import connect
from tuner.raytune.experiment import experiment_name, results_table, storage_path, tensorboard_hint
from tuner.records.ledger import LEDGER_SCHEMA, Ledger
from tuner.records.rows import BEST_VAL_LOSS, SCHEDULE_DONE, dataset_label, ledger_row, trial_status
from tuner.raytune.compile_cache import CompileClock
from tuner.raytune.trainable import train_trial


def last_result(**over):
    result = {
        "step": 40,
        "epoch": 0.5,
        "progress": 1.0,
        "images_seen": 10240,
        "train_loss": 0.9,
        "val_loss": 0.8,
        "val_top1": 0.7,
        "lr": 0.0,
        "flops": 2.5e12,
        "device_seconds": 7200.0,
        "diverged": False,
        SCHEDULE_DONE: True,
        BEST_VAL_LOSS: 0.75,
        "variant": "nano",
        "epochs": 0.5,
        "params": 117350,
    }
    result.update(over)
    return result


CONFIG = {"variant": "nano", "epochs": 0.5, "lr": 0.1, "batch_size": 256, "dataset": "fashion_mnist", "seed": 3}


# ---------------------------------------------------------------- pure mapping


def test_ledger_row_maps_a_finished_trial(tmp_path):
    row = ledger_row("exp/abc_00000", "exp", CONFIG, last_result(), source="sweep", checkpoint_uri="/r/ckpt")
    assert row["trial_id"] == "exp/abc_00000" and row["experiment"] == "exp"
    assert (row["kind"], row["status"], row["source"]) == ("pretrain", "finished", "sweep")
    assert (row["variant"], row["width_mult"], row["depth_mult"]) == ("nano", 1.0, 1.0)
    assert row["params"] == 117350 and row["epochs"] == 0.5 and row["lr"] == 0.1
    assert row["batch_size"] == 256 and row["seed"] == 3 and row["dataset"] == "fashion_mnist"
    assert row["resolution"] == 32  # nano's training resolution when the config names none
    assert row["final_val_loss"] == 0.8 and row["best_val_loss"] == 0.75
    assert row["top1"] == 0.7 and row["train_loss"] == 0.9 and row["images_seen"] == 10240
    assert row["flops"] == 2.5e12 and row["device_hours"] == pytest.approx(2.0)
    assert row["checkpoint_uri"] == "/r/ckpt"
    assert set(row) <= set(LEDGER_SCHEMA.names)
    assert Ledger(tmp_path / "ledger").append([row]) == 1  # the ledger takes it as it is


def test_ledger_row_best_loss_is_the_lowest_known():
    row = ledger_row("t", "e", CONFIG, last_result(val_loss=0.9, **{BEST_VAL_LOSS: 0.85}), "sweep", best_val_loss=0.6)
    assert row["best_val_loss"] == 0.6
    row = ledger_row("t", "e", CONFIG, last_result(val_loss=0.5, **{BEST_VAL_LOSS: 0.85}), "sweep")
    assert row["best_val_loss"] == 0.5


def test_ledger_row_splits_multipliers_and_labels_subsets():
    config = dict(CONFIG, variant="nano-w2", depth_mult=2.0, max_train_examples=2048, resolution=24)
    row = ledger_row("t", "e", config, last_result(variant="nano"), "lr_search")
    assert (row["variant"], row["width_mult"], row["depth_mult"]) == ("nano", 2.0, 2.0)
    assert row["dataset"] == "fashion_mnist[2048]"
    assert row["resolution"] == 24


def test_ledger_row_of_a_diverged_trial_keeps_its_loss_out_of_best():
    result = last_result(val_loss=math.inf, diverged=True, **{BEST_VAL_LOSS: math.nan})
    row = ledger_row("t", "e", CONFIG, result, "sweep")
    assert row["status"] == "diverged"
    assert row["final_val_loss"] == math.inf and row["best_val_loss"] is None


@pytest.mark.parametrize(
    "over, status",
    [
        ({}, "finished"),
        ({"diverged": True}, "diverged"),
        ({"val_loss": math.nan}, "diverged"),
        ({SCHEDULE_DONE: False, "progress": 0.5}, "stopped"),
        ({SCHEDULE_DONE: False, "progress": 1.0}, "finished"),
        ({SCHEDULE_DONE: False, "progress": 0.9999999}, "finished"),
    ],
)
def test_trial_status(over, status):
    assert trial_status(last_result(**over)) == status


def test_dataset_label():
    assert dataset_label("digits") == "digits"
    assert dataset_label("digits", 512) == "digits[512]"
    assert dataset_label(None, 512) is None


def test_compile_clock_counts_compiles_and_nothing_after_exit():
    with CompileClock() as clock:
        jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.arange(7.0)).block_until_ready()
    assert clock.seconds > 0
    seen = clock.seconds
    jax.jit(lambda x: jnp.cos(x) - 2)(jnp.arange(5.0)).block_until_ready()
    assert clock.seconds == seen


# ---------------------------------------------------------------- naming, storage, output


def test_storage_path_and_experiment_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_path(None) == str(tmp_path / "results")
    assert storage_path("gs://bucket/nfscale") == "gs://bucket/nfscale"
    assert storage_path("out") == str(tmp_path / "out")
    from datetime import datetime

    name = experiment_name("lr_search", "nano", 0.5, width_mult=2.0, now=datetime(2025, 1, 2, 3, 4, 5))
    assert name == "lr_search-nano-w2-e0.5-20250102-030405"
    assert ledger_trial_id(name, "ab12c_00001") == f"{name}/ab12c_00001"
    assert tensorboard_hint("/r/x") == "tensorboard --logdir /r/x"


def test_compilation_cache_env_caches_every_program(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    env = compilation_cache_env()
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(Path("~/.cache/nfscale/jax").expanduser())
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] == "-1"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "c"))
    assert compilation_cache_env()["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "c")
    assert compilation_cache_env(str(tmp_path / "d"))["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "d")
    # The names are JAX's own configuration options, upper-cased.
    for name in env:
        assert hasattr(jax.config, name.lower())


def test_results_table_aligns_numbers():
    rows = [
        dict(variant="nano", width_mult=2.0, epochs=0.5, lr=0.1, status="finished", final_val_loss=0.81234),
        dict(variant="nano", width_mult=2.0, epochs=0.5, lr=0.05, status="finished", final_val_loss=1.5),
    ]
    lines = results_table(rows, ("variant", "lr", "status", "final_val_loss")).splitlines()
    assert lines[0].split() == ["variant", "lr", "status", "val_loss"]
    assert lines[1].split() == ["nano-w2", "0.1", "finished", "0.8123"]
    assert len({len(line) for line in lines}) == 1  # right-aligned numbers end in one column


def test_checkpoint_uri_names_buckets():
    import pyarrow.fs as pafs
    from ray.tune import Checkpoint

    assert checkpoint_uri(None) is None
    assert checkpoint_uri(Checkpoint("/r/exp/t/checkpoint_000001")) == "/r/exp/t/checkpoint_000001"
    # No bucket can be reached here: the checkpoint only needs a GCS filesystem object.
    gcs = pafs.GcsFileSystem(anonymous=True)
    assert checkpoint_uri(Checkpoint("bucket/exp/t/checkpoint_000001", gcs)) == "gs://bucket/exp/t/checkpoint_000001"


# ---------------------------------------------------------------- connecting


def test_connect_to_a_dead_address_fails_fast_without_starting_ray():
    start = time.perf_counter()
    with pytest.raises(TunerError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:1: .*ray start --head"):
        connect("127.0.0.1:1")
    assert time.perf_counter() - start < 5
    assert not ray.is_initialized()
    with pytest.raises(TunerError, match="not host:port"):
        connect("no-port-here")


@pytest.mark.slow
def test_connect_joins_a_running_cluster_and_leaves_it_running():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        connection = connect(cluster.address)
        assert not connection.started and ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 1
        connection.shutdown()
        assert ray.is_initialized()  # joined, not started: leaving is the caller's business
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_trials_start_on_jemalloc_locally_and_on_a_cluster_only_when_asked(monkeypatch):
    from nfnet import host_allocator
    from tuner.raytune.connection import trial_allocator_env

    monkeypatch.delenv(host_allocator.ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    local = trial_allocator_env(None)
    assert local == host_allocator.allocator_env("auto")
    # On a cluster this machine's library path says nothing about the nodes'.
    assert trial_allocator_env("10.0.0.1:6379") == {}
    monkeypatch.setenv(host_allocator.ENV, "system")
    assert trial_allocator_env(None) == {}
    monkeypatch.setenv(host_allocator.ENV, "bogus")
    with pytest.raises(TunerError, match="NFSCALE_HOST_ALLOCATOR must be one of"):
        trial_allocator_env(None)


@pytest.mark.slow
@pytest.mark.skipif(__import__("nfnet.host_allocator").host_allocator.find_jemalloc() is None,
                    reason="libjemalloc.so.2 is not installed (apt-get install libjemalloc2)")
def test_a_local_ray_instance_runs_its_trials_on_jemalloc(tmp_path, monkeypatch):
    from nfnet import host_allocator

    monkeypatch.delenv(host_allocator.ENV, raising=False)
    connection = connect(None, num_cpus=1, env_vars=compilation_cache_env(str(tmp_path / "jax-cache")))
    try:
        assert ray.get(ray.remote(host_allocator.active).remote()) == host_allocator.find_jemalloc()
    finally:
        connection.shutdown()
    assert not ray.is_initialized()


# ---------------------------------------------------------------- callbacks in real Tune runs


def scripted_trial(config):
    """Reports the trainer's metric keys along a fixed curve; can fail on purpose."""
    restored = tune.get_checkpoint()
    start = 0
    if restored is not None:
        start = int((Path(restored.path) / "step").read_text())
    for step in range(start + 1, config["reports"] + 1):
        progress = step / config["reports"]
        workdir = Path(tune.get_context().get_trial_dir()) / f"ckpt-{step}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "step").write_text(str(step))
        metrics = {
            "step": step,
            "progress": progress,
            "epoch": config["epochs"] * progress,
            "images_seen": 100 * step,
            "train_loss": 2.0 - step * config["lr"],
            "val_loss": 2.1 - step * config["lr"],
            "val_top1": 0.1 * step,
            "flops": 1e9 * step,
            "device_seconds": 36.0 * step,
            "diverged": False,
            SCHEDULE_DONE: step == config["reports"],
            BEST_VAL_LOSS: 2.1 - step * config["lr"],
            "variant": config["variant"],
            "epochs": config["epochs"],
            "params": 1000,
        }
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(workdir)))
        fail = config["fail"].get(str(config["lr"]))
        if fail == "once" and restored is None and step == 2:
            raise RuntimeError("failing once after a checkpoint, on purpose")
        if fail == "always":
            raise RuntimeError("failing after every attempt's first report, on purpose")


@pytest.fixture
def local_ray(tmp_path):
    # Workers cannot import this test module: ship its functions by value.
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    env = compilation_cache_env(str(tmp_path / "jax-cache"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(module)


@pytest.mark.slow
def test_ledger_callback_writes_each_trial_once_with_its_final_outcome(tmp_path, local_ray):
    ledger = Ledger(tmp_path / "ledger")
    space = {
        "variant": "nano",
        "epochs": 1.0,
        "batch_size": 64,
        "dataset": "digits",
        "reports": 4,
        "lr": tune.grid_search([0.2, 0.1, 0.05, 0.025]),
        "fail": {"0.1": "once", "0.05": "always"},
    }
    tuner = tune.Tuner(
        scripted_trial,
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="ledger-once",
            storage_path=str(tmp_path / "results"),
            callbacks=[LedgerCallback(ledger, source="sweep"), NoTuneTensorBoard()],
            failure_config=tune.FailureConfig(max_failures=1),
            # The 0.025 trial is stopped early, as a scheduler would.
            stop=lambda trial_id, result: result["config"]["lr"] == 0.025 and result["step"] >= 2,
            verbose=0,
        ),
    )
    grid = tuner.fit()
    rows = {r["lr"]: r for r in ledger.read().to_pylist()}
    assert sorted(rows) == [0.025, 0.05, 0.1, 0.2]
    assert len(ledger.read()) == 4  # the retried trial is written once
    assert rows[0.2]["status"] == "finished" and rows[0.2]["final_val_loss"] == pytest.approx(2.1 - 0.8)
    assert rows[0.1]["status"] == "finished"  # failed once, retried from its checkpoint, finished
    assert rows[0.1]["images_seen"] == 400
    # Failed for good (first attempt: step 1; the retry: step 2): its loss is not a final one.
    assert rows[0.05]["status"] == "stopped" and rows[0.05]["images_seen"] == 200
    assert rows[0.025]["status"] == "stopped" and rows[0.025]["images_seen"] == 200
    for row in rows.values():
        assert row["trial_id"].startswith("ledger-once/") and row["source"] == "sweep"
        assert row["experiment"] == "ledger-once" and row["dataset"] == "digits"
        assert row["checkpoint_uri"] and Path(row["checkpoint_uri"]).is_dir()
    assert rows[0.2]["checkpoint_uri"].endswith("checkpoint_000003")
    errored = [r for r in grid if r.error is not None]
    assert len(errored) == 1 and errored[0].config["lr"] == 0.05

    # A resumed experiment appends nothing twice.
    assert ledger.append(ledger.read().to_pylist()) == 0

    # TensorBoard: Tune writes no events of its own (the trainer writes each trial's, and
    # these scripted trials have none), while its CSV and JSON logs stay.
    experiment = tmp_path / "results" / "ledger-once"
    trial_dirs = [p for p in experiment.iterdir() if (p / "result.json").is_file()]
    assert len(trial_dirs) == 4 and all((p / "progress.csv").is_file() for p in trial_dirs)
    assert not list(experiment.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_train_trial_resumes_a_failed_trial_exactly(tmp_path, local_ray):
    """One trial fails after its first checkpoint and is retried; it must end where its twin does."""

    def crash_once(config):
        # Fault injection for a preempted host: the real trainable, failing once after a report.
        if config["crash"] and tune.get_checkpoint() is None:
            real_report = tune.report

            def report_then_fail(metrics, checkpoint=None):
                real_report(metrics, checkpoint=checkpoint)
                raise RuntimeError("preempted, on purpose")

            tune.report = report_then_fail
            try:
                train_trial(config)
            finally:
                tune.report = real_report  # Ray may run the retry in this same worker process
            return
        train_trial(config)

    space = {
        "variant": "nano",
        "dataset": "digits",
        "epochs": 1.0,
        "lr": 0.05,
        "batch_size": 32,
        "max_train_examples": 128,
        "max_eval_examples": 64,
        "evals_per_run": 2,
        "num_workers": 0,
        "fast_compile": True,
        "crash": tune.grid_search([False, True]),
    }
    grid = tune.Tuner(
        tune.with_resources(crash_once, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="resume", storage_path=str(tmp_path / "results"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    by_crash = {r.config["crash"]: r for r in grid}
    assert all(r.error is None for r in grid)
    plain, retried = by_crash[False], by_crash[True]
    assert plain.metrics["step"] == retried.metrics["step"] == 4
    assert trial_status(retried.metrics) == "finished"
    # The retry continued from step 2's checkpoint: one report before the failure, one after.
    assert retried.metrics["training_iteration"] == 2
    steps = [int(line.split(",")[0]) for line in (Path(retried.path) / "progress.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4]
    # ...and its second attempt found every program in the persistent compilation cache.
    assert retried.metrics["compile_cache_hits"] > 0
    assert retried.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"], rel=1e-6)
    assert retried.metrics["train_loss"] == pytest.approx(plain.metrics["train_loss"], rel=1e-6)
    assert retried.metrics["images_seen"] == plain.metrics["images_seen"] == 128
    assert plain.metrics["compile_seconds"] > 0
    assert os.listdir(tmp_path / "jax-cache")  # trials wrote to the shared compilation cache


def scored_trial(config):
    """Reports checkpoints whose val_loss follows config["losses"]: the best is not the latest."""
    for step, loss in enumerate(config["losses"], start=1):
        workdir = Path(tune.get_context().get_trial_dir()) / f"ckpt-{step}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "step").write_text(str(step))
        tune.report({"step": step, "val_loss": loss}, checkpoint=tune.Checkpoint.from_directory(str(workdir)))


@pytest.mark.slow
@pytest.mark.parametrize("keep", [1, 2])
def test_checkpoint_config_keeps_the_best_k_and_the_latest(tmp_path, local_ray, keep):
    """What `--keep-checkpoints K` asks of Ray: per trial the K lowest-val_loss checkpoints
    and the latest, at most K + 1, here with the best one reported second of five."""
    from tuner.raytune.experiment import checkpoint_config

    tuner = tune.Tuner(
        scored_trial,
        param_space={"losses": [3.0, 1.0, 2.0, 4.0, 5.0]},
        run_config=tune.RunConfig(name="keep", storage_path=str(tmp_path / "results"),
                                  checkpoint_config=checkpoint_config(keep), verbose=0),
    )
    (result,) = tuner.fit()
    (trial_dir,) = [p for p in (tmp_path / "results" / "keep").iterdir() if p.is_dir()]
    kept = sorted(int((p / "step").read_text()) for p in trial_dir.glob("checkpoint_*"))
    assert kept == ([2, 5] if keep == 1 else [2, 3, 5])
    assert result.checkpoint is not None and (Path(result.checkpoint.path) / "step").read_text() == "5"


def test_keep_checkpoints_must_be_a_positive_whole_number():
    from tuner.raytune.experiment import checkpoint_config

    config = checkpoint_config(3)
    assert (config.num_to_keep, config.checkpoint_score_attribute, config.checkpoint_score_order) == (
        3, "val_loss", "min")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(TunerError, match="--keep-checkpoints"):
            checkpoint_config(bad)


def test_local_checkpoint_root_is_outside_the_trial_dir_and_stable(tmp_path, monkeypatch):
    from tuner.raytune.trainable import SCRATCH_ENV, local_checkpoint_root

    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "scratch"))
    trial_dir = str(tmp_path / "results" / "exp" / "trial")
    root = local_checkpoint_root(trial_dir, "abc")
    assert root.startswith(str(tmp_path / "scratch")) and not root.startswith(trial_dir)
    assert local_checkpoint_root(trial_dir, "abc") == root
    assert local_checkpoint_root(str(tmp_path / "results" / "other" / "trial"), "abc") != root


def test_a_starting_trial_removes_the_local_checkpoints_of_trials_whose_process_is_gone(tmp_path, monkeypatch):
    """Scratch stays bounded when trials are stopped or killed before they clean up: the next trial
    on the node removes directories whose owner process has ended, and leaves live owners' alone."""
    import subprocess
    import sys

    from tuner.raytune.trainable import OWNER_SUFFIX, SCRATCH_ENV, claim_local_checkpoints, local_checkpoint_root

    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "scratch"))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = local_checkpoint_root(str(tmp_path / "t1"), "dead")
    live = local_checkpoint_root(str(tmp_path / "t2"), "live")
    for root, pid in ((dead, ended.pid), (live, os.getpid())):
        os.makedirs(os.path.join(root, "5"))
        with open(root + OWNER_SUFFIX, "w") as handle:
            handle.write(str(pid))
    mine = local_checkpoint_root(str(tmp_path / "t3"), "mine")
    assert claim_local_checkpoints(mine) == [dead]
    assert not os.path.exists(dead) and not os.path.exists(dead + OWNER_SUFFIX)
    assert os.path.isdir(os.path.join(live, "5"))
    with open(mine + OWNER_SUFFIX) as handle:
        assert int(handle.read()) == os.getpid()
