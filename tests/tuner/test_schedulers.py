"""GroupedASHA and the compute budget, on recorded learning curves and in real Tune runs.

Decision tests feed synthetic results through Ray's scheduler interface with real
`ray.tune.experiment.Trial` objects (stubs: no trainable is registered) and no
training; the Ray tests start a local Ray in-process and run a trivial function
trainable that reports the same curves.
"""

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle, tune
from ray.train._internal.storage import StorageContext
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from tuner.errors import TunerError
from tuner.raytune.budget import BudgetStopper, ComputeBudget
from tuner.raytune.schedulers import GroupedASHA, variant_epochs_key

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
REPORTS = 8  # reports per run, on a fixed fraction of the run's own schedule
FLOPS_PER_EPOCH = 1e12


def recorded_curve(lr: float, epochs: float) -> list[float]:
    """Held-out loss at progress 1/8 .. 8/8 of a cosine-schedule run.

    Shaped like the paper's runs: the further the LR from the optimum (0.4 here),
    the worse; a longer run is worse than a short one at the same fraction of its
    schedule early on and better at its end.
    """
    losses = []
    for k in range(1, REPORTS + 1):
        p = k / REPORTS
        remaining = 1.5 * (1 + math.cos(math.pi * p)) / 2 * math.sqrt(epochs)
        losses.append(0.8 / epochs**0.25 + 0.3 * math.log2(lr / 0.4) ** 2 + remaining)
    return losses


def result_at(k: int, lr: float, epochs: float, variant: str = "nano") -> dict:
    p = k / REPORTS
    return {
        "variant": variant,
        "epochs": epochs,
        "progress": p,
        "val_loss": recorded_curve(lr, epochs)[k - 1],
        "flops": FLOPS_PER_EPOCH * epochs * p,
        "device_seconds": 900.0 * epochs * p,
        "training_iteration": k,
    }


def make_trial(trial_id: str, lr: float, epochs: float, variant: str = "nano") -> Trial:
    return Trial(
        "nfscale_curve",
        config={"variant": variant, "epochs": epochs, "lr": lr},
        trial_id=trial_id,
        stub=True,
    )


def make_scheduler(**kwargs) -> GroupedASHA:
    scheduler = GroupedASHA(**kwargs)
    scheduler.set_search_properties("val_loss", "min")
    return scheduler


def run_curve(scheduler: GroupedASHA, trial: Trial, upto: int = REPORTS) -> list[str]:
    """Adds a trial, feeds its curve until `upto` or a STOP, completes it if it ran to
    the end of its schedule or was stopped; returns the decisions."""
    lr, epochs = trial.config["lr"], trial.config["epochs"]
    scheduler.on_trial_add(None, trial)
    trial.set_status(Trial.RUNNING)
    decisions = []
    for k in range(1, upto + 1):
        decisions.append(scheduler.on_trial_result(None, trial, result_at(k, lr, epochs)))
        if decisions[-1] == STOP or k == REPORTS:
            scheduler.on_trial_complete(None, trial, result_at(k, lr, epochs))
            trial.set_status(Trial.TERMINATED)
            break
    return decisions


def short_group(scheduler: GroupedASHA) -> list[Trial]:
    """Three good LRs of a 1-epoch run, fed one after the other to the end."""
    trials = [make_trial(f"short-{lr}", lr, 1.0) for lr in (0.2, 0.8, 0.4)]
    for trial in trials:
        assert run_curve(scheduler, trial) == [CONTINUE] * REPORTS
    return trials


# Decisions ------------------------------------------------------------------


def test_bad_lr_is_stopped_at_the_first_rung_while_good_ones_run_to_the_end():
    scheduler = make_scheduler(grace_period=0.25, reduction_factor=2)
    short_group(scheduler)
    decisions = run_curve(scheduler, make_trial("short-6.4", 6.4, 1.0))
    # Below the grace period nothing is judged; at 0.25 of the run it is cut.
    assert decisions == [CONTINUE, STOP]
    assert scheduler.rungs(("nano", 1.0))[0][1]["short-6.4"] == recorded_curve(6.4, 1.0)[1]


def test_a_long_run_is_not_judged_by_short_runs_at_the_same_progress():
    long_trial = make_trial("long-0.4", 0.4, 4.0)
    # The premise: at 0.25 of its run the long run is worse than every short run.
    long_at_quarter = recorded_curve(0.4, 4.0)[1]
    assert all(long_at_quarter > recorded_curve(lr, 1.0)[1] for lr in (0.2, 0.4, 0.8))

    scheduler = make_scheduler()
    short_group(scheduler)
    assert run_curve(scheduler, long_trial) == [CONTINUE] * REPORTS
    assert set(scheduler.group_keys()) == {("nano", 1.0), ("nano", 4.0)}
    assert set(scheduler.rungs(("nano", 1.0))[0][1]) == {"short-0.2", "short-0.8", "short-0.4"}
    assert set(scheduler.rungs(("nano", 4.0))[0][1]) == {"long-0.4"}

    # One group for everything (what plain ASHA does) cuts the same long run.
    pooled = make_scheduler(group_key=lambda config, result: "all")
    short_group(pooled)
    assert run_curve(pooled, make_trial("long-0.4", 0.4, 4.0)) == [CONTINUE, STOP]


def test_rungs_are_fractions_of_each_runs_own_schedule():
    scheduler = make_scheduler(grace_period=0.25, reduction_factor=2)
    short_group(scheduler)
    run_curve(scheduler, make_trial("long-0.4", 0.4, 4.0))
    for epochs, trial_id in ((1.0, "short-0.4"), (4.0, "long-0.4")):
        rungs = scheduler.rungs(("nano", epochs))
        assert [milestone for milestone, _ in rungs] == [0.25, 0.5, 1.0]
        curve = recorded_curve(0.4, epochs)
        # 0.25 and 0.5 of the run: reports 2 and 4 of 8, whatever the epoch budget.
        assert rungs[0][1][trial_id] == curve[1]
        assert rungs[1][1][trial_id] == curve[3]
        # The end of the run is recorded when the trial completes.
        assert rungs[2][1][trial_id] == curve[-1]

    thirds = make_scheduler(grace_period=0.25, reduction_factor=3)
    thirds.on_trial_add(None, make_trial("t", 0.4, 1.0))
    assert [m for m, _ in thirds.rungs(("nano", 1.0))] == [0.25, 0.75]


def test_a_report_at_a_float_milestone_reaches_that_rung():
    # 0.1 * 3 is 0.30000000000000004 in Ray's milestones; a 3/10 report meets it.
    scheduler = make_scheduler(grace_period=0.1, reduction_factor=3)
    trial = make_trial("t", 0.4, 1.0)
    scheduler.on_trial_add(None, trial)
    for k, loss in ((1, 3.0), (2, 2.5), (3, 2.0), (4, 1.5)):
        scheduler.on_trial_result(
            None, trial, {"variant": "nano", "epochs": 1.0, "progress": k / 10, "val_loss": loss}
        )
    rungs = scheduler.rungs(("nano", 1.0))
    assert rungs[0][1] == {"t": 3.0}
    assert rungs[1][0] == pytest.approx(0.3)
    assert rungs[1][1] == {"t": 2.0}


def test_a_run_at_the_end_of_its_schedule_is_left_to_finish():
    scheduler = make_scheduler()
    short_group(scheduler)
    bad = make_trial("bad", 6.4, 1.0)
    scheduler.on_trial_add(None, bad)
    # Ray's ASHA answers STOP to any result at max_t; the run returns on its own.
    assert scheduler.on_trial_result(None, bad, result_at(REPORTS, 6.4, 1.0)) == CONTINUE


def test_group_comes_from_results_when_the_config_lacks_it():
    scheduler = make_scheduler()
    trial = Trial("nfscale_curve", config={"lr": 0.4}, trial_id="t", stub=True)
    scheduler.on_trial_add(None, trial)
    assert scheduler.group_keys() == []
    scheduler.on_trial_result(None, trial, result_at(1, 0.4, 2.0))
    assert scheduler.group_keys() == [("nano", 2.0)]

    lost = Trial("nfscale_curve", config={"lr": 0.4}, trial_id="lost", stub=True)
    scheduler.on_trial_add(None, lost)
    with pytest.raises(TunerError, match="variant"):
        scheduler.on_trial_result(None, lost, {"progress": 0.125, "val_loss": 1.0})


def test_variant_epochs_key_prefers_the_result_and_falls_back_to_the_config():
    config = {"variant": "F0", "epochs": 2}
    assert variant_epochs_key(config, None) == ("F0", 2.0)
    assert variant_epochs_key(config, {"epochs": 4.0}) == ("F0", 4.0)
    assert variant_epochs_key({"variant": "F0"}, None) is None


def test_metric_and_mode_come_only_through_search_properties():
    scheduler = GroupedASHA()
    with pytest.raises(TunerError, match="TuneConfig"):
        scheduler.set_search_properties(None, None)
    assert scheduler.set_search_properties("val_loss", "min")
    assert scheduler.set_search_properties("val_loss", "min")
    assert not scheduler.set_search_properties("val_top1", "max")
    with pytest.raises(TunerError, match="TuneConfig"):
        GroupedASHA().on_trial_add(None, make_trial("t", 0.4, 1.0))


@pytest.mark.parametrize(
    "kwargs", [{"grace_period": 0.0}, {"grace_period": 1.5}, {"reduction_factor": 1}]
)
def test_bad_rung_settings_raise_tuner_error(kwargs):
    with pytest.raises(TunerError):
        GroupedASHA(**kwargs)


# Persistence ----------------------------------------------------------------


def test_save_and_restore_keep_the_rung_statistics(tmp_path):
    live = make_scheduler(budget=ComputeBudget(flops=1e15))
    short_group(live)
    run_curve(live, make_trial("long-0.4", 0.4, 4.0), upto=3)
    path = tmp_path / "grouped_asha.pkl"
    live.save(str(path))

    restored = make_scheduler(budget=ComputeBudget(flops=1e15))
    restored.restore(str(path))
    assert restored.rungs(("nano", 1.0)) == live.rungs(("nano", 1.0))
    assert restored.budget_summary() == live.budget_summary()

    # The next decision is the one the live scheduler makes; a fresh one would differ.
    assert run_curve(restored, make_trial("bad", 6.4, 1.0)) == [CONTINUE, STOP]
    assert run_curve(live, make_trial("bad", 6.4, 1.0)) == [CONTINUE, STOP]
    assert run_curve(make_scheduler(), make_trial("bad", 6.4, 1.0)) == [CONTINUE] * REPORTS


def test_rebuild_from_results_replays_histories_in_any_order():
    live = make_scheduler(budget=ComputeBudget(flops=1e15))
    trials = short_group(live)
    long_trial = make_trial("long-0.4", 0.4, 4.0)
    run_curve(live, long_trial, upto=5)

    histories = [
        (t, [result_at(k, t.config["lr"], t.config["epochs"]) for k in range(1, REPORTS + 1)])
        for t in trials
    ] + [(long_trial, [result_at(k, 0.4, 4.0) for k in range(1, 6)])]
    rebuilt = make_scheduler(budget=ComputeBudget(flops=1e15))
    rebuilt.rebuild_from_results(reversed(histories))

    for key in (("nano", 1.0), ("nano", 4.0)):
        assert rebuilt.rungs(key) == live.rungs(key)
    assert rebuilt.budget_summary() == live.budget_summary()
    # The unfinished long trial goes on in its group; the finished ones are done.
    assert rebuilt.on_trial_result(None, long_trial, result_at(6, 0.4, 4.0)) == CONTINUE
    assert run_curve(rebuilt, make_trial("bad", 6.4, 1.0)) == [CONTINUE, STOP]


# Budget ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"flops": 0}, {"flops": -1e12}, {"device_hours": 0.0}, {}, {"flops": 1e12, "device_hours": 1}],
)
def test_budget_needs_one_positive_total(kwargs):
    with pytest.raises(TunerError):
        ComputeBudget(**kwargs)


def test_budget_counts_latest_cumulative_usage_in_its_unit():
    flops = ComputeBudget(flops=10e12)
    flops.record("a", {"flops": 1e12, "device_seconds": 1800})
    flops.record("a", {"flops": 3e12, "device_seconds": 3600})
    flops.record("b", {"flops": 2e12, "device_seconds": 1800})
    flops.record("a", {"flops": 1e12, "device_seconds": 600})  # a restart never lowers it
    assert flops.used == 5e12
    assert not flops.spent
    flops.record("c", {"flops": 5e12})
    assert flops.spent
    summary = flops.summary()
    assert (summary.trials, summary.unit, summary.device_hours) == (3, "FLOPs", 1.5)
    assert "of 1e+13 FLOPs" in str(summary)

    hours = ComputeBudget(device_hours=2.0)
    hours.record("a", {"flops": 1e12, "device_seconds": 5400})
    assert hours.used == 1.5 and hours.unit == "device-hours"


def test_a_flops_budget_with_no_flops_figure_is_spent_and_says_which_flag_to_use():
    """A trial whose step could not be counted reports flops=None: counted as 0 it
    would make a budget that never runs out; instead the budget stops starting trials."""
    budget = ComputeBudget(flops=1e15)
    budget.record("a", {"flops": 1e12, "device_seconds": 10})
    assert not budget.spent and budget.unmeasured is None
    budget.record("b", {"flops": None, "device_seconds": 10})
    budget.record("c", {"device_seconds": 10})
    assert budget.spent and budget.unmeasured == "b"
    message = budget.unmeasured_message()
    assert "\n" not in message and "trial b" in message and "--budget-device-hours" in message
    # A device-hours budget does not need FLOPs.
    hours = ComputeBudget(device_hours=1.0)
    hours.record("b", {"flops": None, "device_seconds": 10})
    assert not hours.spent and hours.unmeasured is None


def test_grouped_asha_starts_nothing_once_a_trial_reports_no_flops_and_keeps_that_over_a_restore(tmp_path):
    scheduler = make_scheduler(budget=ComputeBudget(flops=1e15))
    trial = make_trial("t1", 0.4, 1.0)
    scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trial, dict(result_at(1, 0.4, 1.0), flops=None))
    assert scheduler.budget.spent
    scheduler.save(str(tmp_path / "state.pkl"))
    restored = make_scheduler(budget=ComputeBudget(flops=1e15))
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.budget.spent and restored.budget.unmeasured == "t1"


def test_trials_stopped_early_count_what_they_used():
    budget = ComputeBudget(flops=100 * FLOPS_PER_EPOCH)
    scheduler = make_scheduler(budget=budget)
    short_group(scheduler)
    assert run_curve(scheduler, make_trial("bad", 6.4, 1.0)) == [CONTINUE, STOP]
    assert budget.usage()["bad"][0] == 0.25 * FLOPS_PER_EPOCH
    assert budget.used == 3.25 * FLOPS_PER_EPOCH
    assert scheduler.budget_summary().trials == 4


def test_budget_stopper_ends_the_experiment_once_spent():
    budget = ComputeBudget(flops=2 * FLOPS_PER_EPOCH)
    stopper = BudgetStopper(budget)
    assert stopper("a", result_at(8, 0.4, 1.0)) is False
    assert not stopper.stop_all()
    stopper("b", result_at(8, 0.4, 1.0))
    assert stopper.stop_all()


# With Ray -------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    # Workers cannot import this test module: ship its functions by value.
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(module)


def test_no_pending_trial_is_chosen_once_the_budget_is_spent(local_ray, tmp_path):
    budget = ComputeBudget(flops=1.5 * FLOPS_PER_EPOCH)
    scheduler = make_scheduler(budget=budget)
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp")
    controller = TuneController(
        search_alg=BasicVariantGenerator(), scheduler=scheduler, storage=storage
    )
    trials = [
        Trial("nfscale_curve", config={"variant": "nano", "epochs": 1.0, "lr": lr},
              stub=True, storage=storage)
        for lr in (0.2, 0.4, 0.8)
    ]
    for trial in trials:
        controller.add_trial(trial)
    assert scheduler.choose_trial_to_run(controller) is trials[0]

    trials[0].set_status(Trial.RUNNING)
    scheduler.on_trial_result(controller, trials[0], result_at(8, 0.2, 1.0))
    assert not budget.spent
    trials[1].set_status(Trial.RUNNING)
    scheduler.on_trial_result(controller, trials[1], result_at(4, 0.4, 1.0))
    assert budget.spent

    assert scheduler.choose_trial_to_run(controller) is None
    # Ray starts PENDING trials on its own, so the never-started one is stopped,
    # the running ones go on, and the searcher suggests nothing more.
    assert [t.status for t in trials] == [Trial.RUNNING, Trial.RUNNING, Trial.TERMINATED]
    assert controller.search_alg.is_finished()
    assert scheduler.on_trial_result(controller, trials[1], result_at(5, 0.4, 1.0)) == CONTINUE


def curve_trainable(config: dict) -> None:
    """A function trainable reporting `recorded_curve`, no training."""
    lr, epochs = config["lr"], config["epochs"]
    for k in range(1, REPORTS + 1):
        tune.report(result_at(k, lr, epochs, config["variant"]))
        time.sleep(0.05)


class BudgetWatch(tune.Callback):
    """Writes down, as JSON lines, each trial start with the budget's state at that
    moment, the trials running when the budget became spent, and at the end the
    scheduler's budget summary and first-rung records (from the scheduler the Tune
    run actually uses, which after Tuner.restore is the copy in tuner.pkl)."""

    def __init__(self, scheduler: GroupedASHA, log_path: str):
        self.scheduler = scheduler
        self.log_path = log_path
        self.spent_seen = False

    def _write(self, record: dict) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write({"start": trial.trial_id, "spent": self.scheduler.budget.spent})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.scheduler.budget.spent and not self.spent_seen:
            self.spent_seen = True
            running = [t.trial_id for t in trials if t.status == Trial.RUNNING]
            self._write({"spent_while_running": running})

    def on_experiment_end(self, trials, **info):
        summary = self.scheduler.budget_summary()
        first_rungs = {
            str(key): sorted(self.scheduler.rungs(key)[0][1])
            for key in self.scheduler.group_keys()
        }
        self._write({"end": True, "used": summary.used, "trials": summary.trials,
                     "first_rungs": first_rungs})


class InterruptAt(BudgetWatch):
    """Also sends the driver SIGUSR1 (Ray Tune's "stop and save" signal, like
    Ctrl-C) once the budget is `fraction` used: a driver that goes away mid-sweep.
    Only once: the restored run gets this callback back from tuner.pkl as it was
    built, so a marker file says the signal was sent."""

    def __init__(self, scheduler: GroupedASHA, log_path: str, fraction: float):
        super().__init__(scheduler, log_path)
        self.fraction = fraction
        self.marker = Path(log_path + ".interrupted")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        super().on_trial_result(iteration, trials, trial, result, **info)
        budget = self.scheduler.budget
        if not self.marker.exists() and budget.used >= self.fraction * budget.total:
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def sweep_tuner(trainable, scheduler, callback, storage: Path, num_samples: int) -> tune.Tuner:
    # The first three points fix one group's order: two equally good LRs (ties are
    # kept, whichever reports first) reach the first rung before a bad one starts
    # (two trials at a time), so ASHA has something to cut.
    search = OptunaSearch(
        points_to_evaluate=[
            {"epochs": 1.0, "lr": 0.2},
            {"epochs": 1.0, "lr": 0.8},
            {"epochs": 1.0, "lr": 6.4},
        ],
        seed=0,
    )
    return tune.Tuner(
        trainable,
        param_space={
            "variant": "nano",
            "epochs": tune.choice([1.0, 2.0]),
            "lr": tune.choice([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]),
        },
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", search_alg=search, scheduler=scheduler,
            num_samples=num_samples, max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(
            storage_path=str(storage), name="sweep", callbacks=[callback], verbose=0
        ),
    )


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stored_results(experiment: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, from Ray's result files."""
    results = {}
    for result_file in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


def stored_usage(experiment: Path) -> dict[str, float]:
    """Largest cumulative FLOPs each trial reported."""
    return {t: max(r["flops"] for r in rows) for t, rows in stored_results(experiment).items()}


def assert_budget_held(log: list[dict], usage: dict[str, float], total: float) -> None:
    """No trial started once spent; beyond the budget only trials running at that
    moment used compute."""
    assert all(not record["spent"] for record in log if "start" in record)
    running_then = {t for record in log for t in record.get("spent_while_running", [])}
    assert sum(flops for t, flops in usage.items() if t not in running_then) < total
    assert sum(usage.values()) >= total


@pytest.mark.slow
def test_sweep_with_optuna_stops_bad_trials_and_keeps_to_the_budget(local_ray, tmp_path):
    total = 6 * FLOPS_PER_EPOCH
    scheduler = GroupedASHA(grace_period=0.25, reduction_factor=2,
                            budget=ComputeBudget(flops=total))
    log_path = tmp_path / "watch.jsonl"
    tuner = sweep_tuner(curve_trainable, scheduler,
                        BudgetWatch(scheduler, str(log_path)), tmp_path, num_samples=40)
    grid = tuner.fit()

    log = read_log(log_path)
    usage = stored_usage(tmp_path / "sweep")
    assert scheduler.budget.spent
    assert_budget_held(log, usage, total)
    assert scheduler.budget.used == pytest.approx(sum(usage.values()))
    # The budget, not num_samples, ended the sweep.
    assert len(usage) < 40 and len(grid) < 40
    # ASHA cut the bad LR at 0.25 of its run; the two good ones ran to the end. The
    # three start points are found by their configs: a loaded machine can start the
    # third before the second (the first may finish while the second's actor starts).
    finals = {
        r.metrics["trial_id"]: r.metrics["progress"] for r in grid if "progress" in r.metrics
    }
    configs = {r.metrics["trial_id"]: (r.config["epochs"], r.config["lr"])
               for r in grid if r.metrics and r.config}
    started = [record["start"] for record in log if "start" in record]
    first = {}
    for trial_id in started:
        first.setdefault(configs.get(trial_id), trial_id)
    good_a, good_b, bad = first[(1.0, 0.2)], first[(1.0, 0.8)], first[(1.0, 6.4)]
    assert finals[bad] == 0.25
    assert finals[good_a] == finals[good_b] == 1.0


@pytest.mark.slow
# The resumed trials have no checkpoints: they restart and report their steps to
# Optuna a second time, which Optuna ignores with a warning.
@pytest.mark.filterwarnings("ignore:The reported value is ignored")
def test_budget_and_rungs_survive_a_driver_restart(local_ray, tmp_path):
    total = 6 * FLOPS_PER_EPOCH
    trainable = curve_trainable
    scheduler = GroupedASHA(budget=ComputeBudget(flops=total))
    log_path = tmp_path / "watch.jsonl"
    callback = InterruptAt(scheduler, str(log_path), fraction=0.4)
    sweep_tuner(trainable, scheduler, callback, tmp_path, num_samples=40).fit()
    experiment = tmp_path / "sweep"
    before = stored_results(experiment)
    assert not scheduler.budget.spent and before

    # Tuner.restore brings back the scheduler pickled when the Tuner was built
    # (empty), which rebuilds its rungs and budget from the stored results.
    restored = tune.Tuner.restore(str(experiment), trainable=trainable)
    restored.fit()

    log = read_log(log_path)
    end = [record for record in log if record.get("end")][-1]
    after = stored_usage(experiment)
    assert set(before) <= set(after)
    assert end["trials"] == len(after)
    assert end["used"] == pytest.approx(sum(after.values()))
    reached_first_rung = {
        t for t, rows in before.items() if max(r["progress"] for r in rows) >= 0.25
    }
    assert reached_first_rung
    assert reached_first_rung <= {t for ids in end["first_rungs"].values() for t in ids}
    assert_budget_held(log, after, total)
