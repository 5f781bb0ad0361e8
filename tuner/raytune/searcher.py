"""A Ray Tune searcher that runs a `tuner.study.planner.Bracket` round by round.

Each round's LRs are suggested to Tune at once (as many run together as
`max_concurrent_trials` and the cluster allow); the next round is planned only
when every trial of the round has ended, so the LRs tried depend on the losses
alone, never on which trial finished first, and `tuner.lr_audit`'s replay of the
same bracket on a grid's losses makes the same choices. A trial that fails for
good (after Tune's retries) or ends before its schedule does stops the search
after its round: the bracket cannot be closed without it.

With `stagger`, the search's first trial starts alone and the others once it has
reported its first result: every trial of a search runs the same program (the LR
is optimizer state), so the later ones take it from the persistent compilation
cache the first one wrote instead of compiling it at the same moment on the same
cores. Only the start times move; the LRs tried are the same.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.search import Searcher

from tuner.study.planner import Bracket, Trial
from tuner.records.rows import trial_status


class BracketSearcher(Searcher):
    def __init__(self, bracket: Bracket, stagger: bool = False):
        super().__init__(metric="val_loss", mode="min")
        self.bracket = bracket
        self.waiting_for_compile = stagger  # hold the others until the first trial reports
        self.queue: list[float] = []  # this round's LRs not yet given to a trial
        self.running: dict[str, float] = {}  # trial id -> lr
        self.outcomes: list[Trial] = []  # this round's ended trials
        self.failed: list[float] = []  # LRs whose trial did not reach the end of its schedule

    def _close_round(self) -> None:
        if self.outcomes:
            self.bracket.record(self.outcomes)
            self.outcomes = []

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.queue and not self.running:
            self._close_round()
            if self.failed:
                return Searcher.FINISHED
            self.queue = self.bracket.next_round()
            if not self.queue:
                return Searcher.FINISHED
        if not self.queue:
            return None  # wait for the round to end
        if self.waiting_for_compile and self.running:
            return None  # the first trial is still compiling the search's program
        lr = self.queue.pop(0)
        self.running[trial_id] = lr
        return {"lr": lr}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.waiting_for_compile = False  # a report comes after the step has compiled

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.waiting_for_compile = False
        lr = self.running.pop(trial_id, None)
        if lr is None:
            return
        status = trial_status(result) if result else "stopped"
        if error or status == "stopped":
            self.failed.append(lr)
            self.queue = []  # start nothing more of this round
        else:
            loss = result.get("val_loss")
            finite = loss is not None and math.isfinite(loss)
            self.outcomes.append(Trial(lr, float(loss) if finite and status == "finished" else None,
                                       status if finite else "diverged", result.get("flops")))
        if not self.running and not self.queue:
            self._close_round()

    def finish(self) -> None:
        """Record what the last round left (Tune may end before asking for another suggestion)."""
        self._close_round()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
