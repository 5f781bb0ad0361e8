"""The LR search against a full grid, on hand-built ledger rows and on synthetic grids (no Ray, no training)."""

import json
import math
from datetime import datetime, timezone

import pytest

from tuner.records.ledger import Ledger
from tuner.study.audit import audit, audit_json, audit_markdown, grid_cells, replay
from tuner.lr_audit import main
from tuner.report import main as report_main

PARAMS = {"nano": 100_000, "micro": 400_000, "mini": 1_000_000}
FLOPS_PER_EPOCH = {"nano": 1e12, "micro": 4e12, "mini": 1e13}  # one run's training FLOPs per epoch
GRID_LRS = tuple(0.1 * 2.0**k for k in range(-2, 3))  # 0.025 ... 0.4, base_lr(256) = 0.1 in the middle
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def row(variant, epochs, lr, loss, status="finished", source="sweep", batch=256, **extra):
    return {
        "trial_id": f"{source}-{variant}-{epochs:g}-{lr:g}-{batch}-{status}",
        "kind": "pretrain",
        "variant": variant,
        "width_mult": 1.0,
        "depth_mult": 1.0,
        "params": PARAMS[variant],
        "epochs": float(epochs),
        "lr": lr,
        "batch_size": batch,
        "dataset": "digits",
        "final_val_loss": loss,
        "flops": FLOPS_PER_EPOCH[variant] * epochs,
        "status": status,
        "source": source,
        "code_version": "test",
        "time": T0,
        **extra,
    }


def bowl(variant, epochs, best_lr, floor, curvature, lrs=GRID_LRS):
    """One grid cell: loss = floor + curvature × (log2 distance from the optimum)²."""
    return [row(variant, epochs, lr, floor + curvature * math.log2(lr / best_lr) ** 2) for lr in lrs]


def falling_grid():
    """nano, micro × 1, 2 epochs. The optimum falls with epochs, but micro at 1 epoch
    trains best at 0.2, above the 0.1 that nano at 1 epoch bounds it by."""
    return [
        *bowl("nano", 1, 0.1, 2.0, 0.05),
        *bowl("nano", 2, 0.05, 1.8, 0.05),
        *bowl("micro", 1, 0.2, 1.6, 0.05),  # 0.1 is 3.1% worse: a miss
        *bowl("micro", 2, 0.1, 1.4, 0.003),  # 0.05 is 0.21% worse: within 0.5%
    ]


GRID_FLOPS = len(GRID_LRS) * (1 + 2 + 4 + 8) * 1e12


def search_rows():
    found = dict(source="lr_search")
    return [
        row("nano", 1, 0.1, 2.0, time=T0.replace(day=3), **found),  # the grid's optimum
        row("nano", 1, 0.05, 2.05, time=T0.replace(day=2), **found),  # an earlier search of the same cell
        row("micro", 1, 0.1, 1.65, **found),  # 3.1% above the optimum at 0.2
        row("micro", 1, 0.2, 1.0, status="stopped", **found),  # did not finish: not the cell's result
        row("micro", 1, 0.2, 1.0),  # a grid row copied into the walk's ledger: not lr_search's
        row("micro", 2, 0.05, 1.403, **found),  # another LR than the grid's, 0.21% worse
        row("nano", 2, 0.05, 1.8, status="imported", source="grid-anchor"),  # the walk's anchor
        row("mini", 1, 0.1, 1.2, **found),  # a model the grid never ran
        row("nano", 1, 0.1, 2.0, batch=128, **found),  # another batch size than the grid's
    ]


def test_grid_cells_optimum_ties_compute_and_edges():
    rows = [
        row("nano", 1, 0.05, 2.0),
        row("nano", 1, 0.1, 1.9),
        row("nano", 1, 0.2, 1.9),  # ties go to the lower LR
        row("nano", 1, 0.4, 1.0, status="stopped", flops=0.5e12),  # mid-schedule: never the optimum
        row("nano", 1, 0.8, math.nan, status="diverged", flops=0.1e12),
        row("nano", 1, 0.1, 0.5, kind="finetune"),  # not pre-training: neither loss nor compute
        row("nano", 1, 0.4, 0.5, source="lr_search"),  # the walk's re-run of a grid point
        *bowl("nano", 2, 0.025, 1.5, 0.1, lrs=(0.025, 0.05, 0.1)),
        row("micro", 1, 0.05, 1.5),
        row("micro", 1, 0.1, 1.4),
        row("micro", 1, 0.1 * (1 + 1e-12), 1.44),  # a repeat at the same LR: averaged
    ]
    cells = grid_cells(rows)
    assert set(cells) == {("nano", 1.0, 256, "digits"), ("nano", 2.0, 256, "digits"), ("micro", 1.0, 256, "digits")}

    nano = cells["nano", 1.0, 256, "digits"]
    assert nano.best_lr == 0.1 and nano.best_loss == 1.9
    assert sorted(nano.losses) == [0.05, 0.1, 0.2]
    assert nano.diverged == (0.8,)
    assert nano.runs == 5
    assert nano.flops == pytest.approx(3e12 + 0.5e12 + 0.1e12)  # stopped and diverged runs cost compute too
    assert nano.edge is None  # 0.05 was tried below, 0.2 (and higher) above

    assert cells["nano", 2.0, 256, "digits"].best_lr == 0.025
    assert cells["nano", 2.0, 256, "digits"].edge == "low"  # only an upper bound on the optimum
    micro = cells["micro", 1.0, 256, "digits"]
    assert micro.best_lr == 0.1 and micro.best_loss == pytest.approx(1.42)
    assert micro.edge == "high" and micro.runs == 3


def test_audit_counts_exact_within_and_misses_and_their_compute():
    result = audit(falling_grid(), search_rows())
    assert [(c.label, c.epochs) for c in result.cells] == [("nano", 1), ("micro", 1), ("micro", 2)]
    nano, micro1, micro2 = result.cells

    assert nano.found_lr == 0.1 and nano.exact and nano.within and nano.gap == pytest.approx(0.0)
    assert micro1.found_lr == 0.1 and micro1.grid_best_lr == 0.2
    assert not micro1.exact and not micro1.within and micro1.gap == pytest.approx(1.65 / 1.6 - 1)
    assert micro2.found_lr == 0.05 and micro2.grid_best_lr == 0.1
    assert not micro2.exact and micro2.within and micro2.gap == pytest.approx(0.003 / 1.4)
    assert micro2.grid_loss_at_found == pytest.approx(1.403)

    assert (result.n_cells, result.n_exact, result.n_within) == (3, 1, 2)
    # Two trials per cell, each the winner's FLOPs: 2 × (1 + 4 + 8) × 1e12.
    assert [c.search_flops for c in result.cells] == pytest.approx([2e12, 8e12, 16e12])
    assert result.search_flops == pytest.approx(26e12)
    assert result.grid_flops_audited == pytest.approx(5 * 13e12)
    assert result.grid_flops_total == pytest.approx(GRID_FLOPS)
    assert result.share == pytest.approx(26 / 75)

    assert result.unmatched == (
        "mini at 1 epochs (batch 256, digits)",
        "nano at 1 epochs (batch 128, digits)",
    )
    assert result.anchors == ("nano at 2 epochs (batch 256, digits)",)
    assert result.anchor_flops == pytest.approx(5 * 2e12)
    assert result.unsearched == ()

    tighter = audit(falling_grid(), search_rows(), tolerance=0.001, trials_per_cell=3)
    assert tighter.n_within == 1
    assert tighter.search_flops == pytest.approx(39e12)


def test_replay_walks_the_grid_two_ways_with_lr_searchs_planner():
    result = replay(falling_grid())
    found = {(c.label, c.epochs): (c.found_lr, c.rounds) for c in result.cells}
    assert found == {
        # Nothing tuned: the paper's pair at batch 256; 0.1 beats 0.05 by 2.5%, within the noise, but
        # from the paper's default that is a plateau, no answer: the search walks up two at a time.
        ("nano", 1): (0.1, ((0.1, 0.05), (0.2, 0.4))),
        ("nano", 2): (0.05, ((0.1, 0.05),)),  # the paper's bound from nano at 1 epoch
        # The bound's own pair loses by 9%: the search walks up past the bound and brackets 0.2.
        ("micro", 1): (0.2, ((0.1, 0.05), (0.2,), (0.4,))),
        ("micro", 2): (0.05, ((0.05, 0.025),)),  # a tie within the noise; 0.21% above the optimum
    }
    assert [c.prediction_source for c in result.cells] == ["default", "bound", "bound", "bound"]
    assert [c.exact for c in result.cells] == [True, True, True, False]
    assert [c.within for c in result.cells] == [True, True, True, True]
    assert [c.search_flops for c in result.cells] == pytest.approx([4e12, 4e12, 16e12, 16e12])
    assert result.share == pytest.approx(40 / 75)
    assert [c.bracketed for c in result.cells] == [True, False, True, False]
    assert "tied with lr 0.1 within the noise" in result.cells[1].note and result.cells[2].note == ""

    text = audit_markdown(result, "Replay")
    assert "| micro | 1 | 0.2 | 1.6000 | 0.1 (bound) | 0.1, 0.05 / 0.2 / 0.4 | 0.2 | 1.6000 | +0.00% | yes (exact) |" \
        " 1.6e+13 |" in text
    assert "**Found the grid optimum in 3 of 4 cells, within 0.5% in 4 of 4, using 53.3% of the grid's compute**" in text
    # A lower noise makes 0.1 against 0.05 at nano, 1 epoch a win: the search brackets it.
    # From the paper's default (no prior at all) a steep trend also runs the point beyond the next.
    assert replay(falling_grid(), noise=0.001).cells[0].rounds == ((0.1, 0.05), (0.2, 0.4))


def test_replay_walks_down_to_an_optimum_below_the_start():
    cell = replay(bowl("nano", 1, 0.025, 2.0, 0.05)).cells[0]
    assert cell.rounds == ((0.1, 0.05), (0.025,))
    assert cell.exact and cell.trials == 3 and cell.search_flops == pytest.approx(3e12)
    assert cell.grid_edge == "low"


def test_replay_charges_and_reports_lrs_off_the_grid():
    # The first pair, base_lr(256) = 0.1 and 0.05, reaches above every LR this grid ran.
    below = replay(bowl("nano", 1, 0.025, 2.0, 0.01, lrs=(0.0125, 0.025, 0.05))).cells[0]
    # A plateau (every loss within the noise) from the paper's default walks on: up is off the grid,
    # so down, until the grid ends there too.
    assert below.rounds == ((0.1, 0.05), (0.025, 0.0125), (0.00625, 0.003125))
    assert below.off_grid == (0.1, 0.00625, 0.003125)
    assert below.found_lr == 0.025 and below.trials == 6 and below.search_flops == pytest.approx(6e12)
    assert "lr 0.1, 0.00625, 0.003125 not in the grid" in below.note

    above = replay(bowl("nano", 1, 0.4, 2.0, 0.01, lrs=(0.4, 0.8)))
    cell = above.cells[0]
    assert cell.off_grid == (0.1, 0.05) and cell.found_lr is None and not cell.within
    assert cell.trials == 2 and cell.search_flops == pytest.approx(2e12)
    assert (above.n_cells, above.n_within) == (1, 0)
    assert "no LR it asked for is in the grid" in audit_markdown(above, "Replay")
    assert audit_json(above)["cells"][0]["gap"] is None


def test_replay_cell_whose_trials_all_diverge_tunes_nothing():
    grid = [
        row("nano", 1, 0.1, math.nan, status="diverged"),
        row("nano", 1, 0.05, math.inf),  # a "finished" run with an infinite loss diverged too
        row("nano", 1, 0.025, 2.0),
        *bowl("nano", 2, 0.1, 1.8, 0.05),
    ]
    first, second = replay(grid).cells
    # Both of the first pair diverged: the search goes below them, to the grid's last LR.
    assert first.rounds == ((0.1, 0.05), (0.025, 0.0125)) and first.found_lr == 0.025
    assert first.note.startswith("lr 0.0125 not in the grid") and not first.bracketed
    # nano at 1 epoch tuned 0.025: its bound starts nano at 2 epochs, which walks up from it.
    assert second.prediction == pytest.approx(0.025) and second.found_lr == 0.1 and second.exact


# ---------------------------------------------------------------- synthetic grids from a known law


@pytest.mark.parametrize("shape", ["falling", "flat-high", "rising", "noisy"])
def test_the_replayed_search_finds_the_optimum_of_known_laws_for_a_third_of_the_compute(tmp_path, shape):
    """The issue's targets on full grids built from a law plus noise, imported as CSVs."""
    from synthetic_grids import grid_rows, write_csv

    from tuner.records.ledger import read_results_csv

    within = cells = 0
    for seed in range(4):
        rows = read_results_csv(write_csv(grid_rows(shape, seed), tmp_path / f"{shape}-{seed}.csv"))
        result = replay(rows)
        within += result.n_within
        cells += result.n_cells
        assert result.n_cells == 20
        assert result.share <= 0.35, (shape, seed, result.share)
        # Every cell's search starts from a prediction; after the first few, from the fitted law.
        assert sum(c.prediction_source == "fit" for c in result.cells) >= 15
    assert within / cells >= 0.9, (shape, within, cells)


# ---------------------------------------------------------------- command line


def write_ledger(path, rows):
    Ledger(path).append(rows)
    return str(path)


def one_line_error(capsys, argv, entry=main):
    assert entry(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    return captured.err


def report_json_output(capsys, argv):
    assert report_main(argv) == 0
    return capsys.readouterr().out


def test_cli_json_and_markdown(tmp_path, capsys):
    grid = write_ledger(tmp_path / "grid", falling_grid())
    walk = write_ledger(tmp_path / "walk", search_rows())

    assert main(["--grid", grid, "--search", walk, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["lr_search"]["n_exact"], result["lr_search"]["n_within"]) == (1, 2)
    assert result["lr_search"]["share"] == pytest.approx(26 / 75)
    assert result["lr_replay"]["n_cells"] == 4 and result["lr_replay"]["share"] == pytest.approx(40 / 75)
    assert result["lr_replay"]["cells"][2]["found_lr"] == 0.2
    assert result["lr_search"]["summary"].startswith("found the grid optimum in 1 of 3 cells")

    assert main(["--grid", grid]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# The LR search against the grid")
    assert "## The walk replayed on the grid" in text and "lr_search rows" not in text

    out = tmp_path / "audit" / "lr_audit.md"
    assert main(["--grid", grid, "--search", walk, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("walk: found the grid optimum in 1 of 3 cells") and lines[-1] == f"wrote {out}"
    written = out.read_text()
    assert "## The walk's lr_search rows" in written and "anchor" in written


def test_cli_mistakes_fail_in_one_line(tmp_path, capsys):
    grid = write_ledger(tmp_path / "grid", falling_grid())
    assert "does not exist" in one_line_error(capsys, ["--grid", str(tmp_path / "nowhere")])
    assert "tolerance" in one_line_error(capsys, ["--grid", grid, "--tolerance", "-0.1"])
    assert "no finished lr_search" in one_line_error(capsys, ["--grid", grid, "--search", grid])
    diverged = write_ledger(tmp_path / "diverged", [row("nano", 1, 0.1, math.nan, status="diverged"),
                                                    row("nano", 1, 0.2, 1.0, status="stopped")])
    err = one_line_error(capsys, ["--grid", diverged])
    assert "no finished pre-training run with a finite loss (its 2 run(s) outside lr_search's: 1 diverged, 1 stopped)" \
        in err and "tuner.sweep --grid" in err


def test_an_lr_search_ledger_as_the_grid_says_what_the_audit_needs(tmp_path, capsys):
    # The main job's ledger: lr_search's rows only, finished. They are what the audit checks, not a grid.
    walk = write_ledger(tmp_path / "walk", [row("nano", 1, 0.1, 2.0, source="lr_search"),
                                            row("nano", 2, 0.05, 1.8, source="lr_search"),
                                            row("nano", 2, 0.4, math.nan, status="diverged", source="lr_search")])
    err = one_line_error(capsys, ["--grid", walk])
    assert "no finished pre-training run" not in err
    assert ("the grid ledger has 2 finished pre-training run(s) (3 in all), but all were written by "
            "tuner.lr_search") in err
    assert "runs of the factor-2 LR grid per (variant, epochs) cell" in err and "tuner.sweep --grid" in err
    assert "pass lr_search's ledger as --search" in err
    finetune = write_ledger(tmp_path / "finetune", [row("nano", 1, 0.1, 0.5, kind="finetune")])
    assert "no pre-training runs (1 fine-tuning row(s))" in one_line_error(capsys, ["--grid", finetune])


def test_report_adds_the_audit_and_the_replay(tmp_path, capsys):
    grid = write_ledger(tmp_path / "grid", falling_grid())
    walk = write_ledger(tmp_path / "walk", search_rows())
    out = tmp_path / "report"
    args = ["--ledger", grid, "--out", str(out), "--json", "--n-boot", "50"]

    assert report_main([*args, "--lr-search-ledger", walk]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lr_search"]["n_exact"] == 1 and result["lr_search"]["n_cells"] == 3
    assert result["lr_replay"]["n_within"] == 4
    summary = (out / "summary.md").read_text()
    section = summary[summary.index("## The LR search against the grid"):]
    assert "## Plots" not in section  # the section closes the summary
    assert section.index("### The walk's lr_search rows") < section.index("### The walk replayed on the grid")
    assert "Found the grid optimum in 1 of 3 cells" in section

    assert report_main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lr_search"] is None and result["lr_replay"]["n_exact"] == 3
    assert "### The walk's lr_search rows" not in (out / "summary.md").read_text()

    # A CSV grid is replayed when it records each run's batch size.
    csv = tmp_path / "runs.csv"
    lines = ["variant,epochs,compute,val_loss,lr,params,batch_size"]
    lines += [f"{r['variant']},{r['epochs']},{r['flops']},{r['final_val_loss']},{r['lr']},{r['params']},256"
              for r in falling_grid()]
    csv.write_text("\n".join(lines) + "\n")
    result = json.loads(report_json_output(capsys, ["--csv", str(csv), "--out", str(out), "--json", "--n-boot", "50"]))
    assert result["lr_replay"]["n_exact"] == 3 and result["lr_replay"]["share"] == pytest.approx(40 / 75)
    csv.write_text("variant,epochs,compute,val_loss,lr\nnano,1,1e12,2.0,0.1\nnano,2,2e12,1.8,0.1\n")
    err = one_line_error(capsys, ["--csv", str(csv), "--out", str(out), "--lr-search-ledger", walk], report_main)
    assert "batch_size" in err
