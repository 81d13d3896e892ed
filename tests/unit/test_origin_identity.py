"""The identity number of a file: its inode generation, or its birth time where there is none."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcppipe import destination, ledger, origin
from tcppipe.origin import BIRTH_TIME_BASE, MAX_BIRTH_TIME_NS, birth_time_ns, file_identity_number, inode_generation

TMPFS_MAGIC = origin.TMPFS_MAGIC


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm), which has no inode generation numbers."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("/dev/shm is not writable here")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="tcppipe-test-") as name:
        with open(os.path.join(name, "probe"), "wb") as f:
            if origin._filesystem_type(f.fileno()) != TMPFS_MAGIC:
                pytest.skip("/dev/shm is not a tmpfs here")
        yield Path(name)


def number_of(path: Path) -> int | None:
    with open(path, "rb") as f:
        return file_identity_number(f.fileno())


def test_where_there_is_an_inode_generation_it_is_the_identity_number(tmp_path: Path) -> None:
    """On a file system with inode generations (ext4 here) the number is the one recorded before birth times."""
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        igen = inode_generation(f.fileno())
        if igen is None:
            pytest.skip("this file system has no inode generation numbers")
        assert file_identity_number(f.fileno()) == igen
        assert igen < BIRTH_TIME_BASE


def test_on_tmpfs_the_identity_number_is_the_birth_time_and_survives_a_rename(tmpfs_dir: Path) -> None:
    """tmpfs has no inode generation: the number is BIRTH_TIME_BASE plus the birth time, the same
    after a rename, and another file created later has another."""
    path = tmpfs_dir / "app.log"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        assert inode_generation(f.fileno()) is None
        born = birth_time_ns(f.fileno())
    assert born is not None
    assert number_of(path) == BIRTH_TIME_BASE + born
    path.rename(tmpfs_dir / "app.log.1")
    assert number_of(tmpfs_dir / "app.log.1") == BIRTH_TIME_BASE + born
    (tmpfs_dir / "app.log").write_bytes(b"")
    assert number_of(tmpfs_dir / "app.log") not in (None, BIRTH_TIME_BASE + born)


def test_without_statx_there_is_no_birth_time(tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A C library without statx (before glibc 2.28): no birth time, and on tmpfs no number (as before)."""
    monkeypatch.setattr(origin, "_statx", None)
    path = tmpfs_dir / "app.log"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        assert birth_time_ns(f.fileno()) is None
    assert number_of(path) is None


def test_a_birth_time_out_of_range_is_no_number(tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A birth time before 1970 or past what a record keeps gives no number rather than a wrong one."""
    path = tmpfs_dir / "app.log"
    path.write_bytes(b"")
    for born in (-1, MAX_BIRTH_TIME_NS):
        monkeypatch.setattr(origin, "birth_time_ns", lambda _fd, born=born: born)
        assert number_of(path) is None


def test_every_birth_time_number_fits_where_an_inode_generation_goes() -> None:
    """The largest number is one a destination's record and a ledger header keep (below 2**62),
    and the smallest is above every 32-bit inode generation."""
    largest = BIRTH_TIME_BASE + MAX_BIRTH_TIME_NS - 1
    assert largest < destination.MAX_RECORD_OFFSET
    assert largest < ledger.MAX_OFFSET
    assert BIRTH_TIME_BASE > 2**32 - 1


def test_a_failed_inode_generation_read_is_no_number_not_a_birth_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which kind of number a file has is its file system's (tmpfs, overlayfs: birth times), never
    a failed ioctl's: a birth time once, an inode generation the next time, would be two files."""
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        if origin._filesystem_type(f.fileno()) in (TMPFS_MAGIC, origin.OVERLAYFS_SUPER_MAGIC):
            pytest.skip("the test directory is on tmpfs or overlayfs here")
        monkeypatch.setattr(origin, "inode_generation", lambda _fd: None)
        assert file_identity_number(f.fileno()) is None
