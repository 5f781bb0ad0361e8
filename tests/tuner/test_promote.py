"""`tuner.promote`: choosing candidates from hand-built ledgers (no Ray), one-line
errors, and a real promotion of a checkpoint from a tiny `nfnet.train` run to a
fine-tuning trial on local Ray, recorded as a finetune row linked to its parent."""

import math
import re

import pytest

from tuner.errors import TunerError
from tuner.records.ledger import Ledger
from tuner.jobs.promote import PromoteOptions, promote, promoted_parents, select_candidates
from tuner.promote import main


def pretrain_row(trial_id: str, loss: float, **changes) -> dict:
    row = dict(
        trial_id=trial_id, experiment="sweep-a", kind="pretrain", variant="nano", epochs=1.0, lr=0.1,
        batch_size=64, dataset="digits", resolution=16, status="finished", final_val_loss=loss,
        flops=1e10, device_hours=0.01, checkpoint_uri=f"/checkpoints/{trial_id}",
    )
    row.update(changes)
    return row


ROWS = [
    pretrain_row("a", 1.0),
    pretrain_row("b", 0.8, flops=5e10),
    pretrain_row("c", 0.9),
    pretrain_row("stopped", 0.1, status="stopped"),
    pretrain_row("diverged", math.inf, status="diverged"),
    pretrain_row("no-checkpoint", 0.2, checkpoint_uri=None),
    pretrain_row("imported", 0.3, status="imported", checkpoint_uri=None),
    pretrain_row("other-sweep", 0.5, experiment="sweep-b"),
    dict(pretrain_row("ft", 0.05), kind="finetune", parent_trial_id="a"),
]


def ids(rows) -> list[str]:
    return [r["trial_id"] for r in rows]


def test_the_lowest_final_loss_among_finished_pretraining_rows_with_checkpoints():
    assert ids(select_candidates(ROWS)) == ["other-sweep"]
    assert ids(select_candidates(ROWS, top_k=3)) == ["other-sweep", "b", "c"]
    assert ids(select_candidates(ROWS, top_k=3, experiment="sweep-a")) == ["b", "c", "a"]


def test_a_budget_keeps_only_runs_that_used_at_most_that_much():
    assert ids(select_candidates(ROWS, top_k=2, budget_flops=2e10)) == ["other-sweep", "c"]
    assert ids(select_candidates(ROWS, top_k=9, budget_device_hours=0.01)) == [
        "other-sweep", "b", "c", "a"]
    unknown = [pretrain_row("x", 0.1, flops=None), pretrain_row("y", 0.2)]
    assert ids(select_candidates(unknown, budget_flops=1e12)) == ["y"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(budget_flops=1e9), "0 of them within 1e+09 FLOPs"),
        (dict(experiment="sweep-z"), "no pre-training row to promote of experiment sweep-z"),
        (dict(top_k=0), "--top-k must be at least 1"),
        (dict(budget_flops=-1.0), "--budget-flops must be a positive number"),
        (dict(budget_flops=1e9, budget_device_hours=1.0), "give one budget"),
    ],
)
def test_choice_mistakes_are_tuner_errors(kwargs, message):
    with pytest.raises(TunerError, match=re.escape(message)):
        select_candidates(ROWS, **kwargs)


def test_losses_on_different_pretraining_datasets_are_not_compared():
    rows = [pretrain_row("a", 1.0), pretrain_row("b", 0.5, dataset="fashion_mnist")]
    with pytest.raises(TunerError, match="pass --pretrain-dataset"):
        select_candidates(rows)
    assert ids(select_candidates(rows, pretrain_dataset="digits")) == ["a"]


def test_per_cell_promotes_the_best_run_of_each_cell():
    rows = [pretrain_row("a1", 0.5, lr=0.1), pretrain_row("a2", 0.6, lr=0.2), pretrain_row("b", 0.7, epochs=2.0),
            pretrain_row("c", 0.8, variant="micro"), pretrain_row("d", 0.75, width_mult=2.0)]
    assert ids(select_candidates(rows, top_k=3)) == ["a1", "a2", "b"]
    # nano-w2 is another model than nano: its own cell.
    assert ids(select_candidates(rows, top_k=4, per_cell=True)) == ["a1", "b", "d", "c"]


def finetune_row(trial_id: str, parent: str, **changes) -> dict:
    row = dict(pretrain_row(trial_id, 0.3), kind="finetune", parent_trial_id=parent, resolution=24,
               source="promote")
    row.update(changes)
    return row


def test_promoted_parents_are_finished_finetunes_on_the_same_target():
    rows = [*ROWS, finetune_row("f1", "b"), finetune_row("f2", "c", dataset="fashion_mnist"),
            finetune_row("f3", "other-sweep", status="diverged"), finetune_row("f4", "a", resolution=32)]
    assert promoted_parents(rows, "digits", None) == {"a", "b"}  # ROWS's own "ft" row is a's too
    assert promoted_parents(rows, "digits", 24) == {"b"}
    assert promoted_parents(rows, "fashion_mnist", None) == {"c"}


def test_skip_promoted_with_everything_promoted_runs_nothing(capsys, tmp_path):
    ledger = str(tmp_path / "ledger")
    Ledger(ledger).append([pretrain_row("a", 0.5), pretrain_row("b", 0.6), finetune_row("fa", "a"),
                           finetune_row("fb", "b")])
    lines = []
    result = promote(PromoteOptions(dataset="digits", ledger=ledger, top_k=2, skip_promoted=True,
                                    storage=str(tmp_path / "results")), log=lines.append)
    assert result.candidates == [] and result.rows == [] and "nothing to run" in lines[-1]
    assert not (tmp_path / "results").exists()
    # Without the flag the same candidates would be promoted again (their checkpoints are gone here).
    code = main(["--dataset", "digits", "--ledger", ledger, "--top-k", "2", "--dry-run"])
    assert code == 2 and "checkpoint /checkpoints/a of pre-training trial a is missing" in capsys.readouterr().err


def test_an_empty_ledger_is_one_line_exit_2(capsys, tmp_path):
    code = main(["--dataset", "digits", "--ledger", str(tmp_path / "ledger")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no pre-training row to promote") and err.count("\n") == 1


def test_a_missing_checkpoint_is_one_line_exit_2(capsys, tmp_path):
    Ledger(str(tmp_path / "ledger")).append([pretrain_row("gone", 0.5, checkpoint_uri=str(tmp_path / "gone"))])
    code = main(["--dataset", "digits", "--ledger", str(tmp_path / "ledger"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: checkpoint {tmp_path / 'gone'} of pre-training trial gone is missing; " \
                  "restore it or promote another row (--experiment, --budget-*)\n"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A real checkpoint: nano, 4 steps on digits at 16px (no Ray)."""
    from nfnet.config import TrainConfig
    from nfnet.loop import train

    workdir = tmp_path_factory.mktemp("pretrain")
    summary = train(TrainConfig(variant="nano", dataset="digits", epochs=1, lr=0.2, batch_size=64,
                                resolution=16, max_train_examples=256, max_eval_examples=64,
                                evals_per_run=1, num_workers=1, progress=False, workdir=str(workdir)))
    return summary


@pytest.mark.slow
def test_dry_run_shows_the_finetuning_config_from_the_checkpoint(capsys, tmp_path, pretrained):
    ledger = tmp_path / "ledger"
    Ledger(str(ledger)).append([pretrain_row("real", pretrained["val_loss"],
                                             checkpoint_uri=pretrained["checkpoint_dir"])])
    code = main(["--dataset", "digits", "--ledger", str(ledger), "--dry-run", "--resolution", "24",
                 "--lrs", "0.05,0.1", "--set", "max_train_examples=128"])
    out = capsys.readouterr().out
    assert code == 0
    assert "real: val_loss=" in out
    for expected in ("init_from=" + pretrained["checkpoint_dir"], "resolution=24", "variant=nano",
                     "sam_rho=0.05", "dropout_rate=0.25", "max_train_examples=128", "fast_compile=True"):
        assert expected in out
    code = main(["--dataset", "digits", "--ledger", str(ledger), "--dry-run", "--resolution", "16"])
    assert code == 2 and "must be higher than the pre-training resolution 16" in capsys.readouterr().err


@pytest.mark.slow
def test_promotion_finetunes_the_best_checkpoint_into_a_linked_row(tmp_path, pretrained, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-cache"))
    ledger = tmp_path / "ledger"
    Ledger(str(ledger)).append([
        pretrain_row("best", pretrained["val_loss"], checkpoint_uri=pretrained["checkpoint_dir"]),
        pretrain_row("worse", pretrained["val_loss"] + 1.0, checkpoint_uri=str(tmp_path / "not-used")),
    ])
    result = promote(PromoteOptions(dataset="digits", resolution=24, epochs=0.25, ledger=str(ledger),
                                    storage=str(tmp_path / "results"), name="promoted", num_cpus=2,
                                    overrides=("max_eval_examples=64", "num_workers=1")),
                     log=lambda *a: None)

    assert ids(result.candidates) == ["best"]
    rows = [r for r in Ledger(str(ledger)).read().to_pylist() if r["kind"] == "finetune"]
    assert len(rows) == 1 and rows == result.rows
    row = rows[0]
    assert row["parent_trial_id"] == "best" and row["source"] == "promote"
    assert row["experiment"] == "promoted" and row["status"] == "finished"
    assert row["dataset"] == "digits" and row["resolution"] == 24 and row["variant"] == "nano"
    assert 0.0 <= row["top1"] <= 1.0 and row["checkpoint_uri"]
    # Asked again with --skip-promoted, the same promotion finds nothing left to do.
    again = promote(PromoteOptions(dataset="digits", resolution=24, ledger=str(ledger), skip_promoted=True,
                                   storage=str(tmp_path / "results"), name="again"), log=lambda *a: None)
    assert again.candidates == [] and len(Ledger(str(ledger)).read()) == 3


def test_a_flops_budget_over_rows_without_flops_is_a_one_line_error_naming_device_hours():
    rows = [pretrain_row("x", 0.1, flops=None), pretrain_row("y", 0.2, flops=None)]
    with pytest.raises(TunerError, match="--budget-device-hours") as info:
        select_candidates(rows, budget_flops=1e12)
    assert "\n" not in str(info.value) and "FLOPs figure" in str(info.value)
    assert [r["trial_id"] for r in select_candidates(rows, budget_device_hours=1.0)] == ["x"]


def test_keep_checkpoints_below_1_is_a_one_line_error(capsys, tmp_path):
    code = main(["--dataset", "digits", "--ledger", str(tmp_path / "ledger"), "--keep-checkpoints", "0", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --keep-checkpoints must be") and err.count("\n") == 1
