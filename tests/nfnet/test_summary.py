import subprocess
import sys

from nfnet.summary import main


def test_summary_prints_params_macs_and_a_stage_table(capsys):
    assert main(["F0", "--resolution", "256"]) == 0
    out = capsys.readouterr().out
    assert "71,489,284 (71.49M)" in out
    assert "(12.38B multiply-adds per image)" in out
    for stage in ("stem", "stage0", "stage3", "head"):
        assert stage in out


def test_summary_list_is_smallest_first_one_per_line(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names[0] == "nano" and names[-1] == "F7+"
    assert {"F0", "F3+", "F7", "micro", "small"} <= set(names)
    assert len(names) == len(set(names)) == 20


def test_unknown_variant_is_one_line_error_and_nonzero_exit():
    proc = subprocess.run(
        [sys.executable, "-m", "nfnet.summary", "F9"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown variant 'F9'")
    assert "F7+" in lines[0]
