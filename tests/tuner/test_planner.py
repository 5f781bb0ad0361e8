"""The two-trial LR planner on hand-built ledger rows (no Ray, no training)."""

import math

import pytest

from tuner.errors import TunerError
from tuner.planner import (
    base_lr,
    cell_label,
    decide,
    next_lower,
    parse_label,
    plan,
    snap_to_grid,
    transfer_lr,
    tuned_cells,
)

NANO, MICRO, MINI = 300_000, 860_000, 2_000_000


def row(variant, epochs, lr, loss, params, batch=256, status="finished", kind="pretrain", **extra):
    return {
        "trial_id": f"{variant}-{epochs}-{lr}-{batch}-{status}",
        "kind": kind,
        "variant": variant,
        "width_mult": 1.0,
        "depth_mult": 1.0,
        "params": params,
        "epochs": float(epochs),
        "lr": lr,
        "batch_size": batch,
        "final_val_loss": loss,
        "status": status,
        "dataset": "digits",
        **extra,
    }


def test_base_lr_is_paper_value_scaled_linearly():
    assert base_lr(4096) == pytest.approx(1.6)
    assert base_lr(256) == pytest.approx(0.1)
    assert base_lr(1024) == pytest.approx(0.4)


def test_snap_to_grid_rounds_down_with_tolerance():
    assert snap_to_grid(0.1, 256) == pytest.approx(0.1)
    assert snap_to_grid(0.099, 256) == pytest.approx(0.05)
    assert snap_to_grid(0.3, 256) == pytest.approx(0.2)
    # A value a hair below a grid point from float arithmetic stays on it.
    assert snap_to_grid(0.1 * (1 - 1e-9), 256) == pytest.approx(0.1)
    assert snap_to_grid(1.6 / 2**5, 4096) == pytest.approx(0.05)
    with pytest.raises(TunerError):
        snap_to_grid(0.0, 256)


def test_next_lower_and_transfer():
    assert next_lower(0.1) == pytest.approx(0.05)
    assert transfer_lr(0.4, 1024, 256) == pytest.approx(0.1)
    assert transfer_lr(1.6, 4096, 512) == pytest.approx(0.2)


def test_labels_round_trip():
    assert cell_label("F0", 0.5, 2.0) == "F0-w0.5-d2"
    assert cell_label("nano") == "nano"
    assert parse_label("F0-w0.5-d2") == ("F0", 0.5, 2.0)
    assert parse_label("F1+") == ("F1+", 1.0, 1.0)


def test_no_prior_cell_starts_from_paper_lr_scaled_to_batch():
    p = plan([], "nano", 2, 256, NANO)
    assert p.lrs == pytest.approx((0.1, 0.05))
    assert p.upper_bound == pytest.approx(0.1)
    assert p.binding_cell is None and p.bounding_cells == []
    assert "no prior cell" in p.reason
    assert plan([], "F0", 90, 4096, 71_000_000).lrs == pytest.approx((1.6, 0.8))


def test_smaller_shorter_cell_bounds_the_target():
    rows = [row("nano", 1, 0.1, 1.0, NANO), row("nano", 1, 0.05, 1.2, NANO), row("nano", 1, 0.2, 1.5, NANO)]
    p = plan(rows, "micro", 4, 256, MICRO)
    assert p.upper_bound == pytest.approx(0.1)
    assert p.lrs == pytest.approx((0.1, 0.05))
    assert p.binding_cell.variant == "nano" and p.binding_cell.lr == pytest.approx(0.1)
    assert not p.already_tuned


def test_larger_model_or_longer_run_does_not_bind():
    rows = [
        row("mini", 1, 0.025, 1.0, MINI),  # larger model
        row("nano", 8, 0.0125, 1.0, NANO),  # longer run
        row("nano", 1, 0.1, 1.0, NANO),
    ]
    p = plan(rows, "micro", 4, 256, MICRO)
    assert p.upper_bound == pytest.approx(0.1)
    assert [c.variant for c in p.bounding_cells] == ["nano"]
    assert [c.epochs for c in p.bounding_cells] == [1.0]


def test_minimum_over_several_bounding_cells():
    rows = [
        row("nano", 1, 0.2, 1.0, NANO),
        row("nano", 4, 0.1, 1.0, NANO),
        row("micro", 1, 0.05, 1.0, MICRO),
        row("micro", 1, 0.1, 1.3, MICRO),
    ]
    p = plan(rows, "micro", 4, 256, MICRO)
    assert p.upper_bound == pytest.approx(0.05)
    assert p.lrs == pytest.approx((0.05, 0.025))
    assert p.binding_cell.variant == "micro" and p.binding_cell.epochs == 1.0
    assert len(p.bounding_cells) == 3
    assert "micro" in p.reason


def test_batch_size_transfer():
    rows = [row("nano", 1, 0.4, 1.0, NANO, batch=1024)]
    p = plan(rows, "nano", 2, 256, NANO)
    assert p.upper_bound == pytest.approx(0.1)
    cell = p.binding_cell
    assert (cell.lr, cell.batch_size, cell.transferred_lr) == pytest.approx((0.4, 1024, 0.1))
    # Off-grid transfers snap down: 0.3 at 1024 -> 0.075 at 256 -> 0.05.
    assert plan([row("nano", 1, 0.3, 1.0, NANO, batch=1024)], "nano", 2, 256, NANO).upper_bound == pytest.approx(0.05)


def test_diverged_and_stopped_rows_do_not_define_an_optimum():
    rows = [
        row("nano", 1, 0.0125, math.nan, NANO, status="diverged"),
        row("nano", 1, 0.025, 0.5, NANO, status="stopped"),
        row("nano", 1, 0.1, 1.0, NANO),
        row("nano", 1, 0.05, 1.1, NANO, status="imported"),
    ]
    p = plan(rows, "nano", 2, 256, NANO)
    assert p.upper_bound == pytest.approx(0.1)
    # An imported row counts as tuned.
    (cell,) = tuned_cells([row("nano", 1, 0.05, 1.1, NANO, status="imported")])
    assert cell.lr == pytest.approx(0.05)


def test_finetune_rows_and_other_datasets_are_ignored():
    rows = [
        row("nano", 1, 0.0125, 0.1, NANO, kind="finetune"),
        row("nano", 1, 0.025, 0.1, NANO, dataset="fashion_mnist"),
        row("nano", 1, 0.1, 1.0, NANO),
    ]
    assert plan(rows, "micro", 2, 256, MICRO).upper_bound == pytest.approx(0.025)
    assert plan(rows, "micro", 2, 256, MICRO, dataset="digits").upper_bound == pytest.approx(0.1)


def test_target_already_tuned_is_reported():
    rows = [row("micro", 4, 0.05, 1.0, MICRO), row("micro", 4, 0.1, 1.2, MICRO)]
    p = plan(rows, "micro", 4, 256, MICRO)
    assert p.already_tuned and p.tuned_lr == pytest.approx(0.05)
    assert "already tuned" in p.reason
    assert not plan(rows, "micro", 8, 256, MICRO).already_tuned


def test_multipliers_are_part_of_the_cell_and_unknown_sizes_bind_only_themselves():
    rows = [
        row("F0", 1, 0.05, 1.0, None, width_mult=0.5),
        row("F0", 1, 0.025, 1.0, None),
    ]
    p = plan(rows, "F0-w0.5", 2, 256, None)
    assert p.variant == "F0-w0.5"
    assert p.upper_bound == pytest.approx(0.05)
    assert [c.variant for c in p.bounding_cells] == ["F0-w0.5"]


def test_extend_adds_a_third_trial_and_to_dict_is_plain():
    p = plan([row("nano", 1, 0.1, 1.0, NANO)], "nano", 2, 256, NANO, extend=True)
    assert p.lrs == pytest.approx((0.1, 0.05, 0.025))
    d = p.to_dict()
    assert d["lrs"] == pytest.approx([0.1, 0.05, 0.025])
    assert d["binding_cell"]["transferred_lr"] == pytest.approx(0.1)
    assert d["bounding_cells"][0]["variant"] == "nano"


def test_decide_picks_lowest_loss():
    d = decide([(0.1, 1.00, "finished"), (0.05, 1.02, "finished")])
    assert d.winner == pytest.approx(0.1) and d.winner_loss == pytest.approx(1.0)
    assert not d.wide_margin and d.suggest_extension is None


def test_decide_diverged_trial_loses():
    d = decide([(0.1, 0.5, "diverged"), (0.05, 1.0, "finished")])
    assert d.winner == pytest.approx(0.05)
    # The upper trial diverging while the lower finished counts as a wide margin.
    assert d.wide_margin and d.suggest_extension == pytest.approx(0.025)
    d = decide([(0.1, math.nan, "finished"), (0.05, 1.0, "finished")])
    assert d.winner == pytest.approx(0.05)


def test_a_wide_win_of_the_highest_lr_says_the_optimum_may_lie_above():
    d = decide([(0.05, 1.0, "finished"), (0.025, 1.3, "finished")])
    assert d.winner == pytest.approx(0.05) and d.above_bound and not d.wide_margin
    assert d.suggest_extension is None and "optimum may lie above it" in d.message
    assert not decide([(0.05, 1.0, "finished"), (0.025, 1.04, "finished")]).above_bound
    # A diverged lower trial says nothing about what lies above; neither does a single trial.
    assert not decide([(0.05, 1.0, "finished"), (0.025, None, "diverged")]).above_bound
    assert not decide([(0.05, 1.0, "finished")]).above_bound


def test_decide_all_diverged():
    d = decide([(0.1, math.nan, "diverged"), (0.05, math.inf, "diverged")])
    assert d.winner is None and d.winner_loss is None
    assert "diverged" in d.message
    assert d.suggest_extension == pytest.approx(0.025)
    with pytest.raises(TunerError):
        decide([])


def test_wide_margin_suggests_extension():
    d = decide([(0.1, 1.10, "finished"), (0.05, 1.00, "finished")])
    assert d.winner == pytest.approx(0.05)
    assert d.wide_margin and d.suggest_extension == pytest.approx(0.025)
    assert "0.025" in d.message
    # Within the margin: no extension; a looser margin turns it off too.
    assert not decide([(0.1, 1.04, "finished"), (0.05, 1.00, "finished")]).wide_margin
    assert not decide([(0.1, 1.10, "finished"), (0.05, 1.00, "finished")], margin=0.2).wide_margin
    # The higher LR winning is never a wide margin for extension.
    assert not decide([(0.1, 1.00, "finished"), (0.05, 1.50, "finished")]).wide_margin
