"""``python -m bench.zstd_levels``: a table row per level and thread count, and bad options
refused with the option named (a zero thread count divided by zero)."""

import pytest

from bench import zstd_levels


def test_one_short_run_prints_a_row_per_level(capsys):
    assert zstd_levels.main(["--levels", "1,3", "--threads", "1", "--seconds", "0.05",
                             "--repeat", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")
            or line.startswith("| 3 |")]
    assert len(rows) == 2
    ratio = float(rows[0].split("|")[3])
    assert ratio > 1.5  # the sender's bodies compress


@pytest.mark.parametrize("argv, says", [
    (["--threads", "0"], "--threads: every count must be at least 1"),
    (["--levels", "1,x"], "comma-separated integers"),
    (["--levels", "30"], "--levels: zstd levels here are -7 to 22"),
])
def test_bad_options_are_refused_naming_the_option(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        zstd_levels.main(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err
