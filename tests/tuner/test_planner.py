"""The LR planner on hand-built ledger rows (no Ray, no training): the paper's bound, the
ledger-fitted prediction, the seed noise, the two-way bracketing search and the plan of one cell."""

import math

import pytest

from tuner.errors import TunerError
from tuner.study.planner import DEFAULT_NOISE, Bracket, Trial, base_lr, estimate_noise, first_pair, make_record, next_lower, plan, plan_cell, predict, run_bracket, snap_to_grid, transfer_lr, tuned_cells
from tuner.records.cells import cell_label, parse_label

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


def test_plan_to_dict_is_plain():
    d = plan([row("nano", 1, 0.1, 1.0, NANO)], "nano", 2, 256, NANO).to_dict()
    assert d["lrs"] == pytest.approx([0.1, 0.05])
    assert d["binding_cell"]["transferred_lr"] == pytest.approx(0.1)
    assert d["bounding_cells"][0]["variant"] == "nano"


# ---------------------------------------------------------------- prediction

# A known law at batch 256: log2 lr* = 1 - 0.5 log2(params / NANO) + 0.25 log2(epochs).
def law(params, epochs):
    return 2.0 ** (1 - 0.5 * math.log2(params / NANO) + 0.25 * math.log2(epochs))


def law_rows(cells, batch=256):
    return [row(v, e, law(p, e) * batch / 256, 1.0, p, batch=batch) for v, e, p in cells]


def test_a_fit_over_tuned_cells_recovers_a_known_law_and_moves_it_across_batch_sizes():
    cells = [("nano", 1, NANO), ("nano", 4, NANO), ("micro", 1, MICRO), ("micro", 4, MICRO)]
    # Two of the cells were tuned at batch 1024: linear scaling brings them back.
    rows = law_rows(cells[:2]) + law_rows(cells[2:], batch=1024)
    p = predict(rows, "mini", 2, 256, MINI)
    assert p.source == "fit" and p.cells == 4
    assert p.lr == pytest.approx(law(MINI, 2), rel=1e-6)
    assert p.spread == pytest.approx(0.0, abs=1e-6)
    assert p.coefficients[1] == pytest.approx(-0.5 / math.log(2)) and p.coefficients[2] == pytest.approx(
        0.25 / math.log(2))
    # At another batch size the prediction scales linearly.
    assert predict(rows, "mini", 2, 512, MINI).lr == pytest.approx(2 * law(MINI, 2), rel=1e-6)


def test_a_rising_optimum_is_predicted_where_the_bound_cannot_go():
    # The optimum rises with epochs: the paper's bound would cap a longer cell at the shortest one's.
    rows = [row("nano", e, 0.1 * e, 1.0, NANO) for e in (1, 2, 4)]
    p = predict(rows, "nano", 8, 256, NANO)
    assert p.source == "fit" and p.lr == pytest.approx(0.8, rel=1e-6)
    assert p.bound.upper_bound == pytest.approx(0.1)


def test_with_too_few_cells_the_prediction_is_the_paper_bound_then_a_floor_then_the_default():
    p = predict([row("nano", 1, 0.2, 1.0, NANO), row("nano", 1, 0.1, 1.1, NANO)], "micro", 2, 256, MICRO)
    assert p.source == "bound" and p.lr == pytest.approx(0.2)
    # Only a larger cell is tuned: its optimum is a floor, and the pair goes up from it.
    p = predict([row("mini", 4, 0.1, 1.0, MINI)], "nano", 1, 256, NANO)
    assert p.source == "floor" and p.lr == pytest.approx(0.1)
    assert first_pair(p, 256) == pytest.approx((0.1, 0.2))
    p = predict([], "nano", 1, 128, NANO)
    assert p.source == "default" and p.lr == pytest.approx(0.05)
    assert first_pair(p, 128) == pytest.approx((0.05, 0.025))  # the paper's pair


def test_the_target_cell_and_other_datasets_never_predict_themselves():
    rows = law_rows([("nano", 1, NANO), ("nano", 2, NANO), ("nano", 4, NANO)])
    rows.append(row("micro", 2, 6.4, 0.1, MICRO))  # the target's own run: ignored by the prediction
    rows.append(row("micro", 1, 6.4, 0.1, MICRO, dataset="other"))
    p = predict(rows, "micro", 2, 256, MICRO, dataset="digits")
    assert p.source == "fit" and p.cells == 3


def test_first_pair_straddles_a_prediction_between_grid_points():
    from tuner.study.planner import Prediction

    assert first_pair(Prediction(0.3, "fit", ""), 256) == pytest.approx((0.4, 0.2))
    assert first_pair(Prediction(0.1, "fit", ""), 256) == pytest.approx((0.1, 0.05))


# ---------------------------------------------------------------- noise


def test_noise_comes_from_the_flag_then_the_ledgers_seed_repeats_then_the_default():
    rows = [row("nano", 1, 0.1, loss, NANO, seed=seed, trial_id=f"s{seed}")
            for seed, loss in enumerate((1.0, 1.1, 0.9))]
    rows += [row("nano", 1, 0.2, loss, NANO, seed=seed, trial_id=f"t{seed}") for seed, loss in enumerate((2.0, 2.0))]
    est = estimate_noise(rows)
    # Spreads 0.1 (std of 1.0, 1.1, 0.9 over their mean) and 0: the median is 0.05.
    assert est.source == "ledger" and est.points == 2 and est.value == pytest.approx(0.05)
    assert estimate_noise(rows, dataset="other").source == "default"
    assert estimate_noise([]).value == DEFAULT_NOISE
    assert estimate_noise(rows, flag=0.01).value == 0.01 and estimate_noise(rows, flag=0.01).source == "flag"
    with pytest.raises(TunerError, match="--noise"):
        estimate_noise(rows, flag=-0.1)


# ---------------------------------------------------------------- the bracket


def curve(best_lr, step_cost=0.05, diverge_above=None):
    """Losses on the grid: 1 at best_lr, rising by step_cost per squared grid step."""
    def loss(lr):
        if diverge_above is not None and lr > diverge_above * (1 + 1e-9):
            return Trial(lr, None, "diverged")
        return Trial(lr, 1.0 + step_cost * math.log2(lr / best_lr) ** 2)
    return lambda lrs: [loss(lr) for lr in lrs]


def test_the_search_walks_up_to_an_optimum_far_above_the_start_and_brackets_it():
    b = Bracket(128, (0.05, 0.025), noise=0.01, eager=True)
    v = run_bracket(b, curve(0.4))
    assert v.done and v.bracketed and v.stop == "bracketed" and v.lr == pytest.approx(0.4)
    # Rounds of two; a steep trend from the paper's default also runs the point beyond the next.
    assert [len(r) for r in b.rounds] == [2, 2, 2]
    assert sorted(t.lr for t in b.history()) == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4, 0.8])


def test_the_search_walks_down_when_the_lower_lr_wins():
    b = Bracket(256, (0.1, 0.05), noise=0.01)
    v = run_bracket(b, curve(0.0125))
    assert v.bracketed and v.lr == pytest.approx(0.0125)
    assert b.rounds[0] == pytest.approx((0.1, 0.05)) and b.rounds[1] == pytest.approx((0.025,))
    assert min(t.lr for t in b.history()) == pytest.approx(0.00625)


def test_a_gap_within_the_noise_is_a_tie_and_ends_the_search():
    flat = curve(0.07, step_cost=0.01)  # 0.1 and 0.05 within 1% of each other
    b = Bracket(256, (0.1, 0.05), noise=0.02)
    v = run_bracket(b, flat)
    assert v.done and v.tied and not v.bracketed and v.stop == "tied" and len(b.history()) == 2
    assert v.runner_up is not None and "tie" in v.message
    # With no noise the same gap is a win, and the search brackets it.
    b = Bracket(256, (0.1, 0.05), noise=0.0)
    assert run_bracket(b, flat).bracketed


def test_a_diverged_neighbour_closes_its_side():
    b = Bracket(256, (0.2, 0.1), noise=0.01)
    v = run_bracket(b, curve(0.4, diverge_above=0.2))
    # 0.2 beat 0.1, 0.4 diverged: 0.2 is bracketed by a worse neighbour and a divergence.
    assert v.bracketed and v.lr == pytest.approx(0.2)


def test_after_every_trial_diverged_the_search_goes_down():
    b = Bracket(256, (0.8, 0.4), noise=0.01)
    v = run_bracket(b, curve(0.05, diverge_above=0.1))
    assert v.lr == pytest.approx(0.05) and v.bracketed


def test_max_trials_stops_the_search_unbracketed():
    b = Bracket(256, (0.1, 0.05), noise=0.0, max_trials=3)
    v = run_bracket(b, curve(3.2))
    assert v.done and not v.bracketed and v.stop == "max-trials" and b.run == 3
    assert "rerun" in v.message


def test_known_outcomes_start_the_search_and_cost_nothing():
    known = curve(0.2)([0.05, 0.1, 0.2])
    b = Bracket(256, (), noise=0.01, known=known)
    assert b.next_round() == pytest.approx([0.4])
    b.record(curve(0.2)([0.4]))
    v = b.verdict()
    assert v.bracketed and v.lr == pytest.approx(0.2) and b.run == 1
    with pytest.raises(TunerError, match="factor-2 grid"):
        b.record([Trial(0.3, 1.0)])


def test_a_round_never_exceeds_parallel():
    b = Bracket(256, (0.1, 0.05), noise=0.0, parallel=1, eager=True)
    run_bracket(b, curve(1.6))
    assert all(len(r) == 1 for r in b.rounds) and b.verdict().lr == pytest.approx(1.6)
    with pytest.raises(TunerError, match="--parallel"):
        Bracket(256, (0.1,), noise=0.0, parallel=0)


# ---------------------------------------------------------------- one cell


def test_plan_cell_reuses_the_ledgers_runs_of_the_cell_and_a_finished_search_is_done():
    import json

    rows = [row("nano", 1, lr, 1.0 + abs(math.log2(lr / 0.2)) / 10, NANO, seed=0, source="sweep",
                trial_id=f"g{lr}") for lr in (0.1, 0.2, 0.4)]
    cell = plan_cell(rows, "nano", 1, 256, NANO, dataset="digits", seed=0)
    assert cell.status == "new" and cell.start == () and len(cell.known) == 3
    assert cell.bracket().next_round() == []  # the sweep's runs already bracket it
    # Runs at another seed are not this search's.
    assert plan_cell(rows, "nano", 1, 256, NANO, dataset="digits", seed=1).known == ()

    bracket = Bracket(256, (0.1, 0.05), noise=0.02)
    verdict = run_bracket(bracket, curve(0.1))
    record = make_record(cell, bracket, verdict)
    searched = [row("nano", 2, 0.1, 1.0, NANO, source="lr_search", search=json.dumps(record), trial_id="s")]
    done = plan_cell(searched, "nano", 2, 256, NANO, dataset="digits")
    assert done.status == "done" and "already tuned" in done.describe()
    forced = plan_cell(searched, "nano", 2, 256, NANO, dataset="digits", force=True)
    assert forced.status == "new" and forced.known == () and forced.start

    unfinished = dict(record, stop="max-trials")
    rows = [row("nano", 2, 0.1, 1.0, NANO, source="lr_search", search=json.dumps(unfinished), trial_id="u")]
    cont = plan_cell(rows, "nano", 2, 256, NANO, dataset="digits")
    assert cont.status == "continue" and {t.lr for t in cont.known} == {t.lr for t in bracket.history()}


def test_from_the_default_a_plateau_walks_up():
    # Too low to learn anything: every loss is the same until 0.4.
    def plateau(lrs):
        return [Trial(lr, 2.303 if lr < 0.4 else 2.303 - 0.5 + 0.1 * abs(math.log2(lr / 0.8))) for lr in lrs]

    b = Bracket(128, (0.05, 0.025), noise=0.02, eager=True)
    v = run_bracket(b, plateau)
    assert b.rounds[1] == pytest.approx((0.1, 0.2)) and v.lr == pytest.approx(0.8) and v.bracketed
    # Without `eager` (a prior from the ledger) the same first pair is a tie and the search ends.
    b = Bracket(128, (0.05, 0.025), noise=0.02)
    assert run_bracket(b, plateau).tied

