"""A flag mistake in any command is one `error:` line on stderr that names the flag (or the
--set key) and what it wants, with exit status 2, and nothing is written."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOLUTION_RULE = "must be a whole number of px >= 16 (the network halves the image 5 times, 32x in all), got 3"


def run_main(module: str, argv: list[str]) -> int:
    try:
        return importlib.import_module(module).main(argv)
    except SystemExit as exit_info:  # argparse's own check of a flag
        return exit_info.code


@pytest.mark.parametrize("module,argv,message", [
    ("tuner.promote", ["--dataset", "digits", "--set", "max_train_examples=abc"],
     "error: --set max_train_examples=abc: expected an integer or none"),
    ("tuner.promote", ["--dataset", "digits", "--set", "sam_rho=big"], "error: --set sam_rho=big: expected a number"),
    ("tuner.promote", ["--dataset", "digits", "--resolution", "3"], f"error: --resolution: {RESOLUTION_RULE}"),
    ("tuner.promote", ["--dataset", "digits", "--top-k", "two"], "error: --top-k: expected an integer, got 'two'"),
    ("tuner.sweep", ["--finetune-resolution", "3"], f"error: --finetune-resolution: {RESOLUTION_RULE}"),
    ("tuner.sweep", ["--budget-flops", "lots"], "error: --budget-flops: expected a number, got 'lots'"),
    ("tuner.lr_search", ["--resolution", "3"], f"error: --resolution: {RESOLUTION_RULE}"),
    ("tuner.lr_search", ["--cpus-per-trial", "one"], "error: --cpus-per-trial: expected a number, got 'one'"),
    ("tuner.ledger", ["import", "runs.csv", "--num-classes", "ten"],
     "error: --num-classes: expected an integer, got 'ten'"),
    ("tuner.report", ["--csv", "runs.csv", "--out", "out", "--n-boot", "many"],
     "error: --n-boot: expected an integer, got 'many'"),
    ("tuner.lr_audit", ["--grid", "ledger", "--tolerance", "tight"],
     "error: --tolerance: expected a number, got 'tight'"),
    ("nfnet.finetune", ["--from", "pre", "--sam-rho", "x"], "error: --sam-rho: expected a number, got 'x'"),
])
def test_a_bad_flag_value_is_one_line_that_names_it(tmp_path, monkeypatch, capsys, module, argv, message):
    monkeypatch.chdir(tmp_path)  # default storage and ledger paths are relative
    monkeypatch.delenv("NFSCALE_LEDGER", raising=False)
    code = run_main(module, [*argv, "--dry-run"] if module in ("tuner.promote", "tuner.sweep", "tuner.lr_search")
                    else argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"{message}\n"
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_itself_prints_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "tuner.sweep", "--set", "max_train_examples=abc", "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: --set max_train_examples=abc: expected an integer or none\n"
    assert list(tmp_path.iterdir()) == []


def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback(tmp_path):
    """`python -m tuner.ledger show | head -1`: the reader closes the pipe; the command ends
    with status 1 and nothing on stderr, not a BrokenPipeError traceback."""
    from tuner.records.ledger import Ledger

    ledger = Ledger(str(tmp_path / "ledger"))
    ledger.append(Ledger(os.path.join(REPO, "docs", "cpu_ladder_study", "ledger")).read().to_pylist())
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "tuner.ledger", "show", "--ledger", str(tmp_path / "ledger")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    proc.stdout.close()  # the reader is gone before the first row is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "Traceback" not in err and err == ""
