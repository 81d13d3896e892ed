"""The status table and the catch-up progress line."""

from __future__ import annotations

import json

from tcppipe.progress import MIN_BEHIND_BYTES, CatchUp, progress_line
from tcppipe.status import PipeRow, human_bytes, render_json, render_table

ROW = PipeRow("web1", "/var/log/app.log", "/srv/web1/app.log", "streaming", 5 * 1024 * 1024, 0, 0.25, 3)


def test_table_has_a_header_and_aligned_rows() -> None:
    """One header line and one line per pipe; columns start at the same place on every line."""
    other = PipeRow("db-server-2", "/l", "/d", "reconnecting", None, None, None, 0)
    lines = render_table([ROW, other]).splitlines()
    assert lines[0].split()[:4] == ["HOST", "ORIGIN", "DESTINATION", "STATE"]
    assert lines[1].index("/var/log/app.log") == lines[2].index("/l") == lines[0].index("ORIGIN")
    assert "5.0 MiB" in lines[1]
    assert lines[2].split()[-4:] == ["-", "-", "-", "0"]


def test_json_round_trips_the_rows() -> None:
    """--json carries every field, for scripts."""
    value = json.loads(render_json([ROW], pid=7))
    assert value["pid"] == 7
    assert PipeRow(**value["pipes"][0]) == ROW


def test_human_bytes() -> None:
    """Sizes read as bytes below a KiB, then with one decimal in binary units."""
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]


def test_catch_up_shows_only_a_long_catch_up_then_ends_its_line() -> None:
    """Below the threshold: nothing. Above: a line every half second, then 'caught up' with a newline."""
    quiet = CatchUp()
    assert quiet.update(0.0, 0, MIN_BEHIND_BYTES - 1) is None
    assert quiet.update(5.0, 100, 0) is None
    shown = CatchUp()
    total = 100 * 1024 * 1024
    assert shown.update(0.0, 0, total) is None
    assert shown.update(0.1, 1, total - 1) is None
    line = shown.update(1.0, total // 2, total // 2)
    assert line == "\r" + progress_line(total // 2, total // 2, total / 2)
    assert "1 s left" in line
    end = shown.update(2.0, total, 0)
    assert end is not None
    assert end.startswith("\rcaught up: 100.0 MiB in 2.0 s")
    assert end.endswith("\n")
