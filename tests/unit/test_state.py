"""Status and lock files: atomic replacement, flock liveness, normalised keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tcppipe.state import (
    HeldLock,
    PipeKey,
    UnsafeDirectory,
    holder_pid,
    read_json,
    unsafe_directory_reason,
    write_json_atomically,
)


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


def test_atomic_write_replaces_a_planted_symlink_without_following_it(tmp_path: Path) -> None:
    """A symlink at a status path (or at the old fixed temporary name) is replaced, its target untouched."""
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    path = tmp_path / "s.status"
    path.symlink_to(target)
    (tmp_path / f"s.status.tmp.{os.getpid()}").symlink_to(target)
    write_json_atomically(str(path), {"offset": 3})
    assert target.read_bytes() == b"keep"
    assert not path.is_symlink()
    assert read_json(str(path)) == {"offset": 3}


def test_read_json_does_not_follow_a_symlink(tmp_path: Path) -> None:
    """A status path that is a symlink reads as no status, even to a valid JSON file."""
    (tmp_path / "real").write_text('{"offset": 1}')
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_json(str(tmp_path / "link")) is None
    os.mkfifo(tmp_path / "fifo")
    assert read_json(str(tmp_path / "fifo")) is None


def test_lock_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """A lock path planted as a symlink is not opened through, and its target is not created or truncated."""
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "x.lock").symlink_to(target)
    with pytest.raises(OSError, match=r"symbolic links"):
        HeldLock.acquire(str(tmp_path / "x.lock"))
    assert target.read_bytes() == b"keep"
    assert holder_pid(str(tmp_path / "x.lock")) is None


@pytest.mark.parametrize(("mode", "reason"), [(0o777, "writable by every user"), (0o757, "writable by every user")])
def test_state_directory_writable_by_others_is_refused(tmp_path: Path, mode: int, reason: str) -> None:
    """A state directory that others may write (and is not sticky) is refused with one clear line."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(mode)
    with pytest.raises(UnsafeDirectory, match=f"refusing state directory {state_dir}: it is {reason}"):
        HeldLock.acquire(str(state_dir / "x.lock"))
    with pytest.raises(UnsafeDirectory):
        write_json_atomically(str(state_dir / "s.status"), {})
    assert list(state_dir.iterdir()) == []


def test_sticky_state_directory_is_accepted(tmp_path: Path) -> None:
    """A sticky directory like /tmp is a usable state directory."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(0o1777)
    lock = HeldLock.acquire(str(state_dir / "x.lock"))
    assert lock is not None
    lock.release()
    write_json_atomically(str(state_dir / "s.status"), {"a": 1})
    assert read_json(str(state_dir / "s.status")) == {"a": 1}


def test_directory_reason_names_a_foreign_owner_and_group() -> None:
    """Directories owned by another user, or group-writable by another group, are unsafe; root's are not."""
    foreign = os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 1, 65534, 0, 0, 0, 0, 0))
    group = os.stat_result((stat.S_IFDIR | 0o775, 0, 0, 1, 0, 65534, 0, 0, 0, 0))
    assert unsafe_directory_reason(os.stat("/")) is None
    assert unsafe_directory_reason(foreign) == f"is owned by uid 65534, not by root or uid {os.geteuid()}"
    if os.getegid() != 65534:
        assert unsafe_directory_reason(group) == "is writable by group 65534"


def test_temporary_files_are_not_left_behind_on_failure(tmp_path: Path) -> None:
    """A write that fails after creating its temporary file removes it."""
    (tmp_path / "d.status").mkdir()  # os.replace onto a directory fails
    with pytest.raises(IsADirectoryError):
        write_json_atomically(str(tmp_path / "d.status"), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.status"]
