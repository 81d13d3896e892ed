"""Status and lock files: atomic replacement, flock liveness, normalised keys."""

from __future__ import annotations

import os
from pathlib import Path

from tcppipe.state import HeldLock, PipeKey, holder_pid, read_json, write_json_atomically


def test_atomic_json_write_replaces_whole(tmp_path: Path) -> None:
    """A written status reads back whole and leaves no temporary file."""
    path = tmp_path / "s.status"
    write_json_atomically(str(path), {"offset": 1})
    write_json_atomically(str(path), {"offset": 2})
    assert read_json(str(path)) == {"offset": 2}
    assert os.listdir(tmp_path) == ["s.status"]


def test_unreadable_status_is_none(tmp_path: Path) -> None:
    """A missing or torn status file is treated as no status."""
    assert read_json(str(tmp_path / "missing")) is None
    (tmp_path / "torn").write_text('{"offset": 1')
    assert read_json(str(tmp_path / "torn")) is None


def test_lock_reports_its_holder_until_released(tmp_path: Path) -> None:
    """holder_pid sees the pid while the flock is held and nothing after release."""
    path = str(tmp_path / "x.lock")
    lock = HeldLock.acquire(path)
    assert lock is not None
    assert holder_pid(path) == os.getpid()
    assert HeldLock.acquire(path) is None
    lock.release()
    assert holder_pid(path) is None
    assert holder_pid(str(tmp_path / "never")) is None


def test_pipe_key_normalises_the_path_and_host() -> None:
    """Relative paths are made absolute against the cwd (symlinks kept); hosts are case-folded."""
    a = PipeKey.from_options("logs/../app.log", "Archive.Example.", 6514, cwd="/var/log")
    b = PipeKey.from_options("/var/log/app.log", "archive.example", 6514)
    assert a == b
    assert a.slug == b.slug
    assert PipeKey.from_options("/var/log/app.log", "archive.example", 6515).slug != a.slug
    assert "/" not in a.slug
