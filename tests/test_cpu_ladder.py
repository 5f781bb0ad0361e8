"""benchmarks/cpu_ladder.py: the seed-repeat grid it writes from a study's ledger."""

import pytest
from bench_modules import load_benchmark

from search_spaces import get_preset
from search_spaces.preset import base_lr


def _ladder():
    return load_benchmark("cpu_ladder")


def _rows(ladder, loss_of):
    """A finished seed-0 row at each of the window's LRs for every ladder cell."""
    from search_spaces.preset import split_label

    rows = []
    for label, epochs in ladder.ladder_cells():
        variant, width, depth = split_label(label)
        for k in ladder.WINDOW:
            lr = base_lr(ladder.GRID.batch_size) * 2.0**k
            rows.append(dict(kind="pretrain", status="finished", seed=0, batch_size=ladder.GRID.batch_size,
                             variant=variant, width_mult=width, depth_mult=depth, epochs=epochs, lr=lr,
                             final_val_loss=loss_of(label, epochs, k)))
    return rows


def test_seed_cells_keep_each_cells_best_lr_of_seed_0(tmp_path):
    ladder = _ladder()
    # The best k is 2 for small, 4 for 8 epochs, 3 elsewhere; another seed's lower loss is ignored.
    best = {("small", e): 2 for e in ladder.GRID.epochs}
    rows = _rows(ladder, lambda label, e, k: abs(k - best.get((label, e), 4 if e == 8 else 3)) + 1.0)
    rows.append(dict(rows[0], seed=1, lr=rows[0]["lr"] * 4, final_val_loss=0.1))
    rows.append(dict(rows[0], status="diverged", lr=rows[0]["lr"] * 4, final_val_loss=0.0))
    path = tmp_path / "seed_cells.py"
    path.write_text(ladder.seed_cells_source(rows))
    preset = get_preset(f"{path}:SEEDS")
    cells = {(c.label, c.epochs): c.lr for c in preset.cells()}
    assert len(cells) == len(ladder.ladder_cells()) == 36
    base = base_lr(ladder.GRID.batch_size)
    assert cells[("small", 0.125)] == pytest.approx(base * 4)
    assert cells[("nano-w0.5", 8.0)] == pytest.approx(base * 16)
    assert cells[("micro", 4.0)] == pytest.approx(base * 8)
    assert cells[("nano", 0.125)] == pytest.approx(base * 8)  # the seed-1 and diverged rows did not count


def test_seed_cells_refuse_a_ledger_that_lacks_seed_0_of_a_cell():
    ladder = _ladder()
    rows = [r for r in _rows(ladder, lambda *a: 1.0) if not (r["variant"] == "micro" and r["epochs"] == 8)]
    with pytest.raises(SystemExit, match="lacks seed 0 of 1 ladder cell\\(s\\) \\(micro at 8 epochs\\)"):
        ladder.seed_cells_source(rows)
