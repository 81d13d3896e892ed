"""The destination and its record: landed bytes counted by the file's own size."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tcppipe.destination import Destination, record_path
from tcppipe.protocol import GenerationId

IDENT = GenerationId(1, 2, 0, hashlib.sha256(b"").hexdigest())


def test_new_destination_has_no_record_and_creates_parents(tmp_path: Path) -> None:
    """A fresh destination is created with its directories and reports no record."""
    dest = Destination.open(str(tmp_path / "a" / "b" / "out"), str(tmp_path / "state"))
    assert dest.answer() == (None, None)
    assert (tmp_path / "a" / "b" / "out").exists()
    dest.close()


def test_record_survives_reopening_and_counts_by_size(tmp_path: Path) -> None:
    """After begin_generation and writes, a new process sees the same generation and offset."""
    out, state = tmp_path / "out", str(tmp_path / "state")
    out.write_bytes(b"older content\n")
    dest = Destination.open(str(out), state)
    dest.begin_generation(IDENT, 3)
    dest.write(b"hello")
    dest.close()
    again = Destination.open(str(out), state)
    record, offset = again.answer()
    assert offset == 8
    assert record is not None
    assert (record.dev, record.ino) == (1, 2)
    # The generation began 3 bytes before the write: its head is "nt\n" + "hello".
    assert record.fp_len == 8
    assert record.fp_sha256 == hashlib.sha256(b"nt\nhello").hexdigest()
    again.close()


def test_replaced_destination_invalidates_the_record(tmp_path: Path) -> None:
    """A destination swapped for another file while the server was down has no record."""
    out, state = tmp_path / "out", str(tmp_path / "state")
    dest = Destination.open(str(out), state)
    dest.begin_generation(IDENT, 0)
    dest.write(b"data")
    dest.close()
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"data")  # made while the old file exists: another inode
    out.unlink()
    replacement.rename(out)
    assert Destination.open(str(out), state).answer() == (None, None)


def test_reopen_after_rename_keeps_the_landed_count(tmp_path: Path) -> None:
    """mv out out.1 + reopen: the new file starts empty and the generation's offset is unchanged."""
    out, state = tmp_path / "out", str(tmp_path / "state")
    dest = Destination.open(str(out), state)
    dest.begin_generation(IDENT, 0)
    dest.write(b"12345")
    out.rename(tmp_path / "out.1")
    assert dest.reopen() is True
    assert dest.landed() == 5
    dest.write(b"678")
    dest.close()
    again = Destination.open(str(out), state)
    assert again.landed() == 8
    assert out.read_bytes() == b"678"
    assert again.reopen() is False
    again.close()


def test_record_lives_in_the_state_directory(tmp_path: Path) -> None:
    """The sidecar path depends only on the destination path, under STATE/tcppiped."""
    assert record_path("/s", "/x/y") == record_path("/s", "/x/y")
    assert record_path("/s", "/x/y").startswith("/s/tcppiped/")
    assert record_path("/s", "/x/y") != record_path("/s", "/x/z")


def test_rename_without_reopen_is_found_after_a_restart(tmp_path: Path) -> None:
    """mv out out.1 while the server is down: the next open finds out.1 and keeps the count."""
    out, state = tmp_path / "out", str(tmp_path / "state")
    dest = Destination.open(str(out), state)
    dest.begin_generation(IDENT, 0)
    dest.write(b"123456")
    dest.close()
    out.rename(tmp_path / "out.1")
    again = Destination.open(str(out), state)
    assert again.landed() == 6
    again.write(b"78")
    again.close()
    assert Destination.open(str(out), state).landed() == 8
