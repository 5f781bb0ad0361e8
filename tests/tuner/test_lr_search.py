"""`python -m tuner.lr_search`: plans on hand-built ledgers (no Ray), its errors, and one real search.

The end-to-end test starts Ray in-process and trains nano on scikit-learn's digits
in two rounds (three trials): the optimum bracketed, one ledger row with its search
record, the second round's programs from the compilation cache, TensorBoard event
files with the hparams view, and a second run that trains nothing.
"""

import json
import time
from pathlib import Path

import pytest
import ray

from tuner.errors import TunerError
from tuner.records.ledger import Ledger
from tuner.jobs.lr_search import DEFAULT_EPOCHS, LRSearchOptions, plan_search, trial_config
from tuner.lr_search import main
from tuner.study.planner import base_lr
from tuner.raytune.trainable import FAST_COMPILE

NANO_PARAMS = 117350  # nano with a 10-way head


def row(trial_id, variant="nano", epochs=0.5, lr=0.1, loss=1.0, batch_size=256, dataset="digits", status="finished",
        params=NANO_PARAMS, **over):
    out = dict(trial_id=trial_id, kind="pretrain", variant=variant, epochs=epochs, lr=lr, final_val_loss=loss,
               batch_size=batch_size, dataset=dataset, status=status, params=params, source="lr_search")
    out.update(over)
    return out


def trial_hparams(experiment: Path) -> list[dict]:
    """Each trial directory's TensorBoard hparams, as TensorBoard's own reader finds them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = []
    for trial_dir in sorted(p for p in experiment.iterdir() if p.is_dir()):
        if not list(trial_dir.glob("events.out.tfevents.*")):
            continue
        acc = EventAccumulator(str(trial_dir))  # the trainer's events, straight in the trial directory
        acc.Reload()
        assert "val_loss" in acc.Tags()["scalars"] and not [t for t in acc.Tags()["scalars"] if t.startswith("ray/")]
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = {key: value.string_value if value.HasField("string_value") else value.number_value
                   for key, value in start.session_start_info.hparams.items()}
        assert trial_dir.name.startswith(f"{hparams['variant']}-e{hparams['epochs']:g}-lr{hparams['lr']:g}-"
                                         f"b{hparams['batch_size']}-s{hparams['seed']}-")
        found.append(hparams)
    return found


def run_main(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger")


# ---------------------------------------------------------------- plans, no Ray


def test_dry_run_json_on_an_empty_ledger_prints_one_object_and_starts_nothing(capsys, ledger):
    code, out, err = run_main(capsys, "--dataset", "digits", "--ledger", ledger.uri, "--dry-run", "--json")
    assert code == 0
    plan = json.loads(out)  # stdout holds the JSON object and nothing else
    assert plan["dry_run"] is True and plan["variant"] == "nano" and plan["dataset"] == "digits"
    assert plan["first_round"] == [base_lr(128), base_lr(128) / 2] == [0.05, 0.025]
    assert plan["epochs"] == DEFAULT_EPOCHS["digits"] and plan["params"] == NANO_PARAMS
    assert plan["status"] == "new" and plan["prediction"]["source"] == "default"
    assert plan["noise"] == {"value": 0.02, "source": "default", "points": 0}
    assert "search: first pair lr 0.05 and 0.025 around the prediction 0.05" in err
    assert not ray.is_initialized()
    assert len(ledger.read()) == 0


def test_dry_run_names_the_cells_that_bound_the_lrs(capsys, ledger):
    ledger.append([
        # nano at 0.25 epochs, tuned at batch 256: optimum 0.05 (0.025 at batch 128).
        row("a", epochs=0.25, lr=0.05, loss=0.9),
        row("b", epochs=0.25, lr=0.1, loss=1.1),
        # nano at 1 epoch, tuned at batch 128: optimum 0.1 (a looser bound).
        row("c", epochs=1.0, lr=0.1, loss=0.8, batch_size=128),
        # Not bounding: longer, larger, another dataset, stopped, and a training subset.
        row("d", epochs=8.0, lr=0.00625, loss=0.5),
        row("e", variant="micro", lr=0.0125, loss=0.7, params=10 * NANO_PARAMS),
        row("f", lr=0.0125, loss=0.2, dataset="fashion_mnist"),
        row("g", lr=0.00625, loss=0.1, status="stopped"),
        row("h", lr=0.00625, loss=0.1, dataset="digits[256]"),
    ])
    code, out, _ = run_main(capsys, "--dataset", "digits", "--epochs", "2", "--ledger", ledger.uri, "--dry-run")
    assert code == 0
    assert "ledger: " + ledger.uri + " (8 rows)" in out
    assert "bound: nano at 0.25 epochs: lr 0.05 at batch 256 -> 0.025 at batch 128  <- binds" in out
    assert "bound: nano at 1 epochs: lr 0.1 at batch 128 -> 0.1 at batch 128" in out
    assert out.count("bound:") == 2
    # Four tuned cells of digits (nano at 0.25, 1 and 8 epochs, micro): a law in params and epochs.
    assert "prediction (fit): predicted " in out and "over 4 tuned cell(s)" in out



def test_dry_run_prints_each_trials_placement_derived_from_the_variant(capsys, ledger):
    code, out, err = run_main(capsys, "--dataset", "digits", "--ledger", ledger.uri, "--dry-run", "--json")
    assert code == 0 and json.loads(out)["placement"]["kind"] == "cpu"
    assert "placement: " in err
    code, out, _ = run_main(capsys, "--dataset", "digits", "--variant", "F0", "--batch-size", "256",
                            "--accelerator", "v4-8", "--ledger", ledger.uri, "--dry-run", "--json")
    placement = json.loads(out)["placement"]
    assert code == 0 and placement["kind"] == "tpu-host"
    assert placement["resources"]["TPU"] == 4 and placement["resources"]["TPU-v4-8-head"] == 1
    code, out, _ = run_main(capsys, "--dataset", "digits", "--variant", "F3", "--batch-size", "4096",
                            "--accelerator", "tpu", "--ledger", ledger.uri, "--dry-run", "--json")
    placement = json.loads(out)["placement"]
    assert code == 0 and placement["kind"] == "tpu-slice" and placement["hosts"] > 1
    assert placement["worker_resources"]["TPU"] == 4


def test_a_training_subset_is_its_own_cell(capsys, ledger):
    ledger.append([row("h", epochs=1.0, lr=0.0125, loss=0.1, dataset="digits[256]"), row("i", epochs=1.0, lr=0.2)])
    code, out, _ = run_main(capsys, "--dataset", "digits", "--epochs", "1", "--max-train-examples", "256",
                            "--ledger", ledger.uri, "--dry-run", "--json")
    plan = json.loads(out)
    assert plan["dataset"] == "digits[256]"
    # The whole dataset's row predicts nothing for the subset; the subset's own row (batch 256) is its
    # cell at another batch size: not a run of this search, not a prediction for itself.
    assert plan["prediction"]["source"] == "default" and plan["known"] == []
    ledger.append([row("j", epochs=0.5, lr=0.0125, loss=0.2, dataset="digits[256]")])
    code, out, _ = run_main(capsys, "--dataset", "digits", "--epochs", "1", "--max-train-examples", "256",
                            "--ledger", ledger.uri, "--dry-run", "--json")
    plan = json.loads(out)
    # The subset at 0.5 epochs bounds it: 0.0125 at batch 256 -> 0.00625 at 128, the paper's pair.
    assert plan["prediction"]["source"] == "bound" and plan["first_round"] == [0.00625, 0.003125]


def test_a_cell_the_ledger_already_brackets_runs_nothing_and_force_searches_again(capsys, ledger):
    # A sweep's runs of the very cell, at the search's seed: 0.1 is bracketed by 0.05 and 0.2.
    ledger.append([row(f"g{lr}", epochs=0.5, lr=lr, loss=loss, batch_size=128, seed=0, source="sweep")
                   for lr, loss in ((0.05, 1.3), (0.1, 1.0), (0.2, 1.2))])
    code, out, _ = run_main(capsys, "--dataset", "digits", "--epochs", "0.5", "--ledger", ledger.uri, "--json")
    result = json.loads(out)
    assert code == 0 and result["experiment"] is None and result["chosen_lr"] == 0.1 and result["bracketed"]
    assert not ray.is_initialized() and len(ledger.read()) == 3  # nothing trained, nothing recorded
    code, out, _ = run_main(capsys, "--dataset", "digits", "--epochs", "0.5", "--ledger", ledger.uri, "--dry-run",
                            "--json", "--force")
    forced = json.loads(out)
    assert forced["status"] == "new" and forced["known"] == [] and forced["first_round"] == [0.05, 0.025]


def test_default_falls_back_to_digits_when_fashion_mnist_is_missing(capsys, ledger, tmp_path, monkeypatch):
    monkeypatch.setenv("NFSCALE_FASHION_MNIST_DIR", str(tmp_path / "empty"))
    code, out, err = run_main(capsys, "--ledger", ledger.uri, "--dry-run", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["dataset"] == "digits" and plan["epochs"] == DEFAULT_EPOCHS["digits"]
    assert any("using scikit-learn's digits" in note for note in plan["notes"])
    assert "note: Fashion-MNIST is not installed" in err


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist")
def test_default_uses_fashion_mnist_when_installed(capsys, ledger):
    code, out, _ = run_main(capsys, "--ledger", ledger.uri, "--dry-run", "--json")
    plan = json.loads(out)
    assert plan["dataset"] == "fashion_mnist" and plan["epochs"] == DEFAULT_EPOCHS["fashion_mnist"]
    assert plan["notes"] == []


def test_trial_config_holds_trainer_fields(ledger):
    search = plan_search(LRSearchOptions(dataset="digits", ledger=ledger.uri, max_train_examples=256))
    config = trial_config(search, 0.05)
    assert config["variant"] == "nano" and config["lr"] == 0.05 and config["max_train_examples"] == 256
    assert config["epochs"] == DEFAULT_EPOCHS["digits"] and "resolution" not in config
    assert FAST_COMPILE not in config
    fast = plan_search(LRSearchOptions(dataset="digits", ledger=ledger.uri, fast_compile=True))
    assert trial_config(fast, 0.05)[FAST_COMPILE] is True


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "F99"], "error: unknown variant 'F99'"),
        (["--epochs", "0"], "error: --epochs must be > 0"),
        (["--epochs", "-1"], "error: --epochs must be > 0"),
        (["--batch-size", "0"], "error: --batch-size must be an integer >= 1"),
        (["--dataset", "nosuch"], "error: "),
        (["--experiment-name", "a/b"], "error: --experiment-name must be"),
        (["--accelerator", "v9-8"], "error: unknown --accelerator 'v9-8'"),
        (["--noise", "-0.1"], "error: --noise must be a relative spread in [0, 1)"),
        (["--noise", "1.5"], "error: --noise must be a relative spread in [0, 1)"),
        (["--parallel", "0"], "error: --parallel must be an integer >= 1"),
        (["--max-trials", "1"], "error: --max-trials must be an integer >= 2"),
    ],
)
def test_user_mistakes_are_one_line_errors(capsys, ledger, args, message):
    code, out, err = run_main(capsys, "--dataset", "digits", "--ledger", ledger.uri, *args)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not ray.is_initialized()


def test_a_corrupt_ledger_is_a_one_line_error(capsys, ledger):
    ledger.append([row("a")])
    Path(ledger.path, "part-99999999-garbage.parquet").write_bytes(b"not parquet at all")
    code, out, err = run_main(capsys, "--dataset", "digits", "--ledger", ledger.uri, "--dry-run")
    assert code == 2
    assert err.startswith("error: cannot read ledger file") and err.count("\n") == 1


def test_an_unreachable_address_fails_fast(capsys, ledger, tmp_path):
    start = time.perf_counter()
    code, out, err = run_main(capsys, "--dataset", "digits", "--ledger", ledger.uri, "--storage",
                              str(tmp_path / "results"), "--address", "127.0.0.1:1")
    assert time.perf_counter() - start < 20  # planning included; the connection itself fails in well under a second
    assert code == 2
    assert err.startswith("error: cannot reach a Ray cluster at 127.0.0.1:1") and "ray start --head" in err
    assert not ray.is_initialized()
    assert len(ledger.read()) == 0


def test_plan_search_raises_the_package_error(ledger):
    with pytest.raises(TunerError, match="unknown variant"):
        plan_search(LRSearchOptions(variant="nope", dataset="digits", ledger=ledger.uri))


# ---------------------------------------------------------------- end to end, with Ray


def last_results(experiment: Path) -> dict[float, dict]:
    """Each trial's last reported result (Tune's result.json), by LR."""
    out = {}
    for path in experiment.glob("*/result.json"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        last = json.loads(lines[-1])
        out[last["config"]["lr"]] = last
    return out


@pytest.mark.slow
def test_lr_search_end_to_end_brackets_records_one_row_and_runs_nothing_the_second_time(capsys, ledger, tmp_path,
                                                                                         monkeypatch):
    """Real Ray, real training on digits: the search walks past its first pair and brackets the optimum.

    An imported row (nano at 0.5 epochs, lr 0.4 at batch 32) bounds the 1-epoch cell at 0.4: the first
    pair is 0.4 and 0.2. On digits at batch 32 the 1-epoch optimum is 0.4 (a 10-trial search from the
    paper's default found 0.4 bracketed by 0.2 and 0.8, losses 1.52, 1.29, 1.47), so 0.4 beats 0.2 by far
    more than the noise, the search runs 0.8 in a second round, and 0.4 is bracketed.
    """
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-cache"))
    storage = tmp_path / "results"
    ledger.append([row("prior", epochs=0.5, lr=0.4, loss=1.4, batch_size=32, status="imported", source="import")])
    args = ["--dataset", "digits", "--epochs", "1", "--batch-size", "32", "--max-eval-examples", "128",
            "--evals-per-run", "2", "--ledger", ledger.uri, "--storage", str(storage), "--num-cpus", "2",
            "--experiment-name", "e2e", "--fast-compile", "--json"]
    try:
        code, out, err = run_main(capsys, *args)
    finally:
        ray.shutdown()
    assert code == 0, err
    result = json.loads(out)
    record = result["record"]
    assert result["search"]["prediction"]["source"] == "bound" and result["search"]["first_round"] == [0.4, 0.2]
    assert record["rounds"] == [[0.4, 0.2], [0.8]]
    assert result["stop"] == "bracketed" and result["bracketed"] and result["chosen_lr"] == 0.4
    losses = {t["lr"]: t["final_val_loss"] for t in result["trials"]}
    assert set(losses) == {0.2, 0.4, 0.8} and all(t["status"] == "finished" for t in result["trials"])
    assert losses[0.4] < min(losses[0.2], losses[0.8])
    assert {t["lr"]: t["loss"] for t in record["trials"]} == pytest.approx(losses)
    assert record["noise"]["source"] == "default" and record["trials_run"] == 3

    rows = [r for r in ledger.read().to_pylist() if r["source"] == "lr_search"]
    assert len(rows) == 1  # three trials, one ledger row: the cell's optimum with its search
    recorded = rows[0]
    assert recorded["trial_id"] == result["recorded_trial_id"] and recorded["trial_id"].startswith("e2e/")
    assert recorded["lr"] == 0.4 and recorded["status"] == "finished" and recorded["dataset"] == "digits"
    assert recorded["variant"] == "nano" and recorded["epochs"] == 1.0 and recorded["batch_size"] == 32
    assert recorded["params"] == NANO_PARAMS and recorded["flops"] > 0 and recorded["device_hours"] > 0
    assert Path(recorded["checkpoint_uri"]).is_dir()
    assert json.loads(recorded["search"])["rounds"] == [[0.4, 0.2], [0.8]]

    # The in-process Ray staggers: 0.4 compiled alone, 0.2 started after its first report and took
    # the step from the cache, and the second round reused every program the first compiled.
    last = last_results(storage / "e2e")
    assert last[0.2]["compile_cache_hits"] > last[0.4]["compile_cache_hits"]
    assert last[0.8]["compile_cache_hits"] >= last[0.2]["compile_cache_hits"]

    # TensorBoard: one log directory for the experiment, one run per trial named by its settings.
    assert result["tensorboard"] == f"tensorboard --logdir {storage / 'e2e'}"
    hparams = trial_hparams(storage / "e2e")
    assert sorted(h["lr"] for h in hparams) == [0.2, 0.4, 0.8]
    assert all(h["variant"] == "nano" and h["epochs"] == 1.0 and h["dataset"] == "digits" for h in hparams)
    assert all(h["batch_size"] == "32" for h in hparams)
    assert "chosen lr: 0.4" in err and "bracketed by lr 0.2 and 0.8" in err

    # Run again: the cell is tuned and bracketed, so nothing trains and nothing is recorded.
    code, out, err = run_main(capsys, *args[:-4], "--json")
    again = json.loads(out)
    assert code == 0 and again["experiment"] is None and again["chosen_lr"] == 0.4
    assert "already tuned" in err and not ray.is_initialized()
    assert len(ledger.read()) == 2


# ---------------------------------------------------------------- the Tune searcher, driven by hand


def test_the_searcher_plans_a_round_only_when_the_last_has_ended_and_stops_after_a_failure():
    from ray.tune.search import Searcher

    from tuner.raytune.searcher import BracketSearcher
    from tuner.study.planner import Bracket

    def done(loss):
        return {"val_loss": loss, "schedule_done": True, "progress": 1.0, "flops": 1e9}

    searcher = BracketSearcher(Bracket(256, (0.1, 0.05), noise=0.01))
    assert searcher.suggest("a") == {"lr": 0.1} and searcher.suggest("b") == {"lr": 0.05}
    assert searcher.suggest("c") is None  # the round is in flight: nothing more yet
    searcher.on_trial_complete("a", done(1.0))
    assert searcher.suggest("c") is None  # still one trial of the round running
    searcher.on_trial_complete("b", done(1.2))
    assert searcher.suggest("c") == {"lr": 0.2}  # 0.1 won by more than the noise: up
    searcher.on_trial_complete("c", done(1.3))
    assert searcher.suggest("d") == Searcher.FINISHED
    verdict = searcher.bracket.verdict()
    assert verdict.bracketed and verdict.lr == 0.1 and searcher.failed == []

    failing = BracketSearcher(Bracket(256, (0.1, 0.05), noise=0.01))
    failing.suggest("a"), failing.suggest("b")
    failing.on_trial_complete("a", done(1.0))
    failing.on_trial_complete("b", None, error=True)  # failed for good after its retries
    assert failing.suggest("c") == Searcher.FINISHED and failing.failed == [0.05]
    # What finished is recorded; the bracket is not closed, so a rerun continues it.
    assert [t.lr for t in failing.bracket.history()] == [0.1]
    # A trial stopped before the end of its schedule counts as not finished, a NaN loss as diverged.
    stopped = BracketSearcher(Bracket(256, (0.1, 0.05), noise=0.01))
    stopped.suggest("a"), stopped.suggest("b")
    stopped.on_trial_complete("a", {"val_loss": 1.0, "progress": 0.5})
    stopped.on_trial_complete("b", {"val_loss": float("nan"), "progress": 1.0, "schedule_done": True})
    assert stopped.failed == [0.1] and stopped.bracket.history()[0].diverged


def test_a_staggered_search_starts_the_others_after_the_first_trials_first_report():
    from ray.tune.search import Searcher

    from tuner.jobs.lr_search import staggered
    from tuner.raytune.searcher import BracketSearcher
    from tuner.study.planner import Bracket

    def done(loss):
        return {"val_loss": loss, "schedule_done": True, "progress": 1.0, "flops": 1e9}

    searcher = BracketSearcher(Bracket(256, (0.1, 0.05), noise=0.01), stagger=True)
    assert searcher.suggest("a") == {"lr": 0.1}
    assert searcher.suggest("b") is None  # 0.1's trial is compiling the search's program
    searcher.on_trial_result("a", {"val_loss": 1.5, "progress": 0.5})
    assert searcher.suggest("b") == {"lr": 0.05}  # then the rest of the round, from the cache
    searcher.on_trial_complete("a", done(1.0))
    searcher.on_trial_complete("b", done(1.2))
    assert searcher.suggest("c") == {"lr": 0.2}  # later rounds are not held back
    # A first trial that fails for good ends the search, as a failure in any round does.
    failing = BracketSearcher(Bracket(256, (0.1, 0.05), noise=0.01), stagger=True)
    assert failing.suggest("a") == {"lr": 0.1} and failing.suggest("b") is None
    failing.on_trial_complete("a", None, error=True)
    assert failing.suggest("b") == Searcher.FINISHED and failing.failed == [0.1]
    assert staggered("auto", True) and not staggered("auto", False)
    assert staggered("on", False) and not staggered("off", True)
