"""Mistakes the commands catch before any work: each one a single `error:` line, a
non-zero exit, and nothing written.

Every case runs the command's `main()` in a fresh working directory (`tmp_path`)
with the ledger and storage inside it, and compares the directory's files before
and after. The resource checks run against a real in-process Ray; the Ctrl-C test
interrupts a real search in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray

import nfnet.train as nftrain
import tuner.lr_search as lr_search
import tuner.promote as promote
import tuner.sweep as sweep
import tuner.jobs.lr_search as lr_search_job
import tuner.jobs.sweep as sweep_job
from tuner.errors import TunerError
from tuner.raytune.callbacks import ProgressPrinter
from tuner.raytune.connection import RayConnection, check_resources
from tuner.raytune.experiment import command_line
from tuner.records.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding a file where a directory is wanted and a damaged ledger."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory\n")
    bad = tmp_path / "bad-ledger"
    bad.mkdir()
    (bad / "part-20260101T000000000000Z-damaged.parquet").write_bytes(b"not parquet at all")
    return tmp_path


def one_line_error(capsys, run, *args, contains: str):
    """Run a main() and check: exit 2, one `error:` line naming `contains`, no traceback."""
    try:
        code = run(list(args))
    except SystemExit as exc:  # a flag mistake caught when the command line is parsed
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert contains in captured.err and "Traceback" not in captured.err
    return captured


@pytest.mark.parametrize(
    "args, contains",
    [
        (["--data-dir", "nonexistent"], "--data-dir nonexistent: Fashion-MNIST file"),
        (["--dataset", "fashion_mnist", "--data-dir", "nonexistent"], "Fashion-MNIST file"),
        (["--dataset", "digits", "--data-dir", "afile"], "drop --data-dir afile"),
        (["--storage", "afile"], "--storage afile is a file, not a directory"),
        (["--storage", "afile/results"], "lies under"),
        (["--ledger", "afile/ledger"], "--ledger"),
        (["--ledger", "bad-ledger"], "cannot read ledger file"),
        (["--resolution", "3"], "--resolution"),
        (["--max-train-examples", "0"], "--max-train-examples must be >= 1"),
        (["--num-cpus", "0"], "--num-cpus must be at least 1"),
        (["--wait-for-nodes", "-1"], "--wait-for-nodes must be"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_lr_search_refuses_before_any_work(capsys, workdir, args, contains, dry_run):
    before = files(workdir)
    where = {"--ledger": "ledger", "--storage": "results"}
    where.update(zip(args[::2], args[1::2]))
    if "--dataset" not in where and "--data-dir" not in where:
        where["--dataset"] = "digits"
    argv = [part for item in where.items() for part in item] + (["--dry-run"] if dry_run else [])
    one_line_error(capsys, lr_search.main, *argv, contains=contains)
    assert files(workdir) == before
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "args, contains",
    [
        (["--data-dir", "nonexistent"], "--data-dir nonexistent: Fashion-MNIST file"),
        (["--storage", "afile"], "--storage afile is a file"),
        (["--ledger", "bad-ledger"], "cannot read ledger file"),
        (["--ledger", "afile/ledger"], "--ledger"),
        (["--num-cpus", "0"], "--num-cpus must be at least 1"),
        (["--wait-for-nodes", "nan"], "--wait-for-nodes must be"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_sweep_refuses_before_any_work(capsys, workdir, args, contains, dry_run):
    before = files(workdir)
    where = {"--preset": "cpu-smoke", "--ledger": "ledger", "--storage": "results"}
    where.update(zip(args[::2], args[1::2]))
    argv = [part for item in where.items() for part in item] + (["--dry-run"] if dry_run else [])
    one_line_error(capsys, sweep.main, *argv, contains=contains)
    assert files(workdir) == before
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "args, contains",
    [
        (["--storage", "afile"], "--storage afile is a file"),
        (["--ledger", "bad-ledger"], "cannot read ledger file"),
        (["--num-cpus", "0"], "--num-cpus must be at least 1"),
    ],
)
def test_promote_refuses_before_any_work(capsys, workdir, args, contains):
    before = files(workdir)
    ledger = [] if "--ledger" in args else ["--ledger", "ledger"]
    one_line_error(capsys, promote.main, "--dataset", "digits", *ledger, *args, contains=contains)
    assert files(workdir) == before


def test_train_refuses_a_workdir_that_is_a_file_before_loading_data(capsys, workdir):
    start = time.perf_counter()
    one_line_error(capsys, nftrain.main, "--dataset", "digits", "--workdir", "afile",
                   contains="--workdir afile is a file, not a directory")
    assert time.perf_counter() - start < 10  # before the data is read, let alone a step compiled
    assert (workdir / "afile").read_text() == "not a directory\n"


def test_only_the_bare_default_falls_back_and_says_so_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NFSCALE_FASHION_MNIST_DIR", str(tmp_path / "empty"))
    code = lr_search.main(["--ledger", str(tmp_path / "ledger"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    note = out.index("note: Fashion-MNIST is not installed")
    assert note < out.index("search:")  # printed with the plan, before any trial starts
    # The same folder named on the command line is an error, not a fallback.
    one_line_error(capsys, lr_search.main, "--ledger", str(tmp_path / "ledger"), "--data-dir", str(tmp_path / "empty"),
                   "--dry-run", contains="Fashion-MNIST file")


# ---------------------------------------------------------------- resources against the cluster


@pytest.fixture(scope="module")
def small_ray():
    """A real in-process Ray with 2 CPUs and no GPU, started and stopped here."""
    assert not ray.is_initialized()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


IN_PROCESS = RayConnection(None, started=True)
JOINED = RayConnection("127.0.0.1:6379", started=False)


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"CPU": 8.0}, "asks for {CPU: 8}, but no node of the in-process Ray has more than 2 CPUs; "
                       "lower --cpus-per-trial to at most 2"),
        ({"CPU": 1.0, "GPU": 1.0}, "the in-process Ray has no GPU; use --accelerator cpu"),
        ({"CPU": 1.0, "TPU": 4.0, "TPU-v4-8-head": 1.0}, "has no node with TPU, TPU-v4-8-head"),
    ],
)
def test_a_request_the_in_process_ray_cannot_meet_fails_at_once(small_ray, request_, message):
    start = time.perf_counter()
    with pytest.raises(TunerError) as info:
        check_resources({"nano": request_}, IN_PROCESS, log=lambda line: None, wait_s=60)
    assert time.perf_counter() - start < 5
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_request_that_fits_passes_silently(small_ray):
    lines = []
    check_resources({"nano": {"CPU": 2.0}}, IN_PROCESS, log=lines.append)
    check_resources({"nano": {"CPU": 1.0}}, JOINED, log=lines.append)
    assert lines == []


def test_a_joined_cluster_is_waited_on_with_a_limit_and_says_for_what(small_ray):
    lines = []
    start = time.perf_counter()
    with pytest.raises(TunerError) as info:
        check_resources({"nano": {"CPU": 8.0}}, JOINED, log=lines.append, wait_s=1.0, poll_s=0.2)
    assert 1.0 <= time.perf_counter() - start < 10
    assert len(lines) == 1 and lines[0].startswith("waiting up to 1s for the cluster to add a node")
    assert "nano: {CPU: 8}" in lines[0]
    assert str(info.value).startswith("gave up after 1s: a nano trial asks for {CPU: 8}")
    assert "--wait-for-nodes" in str(info.value)


@pytest.mark.slow
def test_lr_search_on_an_in_process_ray_that_cannot_hold_a_trial_fails_in_one_line(tmp_path):
    """The whole command as a user runs it: Ray starts, the check fails, nothing else prints."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, message in [(["--cpus-per-trial", "64"], "lower --cpus-per-trial"),
                          (["--accelerator", "gpu"], "has no GPU")]:
        done = subprocess.run(
            [sys.executable, "-m", "tuner.lr_search", "--dataset", "digits", "--ledger", "ledger",
             "--storage", "results", "--num-cpus", "2", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and message in done.stderr
        assert not (tmp_path / "ledger").exists()
        assert not any((tmp_path / "results").glob("*")) if (tmp_path / "results").exists() else True


# ---------------------------------------------------------------- Ctrl-C and closing advice


@pytest.mark.slow
def test_ctrl_c_during_a_search_prints_the_command_that_starts_it_again(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--dataset", "digits", "--ledger", "ledger", "--storage", "results", "--num-cpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "tuner.lr_search", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = []
        for line in proc.stdout:
            head.append(line)
            if ": started" in line:
                break
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(head) + out
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in text
    assert "start the search again with: python -m tuner.lr_search " + " ".join(args) in text
    assert "Tuner.restore" not in text + err and "Traceback" not in err
    assert not (tmp_path / "ledger").exists()  # nothing finished, nothing recorded
    assert not any((tmp_path / "results").iterdir())  # and no empty experiment directory left


def test_command_line_quotes_what_needs_quoting():
    assert command_line("tuner.lr_search", ["--ledger", "my ledger", "--epochs", "1"]) == \
        "python -m tuner.lr_search --ledger 'my ledger' --epochs 1"


def test_progress_shows_the_share_of_the_epoch_budget():
    lines = []
    printer = ProgressPrinter()
    printer._print = lines.append
    trial = SimpleNamespace(config={"lr": 0.4, "epochs": 0.125}, trial_id="t")
    # 59 steps of 128 images over 60,000 examples: 0.1259 epochs seen, all of a 0.125 budget.
    printer.on_trial_result(0, [], trial, {"epoch": 59 * 128 / 60000, "progress": 1.0, "val_loss": 0.99})
    printer.on_trial_result(0, [], trial, {"epoch": 15 * 128 / 60000, "progress": 15 / 59, "val_loss": 1.6})
    assert lines[0] == "  trial lr=0.4: epoch 0.125/0.125 val_loss 0.99"
    assert lines[1].startswith("  trial lr=0.4: epoch 0.0318/0.125 ")


def _result(search, verdict, **over):
    return lr_search_job.SearchResult(search=search, experiment="exp", experiment_dir="results/exp", trials=[],
                                  verdict=verdict, record={"rounds": [[0.05, 0.025]]}, recorded=None,
                                  wall_seconds=1.0, **over)


def test_closing_advice_names_commands(tmp_path):
    from tuner.study.planner import Verdict

    search = lr_search_job.plan_search(lr_search_job.LRSearchOptions(dataset="digits", ledger=str(tmp_path / "l")))
    bracketed = Verdict(lr=0.4, loss=0.99, done=True, bracketed=True, tied=False, stop="bracketed",
                        runner_up=0.2, gap=0.06, message="lr 0.4 is best")
    lines = lr_search.describe_result(_result(search, bracketed), rerun="python -m tuner.lr_search --dataset digits")
    advice = [line for line in lines if line.startswith("next:")]
    assert len(advice) == 1
    assert "python -m tuner.lr_search --variant nano --epochs 8 --dataset digits" in advice[0]
    assert f"python -m tuner.report --ledger {tmp_path / 'l'} --out report" in advice[0]

    cut = Verdict(lr=0.05, loss=1.3, done=True, bracketed=False, tied=False, stop="max-trials",
                  runner_up=None, gap=None, message="stopped")
    lines = lr_search.describe_result(_result(search, cut), rerun="python -m tuner.lr_search --dataset digits")
    assert "continue the search with: python -m tuner.lr_search --dataset digits" in lines
    assert not any(line.startswith("next:") for line in lines)

    lines = lr_search.describe_result(_result(search, cut, incomplete=[0.1], interrupted=True),
                                      rerun="python -m tuner.lr_search --dataset digits")
    assert lines.index("interrupted (Ctrl-C)") < lines.index("continue it with: python -m tuner.lr_search --dataset digits")


def test_sweep_resume_command_names_what_it_needs():
    plan = {"experiment": "sweep-cpu-smoke-1"}
    options = sweep_job.SweepOptions(storage="runs", address="auto")
    assert sweep_job.resume_command(plan, options) == \
        "python -m tuner.sweep --resume --name sweep-cpu-smoke-1 --storage runs --address auto"
    assert sweep_job.resume_command(plan, sweep_job.SweepOptions()) == "python -m tuner.sweep --resume --name sweep-cpu-smoke-1"


def test_a_ledger_that_fails_mid_run_loses_no_row_and_fails_no_trial(tmp_path, capsys):
    """A row the ledger refuses is kept beside the experiment, with one error line."""
    from tuner.raytune.callbacks import UNRECORDED_FILE, LedgerCallback

    (tmp_path / "ledger").write_text("a file where the ledger should be")

    class Rows(LedgerCallback):
        def make_row(self, trial):
            return {"trial_id": trial.trial_id, "status": "finished", "lr": 0.1}

    callback = Rows(Ledger(tmp_path / "ledger"), source="sweep")
    trial = SimpleNamespace(trial_id="exp/t1", local_experiment_path=str(tmp_path / "exp"))
    callback.on_trial_complete(0, [], trial)  # raises nothing: Tune's loop goes on
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: trial exp/t1 ended but its ledger row was not written")
    kept = (tmp_path / "exp" / UNRECORDED_FILE).read_text().splitlines()
    assert [json.loads(line)["trial_id"] for line in kept] == ["exp/t1"]
    assert callback.unrecorded == [{"trial_id": "exp/t1", "status": "finished", "lr": 0.1}]
