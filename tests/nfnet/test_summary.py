import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("argv,message", [
    (["F0", "--resolution", "8"], "error: --resolution must be a whole number of px >= 16"),
    (["F0", "--resolution", "3"], "error: --resolution must be a whole number of px >= 16"),
    (["F0", "--resolution", "abc"], "error: --resolution: expected an integer, got 'abc'"),
    (["F0", "--width-mult", "wide"], "error: --width-mult: expected a number, got 'wide'"),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys, argv, message):
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own check of the value
        code = exit_info.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_the_minimum_resolution_is_where_the_last_stage_gets_one_pixel():
    """MIN_RESOLUTION is the size the four halvings before the last stage take to one pixel:
    there every earlier stride-2 layer halves at least 2 px; at half of it one halves 1 px."""
    from nfnet.counting import stage_table
    from nfnet.variants import MIN_RESOLUTION

    def out_px(resolution: int) -> dict[str, int]:
        return {row.name: row.out_resolution for row in stage_table("nano", resolution, 10)}

    assert out_px(MIN_RESOLUTION)["stage1"] == 2 and out_px(MIN_RESOLUTION)["stage2"] == 1
    assert out_px(MIN_RESOLUTION // 2)["stage1"] == 1
