"""The standalone trainer: reports, checkpoints, resume, sharding, divergence, command line."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from nfnet.checkpoint import latest_checkpoint, read_meta, restore_checkpoint
from nfnet.config import TrainConfig
from nfnet.errors import NFNetError
from nfnet.loop import METRIC_KEYS, eval_schedule, train
from nfnet.metrics import json_safe
from nfnet.step import cross_entropy, ema_decay_at
from nfnet.train import build_parser, config_from_args, main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(workdir, **overrides) -> TrainConfig:
    """6 steps of nano on 192 Fashion-MNIST images at 16px, evaluating every 2 steps."""
    fields = dict(variant="nano", dataset="fashion_mnist", epochs=1.0, lr=0.1, batch_size=32, resolution=16,
                  max_train_examples=192, max_eval_examples=64, evals_per_run=3, workdir=str(workdir),
                  progress=False, num_workers=1, seed=3)
    fields.update(overrides)
    return TrainConfig(**fields)


def run_cli(*args: str, module: str = "nfnet.train", env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                          env=full_env, timeout=300)


# ---------------------------------------------------------------- pure pieces

def _step_spec(lr: float):
    from jax.sharding import Mesh

    from nfnet.optim import OptimConfig
    from nfnet.step import DATA_AXIS, StepSpec
    from nfnet.variants import get_variant

    return StepSpec(variant=get_variant("nano"), num_classes=10, dtype="float32", stochdepth_rate=0.0,
                    dropout_rate=0.0, label_smoothing=0.0, optim=OptimConfig(lr=lr, total_steps=6),
                    sam_rho=0.0, sam_fraction=0.2, ema_decay=0.0, mesh=Mesh(np.array(jax.devices()), (DATA_AXIS,)),
                    batch_size=8, resolution=16, eval_resolution=16)


def test_runs_that_differ_only_in_lr_lower_to_the_same_programs():
    """The peak LR is optimizer state, not a constant: a grid's LRs share compiled programs
    (and so the persistent compilation cache), while the state carries each run's own LR."""
    import jax.numpy as jnp

    from nfnet.step import _init_fn, init_state, make_train_step

    texts, states = [], []
    for lr in (0.1, 0.4):
        spec = _step_spec(lr)
        init = _init_fn(spec).lower(jax.random.PRNGKey(0), jnp.float32(lr)).as_text()
        state = init_state(spec, seed=0)
        batch = (jnp.zeros((8, 16, 16, 3), jnp.float32), jnp.zeros((8,), jnp.int32))
        step = jax.jit(make_train_step(spec)).lower(state, batch).as_text()
        texts.append((init, step))
        states.append(state)
    assert texts[0] == texts[1]
    peaks = [float(s["opt_state"][-1].hyperparams["step_size"]) for s in states]
    assert peaks == pytest.approx([-0.1, -0.4])
    # Another epoch budget is another schedule, compiled into the step.
    other = dataclasses.replace(_step_spec(0.1), optim=dataclasses.replace(_step_spec(0.1).optim, total_steps=12))
    state = init_state(other, seed=0)
    batch = (jnp.zeros((8, 16, 16, 3), jnp.float32), jnp.zeros((8,), jnp.int32))
    assert jax.jit(make_train_step(other)).lower(state, batch).as_text() != texts[0][1]


def test_eval_schedule_is_evenly_spaced_and_deduplicated():
    assert eval_schedule(100, 8) == [13, 25, 38, 50, 63, 75, 88, 100]
    assert eval_schedule(6, 3) == [2, 4, 6]
    assert eval_schedule(3, 8) == [1, 2, 3]
    assert eval_schedule(1, 4) == [1]


def test_cross_entropy_matches_hand_computation_with_smoothing():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], np.float32)
    labels = np.array([0, 2])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    plain = -np.mean(logp[[0, 1], labels])
    assert float(cross_entropy(logits, labels, 3)) == pytest.approx(plain, rel=1e-6)
    eps = 0.3
    targets = np.full((2, 3), eps / 3) + (1 - eps) * np.eye(3)[labels]
    smoothed = -np.mean(np.sum(targets * logp, -1))
    assert float(cross_entropy(logits, labels, 3, eps)) == pytest.approx(smoothed, rel=1e-6)


def test_ema_decay_warms_up_to_its_ceiling():
    assert float(ema_decay_at(0.999, np.int32(0))) == pytest.approx(0.1)
    assert float(ema_decay_at(0.999, np.int32(90))) == pytest.approx(0.91)
    assert float(ema_decay_at(0.999, np.int32(10**6))) == pytest.approx(0.999)


def test_flags_lay_over_a_base_config():
    args = build_parser().parse_args(["--lr", "0.4", "--epochs", "0.25", "--clipping", "none", "--no-progress"])
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.epochs, cfg.clipping, cfg.progress) == (0.4, 0.25, None, False)
    assert cfg.batch_size == TrainConfig.batch_size
    base = TrainConfig(batch_size=64, variant="micro")
    cfg = config_from_args(build_parser().parse_args(["--resume"]), base)
    assert (cfg.batch_size, cfg.variant, cfg.resume) == (64, "micro", True)


def test_json_safe_turns_non_finite_numbers_into_null():
    text = json.dumps(json_safe({"a": float("inf"), "b": [float("nan"), 1.5], "c": np.float32(2.0), "d": True}))
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": 2.0, "d": True}


# ---------------------------------------------------------------- user mistakes

@pytest.mark.parametrize("overrides, message", [
    ({"lr": -0.1}, "--lr"),
    ({"epochs": -1.0}, "--epochs"),
    ({"variant": "F99"}, "unknown variant"),
    ({"batch_size": 512, "max_train_examples": 100}, "fewer than one batch"),
    ({"dataset": "imagefolder:/nonexistent/images"}, "/nonexistent/images"),
    ({"resume": True}, "no checkpoint"),
    ({"dtype": "float16"}, "--dtype"),
])
def test_config_mistakes_raise_before_anything_is_written(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    with pytest.raises(NFNetError, match=message):
        train(tiny(workdir, **overrides))
    assert not workdir.exists()


@pytest.mark.parametrize("args, message", [
    (["--dataset", "fashion_mnist", "--data-dir", "/nonexistent/fashion"], "/nonexistent/fashion"),
    (["--lr", "-0.4"], "--lr"),
    (["--epochs", "-2"], "--epochs"),
])
def test_command_line_mistakes_print_one_line_and_exit_2(tmp_path, args, message):
    workdir = tmp_path / "run"
    proc = run_cli("--variant", "nano", "--workdir", str(workdir), "--batch-size", "32", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not workdir.exists()


def test_main_reports_bad_flag_values_as_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--batch-size", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "batch-size" in err[0]


@pytest.mark.parametrize("args, message", [
    (["--clipping", "abc"], "error: --clipping: expected a number or 'none', got 'abc'"),
    (["--batch-size", "1.5"], "error: --batch-size: expected an integer, got '1.5'"),
    (["--lr", "fast"], "error: --lr: expected a number, got 'fast'"),
    (["--resolution", "8"], "error: --resolution must be a whole number of px >= 16 (the network halves the "
                            "image 5 times, 32x in all), got 8"),
    (["--eval-resolution", "12"], "error: --eval-resolution must be a whole number of px >= 16"),
])
def test_a_bad_flag_value_says_what_the_flag_wants_and_writes_nothing(tmp_path, monkeypatch, capsys, args,
                                                                        message):
    monkeypatch.chdir(tmp_path)  # the default --workdir is relative
    try:
        code = main(["--variant", "nano", *args])
    except SystemExit as exit_info:  # argparse's own check of the value
        code = exit_info.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_clipping_takes_none_to_turn_agc_off():
    assert config_from_args(build_parser().parse_args(["--clipping", "none"])).clipping is None
    assert config_from_args(build_parser().parse_args(["--clipping", "0.02"])).clipping == 0.02


# ---------------------------------------------------------------- runs

def test_run_reports_checkpoints_and_writes_tensorboard(tmp_path):
    reports, complete = [], []

    def callback(metrics, ckpt):
        reports.append((metrics, ckpt))
        # The directory handed over is a finished checkpoint when the callback runs.
        complete.append(ckpt is not None and read_meta(ckpt)["step"] == metrics["step"])

    summary = train(tiny(tmp_path / "run"), callback=callback)

    assert [m["step"] for m, _ in reports] == [2, 4, 6]
    assert all(complete)
    for metrics, ckpt in reports:
        assert set(metrics) == set(METRIC_KEYS)
        assert ckpt.endswith(os.path.join("checkpoints", str(metrics["step"])))
    m = [r[0] for r in reports]
    assert [x["progress"] for x in m] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [x["epoch"] for x in m] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [x["images_seen"] for x in m] == [64, 128, 192]
    assert [x["done"] for x in m] == [False, False, True]
    assert not any(x["diverged"] for x in m)
    # FLOPs are the compiled step's cost times steps: linear in steps, and at least 3x the forward MACs.
    assert m[0]["flops"] > 0 and m[2]["flops"] == pytest.approx(3 * m[0]["flops"])
    assert m[2]["device_seconds"] > m[0]["device_seconds"] > 0
    assert all(x["images_per_sec"] > 0 and 0 <= x["clip_fraction"] <= 1 for x in m)
    assert all(math.isfinite(x["train_loss"]) and 0 <= x["val_top1"] <= 1 for x in m)
    assert m[0]["lr"] > m[1]["lr"] > m[2]["lr"] > 0  # cosine decay towards 0
    assert m[0]["variant"] == "nano" and m[0]["epochs"] == 1.0 and m[0]["params"] > 100_000

    assert summary["status"] == "finished" and summary["steps"] == 6 and summary["num_classes"] == 10
    assert summary["checkpoint_dir"] == reports[-1][1]
    assert summary["best_val_loss"] == min(x["val_loss"] for x in m)
    assert json.load(open(tmp_path / "run" / "summary.json"))["val_loss"] == pytest.approx(m[-1]["val_loss"])
    # Only the newest two checkpoints are kept.
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4", "6"]
    meta = read_meta(summary["checkpoint_dir"])
    assert meta["step"] == 6 and meta["config"]["lr"] == 0.1 and meta["flops"] == pytest.approx(m[-1]["flops"])

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_top1", "lr", "clip_fraction", "images_per_sec", "flops",
            "device_seconds", "epoch"} <= tags
    assert [e.step for e in events.Scalars("val_loss")] == [2, 4, 6]
    assert events.Scalars("val_loss")[-1].value == pytest.approx(m[-1]["val_loss"], rel=1e-5)
    # The same run holds its hparams for TensorBoard's HParams view.
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["variant"].string_value == "nano" and start.hparams["batch_size"].string_value == "32"
    assert start.hparams["lr"].number_value == 0.1 and start.group_name == "run"

    # The same workdir is not silently reused.
    with pytest.raises(NFNetError, match="--resume"):
        train(tiny(tmp_path / "run"))


def test_huge_learning_rate_ends_as_diverged_not_a_crash(tmp_path):
    reports = []
    summary = train(tiny(tmp_path / "run", lr=1e6, clipping=None, warmup_fraction=0.0),
                    callback=lambda m, c: reports.append((m, c)))
    assert summary["status"] == "diverged"
    metrics, ckpt = reports[-1]
    assert metrics["diverged"] and metrics["done"] and ckpt is None
    assert set(metrics) == set(METRIC_KEYS)
    assert not math.isfinite(metrics["train_loss"]) and metrics["val_loss"] == float("inf")
    assert summary["steps"] < 6
    line = json.dumps(json_safe(summary))
    assert json.loads(line)["val_loss"] is None


class Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_stop_matches_an_uninterrupted_run(tmp_path):
    full = train(tiny(tmp_path / "full"))

    def stop_after_second(metrics, ckpt):
        if metrics["step"] == 4:
            raise Stop

    with pytest.raises(Stop):
        train(tiny(tmp_path / "cut"), callback=stop_after_second)
    assert latest_checkpoint(str(tmp_path / "cut" / "checkpoints")).endswith("4")
    resumed_reports = []
    resumed = train(tiny(tmp_path / "cut", resume=True), callback=lambda m, c: resumed_reports.append(m))

    assert [m["step"] for m in resumed_reports] == [6]
    for key in ("train_loss", "val_loss", "val_top1", "clip_fraction", "lr", "flops", "images_seen"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6, abs=1e-7), key
    full_state, _ = restore_checkpoint(full["checkpoint_dir"])
    resumed_state, _ = restore_checkpoint(resumed["checkpoint_dir"])
    for a, b in zip(jax.tree.leaves(full_state), jax.tree.leaves(resumed_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert resumed["device_seconds"] > 0


@pytest.mark.slow
def test_resume_of_a_streamed_parquet_run_matches_an_uninterrupted_run(tmp_path):
    from test_stream import write_indexed

    data = tmp_path / "data"
    write_indexed(data, 192, shards=2, row_group_size=16, size=12, noise=True)  # 12 row groups
    write_indexed(data, 48, shards=1, row_group_size=16, size=12, split="test")
    config = dict(dataset=f"parquet:{data}", max_train_examples=None, max_eval_examples=None, shuffle_window=2)
    full = train(tiny(tmp_path / "full", **config))

    def stop_after_second(metrics, ckpt):
        if metrics["step"] == 4:
            raise Stop

    with pytest.raises(Stop):
        train(tiny(tmp_path / "cut", **config), callback=stop_after_second)
    resumed = train(tiny(tmp_path / "cut", resume=True, **config))
    for key in ("train_loss", "val_loss", "val_top1", "images_seen"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6, abs=1e-7), key
    full_state, _ = restore_checkpoint(full["checkpoint_dir"])
    resumed_state, _ = restore_checkpoint(resumed["checkpoint_dir"])
    for a, b in zip(jax.tree.leaves(full_state), jax.tree.leaves(resumed_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


SHARDED_RUN = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    from nfnet.checkpoint import restore_checkpoint
    from nfnet.config import TrainConfig
    from nfnet.loop import train
    s = train(TrainConfig(variant="nano", dataset="fashion_mnist", epochs=1.0, lr=0.1, batch_size=32,
                          resolution=16, max_train_examples=128, max_eval_examples=64, evals_per_run=2,
                          workdir=sys.argv[1], progress=False, num_workers=1, seed=5))
    state, _ = restore_checkpoint(s["checkpoint_dir"])
    kernel = state["params"]["stage1_block0"]["conv1"]["kernel"]
    print(json.dumps({"devices": jax.device_count(), "val_loss": s["val_loss"], "train_loss": s["train_loss"],
                      "flops": s["flops"], "kernel": kernel.ravel()[:64].tolist()}))
""")


@pytest.mark.slow
def test_four_fake_devices_match_one_device(tmp_path):
    results = {}
    for devices in (1, 4):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        proc = subprocess.run([sys.executable, "-c", SHARDED_RUN, str(tmp_path / f"d{devices}")],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[devices] = json.loads(proc.stdout.strip().splitlines()[-1])
    one, four = results[1], results[4]
    assert (one["devices"], four["devices"]) == (1, 4)
    assert four["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    assert four["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    np.testing.assert_allclose(four["kernel"], one["kernel"], rtol=1e-3, atol=1e-5)
    # The count is of the global program: the same for one device as for four.
    assert four["flops"] == one["flops"] > 0


@pytest.mark.slow
def test_loss_falls_on_a_fashion_mnist_subset(tmp_path):
    reports = []
    summary = train(TrainConfig(variant="nano", dataset="fashion_mnist", epochs=3.0, lr=0.1, batch_size=64,
                                resolution=28, max_train_examples=1024, max_eval_examples=512, evals_per_run=3,
                                workdir=str(tmp_path / "run"), progress=False),
                    callback=lambda m, c: reports.append(m))
    assert summary["status"] == "finished"
    train_losses = [m["train_loss"] for m in reports]
    val_losses = [m["val_loss"] for m in reports]
    assert train_losses == sorted(train_losses, reverse=True) and train_losses[-1] < 0.75 * train_losses[0]
    assert val_losses == sorted(val_losses, reverse=True) and val_losses[-1] < 0.7 * math.log(10)
    assert reports[-1]["val_top1"] > 0.4  # chance is 0.1


@pytest.mark.slow
def test_command_line_trains_and_resumes_from_the_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    common = ["--variant", "nano", "--batch-size", "32", "--resolution", "16", "--max-train-examples", "64",
              "--max-eval-examples", "32", "--evals-per-run", "1", "--epochs", "1", "--workdir", workdir]
    proc = run_cli(*common, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    # Resuming a finished run trains no further and reports the same result.
    proc = run_cli("--workdir", workdir, "--resume", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout.strip().splitlines()[-1])
    assert again["status"] == "finished" and again["steps"] == 2 and again["val_loss"] == summary["val_loss"]
    # A finished run resumed with a larger budget is refused: the schedule would differ.
    proc = run_cli("--workdir", workdir, "--resume", "--epochs", "2")
    assert proc.returncode == 2 and "epochs=1.0 in the checkpoint" in proc.stderr


def test_a_step_without_a_flops_count_reports_none_not_zero(tmp_path, monkeypatch):
    """The count patched to give none: a stand-in for a step it cannot count (a `while` loop,
    tests/nfnet/test_counting.py). Metrics and the checkpoint then say the FLOPs are unknown
    (None), which a FLOPs budget refuses, instead of 0, which would never spend it."""
    import nfnet.step
    from nfnet.step import compile_train_step

    monkeypatch.setattr(nfnet.step, "jaxpr_flops", lambda closed_jaxpr: None)
    compile_train_step.cache_clear()  # a step compiled by an earlier test has a figure
    try:
        reports = []
        summary = train(tiny(tmp_path / "run"), callback=lambda m, ckpt: reports.append(m))
    finally:
        compile_train_step.cache_clear()
    assert [m["flops"] for m in reports] == [None, None, None]
    assert summary["status"] == "finished"
    assert read_meta(summary["checkpoint_dir"])["flops"] is None
