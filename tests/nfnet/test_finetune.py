"""Fine-tuning: a pre-trained checkpoint's body under a new head, at a higher resolution."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet.checkpoint import CheckpointStore, restore_checkpoint
from nfnet.config import TrainConfig
from nfnet.errors import NFNetError
from nfnet.finetune import FinetuneConfig, default_resolution, finetune, main, to_train_config
from nfnet.loop import METRIC_KEYS, train


def fake_pretrain_checkpoint(workdir, **config) -> str:
    """A checkpoint directory with the metadata a pre-training run writes (no real weights needed)."""
    cfg = dataclasses.asdict(TrainConfig(**config))
    store = CheckpointStore(str(workdir / "checkpoints"))
    path = store.save(3, {"params": {"w": jnp.zeros(2)}}, {"config": cfg, "resolution": cfg["resolution"] or 32,
                                                            "step": 3, "num_classes": 10})
    store.close()
    return path


def test_variant_and_multipliers_come_from_the_checkpoint(tmp_path):
    fake_pretrain_checkpoint(tmp_path / "pre", variant="micro", width_mult=2.0, depth_mult=0.5, resolution=24)
    cfg = to_train_config(FinetuneConfig(init_from=str(tmp_path / "pre"), workdir=str(tmp_path / "ft")))
    assert (cfg.variant, cfg.width_mult, cfg.depth_mult) == ("micro", 2.0, 0.5)
    assert cfg.resolution == default_resolution(24) == 40
    assert cfg.init_from == str(tmp_path / "pre" / "checkpoints" / "3")
    # The fine-tuning recipe's defaults ([P2] transfer).
    assert (cfg.sam_rho, cfg.sam_fraction, cfg.stochdepth_rate, cfg.dropout_rate) == (0.05, 0.2, 0.1, 0.25)
    assert (cfg.label_smoothing, cfg.weight_decay, cfg.ema_decay) == (0.1, 1e-5, 0.999)
    assert default_resolution(32) == 48 and default_resolution(224) == 336


def test_a_resolution_not_above_pre_training_is_refused(tmp_path, capsys):
    fake_pretrain_checkpoint(tmp_path / "pre", resolution=32)
    with pytest.raises(NFNetError, match="higher than the pre-training resolution 32"):
        to_train_config(FinetuneConfig(init_from=str(tmp_path / "pre"), resolution=32))
    assert main(["--from", str(tmp_path / "pre"), "--resolution", "28", "--workdir", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: fine-tuning resolution 28")
    assert not (tmp_path / "ft").exists()


def test_a_resolution_below_the_minimum_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    fake_pretrain_checkpoint(tmp_path / "pre", resolution=8)
    assert main(["--from", str(tmp_path / "pre"), "--resolution", "12", "--workdir", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resolution must be a whole number of px >= 16") and err.count("\n") == 1
    assert not (tmp_path / "ft").exists()


def test_missing_pretrained_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["--from", str(tmp_path / "nothing"), "--workdir", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert main(["--workdir", str(tmp_path / "ft")]) == 2
    assert "--from" in capsys.readouterr().err


@pytest.mark.slow
def test_fine_tuning_loads_the_body_and_grows_a_new_head(tmp_path):
    # Pre-train on a 6-class synthetic set at 16px; fine-tune on digits (10 classes) at 24px.
    pre = train(TrainConfig(variant="nano", dataset="synthetic:n=192,n_test=64,classes=6,size=16", epochs=1.0,
                            lr=0.1, batch_size=32, resolution=16, evals_per_run=1,
                            workdir=str(tmp_path / "pre"), progress=False, num_workers=1))
    assert pre["num_classes"] == 6
    reports = []
    # A vanishing LR keeps the weights where they started, so what was loaded can be checked after.
    summary = finetune(FinetuneConfig(init_from=str(tmp_path / "pre"), dataset="digits", resolution=24,
                                      epochs=1.0, lr=1e-9, batch_size=32, max_train_examples=64,
                                      max_eval_examples=32, evals_per_run=2, workdir=str(tmp_path / "ft"),
                                      progress=False, num_workers=1),
                       callback=lambda m, c: reports.append(m))

    assert summary["status"] == "finished" and summary["num_classes"] == 10 and summary["resolution"] == 24
    assert summary["parent"]["checkpoint"] == pre["checkpoint_dir"]
    assert summary["parent"]["num_classes"] == 6 and summary["parent"]["resolution"] == 16
    for m in reports:
        assert set(m) == set(METRIC_KEYS) | {"ema_val_loss", "ema_val_top1"}
        assert np.isfinite(m["ema_val_loss"]) and 0 <= m["ema_val_top1"] <= 1
    json.dumps(summary)  # the summary (parent included) is plain JSON

    pre_state, _ = restore_checkpoint(pre["checkpoint_dir"])
    ft_state, meta = restore_checkpoint(summary["checkpoint_dir"])
    assert meta["parent"]["checkpoint"] == pre["checkpoint_dir"]
    assert ft_state["params"]["classifier"]["kernel"].shape[-1] == 10
    assert pre_state["params"]["classifier"]["kernel"].shape[-1] == 6
    body = [k for k in pre_state["params"] if k != "classifier"]
    assert body and set(body) == {k for k in ft_state["params"] if k != "classifier"}
    for name in body:
        for a, b in zip(jax.tree.leaves(pre_state["params"][name]), jax.tree.leaves(ft_state["params"][name])):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    assert set(ft_state) >= {"params", "opt_state", "ema", "step", "rng"}
