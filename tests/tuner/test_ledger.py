"""The append-only Parquet ledger and its command line, on real pyarrow files in tmp dirs."""

import json
import math
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tuner.errors import TunerError
from tuner.records.ledger import DEFAULT_LEDGER, LEDGER_SCHEMA, TMP_PREFIX, Ledger, code_version, default_ledger_uri, read_results_csv
from tuner.ledger import main
from tuner.study.planner import plan


def row(trial_id, variant="nano", epochs=1.0, lr=0.1, loss=1.0, params=300_000, **extra):
    return {
        "trial_id": trial_id,
        "experiment": "exp",
        "kind": "pretrain",
        "variant": variant,
        "params": params,
        "epochs": epochs,
        "lr": lr,
        "batch_size": 256,
        "dataset": "digits",
        "final_val_loss": loss,
        "status": "finished",
        "source": "lr_search",
        **extra,
    }


def parts(directory):
    return sorted(p for p in directory.iterdir() if p.name.startswith("part-"))


def snapshot(directory):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_missing_ledger_reads_as_empty_table_with_schema(tmp_path):
    table = Ledger(tmp_path / "nowhere").read()
    assert table.num_rows == 0
    assert table.schema.equals(LEDGER_SCHEMA)
    assert Ledger(tmp_path / "nowhere").trial_ids() == set()


def test_append_read_round_trip(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    written = ledger.append(
        [row("a", top1=0.5, flops=1e12, checkpoint_uri="/ck/a"), row("b", lr=0.05, loss=math.nan, time=stamp)]
    )
    assert written == 2
    table = ledger.read()
    assert table.schema.equals(LEDGER_SCHEMA)
    rows = table.to_pylist()
    assert [r["trial_id"] for r in rows] == ["a", "b"]
    a, b = rows
    assert (a["variant"], a["lr"], a["batch_size"], a["top1"], a["flops"]) == ("nano", 0.1, 256, 0.5, 1e12)
    assert a["checkpoint_uri"] == "/ck/a"
    # Missing optional columns are null, multipliers 1, code_version and time filled in.
    assert a["parent_trial_id"] is None and a["seed"] is None and b["checkpoint_uri"] is None
    assert a["width_mult"] == 1.0 and a["depth_mult"] == 1.0
    assert a["code_version"] == code_version() and code_version().startswith("0.")
    assert abs((datetime.now(timezone.utc) - a["time"]).total_seconds()) < 60
    assert b["time"] == stamp
    assert math.isnan(b["final_val_loss"])
    assert len(parts(tmp_path / "ledger")) == 1


def test_append_is_idempotent_by_trial_id(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    assert ledger.append([row("a"), row("b")]) == 2
    assert ledger.append([row("b", lr=0.5), row("c"), row("c", lr=0.5)]) == 1
    assert ledger.append([row("a")]) == 0
    assert ledger.trial_ids() == {"a", "b", "c"}
    table = ledger.read()
    assert table.num_rows == 3
    # The first write of an id is the one kept.
    assert {r["trial_id"]: r["lr"] for r in table.to_pylist()} == {"a": 0.1, "b": 0.1, "c": 0.1}
    # Nothing new to write leaves no new file.
    assert len(parts(tmp_path / "ledger")) == 2


def test_crash_leftovers_are_ignored_and_old_files_never_change(tmp_path):
    directory = tmp_path / "ledger"
    ledger = Ledger(directory)
    ledger.append([row("a")])
    # A crash mid-write leaves a temporary file: a truncated Parquet file and an empty one.
    good = parts(directory)[0]
    (directory / f"{TMP_PREFIX}{good.name}").write_bytes(good.read_bytes()[:100])
    (directory / f"{TMP_PREFIX}part-x.parquet").write_bytes(b"")
    assert ledger.read().column("trial_id").to_pylist() == ["a"]

    before = snapshot(directory)
    assert ledger.append([row("b")]) == 1
    after = snapshot(directory)
    assert all(after[name] == value for name, value in before.items())
    assert len(after) == len(before) + 1
    assert ledger.read().column("trial_id").to_pylist() == ["a", "b"]


def test_corrupt_part_file_is_a_one_line_error(tmp_path):
    directory = tmp_path / "ledger"
    Ledger(directory).append([row("a")])
    (directory / "part-99999999T000000000000Z-bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TunerError, match="part-99999999T000000000000Z-bad.parquet") as info:
        Ledger(directory).read()
    assert "\n" not in str(info.value)
    with pytest.raises(TunerError):
        Ledger(directory).append([row("b")])


def test_ledger_path_that_is_a_file(tmp_path):
    path = tmp_path / "ledger"
    path.write_text("x")
    with pytest.raises(TunerError, match="not a directory"):
        Ledger(path).read()


def test_bad_rows_are_rejected(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    with pytest.raises(TunerError, match="lacks lr"):
        ledger.append([{k: v for k, v in row("a").items() if k != "lr"}])
    with pytest.raises(TunerError, match="unknown ledger column"):
        ledger.append([row("a", learning_rate=0.1)])
    with pytest.raises(TunerError, match="status"):
        ledger.append([row("a", status="done")])
    with pytest.raises(TunerError, match="'lr'"):
        ledger.append([row("a", lr="fast")])
    assert not (tmp_path / "ledger").exists() or not parts(tmp_path / "ledger")


def test_subtree_filesystem_stands_in_for_a_bucket(tmp_path):
    # gs:// cannot be reached here; a SubTreeFileSystem over a local folder has the same
    # pyarrow FileSystem interface with bucket-relative paths.
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    fs = pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem())
    ledger = Ledger("runs/ledger", filesystem=fs)
    assert ledger.read().num_rows == 0
    assert ledger.append([row("a"), row("b")]) == 2
    assert ledger.append([row("b")]) == 0
    assert len(parts(bucket / "runs" / "ledger")) == 1
    assert Ledger("runs/ledger", filesystem=fs).trial_ids() == {"a", "b"}
    # The same files read through a plain local path.
    assert Ledger(bucket / "runs" / "ledger").trial_ids() == {"a", "b"}


def test_default_ledger_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("NFSCALE_LEDGER", raising=False)
    assert default_ledger_uri() == DEFAULT_LEDGER == "results/ledger"
    monkeypatch.setenv("NFSCALE_LEDGER", str(tmp_path / "env-ledger"))
    assert default_ledger_uri() == str(tmp_path / "env-ledger")
    assert Ledger().uri == str(tmp_path / "env-ledger")


def test_planner_reads_ledger_rows(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    ledger.append([row("a", lr=0.1, loss=1.0), row("b", lr=0.05, loss=1.2)])
    assert plan(ledger.read(), "micro", 2, 256, 900_000).upper_bound == pytest.approx(0.1)


GOOD_CSV = """variant,epochs,lr,batch_size,val_loss,compute,top1,params
nano,1,0.1,256,1.5,1e12,0.4,117350
micro,2,0.05,256,1.2,3e12,,
F0-w0.5,4,0.025,256,1.1,,0.6,17183718
"""


def test_csv_import_and_reimport_adds_nothing(tmp_path, capsys):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(GOOD_CSV)
    ledger_dir = tmp_path / "ledger"
    assert main(["import", str(csv_path), "--ledger", str(ledger_dir), "--dataset", "digits"]) == 0
    assert "imported 3 of 3" in capsys.readouterr().out
    rows = {r["variant"]: r for r in Ledger(ledger_dir).read().to_pylist()}
    assert set(rows) == {"nano", "micro", "F0"}
    nano, micro, f0 = rows["nano"], rows["micro"], rows["F0"]
    assert (nano["final_val_loss"], nano["flops"], nano["top1"], nano["params"]) == (1.5, 1e12, 0.4, 117350)
    assert micro["top1"] is None and f0["flops"] is None
    assert micro["params"] == 482959  # counted with digits' 10-way head
    assert (f0["width_mult"], f0["depth_mult"]) == (0.5, 1.0)
    assert all(r["status"] == "imported" and r["kind"] == "pretrain" for r in rows.values())
    assert all(r["source"] == "import" and r["dataset"] == "digits" for r in rows.values())

    files = parts(ledger_dir)
    assert main(["import", str(csv_path), "--ledger", str(ledger_dir), "--dataset", "digits"]) == 0
    assert "imported 0 of 3" in capsys.readouterr().out
    assert parts(ledger_dir) == files
    assert Ledger(ledger_dir).read().num_rows == 3


def test_csv_import_counts_params_for_the_datasets_head_or_says_it_guesses(tmp_path, capsys):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("variant,epochs,lr,batch_size,val_loss\nnano,1,0.1,256,1.5\nmicro,1,0.1,256,1.4\n")
    rows = {r["variant"]: r for r in read_results_csv(csv_path, dataset="fashion_mnist")}
    assert rows["nano"]["params"] == 117350  # what nfscale trains on Fashion-MNIST
    assert rows["micro"]["params"] > rows["nano"]["params"]
    assert {r["params"] for r in read_results_csv(csv_path, num_classes=1000)} >= {308420}
    # No dataset nfscale knows the classes of: a 1000-way guess, said loudly.
    assert main(["import", str(csv_path), "--ledger", str(tmp_path / "ledger")]) == 0
    err = capsys.readouterr().err
    assert "GUESSED" in err and "--num-classes" in err and "line 2, 3" in err
    assert {r["params"] for r in Ledger(tmp_path / "ledger").read().to_pylist()} >= {308420}


def test_an_imported_row_without_params_bounds_the_planner_like_a_trained_one(tmp_path):
    """A nano row imported with --dataset counts as nano's size, so it bounds the cells above it."""
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("variant,epochs,lr,batch_size,val_loss\nnano,0.125,0.4,128,0.99\n")
    rows = read_results_csv(csv_path, dataset="fashion_mnist")
    p = plan(rows, "micro", 0.25, 128, 482959, dataset="fashion_mnist")
    assert p.binding_cell is not None and p.upper_bound == pytest.approx(0.4)


@pytest.mark.parametrize(
    "text, message",
    [
        ("variant,epochs,lr,val_loss\nnano,1,0.1,1.5\n", "batch_size"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,1,abc,256,1.5\n", "line 2: column 'lr'"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,1,0.1,256,1.5\nnano,1,0.1,25.5,1.5\n", "line 3"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,,0.1,256,1.5\n", "'epochs' is empty"),
        ("variant,epochs,lr,batch_size,val_loss,notes\nnano,1,0.1,256,1.5,x\n", "unknown column"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,1,0.1,256,1.5\nF99,1,0.1,256,1.5\n",
         "line 3: unknown variant 'F99'"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,1,0,256,1.5\n", "line 2: column 'lr' must be positive"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,1,-0.1,256,1.5\n", "line 2: column 'lr' must be positive"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,1,0.1,256,nan\n", "line 2: column 'val_loss' is not a finite"),
        ("variant,epochs,lr,batch_size,val_loss\nnano,1,0.1,256,inf\n", "line 2: column 'val_loss' is not a finite"),
        ("variant,epochs,lr,batch_size,val_loss,params,dataset\nnano,1,0.1,256,1.5,308420,digits\n",
         "line 2: params 308,420 but nano with a 10-way head (digits) has 117,350"),
    ],
)
def test_csv_import_errors_are_one_line_exit_2(tmp_path, capsys, text, message):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(text)
    assert main(["import", str(csv_path), "--ledger", str(tmp_path / "ledger")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "ledger").exists()


def test_import_missing_file_exits_2(tmp_path, capsys):
    assert main(["import", str(tmp_path / "nope.csv"), "--ledger", str(tmp_path / "ledger")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.csv" in err and err.count("\n") == 1


def test_show_prints_sorted_aligned_rows(tmp_path, capsys):
    ledger = Ledger(tmp_path / "ledger")
    ledger.append(
        [
            row("big", variant="micro", params=860_000, lr=0.05),
            row("small-long", variant="nano", epochs=4.0, lr=0.025),
            row("small-hi", variant="nano", lr=0.1, loss=1.23456789),
            row("small-lo", variant="nano", lr=0.05),
            row("ft", variant="nano", kind="finetune", parent_trial_id="small-hi"),
        ]
    )
    assert main(["show", "--ledger", str(tmp_path / "ledger"), "--kind", "pretrain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["variant", "params", "epochs", "lr"]
    ids = [line.split()[-1] for line in lines[1:]]
    assert ids == ["small-lo", "small-hi", "small-long", "big"]
    assert "1.235" in lines[2] and "1.23456789" not in lines[2]
    assert "300k" in lines[1] and "860k" in lines[4]
    # Aligned: every line puts the lr column at the same place.
    assert len({line.index(" 256 ") for line in lines[1:]}) == 1

    assert main(["show", "--ledger", str(tmp_path / "ledger"), "--json", "--kind", "finetune"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in data] == ["ft"] and data[0]["parent_trial_id"] == "small-hi"


def test_show_json_turns_nan_into_null(tmp_path, capsys):
    Ledger(tmp_path / "ledger").append([row("d", loss=math.nan, status="diverged")])
    assert main(["show", "--ledger", str(tmp_path / "ledger"), "--json"]) == 0
    (data,) = json.loads(capsys.readouterr().out)
    assert data["final_val_loss"] is None and data["status"] == "diverged"


def test_show_errors_exit_2_with_one_line(tmp_path, capsys):
    directory = tmp_path / "ledger"
    directory.mkdir()
    (directory / "part-0-bad.parquet").write_bytes(b"junk")
    assert main(["show", "--ledger", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "part-0-bad.parquet" in err and err.count("\n") == 1


def test_show_empty_ledger(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["show", "--ledger", str(tmp_path / "empty")]) == 0
    assert "no rows" in capsys.readouterr().err
    assert main(["show", "--ledger", str(tmp_path / "empty"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_table_type_mismatch_in_a_part_file_is_an_error(tmp_path):
    directory = tmp_path / "ledger"
    directory.mkdir()
    pq.write_table(pa.table({"trial_id": ["a"], "lr": ["fast"]}), directory / "part-1-x.parquet")
    with pytest.raises(TunerError, match="'lr'"):
        Ledger(directory).read()


# ---------------------------------------------------------------- concurrency and `check`

WRITER = """
import sys, time
from pathlib import Path
from tuner.ledger import Ledger
ledger_dir, name, go, appends = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
while not go.exists():  # both writers start together
    time.sleep(0.005)
ledger = Ledger(ledger_dir)
for i in range(appends):
    rows = [dict(trial_id=f"{name}-{i}-{j}", kind="pretrain", variant="nano", epochs=1.0, lr=0.1,
                 batch_size=8, status="finished", source=name) for j in range(3)]
    # Every writer also appends the shared trial ids, as two sweeps recording one trial would.
    rows.append(dict(trial_id=f"shared-{i}", kind="pretrain", variant="nano", epochs=1.0, lr=0.1,
                     batch_size=8, status="finished", source=name))
    ledger.append(rows)
"""


def test_two_processes_appending_at_once_lose_no_row_and_duplicate_no_trial_id(tmp_path):
    """Two real writer processes append to one local ledger at the same time, each its own rows
    and both the same `shared-*` rows: every row is read back exactly once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    directory, go, appends = tmp_path / "ledger", tmp_path / "go", 40
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(directory), name, str(go), str(appends)], env=env)
             for name in ("a", "b")]
    go.touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]

    ids = Ledger(directory).read().column("trial_id").to_pylist()
    assert len(ids) == len(set(ids))
    expected = {f"{n}-{i}-{j}" for n in "ab" for i in range(appends) for j in range(3)}
    expected |= {f"shared-{i}" for i in range(appends)}
    assert set(ids) == expected
    # Every append wrote a file of its own; none is left half-written.
    assert len(parts(directory)) == 2 * appends
    assert not [p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_duplicates_on_disk_read_once_keeping_the_first_file(tmp_path):
    """What two racing writers leave: one trial_id in two part files. Readers keep the first."""
    directory = tmp_path / "ledger"
    Ledger(directory).append([row("a", lr=0.1)])
    Ledger(tmp_path / "other").append([row("a", lr=0.5), row("b")])
    (late,) = parts(tmp_path / "other")
    late.rename(directory / late.name)
    rows = Ledger(directory).read().to_pylist()
    assert [(r["trial_id"], r["lr"]) for r in rows] == [("a", 0.1), ("b", 0.1)]


def test_corrupt_part_error_says_to_run_check(tmp_path):
    directory = tmp_path / "ledger"
    Ledger(directory).append([row("a")])
    (directory / "part-99999999T000000000000Z-bad.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(TunerError) as info:
        Ledger(directory).read()
    message = str(info.value)
    assert "\n" not in message
    assert "part-99999999T000000000000Z-bad.parquet" in message
    assert f"python -m tuner.ledger check --ledger {directory}" in message


def test_check_moves_corrupt_parts_aside_keeps_them_and_reading_ignores_them(tmp_path, capsys):
    directory = tmp_path / "ledger"
    ledger = Ledger(directory)
    ledger.append([row("a")])
    ledger.append([row("b")])
    good = parts(directory)
    truncated = directory / "part-99999999T000000000001Z-trunc.parquet"
    truncated.write_bytes(good[0].read_bytes()[:-30])
    junk = directory / "part-99999999T000000000002Z-junk.parquet"
    junk.write_bytes(b"not parquet")
    pq.write_table(pa.table({"trial_id": ["z"], "lr": ["fast"]}), directory / "part-99999999T000000000003Z-type.parquet")
    in_progress = directory / f"{TMP_PREFIX}part-x.parquet"
    in_progress.write_bytes(b"half")

    assert main(["check", "--ledger", str(directory)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert all(line.startswith("moved part-99999999T") for line in out[:3])
    assert "'lr'" in out[2]
    assert "moved 3 of 5 part files aside" in out[3] and "_corrupt" in out[3]
    # Kept byte for byte under _corrupt/, the readable parts and the temporary file untouched.
    aside = directory / "_corrupt"
    assert (aside / junk.name).read_bytes() == b"not parquet"
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        [truncated.name, junk.name, "part-99999999T000000000003Z-type.parquet"])
    assert parts(directory) == good and in_progress.exists()
    assert Ledger(directory).trial_ids() == {"a", "b"}

    assert main(["check", "--ledger", str(directory)]) == 0
    assert capsys.readouterr().out.strip() == f"ledger {directory}: all 2 part files read"

    # A second corrupt file of a name already aside is kept too, under a numbered name.
    junk.write_bytes(b"more junk")
    assert main(["check", "--ledger", str(directory)]) == 1
    assert (aside / f"{junk.name}.1").read_bytes() == b"more junk"
    assert (aside / junk.name).read_bytes() == b"not parquet"
    assert ledger.append([row("c")]) == 1
    assert Ledger(directory).trial_ids() == {"a", "b", "c"}


def test_check_on_a_bucket_and_on_a_missing_ledger(tmp_path, capsys):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    fs = pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem())
    ledger = Ledger("runs/ledger", filesystem=fs)
    ledger.append([row("a")])
    (bucket / "runs" / "ledger" / "part-9-bad.parquet").write_bytes(b"junk")
    (moved,) = ledger.move_corrupt_aside()
    assert moved[0] == "runs/ledger/_corrupt/part-9-bad.parquet"
    assert ledger.trial_ids() == {"a"}
    # A path with no ledger is a one-line error (a mistyped path is not an empty, healthy ledger).
    for command in ("check", "show"):
        assert main([command, "--ledger", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err
        assert f"no ledger at {tmp_path / 'none'}; check the path" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["check", "--ledger", str(tmp_path / "empty")]) == 0
    assert "all 0 part files read" in capsys.readouterr().out
