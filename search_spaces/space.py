"""A preset as an Optuna define-by-run space, as a full grid, and as start points.

Every dimension is categorical: the variant label, the epoch budget and the LR
(over the preset's factor-2 grid), so whatever the sampler does, every trial is a
cell of the study's grid and the ledger's cells line up with the planner's.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search_spaces.preset import Cell, Preset, split_label
from tuner.errors import TunerError

# Optuna parameter names: what a study shows in optuna-dashboard and what
# points_to_evaluate use. "variant" is the label with its multipliers.
PARAM_NAMES = ("variant", "epochs", "lr")


class SuggestsCategorical(Protocol):
    """The part of `optuna.Trial` a space needs (Ray passes a wrapper with the same method)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def define_space(trial: SuggestsCategorical, preset: Preset) -> dict[str, Any]:
    """Optuna define-by-run space: suggests a cell and returns its trainer fields.

    Returns {"variant", "width_mult", "depth_mult", "epochs", "lr"}; "variant" is the
    bare name with its multipliers split out (the label stays in the Optuna trial).
    """
    label = trial.suggest_categorical("variant", list(preset.variants))
    epochs = trial.suggest_categorical("epochs", list(preset.epochs))
    lr = trial.suggest_categorical("lr", list(preset.lrs))
    variant, width, depth = split_label(label)
    return Cell(label, variant, width, depth, float(epochs), float(lr)).config()


class PresetSpace:
    """`define_space` bound to a preset: a picklable callable for Ray's `OptunaSearch`."""

    def __init__(self, preset: Preset):
        self.preset = preset

    def __call__(self, trial: SuggestsCategorical) -> dict[str, Any]:
        return define_space(trial, self.preset)


class DistinctCellSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler (TPE) so that no trial repeats a cell another trial of the study
    holds (finished or running) while unseen cells remain.

    With a fixed seed a repeated cell is the same run again, so a repeat is pure
    waste. When the wrapped sampler proposes a cell already taken, a random
    (seeded) unseen cell is used instead. Only whole-cell proposals from
    `sample_relative` over categorical parameters are checked; the random start-up
    phase is left to the enqueued start-up points (see `tuner.sweep`).
    """

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int | None = None):
        self.base = base
        self._rng = random.Random(seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = self.base.sample_relative(study, trial, search_space)
        names = sorted(search_space)
        if (
            not params
            or set(params) != set(names)
            or not all(isinstance(search_space[n], CategoricalDistribution) for n in names)
        ):
            return params
        taken = {
            tuple(t.params.get(n) for n in names)
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and t.state != TrialState.FAIL and set(names) <= set(t.params)
        }
        if tuple(params[n] for n in names) not in taken:
            return params
        choices: Sequence[Sequence[Any]] = [search_space[n].choices for n in names]  # type: ignore[attr-defined]
        unseen = [combo for combo in itertools.product(*choices) if combo not in taken]
        return dict(zip(names, self._rng.choice(unseen))) if unseen else params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = random.Random()


class GridCellSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler over a preset's cells, for ask/tell drivers such as Ray's searcher.

    Optuna's own calls `study.stop()` once the grid is used up, which raises outside
    `study.optimize` and leaves the last trial RUNNING in the study; here the driver
    ends the sweep (num_samples = the number of cells) and every trial is told.
    """

    def __init__(self, preset: Preset, seed: int | None = None):
        super().__init__(grid_space(preset), seed=seed)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        return None


def grid(preset: Preset) -> list[Cell]:
    """Every cell of the preset, once (the full-grid mode)."""
    return preset.cells()


def grid_space(preset: Preset) -> dict[str, list[Any]]:
    """The grid as Optuna's `GridSampler` wants it: parameter name -> choices."""
    return {
        "variant": list(preset.variants),
        "epochs": list(preset.epochs),
        "lr": list(preset.lrs),
    }


def _on_grid(value: float, choices: Iterable[float]) -> float | None:
    for choice in choices:
        if math.isclose(value, choice, rel_tol=1e-6):
            return choice
    return None


def normalise_point(point: Mapping[str, Any], preset: Preset) -> dict[str, Any]:
    """A start point (`{"variant": "nano", "epochs": 1, "lr": 0.1}`) as exact grid values.

    Optuna matches categorical values exactly, so an LR typed as 0.1 must become the
    grid's own float. Off-grid or unknown values are a one-line TunerError.
    """
    unknown = sorted(set(point) - set(PARAM_NAMES))
    missing = [name for name in PARAM_NAMES if name not in point]
    if unknown or missing:
        raise TunerError(
            f"start point {dict(point)} must give exactly {', '.join(PARAM_NAMES)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    label = str(point["variant"])
    if label not in preset.variants:
        raise TunerError(
            f"start point variant {label!r} is not in preset {preset.name}: {', '.join(preset.variants)}"
        )
    try:
        epochs_value, lr_value = float(point["epochs"]), float(point["lr"])
    except (TypeError, ValueError):
        raise TunerError(f"start point {dict(point)}: epochs and lr must be numbers") from None
    epochs = _on_grid(epochs_value, preset.epochs)
    if epochs is None:
        raise TunerError(
            f"start point epochs {point['epochs']} is not in preset {preset.name}: "
            f"{', '.join(f'{e:g}' for e in preset.epochs)}"
        )
    lr = _on_grid(lr_value, preset.lrs)
    if lr is None:
        raise TunerError(
            f"start point lr {point['lr']} is not on preset {preset.name}'s grid: "
            f"{', '.join(f'{x:g}' for x in preset.lrs)}"
        )
    return {"variant": label, "epochs": epochs, "lr": lr}


def parse_point(text: str, preset: Preset) -> dict[str, Any]:
    """`"nano,1,0.1"` or `"variant=nano,epochs=1,lr=0.1"` -> a normalised start point."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if all("=" in p for p in parts):
        point: dict[str, Any] = dict(p.split("=", 1) for p in parts)
        point = {k.strip(): v.strip() for k, v in point.items()}
    elif len(parts) == len(PARAM_NAMES) and not any("=" in p for p in parts):
        point = dict(zip(PARAM_NAMES, parts))
    else:
        raise TunerError(f"cannot read start point {text!r}; write VARIANT,EPOCHS,LR e.g. nano,1,0.1")
    return normalise_point(point, preset)


def cell_of(point: Mapping[str, Any]) -> Cell:
    """The cell of a normalised start point."""
    variant, width, depth = split_label(point["variant"])
    return Cell(point["variant"], variant, width, depth, float(point["epochs"]), float(point["lr"]))
