"""`tuner.sweep`: the plan and its one-line errors (no Ray), and real local-Ray sweeps of
the real trainable on tiny data: grouped ASHA stops a bad LR, the compute budget ends
the sweep, promotion follows it, and an interrupted sweep resumes without re-running
or re-recording finished trials."""

import dataclasses
import json
import os
import re
import signal
from pathlib import Path

import pytest
from ray import tune

from search_spaces import Preset, known_presets
from tuner.errors import TunerError
from tuner.records.ledger import Ledger
from tuner.jobs.sweep import SETTINGS_FILE, SweepOptions, group_by_cell, plan_sweep, run_sweep, startup_points
from tuner.sweep import main
from tuner.jobs.overrides import parse_overrides

# base_lr(64) = 0.025: 0.2 learns on digits in 8 steps, 0.025 / 64 barely moves.
GOOD_LR, BAD_LR = 0.2, 0.025 / 64


def tiny_preset(**changes) -> Preset:
    """nano on 512 digits at 16px, batch 64: 8 steps a run, evaluated at 1/2 and at the end."""
    fields = dict(
        name="tiny", summary="a test study", command="python -m tuner.sweep --preset tiny",
        cost="a minute", variants=("nano",), epochs=(1,), lr_exponents=(-6, 1, 2, 3),
        batch_size=64, dataset="digits", resolution=16,
        overrides={"evals_per_run": 2, "max_train_examples": 512, "max_eval_examples": 128, "num_workers": 1},
        num_samples=6, grace_period=0.5,
    )
    fields.update(changes)
    return Preset(**fields)


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_info:  # a flag mistake argparse reports
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- no Ray


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--preset", "nope"], f"unknown preset 'nope'; known presets: {', '.join(known_presets())} (or give"),
        (["--budget-flops", "0"], "--budget-flops must be a positive number"),
        (["--budget-device-hours", "-1"], "--budget-device-hours must be a positive number"),
        (["--budget-flops", "1e12", "--budget-device-hours", "1"], "give one compute budget"),
        (["--preset", "paper"], "placeholder dataset"),
        (["--grid", "--num-samples", "3"], "drop --num-samples"),
        (["--point", "nano,1,0.3"], "not on preset cpu-smoke's grid"),
        (["--set", "max_train_exampels=10"], "--set max_train_exampels=10: unknown trainer setting max_train_exampels; did you mean max_train_examples?"),
        (["--set", "lr=0.1"], "may not change lr"),
        (["--set", "evals_per_run=0"], "--evals-per-run must be >= 1"),
        (["--then-finetune"], "needs --finetune-dataset"),
        (["--num-samples", "0"], "--num-samples must be positive"),
        (["--name", "a/b"], "experiment name"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints must be a whole number of at least 1, got 0"),
    ],
)
def test_mistakes_are_one_line_errors_with_status_2(capsys, argv, message):
    code, out, err = run_main(capsys, "--dry-run", *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_resume_with_nothing_to_resume_is_one_line(capsys, tmp_path):
    code, _, err = run_main(capsys, "--resume", "--storage", str(tmp_path))
    assert code == 2 and f"no sweep to resume under {tmp_path}" in err
    code, _, err = run_main(capsys, "--resume", "--preset", "cpu-smoke", "--storage", str(tmp_path))
    assert code == 2 and "no sweep of preset cpu-smoke to resume" in err


def test_dry_run_json_is_the_plan(capsys, tmp_path):
    code, out, _ = run_main(capsys, "--dry-run", "--json", "--preset", "cpu-smoke", "--dataset", "digits",
                            "--storage", str(tmp_path), "--name", "s1", "--point", "micro,1,0.1",
                            "--budget-flops", "5e11", "--cpus-per-trial", "2", "--set", "warmup_fraction=0.1")
    assert code == 0
    plan = json.loads(out)
    assert plan["path"] == f"{tmp_path}/s1" and plan["mode"] == "optuna" and plan["num_samples"] == 8
    assert plan["points"][0] == {"variant": "micro", "epochs": 1.0, "lr": 0.1}
    cells = [(p["variant"], p["epochs"], p["lr"]) for p in plan["points"]]
    assert len(cells) == plan["startup_trials"] == 4 and len(set(cells)) == 4
    assert plan["budget"] == {"unit": "flops", "total": 5e11}
    assert plan["resources_per_trial"] == {"nano": {"CPU": 2.0}, "micro": {"CPU": 2.0}}
    assert plan["base_config"]["warmup_fraction"] == 0.1 and plan["base_config"]["dataset"] == "digits"
    # CPU trials of a local Ray compile with most XLA optimisations off, unless told not to.
    assert plan["base_config"]["fast_compile"] is True
    code, out, _ = run_main(capsys, "--dry-run", "--json", "--full-compile")
    assert code == 0 and "fast_compile" not in json.loads(out)["base_config"]
    assert plan["space"] == {"variant": ["nano", "micro"], "epochs": [0.5, 1.0], "lr": [0.05, 0.1, 0.2]}
    assert not (tmp_path / "s1").exists()


def test_dry_run_grid_lists_every_cell(capsys):
    code, out, _ = run_main(capsys, "--dry-run", "--grid", "--preset", "cpu-smoke", "--dataset", "digits")
    assert code == 0
    assert "search: grid, 12 trials" in out
    assert out.count("  cell ") == 12


def test_the_papers_sweep_places_each_variant_on_tpu_by_its_own_size(capsys):
    code, out, _ = run_main(capsys, "--dry-run", "--json", "--preset", "paper", "--grid", "--accelerator", "tpu",
                            "--dataset", "parquet:gs://bucket/jft-shards", "--cpus-per-trial", "8")
    assert code == 0
    plan = json.loads(out)
    assert plan["num_samples"] == 216 and plan["base_config"]["dtype"] == "bfloat16"
    placements = plan["placements"]
    assert set(placements) == set(plan["resources_per_trial"]) == {"F0", "F1", "F3", "F3+", "F7", "F7+"}
    # Batch 4096 of these does not fit one v4 host: each trial drives a whole slice,
    # larger for larger variants, and each host gets the CPUs asked for.
    chips = {label: int(re.search(r"(\d+) chips", text).group(1)) for label, text in placements.items()}
    assert all("slice of" in text and "each host {CPU: 8, TPU: 4}" in text for text in placements.values())
    assert chips["F0"] <= chips["F3"] <= chips["F7"] <= chips["F7+"] and chips["F0"] < chips["F7+"]
    code, _, err = run_main(capsys, "--dry-run", "--accelerator", "abacus")
    assert code == 2 and "unknown --accelerator 'abacus'" in err


def test_preset_fallback_dataset_is_said(monkeypatch, tmp_path):
    monkeypatch.setenv("NFSCALE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    plan = plan_sweep(SweepOptions(preset="cpu-smoke"), preset=None)
    if plan.base_config["dataset"] == "digits":
        assert plan.notes and "using digits instead" in plan.notes[0]
    else:  # the Debian package is installed and found before the variable
        assert not plan.notes


def test_groups_keep_width_multipliers_apart():
    a = group_by_cell({"variant": "nano", "width_mult": 1.0, "epochs": 1.0}, {"variant": "nano"})
    b = group_by_cell({"variant": "nano", "width_mult": 2.0, "epochs": 1.0}, {"variant": "nano"})
    assert a == ("nano", 1.0) and b == ("nano-w2", 1.0)
    assert group_by_cell({"variant": "nano"}, None) is None


def test_startup_points_are_distinct_seeded_and_skip_given_points():
    preset = tiny_preset(lr_exponents=(0, 1, 2, 3), epochs=(0.5, 1))
    given = [{"variant": "nano", "epochs": 1.0, "lr": 0.05}]
    points = startup_points(preset, 5, seed=3, taken=given)
    cells = [(p["variant"], p["epochs"], p["lr"]) for p in points]
    assert len(set(cells)) == 5 and ("nano", 1.0, 0.05) not in cells
    assert points == startup_points(preset, 5, seed=3, taken=given)
    assert len(startup_points(preset, 50, seed=3, taken=given)) == 7


def _row(lr, **changes):
    """A ledger row of a tiny_preset() trial at `lr` (its trainer settings unless changed)."""
    row = dict(trial_id=f"old/{lr}-{sorted(changes.items())}", experiment="old", kind="pretrain", variant="nano",
               width_mult=1.0, depth_mult=1.0, epochs=1.0, lr=lr, batch_size=64, dataset="digits[512]",
               resolution=16, seed=0, final_val_loss=1.0, status="finished", source="sweep")
    row.update(changes)
    return row


def test_skip_recorded_plans_only_the_cells_the_ledger_lacks(tmp_path, capsys):
    preset = tiny_preset()  # nano at 1 epoch x 4 LRs
    low, a, b, c = preset.lrs
    Ledger(str(tmp_path / "ledger")).append([
        _row(a), _row(b, status="diverged"),  # both reached a verdict: not run again
        _row(c, status="stopped"),  # cut short: runs again
        _row(low, seed=1), _row(low, dataset="digits"), _row(low, resolution=32),  # other settings
        _row(low, batch_size=128), _row(low, kind="finetune"), _row(low, variant="micro"),
    ])
    options = SweepOptions(grid=True, skip_recorded=True, ledger=str(tmp_path / "ledger"))
    plan = plan_sweep(options, preset=preset)
    assert plan.mode == "grid" and plan.recorded == 2 and plan.num_samples == 2
    assert plan.points == [{"variant": "nano", "epochs": 1.0, "lr": low}, {"variant": "nano", "epochs": 1.0, "lr": c}]
    assert "(2 of 4 cells already in the ledger)" in plan.describe()
    # Without the flag the grid is whole; with an empty ledger nothing is skipped.
    assert plan_sweep(dataclasses.replace(options, skip_recorded=False), preset=preset).num_samples == 4
    empty = plan_sweep(dataclasses.replace(options, ledger=str(tmp_path / "none")), preset=preset)
    assert empty.num_samples == 4 and empty.recorded == 0
    # Every cell recorded: the sweep has nothing to run and says so without starting Ray.
    Ledger(str(tmp_path / "ledger")).append([_row(low), _row(c)])
    lines = []
    result = run_sweep(options, preset=preset, log=lines.append)
    assert result.trials == 0 and "nothing to run" in lines[-1]


def test_a_preset_that_lists_its_cells_runs_just_those_and_only_as_a_grid(tmp_path):
    preset = tiny_preset(epochs=(0.5, 1), only_cells=(("nano", 1, 2), ("nano", 0.5, -6)))
    low, _, mid, _ = preset.lrs
    options = SweepOptions(grid=True, ledger=str(tmp_path / "ledger"))
    plan = plan_sweep(options, preset=preset)
    assert plan.mode == "grid" and plan.num_samples == 2 and plan.recorded == 0
    assert plan.points == [{"variant": "nano", "epochs": 0.5, "lr": low}, {"variant": "nano", "epochs": 1.0, "lr": mid}]
    # With --skip-recorded, a listed cell the ledger holds is left out; unlisted ones never run.
    Ledger(str(tmp_path / "ledger")).append([_row(mid), _row(low)])
    plan = plan_sweep(dataclasses.replace(options, skip_recorded=True), preset=preset)
    assert plan.recorded == 1 and plan.points == [{"variant": "nano", "epochs": 0.5, "lr": low}]
    with pytest.raises(TunerError, match="lists its cells \\(only_cells\\); run it with --grid"):
        plan_sweep(SweepOptions(ledger=str(tmp_path / "ledger")), preset=preset)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--skip-recorded"], "--skip-recorded continues a grid from its ledger; add --grid"),
        (["--resume", "--skip-recorded", "--grid"], "drop --skip-recorded"),
    ],
)
def test_skip_recorded_mistakes(capsys, tmp_path, argv, message):
    code, _, err = run_main(capsys, *argv, "--storage", str(tmp_path))
    assert code == 2 and message in err and err.count("\n") == 1


def test_overrides_are_typed():
    assert parse_overrides(["max_train_examples=1", "sam_rho=0.5", "clipping=none", "progress=true",
                            "dtype=bfloat16", "weight_decay=1e-6", "lr=1", "data_dir=123"]) == {
        "max_train_examples": 1, "sam_rho": 0.5, "clipping": None, "progress": True, "dtype": "bfloat16",
        "weight_decay": 1e-6, "lr": 1, "data_dir": "123"}
    with pytest.raises(TunerError, match="KEY=VALUE"):
        parse_overrides(["oops"])


@pytest.mark.parametrize("item,message", [
    ("max_train_examples=abc", "--set max_train_examples=abc: expected an integer or none"),
    ("evals_per_run=2.5", "--set evals_per_run=2.5: expected an integer"),
    ("sam_rho=lots", "--set sam_rho=lots: expected a number"),
    ("progress=3", "--set progress=3: expected true or false"),
    ("max_train_exampels=10", "--set max_train_exampels=10: unknown trainer setting max_train_exampels; "
                              "did you mean max_train_examples?"),
])
def test_a_bad_set_item_is_one_line_naming_the_key_and_nothing_is_written(capsys, tmp_path, monkeypatch,
                                                                           item, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "--set", item, "--storage", str(tmp_path / "results"),
                              "--ledger", str(tmp_path / "ledger"))
    assert code == 2 and out == ""
    assert err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TunerError, match="^" + re.escape(message) + "$"):
        parse_overrides([item])


# ---------------------------------------------------------------- real sweeps on local Ray


@pytest.fixture
def trial_env(tmp_path_factory, monkeypatch):
    """Trials share one persistent compilation cache across this module (Ray's workers
    get it through the job's environment); local CPU sweeps compile fast by default."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jax-cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def experiment_rows(ledger: Path, experiment: str) -> list[dict]:
    rows = [r for r in Ledger(str(ledger)).read().to_pylist() if r["experiment"] == experiment]
    return sorted(rows, key=lambda r: r["time"])


def result_lines(experiment_path: Path) -> dict[str, int]:
    """Trial id -> number of results Ray stored for it."""
    out = {}
    for result_file in experiment_path.glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if lines:
            out[lines[0]["trial_id"]] = len(lines)
    return out


@pytest.mark.slow
def test_sweep_stops_a_bad_lr_keeps_to_the_budget_and_promotes_the_best(trial_env, tmp_path):
    budget = 9e9  # a full run here is ~4.6e9 training FLOPs: two full runs and a stopped one spend it
    options = SweepOptions(
        points=(f"nano,1,{GOOD_LR}", f"nano,1,{BAD_LR}"), budget_flops=budget, max_concurrent=1,
        num_cpus=2, storage=str(tmp_path / "results"), ledger=str(tmp_path / "ledger"), name="budget",
        then_finetune=True, finetune_dataset="digits", finetune_resolution=24, finetune_epochs=0.25,
    )
    result = run_sweep(options, preset=tiny_preset(), log=lambda *a: None)

    rows = experiment_rows(tmp_path / "ledger", "budget")
    assert len(rows) == len({r["trial_id"] for r in rows})
    assert all(r["source"] == "sweep" and r["kind"] == "pretrain" for r in rows)
    by_lr = {r["lr"]: r for r in rows}
    # GroupedASHA: the bad LR, behind the good one at half its run, stops there.
    assert by_lr[GOOD_LR]["status"] == "finished" and by_lr[GOOD_LR]["images_seen"] == 512
    assert by_lr[BAD_LR]["status"] == "stopped" and by_lr[BAD_LR]["images_seen"] == 256
    assert by_lr[BAD_LR]["final_val_loss"] > by_lr[GOOD_LR]["final_val_loss"]
    # The budget ended the sweep: no trial started once it was spent (one at a time,
    # so every trial before the last one ran with budget left), and trials stopped
    # early counted only what they used.
    flops = [r["flops"] for r in rows]
    assert len(rows) < tiny_preset().num_samples
    assert sum(flops[:-1]) < budget <= sum(flops)
    assert result.flops == pytest.approx(sum(flops))
    assert result.best["trial_id"] == min(
        (r for r in rows if r["status"] == "finished"), key=lambda r: r["final_val_loss"])["trial_id"]
    # --then-finetune promoted the best pre-training row.
    assert len(result.finetune) == 1
    finetune = result.finetune[0]
    assert finetune["kind"] == "finetune" and finetune["source"] == "promote"
    assert finetune["parent_trial_id"] == result.best["trial_id"]
    assert finetune["dataset"] == "digits" and finetune["resolution"] == 24 and finetune["top1"] is not None
    # What people look at: settings for --resume and TensorBoard event files per trial.
    experiment = tmp_path / "results" / "budget"
    assert json.loads((experiment / SETTINGS_FILE).read_text())["plan"]["budget"]["total"] == budget
    assert len(list(experiment.glob("*/events.out.tfevents.*"))) == len(rows)


class InterruptAfterFirstTrial(tune.Callback):
    """Sends the driver SIGUSR1 (Ray Tune's "save and stop", like Ctrl-C) when the first
    trial completes: a sweep whose driver goes away. Once only: the callback comes back
    from the experiment on --resume, so a marker file says it has fired."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_rerunning_or_rerecording(trial_env, tmp_path):
    preset = tiny_preset(lr_exponents=(1, 2, 3))
    marker = tmp_path / "interrupted"
    common = dict(grid=True, max_concurrent=1, num_cpus=2, storage=str(tmp_path / "results"),
                  ledger=str(tmp_path / "ledger"))
    run_sweep(SweepOptions(name="resumable", **common), preset=preset,
              callbacks=[InterruptAfterFirstTrial(str(marker))], log=lambda *a: None)
    experiment = tmp_path / "results" / "resumable"
    first = marker.read_text()
    before_rows = experiment_rows(tmp_path / "ledger", "resumable")
    before_results = result_lines(experiment)
    assert [r["trial_id"] for r in before_rows] == [f"resumable/{first}"]
    assert len(before_rows) < 3

    # The same command with --resume finds the latest sweep of the preset.
    result = run_sweep(SweepOptions(resume=True, **common), preset=preset, log=lambda *a: None)

    rows = experiment_rows(tmp_path / "ledger", "resumable")
    after_results = result_lines(experiment)
    assert result.experiment == "resumable"
    assert len(rows) == len({r["trial_id"] for r in rows}) == 3
    # The grid's three cells, each once; the first trial's row is the one written before.
    assert sorted(r["lr"] for r in rows) == pytest.approx(sorted(preset.lrs))
    assert rows[0] == before_rows[0]
    # The finished trial was not run again: Ray holds no new result for it.
    assert after_results[first] == before_results[first]
    assert set(after_results) == {r["trial_id"].split("/", 1)[1] for r in rows}


@pytest.mark.slow
def test_a_grid_continues_from_its_ledger_alone(trial_env, tmp_path):
    """The experiment directory is gone (a new checkout, a new cluster): the ledger is
    all that is left, and --skip-recorded runs only the cells it lacks."""
    preset = tiny_preset(lr_exponents=(1, 2, 3))
    marker = tmp_path / "interrupted"
    ledger = str(tmp_path / "ledger")
    run_sweep(SweepOptions(grid=True, max_concurrent=1, num_cpus=2, storage=str(tmp_path / "first"),
                           ledger=ledger, name="first", skip_recorded=True),
              preset=preset, callbacks=[InterruptAfterFirstTrial(str(marker))], log=lambda *a: None)
    first_rows = experiment_rows(tmp_path / "ledger", "first")
    assert len(first_rows) == 1

    result = run_sweep(SweepOptions(grid=True, skip_recorded=True, num_cpus=2, storage=str(tmp_path / "second"),
                                    ledger=ledger, name="second"), preset=preset, log=lambda *a: None)

    second_rows = experiment_rows(tmp_path / "ledger", "second")
    assert result.plan_json["recorded_cells_skipped"] == 1 and result.trials == 2
    assert first_rows[0]["lr"] not in [r["lr"] for r in second_rows]
    assert sorted(r["lr"] for r in first_rows + second_rows) == pytest.approx(sorted(preset.lrs))


def test_an_optuna_storage_keeps_the_study_to_inspect_and_continue(tmp_path):
    import optuna

    from tuner.jobs.sweep import make_searcher

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    options = SweepOptions(optuna_storage=url, study_name="study", num_samples=4, name="first")
    first = make_searcher(plan_sweep(options, preset=tiny_preset()))
    seen = []
    for trial_id in ("a", "b", "c"):
        config = first.suggest(trial_id)
        seen.append((config["variant"], config["epochs"], config["lr"]))
        first.on_trial_complete(trial_id, {"val_loss": config["lr"], "training_iteration": 2})
    study = optuna.load_study(study_name="study", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [(t.params["variant"], t.params["epochs"], t.params["lr"]) for t in study.trials] == seen
    # A later sweep naming the same study continues it: TPE sees the earlier trials,
    # and neither its start points nor TPE repeat a cell while unseen ones remain.
    later = make_searcher(plan_sweep(dataclasses.replace(options, name="second"), preset=tiny_preset()))
    config = later.suggest("d")
    assert (config["variant"], config["epochs"], config["lr"]) not in seen
    assert len(optuna.load_study(study_name="study", storage=url).trials) == 4


def test_a_flops_budget_whose_trials_report_no_flops_ends_in_a_one_line_error(tmp_path):
    """Trials whose steps could not be counted (flops=None, stood in for by hand-made
    results): the sweep's total is unknown (None), not a partial sum, and a --budget-flops sweep
    ends with an error naming --budget-device-hours."""
    from types import SimpleNamespace

    from tuner.jobs.sweep import _finish, _grid_usage

    results = [SimpleNamespace(metrics={"trial_id": "a", "flops": 1e12, "device_seconds": 36.0}, error=None),
               SimpleNamespace(metrics={"trial_id": "b", "flops": None, "device_seconds": 36.0}, error=None)]
    assert _grid_usage(results) == (2, None, 0.02, "b")
    assert _grid_usage(results[:1]) == (1, 1e12, 0.01, None)
    plan_json = {"experiment": "e", "ledger": str(tmp_path / "ledger"), "budget": {"unit": "flops", "total": 1e15}}
    lines = []
    with pytest.raises(TunerError, match="--budget-device-hours") as info:
        _finish(plan_json, str(tmp_path / "exp"), results, SweepOptions(), lines.append)
    assert "\n" not in str(info.value) and "trial b" in str(info.value)
    assert any("unknown (a trial's step could not be counted) FLOPs" in line for line in lines)
    # In device-hours the same sweep is fine.
    plan_json["budget"] = {"unit": "device_hours", "total": 1.0}
    assert _finish(plan_json, str(tmp_path / "exp"), results, SweepOptions(), lines.append).flops is None


@pytest.mark.slow
def test_a_sweep_keeps_at_most_k_plus_1_checkpoints_per_trial_the_best_among_them(trial_env, tmp_path, monkeypatch):
    """--keep-checkpoints 1 over trials that checkpoint up to 4 times: each trial directory in storage
    holds at most 2 Ray checkpoints, one of them the lowest val_loss it reported, and no orbax
    copy of its own (the trainer's checkpoints live in node scratch, removed when it ends)."""
    scratch = tmp_path / "scratch"
    monkeypatch.setenv("NFSCALE_SCRATCH", str(scratch))
    keep = 1
    preset = tiny_preset(lr_exponents=(1, 2), overrides={**dict(tiny_preset().overrides), "evals_per_run": 4})
    options = SweepOptions(grid=True, max_concurrent=1, num_cpus=2, storage=str(tmp_path / "results"),
                           ledger=str(tmp_path / "ledger"), name="keep", keep_checkpoints=keep)
    run_sweep(options, preset=preset, log=lambda *a: None)

    experiment = tmp_path / "results" / "keep"
    trial_dirs = [d for d in experiment.iterdir() if (d / "result.json").is_file()]
    assert len(trial_dirs) == 2
    reported = []
    for trial_dir in trial_dirs:
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line]
        checkpointed = {r["checkpoint_dir_name"]: r["val_loss"] for r in results if r.get("checkpoint_dir_name")}
        reported.append(len(checkpointed))
        kept = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
        assert 1 <= len(kept) <= keep + 1
        assert min(checkpointed, key=checkpointed.get) in kept
        assert max(checkpointed) in kept  # the latest, which a retry resumes from
        assert not (trial_dir / "checkpoints").exists()
    # One LR runs its 4 evaluations; ASHA may stop the other at half its run (2).
    assert max(reported) == 4 and min(reported) >= 2
    # A finished trial removes its scratch; one that ASHA stopped may leave its newest, and only that.
    finished_ids = {r["trial_id"].split("/")[-1] for r in experiment_rows(tmp_path / "ledger", "keep")
                    if r["status"] == "finished"}
    left = [d for d in scratch.iterdir() if d.is_dir()] if scratch.exists() else []
    assert not [d for d in left if d.name.split("-")[0] in finished_ids]
    assert all(len(list(d.iterdir())) <= 1 for d in left)
    rows = experiment_rows(tmp_path / "ledger", "keep")
    assert len(rows) == 2 and all(Path(r["checkpoint_uri"]).is_dir() for r in rows)
    assert json.loads((experiment / SETTINGS_FILE).read_text())["plan"]["keep_checkpoints"] == keep
