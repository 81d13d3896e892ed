"""The destination and its record: landed bytes counted by the file's own size."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tcppipe.destination import Destination, DestinationError, record_path
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


def test_symlinked_destination_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """A destination that is a symbolic link is refused, naming the link, and the target keeps its bytes."""
    target = tmp_path / "passwd"
    target.write_bytes(b"root:x:0:0\n")
    (tmp_path / "out").symlink_to(target)
    with pytest.raises(DestinationError, match="is a symbolic link"):
        Destination.open(str(tmp_path / "out"), str(tmp_path / "state"))
    assert target.read_bytes() == b"root:x:0:0\n"


def test_symlinked_parent_directory_is_refused(tmp_path: Path) -> None:
    """A symlinked directory on the way is not followed and nothing is created behind it."""
    crond = tmp_path / "cron.d"
    crond.mkdir()
    (tmp_path / "archive").symlink_to(crond)
    with pytest.raises(DestinationError, match=r"cannot be opened: .*/archive is a symbolic link \(not followed\)"):
        Destination.open(str(tmp_path / "archive" / "job"), str(tmp_path / "state"))
    assert list(crond.iterdir()) == []


def test_fifo_destination_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO in place of the destination is refused without waiting for a reader."""
    os.mkfifo(tmp_path / "out")
    with pytest.raises(DestinationError, match="is a FIFO"):
        Destination.open(str(tmp_path / "out"), str(tmp_path / "state"))
    with pytest.raises(DestinationError, match="is a FIFO"):
        Destination.inspect(str(tmp_path / "out"), str(tmp_path / "state"))


def test_directory_destination_is_refused(tmp_path: Path) -> None:
    """A directory where the destination file should be is refused in one line."""
    (tmp_path / "out").mkdir()
    with pytest.raises(DestinationError, match="is a directory"):
        Destination.open(str(tmp_path / "out"), str(tmp_path / "state"))


def test_parents_are_made_0755_and_the_file_0640_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 0 each created level is 0755 and the destination 0640."""
    old = os.umask(0)
    try:
        Destination.open(str(tmp_path / "a" / "b" / "out"), str(tmp_path / "state")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b" / "out").stat().st_mode) == 0o640


def test_world_writable_parent_is_refused(tmp_path: Path) -> None:
    """A directory on the way that every user may write (and is not sticky) is refused."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(DestinationError, match=r"cannot be opened: directory .*open is writable by every user"):
        Destination.open(str(open_dir / "out"), str(tmp_path / "state"))
    assert not (open_dir / "out").exists()


def test_sticky_world_writable_parent_is_accepted(tmp_path: Path) -> None:
    """A sticky directory like /tmp may be on the way (others cannot replace what is ours)."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    Destination.open(str(sticky / "sub" / "out"), str(tmp_path / "state")).close()
    assert (sticky / "sub" / "out").exists()


def test_symlink_planted_across_a_rotation_is_not_followed(tmp_path: Path) -> None:
    """mv out out.1; ln -s target out; reopen: refused, and the target is unchanged."""
    out, target = tmp_path / "out", tmp_path / "target"
    target.write_bytes(b"secret")
    dest = Destination.open(str(out), str(tmp_path / "state"))
    dest.begin_generation(IDENT, 0)
    dest.write(b"123")
    out.rename(tmp_path / "out.1")
    out.symlink_to(target)
    with pytest.raises(DestinationError, match="is a symbolic link"):
        dest.reopen()
    dest.close()
    assert target.read_bytes() == b"secret"


def _forge_record(tmp_path: Path, base: object) -> tuple[Path, str]:
    out, state = tmp_path / "out", str(tmp_path / "state")
    dest = Destination.open(str(out), state)
    dest.begin_generation(IDENT, 0)
    dest.write(b"abc")
    dest.close()
    sidecar = Path(record_path(state, str(out)))
    raw = json.loads(sidecar.read_text())
    raw["base"] = base
    sidecar.write_text(json.dumps(raw))
    return out, state


@pytest.mark.parametrize("base", [-(2**62), -(2**64), 2**64, 4, True, "0", None])
def test_absurd_record_is_no_record(tmp_path: Path, base: object) -> None:
    """A sidecar whose base no real file could have (or past the destination's end) is ignored."""
    out, state = _forge_record(tmp_path, base)
    assert Destination.open(str(out), state).answer() == (None, None)


def test_plausible_negative_base_is_kept(tmp_path: Path) -> None:
    """A negative base (the generation began in a rotated-away file) is a valid record."""
    out, state = _forge_record(tmp_path, -10)
    dest = Destination.open(str(out), state)
    assert dest.landed() == 13
    dest.close()


def _ident(ino: int, head: bytes) -> GenerationId:
    return GenerationId(1, ino, len(head), hashlib.sha256(head).hexdigest())


def test_the_journal_lists_every_generation_the_file_holds(tmp_path: Path) -> None:
    """Each generation that gives way to the next becomes a span; a new process reads them back."""
    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    dest = Destination.open(out, state)
    dest.begin_generation(_ident(10, b""), 0)
    dest.write(b"first gen\n")
    dest.begin_generation(_ident(10, b""), 10)  # the same generation resumed: no new span
    dest.write(b"more\n")
    dest.begin_generation(_ident(11, b""), 0)
    dest.write(b"second\n")
    dest.begin_generation(_ident(11, b""), 0)  # -n: the same generation again from 0
    dest.write(b"second\n")
    dest.close()
    again = Destination.open(out, state)
    spans = [(s.record.ino, s.base, s.first, s.end) for s in again.spans()]
    assert spans == [(10, 0, 0, 15), (11, 15, 0, 7), (11, 22, 0, 7)]
    # A span's record names the head its bytes in this file have.
    assert again.spans()[0].record == _ident(10, b"first gen\nmore\n")
    again.close()


def test_a_span_whose_tail_never_landed_is_named_by_the_head_it_holds(tmp_path: Path) -> None:
    """A resume names the generation by the client's longer head (bytes not landed); when its
    tail is then lost and the next generation begins, the span is named by the bytes it holds,
    while READY still names the generation by the client's head (simulation seed 2348)."""
    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    origin = b"landed\n" + b"never landed\n"
    dest = Destination.open(out, state)
    dest.begin_generation(_ident(10, b"land"), 0)
    dest.write(origin[:7])
    dest.begin_generation(_ident(10, origin), 7)  # reconnected: the file has grown since
    assert dest.answer() == (_ident(10, origin), 7)
    assert [s.record for s in dest.spans()] == [_ident(10, b"landed\n")]
    dest.begin_generation(_ident(11, b"next"), 0)  # the rest of 10 was deleted while down
    dest.write(b"next\n")
    dest.close()
    again = Destination.open(out, state)
    assert [(s.record, s.base, s.end) for s in again.journal] == [(_ident(10, b"landed\n"), 0, 7)]
    assert [s.record for s in again.spans()] == [_ident(10, b"landed\n"), _ident(11, b"next\n")]
    again.close()


def test_the_journal_is_bounded_and_counts_what_it_dropped(tmp_path: Path) -> None:
    """At most MAX_JOURNAL_SPANS are kept; ``earlier`` says how many older ones are gone."""
    from tcppipe.destination import MAX_JOURNAL_SPANS

    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    dest = Destination.open(out, state)
    for ino in range(MAX_JOURNAL_SPANS + 6):
        dest.begin_generation(_ident(100 + ino, b""), 0)
        dest.write(b"x")
    dest.close()
    again = Destination.open(out, state)
    assert (len(again.journal), again.earlier) == (MAX_JOURNAL_SPANS, 5)
    assert again.journal[0].record.ino == 105
    again.close()


def test_a_rotated_destination_starts_an_empty_journal(tmp_path: Path) -> None:
    """After ``mv out out.1`` and a reopen, the earlier spans are in out.1, not in the new file."""
    out, state = tmp_path / "out", str(tmp_path / "state")
    dest = Destination.open(str(out), state)
    dest.begin_generation(_ident(10, b""), 0)
    dest.write(b"one\n")
    dest.begin_generation(_ident(11, b""), 0)
    dest.write(b"two\n")
    out.rename(tmp_path / "out.1")
    assert dest.reopen()
    dest.write(b"three\n")
    assert [(s.record.ino, s.first, s.end) for s in dest.spans()] == [(11, 4, 10)]
    dest.close()


def test_a_journal_that_does_not_fit_the_file_is_no_journal(tmp_path: Path) -> None:
    """A damaged or forged journal (a span past the current generation's base) is dropped, the record kept."""
    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    dest = Destination.open(out, state)
    dest.begin_generation(_ident(10, b""), 0)
    dest.write(b"one\n")
    dest.begin_generation(_ident(11, b""), 0)
    dest.write(b"two\n")
    dest.close()
    sidecar = record_path(state, out)
    raw = json.loads(Path(sidecar).read_text())
    raw["journal"][0]["stop"] = 99
    Path(sidecar).write_text(json.dumps(raw))
    again = Destination.open(out, state)
    assert (again.journal, again.answer()[1]) == ([], 4)
    again.close()


def test_a_spans_inode_generation_is_the_one_named_where_it_began(tmp_path: Path) -> None:
    """A continuation (a resume, or whoever else appends at the landed byte) cannot change the
    inode generation verify will trust for the span; a new span takes the new one."""
    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    dest = Destination.open(out, state)
    dest.begin_generation(_ident(10, b""), 0, igen=7)
    dest.write(b"one\n")
    dest.begin_generation(_ident(10, b"one\n"), 4, igen=99)
    dest.write(b"two\n")
    dest.begin_generation(_ident(11, b""), 0, igen=8)
    dest.write(b"three\n")
    dest.close()
    again = Destination.open(out, state)
    assert [(s.record.ino, s.igen) for s in again.spans()] == [(10, 7), (11, 8)]
    again.close()


def test_a_writer_is_fenced_once_another_has_appended_or_recorded(tmp_path: Path) -> None:
    """Two tcppipeds sharing a state directory: each write checks nobody else wrote since this
    object's own last one (Rule 5); the one that comes second after the other's append is refused,
    and what it would have added never lands."""
    path, state_dir = str(tmp_path / "dest"), str(tmp_path / "state")
    ident = GenerationId(1, 2, 0, hashlib.sha256(b"").hexdigest())
    stale = Destination.open(path, state_dir)
    stale.begin_generation(ident, 0)
    stale.write(b"abc")
    taker = Destination.open(path, state_dir)  # a failover: the record says 3 bytes landed
    assert taker.answer()[1] == 3
    taker.begin_generation(ident, 3)
    taker.write(b"def")
    with pytest.raises(DestinationError, match="written by another tcppiped"):
        stale.write(b"XYZ")  # the stalled receiver wakes with bytes its client has left
    other = GenerationId(1, 3, 0, hashlib.sha256(b"").hexdigest())
    third = Destination.open(path, state_dir)
    third.begin_generation(other, 0)  # a new record, no byte yet
    with pytest.raises(DestinationError, match="written by another tcppiped"):
        taker.write(b"ghi")
    for dest in (stale, taker, third):
        dest.close()
    assert Path(path).read_bytes() == b"abcdef"
