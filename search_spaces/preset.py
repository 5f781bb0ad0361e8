"""`Preset`: one study as data — the cells it may try, the trainer settings, its CPU form.

A preset names the grid of a compute-scaling study (model variants × epoch budgets ×
learning rates on a factor-2 grid) and everything a trial needs besides its cell
(batch size, dataset, resolution, trainer overrides), big_vision style: a trial's
config is the preset's base plus its cell, so every trial is printable and
reproducible from its ledger row. `Preset.cpu()` is the `runlocal` switch: the same
study shrunk to small variants and a small real dataset that runs on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nfnet.errors import NFNetError
from nfnet.variants import get_variant, resolution_problem
from tuner.errors import TunerError

# [P1] Sec. 2 / [P2]: peak LR 1.6 at batch 4096, i.e. 0.1 × batch/256 (the reference
# code's linear scaling rule). The grid is this base times 2^k; tuner.study.planner snaps to
# the same grid (tests/search_spaces/test_presets.py checks they agree).
PAPER_LR = 1.6
PAPER_BATCH = 4096

# The keys a cell sets; a preset's trainer overrides may not set them.
CELL_KEYS = ("variant", "width_mult", "depth_mult", "epochs", "lr")


def base_lr(batch_size: int) -> float:
    """The paper's 1.6 at batch 4096 scaled linearly to `batch_size`."""
    return PAPER_LR * batch_size / PAPER_BATCH


@dataclass(frozen=True)
class Cell:
    """One point of a study: a model (variant and multipliers), an epoch budget, an LR."""

    label: str
    variant: str
    width_mult: float
    depth_mult: float
    epochs: float
    lr: float

    def config(self) -> dict[str, Any]:
        """The trainer fields this cell sets."""
        return {
            "variant": self.variant,
            "width_mult": self.width_mult,
            "depth_mult": self.depth_mult,
            "epochs": self.epochs,
            "lr": self.lr,
        }


def split_label(label: str) -> tuple[str, float, float]:
    """`"nano-w2"` -> ("nano", 2.0, 1.0), through nfnet's variant table (so unknown names fail)."""
    try:
        variant = get_variant(label)
    except NFNetError as exc:
        raise TunerError(str(exc)) from None
    return variant.name, float(variant.width_mult), float(variant.depth_mult)


def _frozen_items(value: Mapping[str, Any] | tuple | None) -> tuple[tuple[str, Any], ...]:
    items = dict(value or ())
    return tuple(sorted(items.items()))


@dataclass(frozen=True)
class Preset:
    """A compute-scaling study: variants × epoch budgets × LRs, plus how each trial trains.

    `variants` are variant labels (`"F0"`, `"nano-w2"`: a name with optional
    `-w<mult>`/`-d<mult>`); `lr_exponents` are the k of `base_lr(batch_size)·2^k`;
    `overrides` set `nfnet.config.TrainConfig` fields for every trial (flat keys,
    e.g. `{"warmup_fraction": 0.05, "max_train_examples": 2048}`); `cpu` holds the
    field changes that make the CPU form (`Preset.cpu()`). `command` and `cost` say
    how to run it and what it costs, for `--dry-run` and the docs. `only_cells`, when
    given, keeps just those (variant label, epochs, lr exponent) cells of the grid
    (e.g. seed repeats of each cell's best LR); such a preset runs with `--grid`.
    """

    name: str
    summary: str
    command: str
    cost: str
    variants: tuple[str, ...]
    epochs: tuple[float, ...]
    lr_exponents: tuple[int, ...]
    batch_size: int
    dataset: str
    resolution: int
    eval_resolution: int | None = None
    # True when `dataset` is a placeholder the user must replace with --dataset.
    dataset_required: bool = False
    # Used, with a message, when `dataset` cannot be loaded here (e.g. Fashion-MNIST
    # not installed): the CPU presets fall back to scikit-learn's bundled digits.
    fallback_dataset: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # Optuna samples for a searched (not --grid) sweep.
    num_samples: int = 16
    # GroupedASHA: first rung and reduction factor, as fractions of each run.
    grace_period: float = 0.25
    reduction_factor: float = 2.0
    cpu_changes: Mapping[str, Any] = field(default_factory=dict)
    # (variant label, epochs, lr exponent) cells to keep of the product grid; () keeps all.
    only_cells: tuple[tuple[str, float, int], ...] = ()

    def __post_init__(self) -> None:
        # Mappings are kept as sorted item tuples: hashable and picklable (the
        # preset travels inside Ray's pickled searcher).
        object.__setattr__(self, "overrides", _frozen_items(self.overrides))
        object.__setattr__(self, "cpu_changes", _frozen_items(self.cpu_changes))
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "epochs", tuple(float(e) for e in self.epochs))
        object.__setattr__(self, "lr_exponents", tuple(int(k) for k in self.lr_exponents))
        try:
            only = tuple((str(label), float(epochs), int(k)) for label, epochs, k in self.only_cells)
        except (TypeError, ValueError):
            raise TunerError(
                f"preset {self.name!r}: only_cells holds (variant, epochs, lr exponent) triples, "
                f"got {self.only_cells!r}"
            ) from None
        object.__setattr__(self, "only_cells", only)
        self._check()

    def _check(self) -> None:
        where = f"preset {self.name!r}"
        if not self.name or any(c.isspace() or c in "/\\:" for c in self.name):
            raise TunerError(f"{where}: a preset name needs letters, digits, '-' or '_' only")
        for label, values in (("variants", self.variants), ("epochs", self.epochs),
                              ("lr_exponents", self.lr_exponents)):
            if not values:
                raise TunerError(f"{where}: {label} is empty; give at least one value")
            if len(set(values)) != len(values):
                raise TunerError(f"{where}: {label} has repeated values {list(values)}")
        for label in self.variants:
            split_label(label)
        if any(not (math.isfinite(e) and e > 0) for e in self.epochs):
            raise TunerError(f"{where}: epoch budgets must be positive, got {list(self.epochs)}")
        for name in ("batch_size", "num_samples"):
            if int(getattr(self, name)) <= 0:
                raise TunerError(f"{where}: {name} must be positive, got {getattr(self, name)}")
        for name in ("resolution", "eval_resolution"):
            value = getattr(self, name)
            if value is not None and resolution_problem(value):
                raise TunerError(f"{where}: {name} {resolution_problem(value)}")
        if not 0 < self.grace_period <= 1:
            raise TunerError(f"{where}: grace_period is a fraction of the run, in (0, 1]")
        if self.reduction_factor <= 1:
            raise TunerError(f"{where}: reduction_factor must be greater than 1")
        taken = sorted(set(dict(self.overrides)) & set(CELL_KEYS))
        if taken:
            raise TunerError(
                f"{where}: overrides may not set {', '.join(taken)}: the search space sets them per trial"
            )
        fixed = sorted(set(dict(self.overrides)) & {"batch_size", "dataset", "resolution", "eval_resolution"})
        if fixed:
            raise TunerError(f"{where}: set {', '.join(fixed)} as preset fields, not overrides")
        for label, epochs, k in self.only_cells:
            if label not in self.variants or epochs not in self.epochs or k not in self.lr_exponents:
                raise TunerError(
                    f"{where}: only_cells lists ({label}, {epochs:g}, {k}), which is not a cell of its grid "
                    f"(variants {', '.join(self.variants)}; epochs {', '.join(f'{e:g}' for e in self.epochs)}; "
                    f"lr exponents {', '.join(map(str, self.lr_exponents))})"
                )
        if len(set(self.only_cells)) != len(self.only_cells):
            raise TunerError(f"{where}: only_cells lists a cell twice")
        unknown = sorted(set(dict(self.cpu_changes)) - {f.name for f in dataclasses.fields(Preset)})
        if unknown:
            raise TunerError(f"{where}: cpu_changes names unknown preset fields {', '.join(unknown)}")

    # The grid --------------------------------------------------------------

    @property
    def lrs(self) -> tuple[float, ...]:
        """The LR grid, lowest first: base_lr(batch_size)·2^k for k in lr_exponents."""
        base = base_lr(self.batch_size)
        return tuple(base * 2.0**k for k in sorted(self.lr_exponents))

    def cells(self) -> list[Cell]:
        """Every (variant, epochs, lr) cell, variants in preset order, then epochs, then LR
        (only those of `only_cells`, when it is given)."""
        keep = set(self.only_cells)
        out = []
        for label in self.variants:
            variant, width, depth = split_label(label)
            for epochs in self.epochs:
                for k, lr in zip(sorted(self.lr_exponents), self.lrs):
                    if not keep or (label, epochs, k) in keep:
                        out.append(Cell(label, variant, width, depth, epochs, lr))
        return out

    def trainer_overrides(self) -> dict[str, Any]:
        return dict(self.overrides)

    def base_config(self, **changes: Any) -> dict[str, Any]:
        """The trainer fields every trial shares (everything but the cell).

        `changes` (e.g. a different dataset or seed from the command line) replace the
        preset's values; None values are ignored.
        """
        config: dict[str, Any] = {
            "batch_size": self.batch_size,
            "dataset": self.dataset,
            "resolution": self.resolution,
        }
        if self.eval_resolution is not None:
            config["eval_resolution"] = self.eval_resolution
        config.update(self.trainer_overrides())
        taken = sorted(set(changes) & set(CELL_KEYS))
        if taken:
            raise TunerError(f"{', '.join(taken)} are set per trial by the search space, not for the whole sweep")
        config.update({k: v for k, v in changes.items() if v is not None})
        return config

    # The CPU form ------------------------------------------------------------

    def cpu(self) -> Preset:
        """The CPU form (big_vision's `runlocal`): this preset with `cpu_changes` applied.

        A preset with no changes is already CPU-sized and is its own CPU form.
        """
        if not self.cpu_changes:
            return self
        changes = dict(self.cpu_changes)
        changes.setdefault("name", f"{self.name}-cpu")
        changes["cpu_changes"] = {}
        return dataclasses.replace(self, **changes)

    @property
    def cpu_sized(self) -> bool:
        return not self.cpu_changes

    def describe(self) -> str:
        """A few lines: what it is, how to run it, what it costs, its grid."""
        lrs = ", ".join(f"{lr:g}" for lr in self.lrs)
        return "\n".join(
            [
                f"preset {self.name}: {self.summary}",
                f"  run:  {self.command}",
                f"  cost: {self.cost}",
                f"  variants {', '.join(self.variants)}; epochs {', '.join(f'{e:g}' for e in self.epochs)}; "
                f"lr {lrs} (batch {self.batch_size})",
                f"  dataset {self.dataset} at {self.resolution}px; {len(self.cells())} cells",
            ]
        )
