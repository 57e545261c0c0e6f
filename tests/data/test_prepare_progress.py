"""`python -m data.prepare` tells how its reading goes on long inputs (issue: it printed nothing for minutes):
rows read and rows/s on stderr every --progress_seconds, nothing on a short log at the default, and stdout (the
summary) as before."""

import re

from tests.conftest import run_module

FLAGS = ["--user_column=user", "--item_column=item", "--timestamp_column=time"]


def test_progress_lines_on_stderr_and_none_for_a_short_log(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,time\n" + "".join(f"u{row % 300},i{row % 700},{row}\n" for row in range(25_000)))
    every_check = run_module("data.prepare", *FLAGS, f"--input={path}", f"--output_dir={tmp_path / 'a'}",
                             "--progress_seconds=0")
    assert every_check.returncode == 0, every_check.stderr[-2000:]
    progress = [line for line in every_check.stderr.splitlines() if line.startswith("reading ")]
    rows = [re.fullmatch(r"reading --input: ([\d,]+) rows, [\d,]+ rows/s", line) for line in progress]
    assert all(rows) and [match.group(1) for match in rows] == ["10,000", "20,000"], progress
    assert every_check.stdout.startswith(f"prepared {tmp_path / 'a'}: ")
    default = run_module("data.prepare", *FLAGS, f"--input={path}", f"--output_dir={tmp_path / 'b'}")
    assert default.returncode == 0 and "reading " not in default.stderr, default.stderr[-2000:]
    assert default.stdout == every_check.stdout.replace(str(tmp_path / "a"), str(tmp_path / "b"))
