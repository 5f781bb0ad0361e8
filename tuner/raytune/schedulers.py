"""Early stopping that compares like with like, and the sweep's compute budget.

A cosine schedule makes a long run look worse than a finished short run at the
same step, so `GroupedASHA` keeps one Ray `AsyncHyperBandScheduler` per group of
trials (by default per (variant, epoch budget)) and never lets one group's rungs
judge another's trials. Every group's ASHA counts time in `progress`, the fraction
of the run's own schedule done (0 to 1], so the rungs are fractions of each run's
schedule: with `grace_period=0.25, reduction_factor=2` they sit at 0.25 and 0.5 of
every run, whatever its length. The rung logic is Ray's, delegated unchanged.
Ray's rung milestones are floats (`grace_period * reduction_factor**k`); a report
within 1e-9 of a milestone counts as reaching it, so 3/10 meets a 0.1·3 rung.

A run that reaches the end of its schedule is left to return on its own (ASHA's
"stop at max_t" is turned into CONTINUE), so the trainable's end-of-run work
(final checkpoint, ledger row) is never cut short.

The compute budget (`ComputeBudget`, in FLOPs or device-hours) counts the latest
cumulative `flops` / `device_seconds` every trial reported, so trials stopped
early count what they used. With `GroupedASHA(budget=...)`, once it is spent:
the searcher is told it is finished (no new trials), trials that never started
are stopped before they start, and running trials finish their runs (ASHA may
still prune them): the last rung decision is what made them worth running, so the
sweep can overshoot the budget by what those trials use. A trial that had started
before a driver restart is a running trial: it resumes. Ray's controller starts
every PENDING trial on its own, whatever `choose_trial_to_run` says, which is why
never-started trials are stopped rather than merely not chosen. `BudgetStopper`
is the hard cap: it ends the whole experiment, running trials included, as soon
as the budget is spent.

A trial that reports no figure in the budget's unit (`flops` is None where the
trainer could not count its step) makes the budget unmeasurable: it
counts as spent at once, so no new trial starts, and `unmeasured` names the trial
so that the sweep ends with a one-line error saying to budget in device-hours.
Counting the missing figure as 0 would make a budget that never runs out.

Surviving a driver restart: `Tuner.restore` does not call the scheduler's
`save`/`restore`; it runs the scheduler object that was pickled into `tuner.pkl`
when the Tuner was built (empty rungs, empty budget), and re-adds every trial of
the old run through `on_trial_add`. `GroupedASHA.on_trial_add` therefore rebuilds
a re-added trial that has reported before from its `result.json` in the
experiment's storage (local or a bucket, through the trial's pyarrow filesystem):
its rung records and its compute usage come back as if the driver never stopped.
ASHA's rung records depend only on each trial's own results, not on the order of
trials, so replaying histories restores them exactly. `save(path)`/`restore(path)`
(Ray's scheduler hooks) pickle the same state for callers that drive the
scheduler themselves, and `rebuild_from_results` replays histories given by hand.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping, Sequence

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from tuner.errors import TunerError
from tuner.raytune.budget import BudgetSummary, ComputeBudget

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)

GroupKey = Callable[[Mapping[str, Any], Mapping[str, Any] | None], Hashable | None]

# A report this close below a rung milestone counts as reaching it: Ray's float
# milestones (0.1 * 3 = 0.30000000000000004) would otherwise skip a 3/10 report.
_RUNG_TOLERANCE = 1e-9
_STATE_VERSION = 1


def variant_epochs_key(
    config: Mapping[str, Any], result: Mapping[str, Any] | None
) -> tuple[str, float] | None:
    """The default group: (variant, epoch budget), from the result, else the config.

    Returns None while either is unknown (the trial is grouped at its first result).
    """
    values = []
    for name in ("variant", "epochs"):
        if result is not None and result.get(name) is not None:
            values.append(result[name])
        elif config.get(name) is not None:
            values.append(config[name])
        else:
            return None
    return str(values[0]), float(values[1])


class GroupedASHA(TrialScheduler):
    """Ray's ASHA, one instance per group of comparable trials, plus a compute budget.

    `metric` and `mode` come from `TuneConfig` (through `set_search_properties`),
    never from here. The time attribute is `progress`, the fraction of the run's
    own schedule done; trials must report it.
    """

    def __init__(
        self,
        *,
        grace_period: float = 0.25,
        reduction_factor: float = 2,
        brackets: int = 1,
        group_key: GroupKey = variant_epochs_key,
        budget: ComputeBudget | None = None,
        time_attr: str = "progress",
    ):
        if not 0 < grace_period <= 1:
            raise TunerError(
                f"grace_period={grace_period} is a fraction of the run: give one in (0, 1]"
            )
        if reduction_factor <= 1:
            raise TunerError(f"reduction_factor={reduction_factor} must be greater than 1")
        if brackets < 1:
            raise TunerError(f"brackets={brackets} must be at least 1")
        super().__init__()
        self.grace_period = float(grace_period)
        self.reduction_factor = float(reduction_factor)
        self.brackets = int(brackets)
        self.group_key = group_key
        self.budget = budget
        self.time_attr = time_attr
        self._mode: str | None = None
        self._groups: dict[Hashable, AsyncHyperBandScheduler] = {}
        self._group_of: dict[str, Hashable] = {}
        self._reported: set[str] = set()
        self._num_stopped = 0
        self._warned_no_time = False

    # Search properties -------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric and metric != self._metric) or (
            self._mode and mode and mode != self._mode
        ):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        if not self._metric or self._mode not in ("min", "max"):
            raise TunerError(
                "GroupedASHA needs a metric and a mode: pass them to TuneConfig, "
                "e.g. TuneConfig(metric='val_loss', mode='min')"
            )
        for asha in self._groups.values():
            asha.set_search_properties(self._metric, self._mode)
        return True

    # Trial events ------------------------------------------------------------

    def on_trial_add(self, tune_controller: "TuneController", trial: Trial) -> None:
        trial_id = trial.trial_id
        if trial_id in self._group_of:
            self._groups[self._group_of[trial_id]].on_trial_add(tune_controller, trial)
        elif trial.has_reported_at_least_once and trial_id not in self._reported:
            self.rebuild_from_results([(trial, _stored_results(trial))])
        else:
            key = self.group_key(trial.config, None)
            if key is not None:  # else the trial is grouped at its first result
                self._join(tune_controller, trial, key)

    def on_trial_result(
        self, tune_controller: "TuneController", trial: Trial, result: dict
    ) -> str:
        was_spent = self.budget is not None and self.budget.spent
        self._count(trial, result)
        if self.budget is not None and self.budget.spent and not was_spent:
            logger.info("%s: no new trials start", self.budget.summary())
            _finish_searcher(tune_controller)
        if result.get(self.time_attr) is None and not self._warned_no_time:
            self._warned_no_time = True
            logger.warning(
                "trial %s reports no %r: GroupedASHA cannot judge it (report the "
                "fraction of the run's schedule done)", trial, self.time_attr
            )
        asha = self._group(tune_controller, trial, result)
        decision = asha.on_trial_result(tune_controller, trial, self._asha_result(result))
        if decision == TrialScheduler.STOP and self._at_end(result):
            return TrialScheduler.CONTINUE
        if decision == TrialScheduler.STOP:
            self._num_stopped += 1
        return decision

    def on_trial_complete(
        self, tune_controller: "TuneController", trial: Trial, result: dict
    ) -> None:
        if result:
            self._count(trial, result)
        key = self._group_of.pop(trial.trial_id, None)
        if key is not None:
            self._groups[key].on_trial_complete(
                tune_controller, trial, self._asha_result(result or {})
            )

    def on_trial_remove(self, tune_controller: "TuneController", trial: Trial) -> None:
        key = self._group_of.pop(trial.trial_id, None)
        if key is not None:
            self._groups[key].on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: "TuneController", trial: Trial) -> None:
        key = self._group_of.get(trial.trial_id)
        if key is not None:
            self._groups[key].on_trial_error(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: "TuneController") -> Trial | None:
        trials = list(tune_controller.get_trials())
        if self.budget is not None and self.budget.spent:
            _finish_searcher(tune_controller)
            for trial in trials:
                if trial.status == Trial.PENDING and not self._has_started(trial):
                    logger.info("compute budget spent: trial %s does not start", trial)
                    tune_controller.stop_trial(trial)
            trials = [t for t in trials if self._has_started(t)]
        for status in (Trial.PENDING, Trial.PAUSED):
            for trial in trials:
                if trial.status == status:
                    return trial
        return None

    # Persistence -------------------------------------------------------------

    def rebuild_from_results(
        self, trials_results: Iterable[tuple[Trial, Sequence[Mapping[str, Any]]]]
    ) -> None:
        """Replays each trial's reported results, oldest first, into its group's rungs
        and the budget, as the scheduler would have seen them live (decisions are
        dropped). Trials already TERMINATED or in ERROR also complete."""
        for trial, results in trials_results:
            results = [dict(r) for r in results if r]
            trial_id = trial.trial_id
            if not results or trial_id in self._reported:
                continue
            key = self.group_key(trial.config, None) or self.group_key(
                trial.config, results[0]
            )
            if key is None:
                raise TunerError(_no_group_message(trial))
            if trial_id not in self._group_of:
                self._join(None, trial, key)
            for result in results:
                self._count(trial, result)
                self._groups[key].on_trial_result(None, trial, self._asha_result(result))
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                self.on_trial_complete(None, trial, results[-1])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self._state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if state.get("version") != _STATE_VERSION:
            raise TunerError(
                f"{checkpoint_path} is not a GroupedASHA state of version {_STATE_VERSION}"
            )
        self._metric = state["metric"] or self._metric
        self._mode = state["mode"] or self._mode
        self._groups = state["groups"]
        self._group_of = state["group_of"]
        self._reported = state["reported"]
        self._num_stopped = state["num_stopped"]
        if self.budget is not None:
            for trial_id, (flops, seconds) in state["usage"].items():
                self.budget.record_usage(trial_id, flops, seconds)
            self.budget.unmeasured = self.budget.unmeasured or state.get("unmeasured")

    # Inspection --------------------------------------------------------------

    def group_keys(self) -> list[Hashable]:
        return list(self._groups)

    def rungs(self, key: Hashable) -> list[tuple[float, dict[str, float]]]:
        """A group's rungs, lowest first: (milestone as a fraction of the run,
        trial id -> metric recorded there), one list per bracket concatenated.
        Read from Ray's bracket bookkeeping, for inspection only."""
        asha = self._groups[key]
        sign = -1.0 if self._mode == "min" else 1.0
        out = []
        for bracket in asha._brackets:
            for milestone, recorded in reversed(bracket._rungs):
                out.append((milestone, {t: sign * v for t, v in recorded.items()}))
        return out

    def budget_summary(self) -> BudgetSummary | None:
        return None if self.budget is None else self.budget.summary()

    def debug_string(self) -> str:
        lines = [f"GroupedASHA: {len(self._groups)} groups, {self._num_stopped} stopped"]
        for key, asha in self._groups.items():
            lines.append(f"group {key}: " + asha.debug_string().replace("\n", "; "))
        if self.budget is not None:
            lines.append(str(self.budget.summary()))
        return "\n".join(lines)

    # Internals ---------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "metric": self._metric,
            "mode": self._mode,
            "groups": self._groups,
            "group_of": self._group_of,
            "reported": self._reported,
            "num_stopped": self._num_stopped,
            "usage": self.budget.usage() if self.budget is not None else {},
            "unmeasured": self.budget.unmeasured if self.budget is not None else None,
        }

    def _new_asha(self) -> AsyncHyperBandScheduler:
        if not self._metric or not self._mode:
            raise TunerError(
                "GroupedASHA got a trial before its metric and mode: pass them to "
                "TuneConfig, e.g. TuneConfig(metric='val_loss', mode='min')"
            )
        asha = AsyncHyperBandScheduler(
            time_attr=self.time_attr,
            max_t=1.0,
            grace_period=self.grace_period,
            reduction_factor=self.reduction_factor,
            brackets=self.brackets,
        )
        asha.set_search_properties(self._metric, self._mode)
        return asha

    def _join(self, tune_controller: Any, trial: Trial, key: Hashable) -> None:
        if key not in self._groups:
            self._groups[key] = self._new_asha()
        self._group_of[trial.trial_id] = key
        self._groups[key].on_trial_add(tune_controller, trial)

    def _group(self, tune_controller: Any, trial: Trial, result: Mapping[str, Any]):
        key = self._group_of.get(trial.trial_id)
        if key is None:
            key = self.group_key(trial.config, result)
            if key is None:
                raise TunerError(_no_group_message(trial))
            self._join(tune_controller, trial, key)
        return self._groups[key]

    def _count(self, trial: Trial, result: Mapping[str, Any]) -> None:
        self._reported.add(trial.trial_id)
        if self.budget is not None:
            self.budget.record(trial.trial_id, result)

    def _has_started(self, trial: Trial) -> bool:
        return trial.trial_id in self._reported or trial.has_reported_at_least_once

    def _asha_result(self, result: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(result)
        if out.get(self.time_attr) is not None:
            out[self.time_attr] = float(out[self.time_attr]) + _RUNG_TOLERANCE
        return out

    def _at_end(self, result: Mapping[str, Any]) -> bool:
        progress = result.get(self.time_attr)
        return progress is not None and float(progress) + _RUNG_TOLERANCE >= 1.0


def _finish_searcher(tune_controller: Any) -> None:
    """Tells the searcher to suggest nothing more (the budget is spent)."""
    search_alg = getattr(tune_controller, "search_alg", None)
    if search_alg is not None and not search_alg.is_finished():
        search_alg.set_finished()


def _stored_results(trial: Trial) -> list[dict[str, Any]]:
    """The results a trial reported in an earlier driver's run, from its result.json;
    just its last result when the file cannot be read."""
    fallback = [dict(trial.run_metadata.last_result)]
    storage = trial.storage
    if storage is None:
        return fallback
    path = Path(storage.trial_fs_path, EXPR_RESULT_FILE).as_posix()
    try:
        with storage.storage_filesystem.open_input_stream(path) as f:
            text = f.readall().decode("utf-8")
    except OSError:
        logger.warning(
            "no %s for restored trial %s: its rungs restart from its last result",
            path,
            trial.trial_id,
        )
        return fallback
    results = []
    for line in text.splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short when the old driver stopped mid-write
    return results or fallback


def _no_group_message(trial: Trial) -> str:
    return (
        f"trial {trial.trial_id} has no group for GroupedASHA: its config and results "
        "lack 'variant' or 'epochs'; add them or pass group_key=..."
    )
