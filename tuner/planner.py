"""The paper's two-trial learning-rate search, as pure functions over ledger rows.

[P2] Sec. 3: "one can efficiently tune the learning rate within 2 trials by assuming
that the optimal learning rate falls slowly but monotonically as both the model size
and the epoch budget increase". Made precise here:

- LRs live on a factor-2 grid anchored at the paper's 1.6 at batch 4096 and scaled
  linearly with the batch size (the reference code's lr × batch/256 rule).
- A cell is (variant with its width/depth multipliers, epochs); a cell tuned at one
  batch size gives a tuned point whose optimum is the LR of its lowest final
  held-out loss among finished (or imported) pre-training rows.
- Every tuned point no larger in parameters and no longer in epochs than the target
  bounds the target's optimum from above, after transfer to the target's batch size
  (linear scaling, snapped down to the grid). The smallest bound is `ub`; the two
  trials are `ub` and `ub/2`.

No Ray and no JAX here; `variant_params` imports `nfnet` lazily.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from tuner.errors import TunerError

# [P2] Sec. 3: peak LR 1.6 at batch 4096 (= 0.1 × 4096/256, linear scaling).
PAPER_LR = 1.6
PAPER_BATCH = 4096
# Snapping tolerance in log2 units, so 0.1 × 2^k computed in floating point stays on k.
GRID_TOLERANCE = 1e-6
# Statuses whose final held-out loss is a finished run's (imported rows are assumed finished).
TUNED_STATUSES = frozenset({"finished", "imported"})
# Default relative loss gap for "the lower LR wins by a wide margin" (see `decide`).
WIDE_MARGIN = 0.05

_LABEL = re.compile(r"^(?P<base>.+?)(?:-w(?P<w>[0-9.]+))?(?:-d(?P<d>[0-9.]+))?$")


def base_lr(batch_size: int) -> float:
    """The paper's 1.6 at batch 4096 scaled linearly to `batch_size` (0.1 × batch/256)."""
    if batch_size <= 0:
        raise TunerError(f"batch size must be positive, got {batch_size}")
    return PAPER_LR * batch_size / PAPER_BATCH


def snap_to_grid(lr: float, batch_size: int) -> float:
    """Round `lr` down to the grid base_lr(batch_size)·2^k (k integer)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise TunerError(f"learning rate must be a positive number, got {lr}")
    base = base_lr(batch_size)
    k = math.floor(math.log2(lr / base) + GRID_TOLERANCE)
    return base * 2.0**k


def next_lower(lr: float) -> float:
    """The next grid point below `lr` (the grid is spaced by factors of 2)."""
    return lr / 2.0


def transfer_lr(lr: float, from_batch: int, to_batch: int) -> float:
    """Linear LR scaling between batch sizes, snapped down to the target's grid."""
    return snap_to_grid(lr * to_batch / from_batch, to_batch)


def cell_label(variant: str, width_mult: float = 1.0, depth_mult: float = 1.0) -> str:
    """`F0`, `F0-w0.5`, `F0-w0.5-d2`: the same spelling as `nfnet.variants.Variant.label`."""
    parts = [variant]
    if width_mult != 1.0:
        parts.append(f"w{width_mult:g}")
    if depth_mult != 1.0:
        parts.append(f"d{depth_mult:g}")
    return "-".join(parts)


def parse_label(label: str) -> tuple[str, float, float]:
    """Split `F0-w0.5-d2` into ("F0", 0.5, 2.0); a plain name has multipliers 1."""
    match = _LABEL.match(label.strip())
    if not match:
        return label.strip(), 1.0, 1.0
    w, d = match.group("w"), match.group("d")
    try:
        return match.group("base"), float(w) if w else 1.0, float(d) if d else 1.0
    except ValueError:
        return label.strip(), 1.0, 1.0


@lru_cache(maxsize=None)
def variant_params(name: str, width_mult: float = 1.0, depth_mult: float = 1.0) -> int | None:
    """Parameter count of a variant with a 1000-way head, or None when nfnet cannot say.

    Used for rows (imported CSVs) that carry no `params`; None falls back to
    ordering by variant name.
    """
    try:
        from nfnet.counting import count_params
        from nfnet.errors import NFNetError
        from nfnet.variants import get_variant
    except ImportError:
        return None
    try:
        return int(count_params(get_variant(name, width_mult, depth_mult), num_classes=1000))
    except NFNetError:
        return None


@dataclass(frozen=True)
class TunedCell:
    """One (variant, epochs) cell tuned at one batch size: its best pre-training row."""

    variant: str
    width_mult: float
    depth_mult: float
    epochs: float
    batch_size: int
    params: int | None
    lr: float
    final_val_loss: float
    trial_id: str | None
    dataset: str | None

    @property
    def label(self) -> str:
        return cell_label(self.variant, self.width_mult, self.depth_mult)


class BoundingCell(NamedTuple):
    """A tuned cell that bounds the target: its optimum, and that optimum at the target's batch."""

    variant: str  # label with multipliers, e.g. "F0-w0.5"
    epochs: float
    lr: float
    batch_size: int
    transferred_lr: float


def _as_rows(rows: Any) -> list[Mapping[str, Any]]:
    # A pyarrow Table straight from Ledger.read() is accepted as well as a list of dicts.
    return rows.to_pylist() if hasattr(rows, "to_pylist") else list(rows)


def _float(value: Any, default: float) -> float:
    return default if value is None else float(value)


def tuned_cells(rows: Iterable[Mapping[str, Any]], dataset: str | None = None) -> list[TunedCell]:
    """Each (variant, multipliers, epochs, batch size)'s optimum from finished pre-training rows.

    Cells tuned at several batch sizes give one point per batch size: losses are
    compared only between runs that differ in the LR alone. Stopped and diverged
    rows never define an optimum (a stopped run's loss is not a final loss).
    """
    best: dict[tuple, TunedCell] = {}
    for row in _as_rows(rows):
        if row.get("kind", "pretrain") != "pretrain" or row.get("status") not in TUNED_STATUSES:
            continue
        if dataset is not None and row.get("dataset") != dataset:
            continue
        loss, lr = row.get("final_val_loss"), row.get("lr")
        if loss is None or lr is None or not math.isfinite(loss) or not lr > 0:
            continue
        cell = TunedCell(
            variant=row["variant"],
            width_mult=_float(row.get("width_mult"), 1.0),
            depth_mult=_float(row.get("depth_mult"), 1.0),
            epochs=float(row["epochs"]),
            batch_size=int(row["batch_size"]),
            params=None if row.get("params") is None else int(row["params"]),
            lr=float(lr),
            final_val_loss=float(loss),
            trial_id=row.get("trial_id"),
            dataset=row.get("dataset"),
        )
        key = (cell.variant, cell.width_mult, cell.depth_mult, cell.epochs, cell.batch_size)
        held = best.get(key)
        # Ties go to the lower LR: the conservative side of a falling optimum.
        if held is None or (cell.final_val_loss, cell.lr) < (held.final_val_loss, held.lr):
            best[key] = cell
    return list(best.values())


@dataclass(frozen=True)
class Plan:
    """The LRs to run for one target cell, and why."""

    variant: str
    epochs: float
    batch_size: int
    params: int | None
    lrs: tuple[float, ...]
    upper_bound: float
    bounding_cells: list[BoundingCell] = field(default_factory=list)
    binding_cell: BoundingCell | None = None
    already_tuned: bool = False
    tuned_lr: float | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lrs"] = list(self.lrs)
        out["bounding_cells"] = [c._asdict() for c in self.bounding_cells]
        out["binding_cell"] = self.binding_cell._asdict() if self.binding_cell else None
        return out


def _no_larger(cell: TunedCell, variant: str, width: float, depth: float, params: int | None) -> bool:
    if cell.params is not None and params is not None:
        return cell.params <= params
    # Without both sizes only the target's own shape is known to be no larger.
    return (cell.variant, cell.width_mult, cell.depth_mult) == (variant, width, depth)


def plan(
    rows: Iterable[Mapping[str, Any]],
    variant: str,
    epochs: float,
    batch_size: int,
    params: int | None,
    extend: bool = False,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    dataset: str | None = None,
) -> Plan:
    """The two trials (ub, ub/2) for a target cell; with `extend`, also ub/4.

    `variant` may carry its multipliers (`F0-w0.5`); `dataset` restricts the
    bounding cells to rows of that dataset.
    """
    if epochs <= 0:
        raise TunerError(f"epochs must be positive, got {epochs}")
    base, w, d = parse_label(variant)
    width_mult, depth_mult = w * width_mult, d * depth_mult
    label = cell_label(base, width_mult, depth_mult)

    bounding: list[BoundingCell] = []
    tuned_here: list[float] = []
    for cell in tuned_cells(rows, dataset=dataset):
        if cell.epochs > epochs or not _no_larger(cell, base, width_mult, depth_mult, params):
            continue
        moved = transfer_lr(cell.lr, cell.batch_size, batch_size)
        bounding.append(BoundingCell(cell.label, cell.epochs, cell.lr, cell.batch_size, moved))
        if (cell.variant, cell.width_mult, cell.depth_mult, cell.epochs) == (base, width_mult, depth_mult, float(epochs)):
            tuned_here.append(moved)
    bounding.sort(key=lambda c: (c.transferred_lr, c.epochs, c.variant))

    if bounding:
        binding = bounding[0]
        ub = binding.transferred_lr
        reason = (
            f"ub {ub:g} from {binding.variant} at {binding.epochs:g} epochs "
            f"(lr {binding.lr:g} at batch {binding.batch_size}, {ub:g} at batch {batch_size}); "
            f"{len(bounding)} bounding cell(s)"
        )
    else:
        binding = None
        ub = base_lr(batch_size)
        reason = f"no prior cell: ub = paper's 1.6 at batch 4096 scaled to batch {batch_size} = {ub:g}"
    tuned_lr = min(tuned_here) if tuned_here else None
    if tuned_lr is not None:
        reason += f"; {label} at {epochs:g} epochs is already tuned (best lr {tuned_lr:g} at batch {batch_size})"
    lrs = (ub, ub / 2, ub / 4) if extend else (ub, ub / 2)
    return Plan(
        variant=label,
        epochs=float(epochs),
        batch_size=batch_size,
        params=params,
        lrs=lrs,
        upper_bound=ub,
        bounding_cells=bounding,
        binding_cell=binding,
        already_tuned=tuned_lr is not None,
        tuned_lr=tuned_lr,
        reason=reason,
    )


@dataclass(frozen=True)
class Decision:
    """Which of the planned trials won, and whether a third, lower trial is advised."""

    winner: float | None
    winner_loss: float | None
    wide_margin: bool
    suggest_extension: float | None
    message: str
    # The highest LR tried won by a wide margin: the optimum may lie above the bound.
    above_bound: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_diverged(val_loss: float | None, status: str) -> bool:
    return status == "diverged" or val_loss is None or not math.isfinite(val_loss)


def decide(results: Iterable[tuple[float, float | None, str]], margin: float = WIDE_MARGIN) -> Decision:
    """Pick the winner of a two-(or three-)trial LR search.

    `results` are (lr, final val_loss, status). The winner has the lowest loss
    among trials that did not diverge (a NaN/inf loss counts as diverged). The
    lower LR wins "by a wide margin" when it is the lowest LR tried and the
    runner-up's loss exceeds the winner's by more than `margin` × the winner's
    loss (5% by default: on the paper's ImageNet losses the two trials at ub and
    ub/2 usually land within a few percent of each other), or when every higher
    LR diverged. That hints that the optimum has fallen faster than the
    monotone-slow assumption allows, so a third trial one grid step lower is
    suggested. The mirror case, the highest LR winning by a wide margin, hints that
    the optimum lies above the bound (a bound that is not a tuned cell's optimum, or
    an optimum that rose): `above_bound` says so, and nothing above is tried.
    """
    results = [(float(lr), loss, status) for lr, loss, status in results]
    if not results:
        raise TunerError("no trial results to decide between; run the planned trials first")
    alive = sorted(
        ((loss, lr) for lr, loss, status in results if not _is_diverged(loss, status)),
        key=lambda t: (t[0], t[1]),
    )
    lowest_lr = min(lr for lr, _, _ in results)
    if not alive:
        lower = next_lower(lowest_lr)
        return Decision(
            None,
            None,
            False,
            lower,
            f"all {len(results)} trials diverged; try lr {lower:g} and below",
        )
    loss, lr = alive[0]
    wide = above = False
    if lr == lowest_lr and len(results) > 1:
        if len(alive) == 1:
            wide = True
        else:
            wide = (alive[1][0] - loss) > margin * abs(loss)
    elif lr == max(lr for lr, _, _ in results) and len(alive) > 1:
        above = (alive[1][0] - loss) > margin * abs(loss)
    extension = next_lower(lr) if wide else None
    message = f"lr {lr:g} wins with val_loss {loss:.4g}"
    if wide:
        message += f"; the lowest lr won by a wide margin (>{margin:.0%}), consider a third trial at lr {extension:g}"
    if above:
        message += (f"; the highest lr won by a wide margin (>{margin:.0%}): the optimum may lie above it, "
                    "beyond what two trials under the bound can find")
    return Decision(lr, loss, wide, extension, message, above_bound=above)
