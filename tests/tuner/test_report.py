import csv
import json
import math
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tuner.records.ledger import LEDGER_SCHEMA, Ledger
from tuner.report import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VARIANTS = {"nano": 100_000, "tiny": 400_000, "small": 1_600_000}
EPOCHS = (0.25, 0.5, 1.0, 2.0, 4.0)
IMAGES_PER_EPOCH = 60_000


def optimal_lr(size_rank: int, epoch_index: int) -> float:
    """1.6 for short budgets, halving more often for longer runs and larger models ([P1] Fig. 3)."""
    return 1.6 * 2.0 ** -math.floor(epoch_index * (0.5 + 0.25 * size_rank))


def synthetic_runs() -> list[dict]:
    """A Chinchilla-shaped loss surface on a factor-2 LR grid around each cell's optimum."""
    runs = []
    for rank, (variant, params) in enumerate(VARIANTS.items()):
        for e, epochs in enumerate(EPOCHS):
            images = IMAGES_PER_EPOCH * epochs
            for k in (-2, -1, 0, 1):
                runs.append(
                    dict(
                        trial_id=f"{variant}-{epochs:g}-{k}",
                        variant=variant,
                        epochs=epochs,
                        compute=6.0 * params * images,
                        val_loss=0.2 + 40 * params**-0.3 + 60 * images**-0.3 + 0.02 * k * k,
                        lr=optimal_lr(rank, e) * 2.0**k,
                        params=params,
                    )
                )
    return runs


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def ledger_row(run: dict, **overrides) -> dict:
    row = {name: None for name in LEDGER_SCHEMA.names}
    row.update(
        trial_id=run["trial_id"], experiment="synthetic", kind="pretrain", variant=run["variant"],
        width_mult=1.0, depth_mult=1.0, params=run["params"], epochs=run["epochs"], lr=run["lr"],
        batch_size=256, dataset="digits", final_val_loss=run["val_loss"], best_val_loss=run["val_loss"],
        top1=0.5, flops=run["compute"], status="finished", source="sweep", code_version="test",
        time=datetime(2025, 1, 1, tzinfo=timezone.utc),
    )
    row.update(overrides)
    return row


def write_ledger(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), directory / "part-0001.parquet")
    return directory


def report_json(capsys, *args: str) -> dict:
    assert main([*args, "--json", "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


def one_line_error(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    return captured.err


def test_csv_report_writes_plots_summary_and_tensorboard(tmp_path, capsys):
    source = write_csv(tmp_path / "runs.csv", synthetic_runs())
    out = tmp_path / "report"
    assert main(["--csv", str(source), "--out", str(out), "--n-boot", "200"]) == 0
    stdout = capsys.readouterr().out
    assert "finetune_vs_compute.png skipped" in stdout

    for name in ("loss_vs_compute.png", "lr_vs_epochs.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 20_000
    assert not (out / "finetune_vs_compute.png").exists()

    summary = (out / "summary.md").read_text()
    assert "exponent b = -0." in summary and "95% bootstrap CI" in summary and "R² (log space)" in summary
    assert "| nano | 0.25 | 1.6 |" in summary  # the first frontier point, and the LR table
    assert "params_opt = " in summary and "epochs_opt = " in summary
    assert "- small: yes" in summary and "nano < tiny < small" in summary
    assert "finetune_vs_compute.png skipped" in summary

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 20_000
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert set(acc.Tags()["images"]) == {"scaling/loss_vs_compute", "scaling/lr_vs_epochs"}
    assert "scaling/summary/text_summary" in acc.Tags()["tensors"]
    assert acc.Scalars("scaling/exponent")[0].value < 0

    # Re-running into the same directory replaces the events instead of doubling them.
    assert main(["--csv", str(source), "--out", str(out), "--n-boot", "50"]) == 0
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_json_numbers_from_csv(tmp_path, capsys):
    source = write_csv(tmp_path / "runs.csv", synthetic_runs())
    result = report_json(capsys, "--csv", str(source), "--out", str(tmp_path / "r"))
    assert -0.3 < result["exponent"] < 0
    lo, hi = result["ci"]["exponent"]
    assert lo <= result["exponent"] <= hi
    assert 0.9 < result["r2"] <= 1.0
    assert result["n"] == len(result["frontier"])
    assert result["frontier"][0]["trial_id"] == "nano-0.25-0"
    computes = [p["compute"] for p in result["frontier"]]
    assert computes == sorted(computes)
    # Only the largest model ran beyond 0.4M x 6 x 240k FLOPs (tiny's 4 epochs): nothing contests it there.
    beyond = 6.0 * VARIANTS["tiny"] * IMAGES_PER_EPOCH * EPOCHS[-1]
    assert [p["uncontested"] for p in result["frontier"]] == [p["compute"] > beyond for p in result["frontier"]]
    assert any(p["uncontested"] for p in result["frontier"])
    # The fit without them uses the rest of the frontier.
    contested = result["contested"]
    assert contested["fit"]["n"] == sum(not p["uncontested"] for p in result["frontier"])
    assert contested["fit"]["exponent"] < 0 and contested["epochs"]["exponent"] > 0
    # Larger models join the frontier as compute grows.
    assert result["params_exponent"] > 0 and result["epochs_exponent"] > 0
    assert len(result["lr_table"]) == len(VARIANTS) * len(EPOCHS)
    assert result["lr_monotone_in_epochs"] == {"nano": True, "tiny": True, "small": True}
    assert set(result["lr_monotone_in_size"].values()) == {True}
    assert result["size_order"] == ["nano", "tiny", "small"]
    assert result["excluded"] == {}
    assert any("finetune_vs_compute.png skipped" in s for s in result["skipped"])
    # The joint law L(N, D) over each cell's best-LR run: the surface's own constants
    # (D counted in epochs, since the CSV has no images_seen: B changes, the exponents do not).
    law = result["joint_law"]
    assert law["fitted"] and law["data_unit"] == "epochs" and law["n"] == len(VARIANTS) * len(EPOCHS)
    assert law["alpha"] == pytest.approx(0.3, rel=0.01) and law["beta"] == pytest.approx(0.3, rel=0.01)
    assert law["E"] == pytest.approx(0.2, rel=0.01)
    assert law["B"] == pytest.approx(60 * IMAGES_PER_EPOCH**-0.3, rel=0.05)
    assert law["a"] == pytest.approx(0.5, abs=0.01) and law["same_rate"] == "yes"
    for name in ("E", "A", "B", "alpha", "beta", "a", "b", "a_minus_b"):
        low, high = law["intervals"][name]
        assert low <= high
    # The optimal LR halves with the budget, faster for larger models: both slopes fall.
    trend = result["lr_trend"]
    assert trend["cells"] == len(VARIANTS) * len(EPOCHS) and trend["censored"] == 0
    assert trend["verdicts"] == {"epochs": "falls", "size": "falls"}
    assert trend["intervals"]["epochs"][1] < 0


def test_fit_on_all_points_uses_every_cell(tmp_path, capsys):
    source = write_csv(tmp_path / "runs.csv", synthetic_runs())
    result = report_json(capsys, "--csv", str(source), "--out", str(tmp_path / "r"), "--fit-on", "all")
    assert result["fit_on"] == "all"
    assert result["n"] == len(VARIANTS) * len(EPOCHS)


def test_ledger_report_excludes_bad_runs_and_plots_finetuning(tmp_path, capsys):
    runs = synthetic_runs()
    rows = [ledger_row(r) for r in runs]
    # A stopped run's mid-schedule loss and a diverged run must not reach the fit,
    # however good the stopped one looks.
    rows.append(ledger_row(dict(runs[0], trial_id="stopped", lr=3.2, val_loss=0.01), status="stopped"))
    rows.append(ledger_row(dict(runs[0], trial_id="diverged", lr=6.4, val_loss=math.nan), status="diverged"))
    rows.append(ledger_row(dict(runs[0], trial_id="half-width", variant="nano"), width_mult=0.5))
    parents = ("tiny-2-0", "small-1-0", "small-4-0")
    for i, parent in enumerate(parents):
        rows.append(
            ledger_row(dict(runs[0], trial_id=f"ft-{i}"), kind="finetune", parent_trial_id=parent, top1=0.8 + 0.05 * i)
        )
    ledger = write_ledger(tmp_path / "ledger", rows)
    (ledger / ".tmp-part-0002.parquet").write_bytes(b"half-written")  # readers ignore it

    out = tmp_path / "report"
    result = report_json(capsys, "--ledger", str(ledger), "--out", str(out))
    assert result["excluded"] == {"diverged": 1, "stopped": 1}
    assert "stopped" not in [p["trial_id"] for p in result["frontier"]]
    assert "nano-w0.5" in result["size_order"]
    # Four sizes, but half-width nano ran one epoch budget: no profile has a size each side of its lowest loss.
    assert result["skipped"] == ["isoflop.png skipped: no IsoFLOP profile with an interior minimum"]
    data = (out / "finetune_vs_compute.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    assert "fine-tuned top-1 vs pre-training compute (fine-tuned runs: 3)" in (out / "summary.md").read_text()


def test_json_mode_prints_only_json_from_the_command_line(tmp_path):
    source = write_csv(tmp_path / "runs.csv", synthetic_runs())
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.report", "--csv", str(source), "--out", str(tmp_path / "r"), "--json",
         "--n-boot", "100"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ci"]["n_boot"] > 0


def test_missing_and_empty_ledgers_fail_in_one_line(tmp_path, capsys):
    err = one_line_error(capsys, "--ledger", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))
    assert "empty" in err
    (tmp_path / "bare").mkdir()
    assert "empty" in one_line_error(capsys, "--ledger", str(tmp_path / "bare"), "--out", str(tmp_path / "r"))


def test_corrupt_ledger_file_fails_in_one_line(tmp_path, capsys):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "part-0001.parquet").write_bytes(b"not parquet at all")
    err = one_line_error(capsys, "--ledger", str(ledger), "--out", str(tmp_path / "r"))
    assert "part-0001.parquet" in err


def test_ledger_with_one_usable_point_is_summarised_without_a_fit(tmp_path, capsys):
    runs = synthetic_runs()
    rows = [ledger_row(runs[0]), ledger_row(runs[-1], status="diverged")]
    ledger = write_ledger(tmp_path / "ledger", rows)
    result = report_json(capsys, "--ledger", str(ledger), "--out", str(tmp_path / "r"))
    assert result["exponent"] is None and result["excluded"] == {"diverged": 1}
    assert result["fit_note"].startswith("too few points for a fit: 1 (need ≥ 3)")
    assert [p["trial_id"] for p in result["frontier"]] == [runs[0]["trial_id"]]
    assert "Left out of the fits: 1 diverged." in (tmp_path / "r" / "summary.md").read_text()


def test_ledger_with_no_usable_point_fails(tmp_path, capsys):
    runs = synthetic_runs()
    ledger = write_ledger(tmp_path / "ledger", [ledger_row(runs[-1], status="diverged")])
    err = one_line_error(capsys, "--ledger", str(ledger), "--out", str(tmp_path / "r"))
    assert "no usable pre-training run" in err and "1 diverged" in err


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "is empty"),
        ("variant,epochs,compute,val_loss\n", "no rows"),
        ("variant,epochs,val_loss\nnano,1,2.0\n", "lacks required column(s) compute"),
        ("variant,epochs,compute,val_loss\nnano,1,abc,2.0\n", "line 2: column 'compute' is not a number: 'abc'"),
        ("variant,epochs,compute,val_loss\nnano,1,,2.0\n", "line 2: column 'compute' is empty"),
        ("variant,epochs,compute,val_loss,lr\nnano,1,10,2.0,fast\n", "column 'lr' is not a number"),
        ("variant,epochs,compute,val_loss\nnano,1,10,-2.0\n", "no usable pre-training run"),
        ("variant,epochs,compute,val_loss\nnano,1,10,2.0\nnano,2,20,1.0\nnano,4,40,-1\n", None),
    ],
)
def test_malformed_csv_fails_in_one_line(tmp_path, capsys, content, fragment):
    source = tmp_path / "runs.csv"
    source.write_text(content)
    args = ["--csv", str(source), "--out", str(tmp_path / "r"), "--n-boot", "20"]
    if fragment is None:
        # A non-positive loss is left out, not fatal, while good points remain.
        assert main(args) == 0
        return
    assert fragment in one_line_error(capsys, *args)


@pytest.mark.parametrize(
    "content, needs",
    [
        # One run: a summary of its cell, no fit.
        ("nano,1,10,2.0\n", "the rows have 1 cell: run tuner.lr_search"),
        # The cheapest run is also the best: the frontier is one point of two cells.
        ("nano,1,10,1.0\nnano,2,20,2.0\n", "the rows have 2 cells, 1 of them on the frontier: run tuner.lr_search"),
        # Three cells, the frontier one: more cells would not help, other runs would.
        ("nano,1,10,1.0\nnano,2,20,2.0\nnano,4,40,3.0\n", "1 of them on the frontier: the others cost more without "
         "a lower loss: run larger models or longer epoch budgets, or fit every cell with --fit-on all"),
    ],
)
def test_csv_with_too_few_points_for_a_fit_says_what_it_needs(tmp_path, capsys, content, needs):
    source = tmp_path / "runs.csv"
    source.write_text("variant,epochs,compute,val_loss\n" + content)
    result = report_json(capsys, "--csv", str(source), "--out", str(tmp_path / "r"))
    assert result["fit_note"].startswith("too few points for a fit: 1 (need ≥ 3)") and needs in result["fit_note"]
    assert result["dataset"] is None
    assert "Dataset: **no dataset recorded**" in (tmp_path / "r" / "summary.md").read_text()


def test_missing_csv_and_bad_n_boot(tmp_path, capsys):
    assert "does not exist" in one_line_error(capsys, "--csv", str(tmp_path / "x.csv"), "--out", str(tmp_path))
    source = write_csv(tmp_path / "runs.csv", synthetic_runs())
    assert "--n-boot" in one_line_error(capsys, "--csv", str(source), "--out", str(tmp_path), "--n-boot", "0")


def test_csv_finetune_rows_link_to_parents(tmp_path, capsys):
    runs = [dict(r, kind="pretrain", parent_trial_id="", top1="") for r in synthetic_runs()]
    finetune = dict(variant="small", epochs="", compute="", val_loss="", lr=0.1, params="", kind="finetune",
                    trial_id="ft", parent_trial_id="small-4-0", top1=0.9)
    orphan = dict(finetune, trial_id="orphan", parent_trial_id="no-such-trial")
    source = write_csv(tmp_path / "runs.csv", [*runs, finetune, orphan])
    result = report_json(capsys, "--csv", str(source), "--out", str(tmp_path / "r"))
    assert result["skipped"] == ["isoflop.png skipped: no IsoFLOP profile with an interior minimum"]
    assert "(fine-tuned runs: 1)" in (tmp_path / "r" / "summary.md").read_text()
    assert (tmp_path / "r" / "finetune_vs_compute.png").read_bytes().startswith(PNG_MAGIC)


def test_csv_without_lr_skips_the_lr_plot(tmp_path, capsys):
    source = write_csv(tmp_path / "runs.csv", synthetic_runs(), ["variant", "epochs", "compute", "val_loss"])
    result = report_json(capsys, "--csv", str(source), "--out", str(tmp_path / "r"))
    assert result["lr_table"] == []
    assert any(s.startswith("lr_vs_epochs.png skipped") for s in result["skipped"])
    assert result["params_exponent"] is None and result["epochs_exponent"] > 0
    assert not (tmp_path / "r" / "lr_vs_epochs.png").exists()


# ---------------------------------------------------------------- datasets, tiny ledgers, unmeasured optima


def append_ledger(directory: Path, rows: list[dict]) -> str:
    """A ledger written by tuner.ledger's own writer."""
    Ledger(directory).append(rows)
    return str(directory)


def search_row(rows: list[dict], epochs: float, max_trials: int, name: str) -> dict:
    """The row `python -m tuner.lr_search` records for nano at `epochs` on fashion_mnist: the cell
    planned from `rows` (a search that stopped continues), its bracket run on a bowl of losses around
    lr 0.4, and the winner recorded with its search (planner.make_record)."""
    from tuner.study.planner import SEARCH_SOURCE, Trial, make_record, plan_cell, run_bracket

    params = 117_350
    planned = plan_cell(rows, "nano", epochs, 128, params, dataset="fashion_mnist", max_trials=max_trials)
    bracket = planned.bracket()

    def loss(lr: float) -> float:
        return 0.6 / epochs**0.2 * (1 + 0.04 * math.log2(lr / 0.4) ** 2)

    verdict = run_bracket(bracket, lambda lrs: [Trial(lr, loss(lr), "finished", 1e11 * epochs) for lr in lrs])
    record = make_record(planned, bracket, verdict)
    return dict(
        trial_id=f"lr_search/{name}", experiment="lr_search-nano", kind="pretrain", variant="nano", params=params,
        epochs=epochs, lr=verdict.lr, batch_size=128, dataset="fashion_mnist", final_val_loss=verdict.loss,
        flops=1e11 * epochs, status="finished", source=SEARCH_SOURCE, search=json.dumps(record),
        time=datetime(2025, 1, 1 + len(rows), tzinfo=timezone.utc),
    )


def main_job_ledger(directory: Path) -> tuple[str, dict]:
    """What the main job leaves: two lr_search rows of one cell (a search stopped by --max-trials,
    then continued to its end), and the record of the latest."""
    rows: list[dict] = []
    rows.append(search_row(rows, 1.0, 2, "first"))
    rows.append(search_row(rows, 1.0, 8, "second"))
    record = json.loads(rows[-1]["search"])
    assert json.loads(rows[0]["search"])["stop"] == "max-trials" and record["stop"] == "bracketed"
    return append_ledger(directory, rows), record


def test_main_jobs_ledger_gives_a_summary_of_its_cell_and_what_a_fit_needs(tmp_path, capsys):
    ledger, record = main_job_ledger(tmp_path / "ledger")
    trials = len({t["lr"] for t in record["trials"]})
    assert trials >= 3 and record["chosen"] == 0.4

    out = tmp_path / "report"
    assert main(["--ledger", ledger, "--out", str(out), "--n-boot", "50"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("dataset fashion_mnist: no fit: too few points for a fit: 1 (need ≥ 3)")
    assert "the rows have 1 cell: run tuner.lr_search for more (variant, epochs) cells, or tuner.sweep" in stdout
    assert f"  nano at 1 epochs: lr 0.4, loss {record['loss']:.4f}, {trials} LRs tried" in stdout
    assert "R²" not in stdout

    summary = (out / "summary.md").read_text()
    assert "Dataset: **fashion_mnist**" in summary
    assert "**No fit: too few points for a fit: 1 (need ≥ 3)." in summary
    assert f"| nano | 1 | 0.4 | {record['loss']:.4f} | {trials} |" in summary
    assert "R² (log space)" not in summary
    assert (out / "loss_vs_compute.png").read_bytes().startswith(PNG_MAGIC)

    result = report_json(capsys, "--ledger", ledger, "--out", str(out))
    assert result["dataset"] == "fashion_mnist"
    assert result["exponent"] is None and result["r2"] is None and result["ci"] is None
    assert result["fit_note"].startswith("too few points for a fit: 1 (need ≥ 3)")
    assert result["lr_table"] == [{"variant": "nano", "epochs": 1.0, "lr": 0.4, "val_loss": record["loss"],
                                   "n_lrs": trials, "measured": True}]
    assert result["lr_replay"] is None  # lr_search's rows are no grid


def test_a_two_point_fit_is_refused_rather_than_r2_one(tmp_path, capsys):
    runs = [r for r in synthetic_runs() if r["variant"] == "nano" and r["epochs"] in (0.25, 0.5)]
    ledger = append_ledger(tmp_path / "ledger", [ledger_row(r) for r in runs])
    out = tmp_path / "r"
    assert main(["--ledger", ledger, "--out", str(out), "--n-boot", "50"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("dataset digits: no fit: too few points for a fit: 2 (need ≥ 3)")
    assert "R² 1.0000" not in stdout
    result = report_json(capsys, "--ledger", ledger, "--out", str(out), "--fit-on", "all")
    assert result["r2"] is None and result["fit_note"].startswith("too few points for a fit: 2 (need ≥ 3)")
    assert "at 2 compute level(s)" in result["fit_note"]
    assert result["compute_optimal"]["notes"] == [
        "no params fit: too few points for a fit: 2 (need ≥ 3)",
        "no epochs fit: too few points for a fit: 2 (need ≥ 3)",
    ]


def test_a_fit_on_few_points_flags_its_bootstrap_interval(tmp_path, capsys):
    runs = [r for r in synthetic_runs() if r["variant"] == "nano" and r["epochs"] <= 2.0]
    ledger = append_ledger(tmp_path / "ledger", [ledger_row(r) for r in runs])
    out = tmp_path / "r"
    result = report_json(capsys, "--ledger", ledger, "--out", str(out))
    assert result["n"] == 4 and result["ci"]["points"] == 4
    assert "rests on 4 distinct points" in result["ci_note"]
    assert "- note: the bootstrap interval rests on 4 distinct points" in (out / "summary.md").read_text()
    assert main(["--ledger", ledger, "--out", str(out), "--n-boot", "50"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("note: the bootstrap interval rests on 4")


def two_dataset_rows() -> list[dict]:
    rows = []
    for dataset, scale in (("digits", 0.5), ("fashion_mnist", 1.0)):
        for run in synthetic_runs():
            rows.append(ledger_row(dict(run, trial_id=f"{dataset}/{run['trial_id']}", val_loss=scale * run["val_loss"]),
                                   dataset=dataset))
        rows.append(ledger_row(dict(synthetic_runs()[0], trial_id=f"ft-of-{dataset}"), kind="finetune",
                               parent_trial_id=f"{dataset}/small-4-0", dataset="digits", top1=0.9))
    return rows


def test_rows_of_two_datasets_are_refused_until_one_is_picked(tmp_path, capsys):
    ledger = append_ledger(tmp_path / "ledger", two_dataset_rows())
    out = str(tmp_path / "r")
    err = one_line_error(capsys, "--ledger", ledger, "--out", out)
    assert "2 datasets (digits: 60 run(s), fashion_mnist: 60 run(s))" in err
    assert "pick one with --dataset NAME" in err
    err = one_line_error(capsys, "--ledger", ledger, "--out", out, "--dataset", "imagenet")
    assert "no pre-training runs of dataset 'imagenet'" in err and "digits: 60 run(s)" in err

    alone = append_ledger(tmp_path / "fashion", [r for r in two_dataset_rows() if "fashion_mnist" in r["trial_id"]])
    expected = report_json(capsys, "--ledger", alone, "--out", out)
    picked = report_json(capsys, "--ledger", ledger, "--out", out, "--dataset", "fashion_mnist")
    assert picked["dataset"] == expected["dataset"] == "fashion_mnist"
    assert all(p["trial_id"].startswith("fashion_mnist/") for p in picked["frontier"])
    assert (picked["exponent"], picked["r2"], picked["ci"]) == (expected["exponent"], expected["r2"], expected["ci"])
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "Dataset: **fashion_mnist**" in summary
    # The fine-tuned child of a digits run is not this dataset's.
    assert "(fine-tuned runs: 1)" in summary and "61 rows (60 pre-training, 1 fine-tuning)" in summary


def test_optimal_lr_trends_say_not_measured_where_one_lr_ran(tmp_path, capsys):
    # Each nano cell ran one LR, falling with the epoch budget: no measured optimum, no trend.
    runs = [r for r in synthetic_runs()
            if r["variant"] == "nano" and r["lr"] == optimal_lr(0, EPOCHS.index(r["epochs"]))]
    assert len(runs) == len(EPOCHS) and len({r["lr"] for r in runs}) > 1
    # tiny's cells ran their whole grid: measured.
    runs += [r for r in synthetic_runs() if r["variant"] == "tiny"]
    ledger = append_ledger(tmp_path / "ledger", [ledger_row(r) for r in runs])
    out = tmp_path / "r"
    result = report_json(capsys, "--ledger", ledger, "--out", str(out))
    assert result["lr_monotone_in_epochs"] == {"nano": None, "tiny": True}
    assert result["lr_not_measured_in_epochs"] == {"nano": list(EPOCHS)}
    assert set(result["lr_monotone_in_size"].values()) == {None}
    assert [c["n_lrs"] for c in result["lr_table"]] == [1] * len(EPOCHS) + [4] * len(EPOCHS)
    summary = (out / "summary.md").read_text()
    assert ("- nano: not measured: only one LR was run at 0.25 epochs, 0.5 epochs, 1 epochs, 2 epochs, 4 epochs"
            in summary)
    assert "- tiny: yes\n" in summary
    assert "- 1 epochs: not measured: only one LR was run at nano" in summary
