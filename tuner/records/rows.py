"""A trial's ledger row: built from its config and last result (status, losses, compute,
checkpoint). The keys the trainable reports that rows read are named here. Rows go to
JSON through `nfnet.metrics.json_safe` (NaN and infinity as null, times as ISO text).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tuner.records.cells import parse_label


# Metrics the trainer reports that are renamed on their way to Tune (see above).
SCHEDULE_DONE = "schedule_done"


BEST_VAL_LOSS = "best_val_loss"


def trial_status(last_result: Mapping[str, Any]) -> str:
    """`finished`, `diverged` or `stopped` (ended by the scheduler before its schedule did)."""
    if last_result.get("diverged"):
        return "diverged"
    loss = last_result.get("val_loss")
    if loss is not None and not math.isfinite(loss):
        return "diverged"
    if last_result.get(SCHEDULE_DONE):
        return "finished"
    progress = last_result.get("progress")
    if progress is not None and progress >= 1.0 - _PROGRESS_TOLERANCE:
        return "finished"
    return "stopped"


def dataset_label(dataset: str | None, max_train_examples: int | None = None) -> str | None:
    """The ledger's dataset: the spec, as `spec[n]` when training used a fixed n-example subset.

    The trainer names its subsets the same way. A cell trained on a subset is a
    different cell, so the planner never lets it bound runs on the whole dataset.
    """
    if dataset is None or not max_train_examples:
        return dataset
    return f"{dataset}[{int(max_train_examples)}]"


def _finite_min(*values: Any) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return min(finite) if finite else None


def ledger_resolution(config: Mapping[str, Any], variant: str, width: float, depth: float) -> int | None:
    """The training resolution a ledger row records: the config's, else the variant's own."""
    if config.get("resolution"):
        return int(config["resolution"])
    from nfnet.errors import NFNetError
    from nfnet.variants import get_variant

    try:
        return get_variant(variant, width, depth).train_resolution
    except NFNetError:
        return None


def ledger_row(
    trial_id: str,
    experiment: str,
    config: Mapping[str, Any],
    last_result: Mapping[str, Any],
    source: str,
    status: str | None = None,
    checkpoint_uri: str | None = None,
    best_val_loss: float | None = None,
) -> dict[str, Any]:
    """A pre-training ledger row from a trial's config and its last reported result.

    `status` defaults to `trial_status(last_result)`. The best loss is the lowest
    of `best_val_loss` (the trial's whole history, e.g. Ray's metric analysis),
    the result's running best and its last loss.
    """
    # The variant may carry its multipliers (`nano-w0.5`); the row keeps them apart.
    variant, width, depth = parse_label(str(config["variant"]))
    width *= float(config.get("width_mult", 1.0))
    depth *= float(config.get("depth_mult", 1.0))
    loss = last_result.get("val_loss")
    device_seconds = last_result.get("device_seconds")
    return {
        "trial_id": trial_id,
        "experiment": experiment,
        "kind": "pretrain",
        "parent_trial_id": None,
        "variant": variant,
        "width_mult": width,
        "depth_mult": depth,
        "params": None if last_result.get("params") is None else int(last_result["params"]),
        "epochs": float(last_result.get("epochs") or config["epochs"]),
        "lr": float(config["lr"]),
        "batch_size": int(config.get("batch_size", 256)),
        "dataset": dataset_label(config.get("dataset"), config.get("max_train_examples")),
        "resolution": ledger_resolution(config, variant, width, depth),
        "seed": int(config.get("seed", 0)),
        "final_val_loss": None if loss is None else float(loss),
        "best_val_loss": _finite_min(best_val_loss, last_result.get(BEST_VAL_LOSS), loss),
        "top1": None if last_result.get("val_top1") is None else float(last_result["val_top1"]),
        "train_loss": None if last_result.get("train_loss") is None else float(last_result["train_loss"]),
        "flops": None if last_result.get("flops") is None else float(last_result["flops"]),
        "device_hours": None if device_seconds is None else float(device_seconds) / 3600.0,
        "images_seen": None if last_result.get("images_seen") is None else int(last_result["images_seen"]),
        "status": status or trial_status(last_result),
        "source": source,
        # Slice trials keep their checkpoints in the shared workdir and report where.
        "checkpoint_uri": checkpoint_uri or last_result.get("checkpoint_dir"),
    }


def finite(value: Any) -> bool:
    """A number (not a bool, not None) that is neither NaN nor infinite: a loss, FLOPs or LR a row can use."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# A run counts as through its schedule when `progress` is this close to 1.
_PROGRESS_TOLERANCE = 1e-6
