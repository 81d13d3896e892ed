"""The tailer's decisions on real files: resume, rotation, truncation, grace, SIGHUP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcppipe.origin import identify, name_shape
from tcppipe.protocol import GenerationId
from tcppipe.tailer import History, Recorded, Tailer

GRACE_S = 5.0


def following(tmp_path: Path, content: bytes) -> tuple[Path, Tailer]:
    """A tailer on a new file 'log', positioned at its first byte as for a new pipe."""
    log = tmp_path / "log"
    log.write_bytes(content)
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    tailer.resume(None, None, 0.0, first=True)
    return log, tailer


def drain(tailer: Tailer, now: float) -> bytes:
    """Everything the tailer would send now, in order."""
    out = b""
    for _ in range(10_000):
        chunk = tailer.next_chunk(now, 7)
        if chunk is None:
            return out
        gen, data = chunk
        tailer.advance(gen, len(data))
        out += data
    raise AssertionError("tailer never caught up")


def test_resume_where_the_destination_stands(tmp_path: Path) -> None:
    """A record for the current file resumes at the server's offset."""
    log = tmp_path / "log"
    log.write_bytes(b"0123456789")
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    record = identify(tailer.current.fd)
    resumed = tailer.resume(record, 4, 0.0, first=True)
    assert resumed.position == 4
    assert drain(tailer, 0.0) == b"456789"


def test_resume_finds_the_rotated_generation_after_a_restart(tmp_path: Path) -> None:
    """After log was renamed while tcppipe was down, its rest goes first, then the new log."""
    log = tmp_path / "log"
    log.write_bytes(b"old generation\n")
    fd = os.open(log, os.O_RDONLY)
    record = identify(fd)
    os.close(fd)
    log.rename(tmp_path / "log.1")
    log.write_bytes(b"new generation\n")
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    resumed = tailer.resume(record, 4, 0.0, first=True, history=History(None, (Recorded(record, 15),)))
    assert resumed.path == str(tmp_path / "log.1")
    assert drain(tailer, 0.0) == b"generation\n"
    assert drain(tailer, GRACE_S + 1) == b"new generation\n"


def test_unknown_record_starts_the_current_file_from_its_first_byte(tmp_path: Path) -> None:
    """A record naming a file that no longer exists means the current file goes whole."""
    log = tmp_path / "log"
    log.write_bytes(b"abc")
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    gone = identify(tailer.current.fd)
    from dataclasses import replace

    resumed = tailer.resume(replace(gone, ino=gone.ino + 1), 2, 0.0, first=True)
    assert resumed.position == 0
    assert drain(tailer, 0.0) == b"abc"


def test_status_fallback_and_full_resend(tmp_path: Path) -> None:
    """With no server record the status offset is used; -n overrides everything."""
    log = tmp_path / "log"
    log.write_bytes(b"abcdef")
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    ident = identify(tailer.current.fd)
    assert tailer.resume(None, None, 0.0, first=True, history=History((ident, 3))).position == 3
    assert tailer.resume(ident, 5, 0.0, first=True, full=True).position == 0


def test_rename_rotation_drains_the_old_file_until_quiet(tmp_path: Path) -> None:
    """Old generation first (including late writes), the new one only after the grace period."""
    log, tailer = following(tmp_path, b"one\n")
    assert drain(tailer, 0.0) == b"one\n"
    log.rename(tmp_path / "log.1")
    log.write_bytes(b"three\n")
    tailer.follow(1.0)
    with open(tmp_path / "log.1", "ab") as late:
        late.write(b"two\n")
    assert drain(tailer, 1.0) == b"two\n"
    assert tailer.next_wakeup(2.0) == GRACE_S - 1.0
    assert drain(tailer, 1.0 + GRACE_S) == b"three\n"
    assert tailer.sending is tailer.current


def test_sighup_switches_without_waiting_and_a_second_one_resends_nothing(tmp_path: Path) -> None:
    """SIGHUP after mv+touch: old file to its end, then the new one; a repeated HUP sends nothing."""
    log, tailer = following(tmp_path, b"a\n")
    drain(tailer, 0.0)
    log.rename(tmp_path / "log.1")
    log.write_bytes(b"b\n")
    with open(tmp_path / "log.1", "ab") as late:
        late.write(b"late\n")
    tailer.request_hup(0.1)
    assert drain(tailer, 0.1) == b"late\nb\n"
    tailer.request_hup(0.2)
    assert drain(tailer, 0.2) == b""


def test_truncation_restarts_from_the_first_byte(tmp_path: Path) -> None:
    """A file cut below what was read is a new generation sent from byte 0."""
    log, tailer = following(tmp_path, b"long first content\n")
    drain(tailer, 0.0)
    log.write_bytes(b"new\n")
    tailer.follow(1.0)
    assert drain(tailer, 1.0) == b"new\n"


def test_acknowledged_generation_closes_older_ones(tmp_path: Path) -> None:
    """Once the server acknowledges the new generation, the retired one is closed."""
    log, tailer = following(tmp_path, b"x\n")
    drain(tailer, 0.0)
    old = tailer.current
    log.rename(tmp_path / "log.1")
    log.write_bytes(b"y\n")
    tailer.request_hup(0.0)
    drain(tailer, 0.0)
    assert old.done
    assert not old.closed
    tailer.acknowledged(tailer.current, 2)
    assert old.closed
    assert tailer.gens == [tailer.current]


def test_restart_recovers_every_queued_generation_in_order(tmp_path: Path) -> None:
    """Killed while two rotated generations were queued: the restart sends both, in order, then the current."""
    log, tailer = following(tmp_path, b"gen one\n")
    assert drain(tailer, 0.0) == b"gen one\n"
    log.rename(tmp_path / "log.2")
    log.write_bytes(b"gen two\n")
    tailer.follow(0.0)
    log.rename(tmp_path / "log.1")
    log.write_bytes(b"gen three\n")
    tailer.follow(0.0)
    queued = tuple(Recorded(g.ident(), g.size()) for g in tailer.gens)
    record = tailer.sending.ident()
    tailer.close()  # the kill: nothing of gen two and three was sent
    restarted = Tailer(str(log), GRACE_S)
    restarted.open(0.0)
    restarted.resume(record, 8, 0.0, first=True, history=History(None, queued))
    assert drain(restarted, 1.0) == b""  # gen one may still be written to: its grace runs
    # The quiet clocks of all replaced generations run at once: one grace period, not two.
    assert drain(restarted, GRACE_S + 1) == b"gen two\ngen three\n"


def test_a_rotated_names_shape_keeps_the_base_name_and_marks_each_stamp() -> None:
    """dateext, svlogd and numbered names of one series share a shape; a compressed one, another
    file's, and a name with no stamp (a lone copy) do not."""
    assert name_shape("app.log-20261202", "app.log") == name_shape("app.log-20261203", "app.log")
    assert name_shape("app.log-20261202.gz", "app.log") != name_shape("app.log-20261202", "app.log")
    assert name_shape("@4000000065ab00010c8a31e2.s", "current") == name_shape("@40000000ffff.s", "current")
    assert name_shape("@4000000065ab00010c8a31e2.u", "current") != name_shape("@40000000ffff.s", "current")
    # The base name is kept whole: web2's rotated files are not web1's.
    assert name_shape("web2.log-20261202", "web1.log") != name_shape("web1.log-20261202", "web1.log")
    assert name_shape("app.log.old", "app.log") is None


def test_generations_between_two_looks_under_a_stamped_name_come_in_mtime_order(tmp_path: Path) -> None:
    """The held generation is found under its dateext name; the later names of its shape go in
    mtime order (a tie: by name), an older one and a compressed one never."""
    log, tailer = following(tmp_path, b"first\n")
    assert drain(tailer, 0.0) == b"first\n"
    held = tmp_path / "log-2026120200"
    os.rename(log, held)
    os.utime(held, ns=(10**18, 10**18))
    (tmp_path / "log-2026113000").write_bytes(b"older\n")
    os.utime(tmp_path / "log-2026113000", ns=(10**17, 10**17))
    for name, content, mtime in (
        ("log-2026120202", b"third\n", 10**18 + 2),
        ("log-2026120201", b"second\n", 10**18),
        ("log-2026120202.gz", b"compressed\n", 10**18 + 3),
    ):
        (tmp_path / name).write_bytes(content)
        os.utime(tmp_path / name, ns=(mtime, mtime))
    log.write_bytes(b"fourth\n")
    tailer.request_hup(1.0)
    assert [os.path.basename(g.path) for g in tailer.gens] == ["log", "log-2026120201", "log-2026120202", "log"]
    assert drain(tailer, 1.0) == b"second\nthird\nfourth\n"


def _ident_of(path: Path) -> GenerationId:
    fd = os.open(path, os.O_RDONLY)
    try:
        return identify(fd)
    finally:
        os.close(fd)


def test_an_older_generation_restored_under_its_dateext_name_is_not_sent_again(tmp_path: Path) -> None:
    """Found by review: an old generation unpacked under its own dateext name (``zcat`` of
    app.log-20261120.gz), written after the held one, is no generation between: its name sorts
    before the held one's new name."""
    log, tailer = following(tmp_path, b"today\n")
    os.utime(log, ns=(10**18, 10**18))
    assert drain(tailer, 0.0) == b"today\n"
    old = tmp_path / "log-20261120"
    old.write_bytes(b"sent weeks ago\n")
    os.utime(old, ns=(10**18 + 10**9, 10**18 + 10**9))
    os.rename(log, tmp_path / "log-20261202")
    log.write_bytes(b"tomorrow\n")
    tailer.follow(1.0)
    assert drain(tailer, GRACE_S + 2) == b"tomorrow\n"


def test_a_generation_listed_before_the_record_is_not_sent_again_after_a_restart(tmp_path: Path) -> None:
    """Found by review: the status file lists X then A, the server's record is A (so X landed
    whole); A was rotated while tcppipe was down, and X was written after A: X is listed, so it
    is known, never a generation between A and the new FILE."""
    log, x = tmp_path / "log", tmp_path / "log-20261201"
    x.write_bytes(b"X whole\n")
    log.write_bytes(b"A head\n")
    os.utime(log, ns=(10**18, 10**18))
    os.utime(x, ns=(10**18 + 5, 10**18 + 5))
    x_id, a_id = _ident_of(x), _ident_of(log)
    history = History((a_id, 7), (Recorded(x_id, 8), Recorded(a_id, 7)), ())
    os.rename(log, tmp_path / "log-20261202")
    log.write_bytes(b"C new\n")
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    tailer.resume(a_id, 7, 0.0, first=True, history=history)
    assert drain(tailer, GRACE_S + 2) == b"C new\n"


def following_in_a_shared_directory(tmp_path: Path, name: str) -> tuple[Path, Path, Tailer]:
    """A sticky directory every user may write (as /tmp), and a tailer on its 'log', sent."""
    shared = tmp_path / name
    shared.mkdir()
    os.chmod(shared, 0o1777)
    log, tailer = following(shared, b"first\n")
    assert drain(tailer, 0.0) == b"first\n"
    return shared, log, tailer


def test_a_hard_link_under_a_stamped_or_numbered_name_in_a_shared_directory_is_not_taken(tmp_path: Path) -> None:
    """Where others may write (a sticky shared directory), a generation rotation moved aside has
    one name; a hard link under the right name (a user linking a file they cannot read, where
    the kernel lets them) is no generation of FILE."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a log\n")
    for rotated, link in (("log-2026120200", "log-2026120201"), ("log.2", "log.1")):
        shared, log, tailer = following_in_a_shared_directory(tmp_path, rotated)
        os.rename(log, shared / rotated)
        os.link(secret, shared / link)
        log.write_bytes(b"second\n")
        tailer.request_hup(1.0)
        assert drain(tailer, 1.0) == b"second\n", rotated


@pytest.mark.parametrize(
    ("held", "planted", "between"),
    [("log-2026120200", "log-2026120201", "log-2026120202"), ("log.3", "log.2", "log.1")],
)
def test_a_rotated_name_owned_by_another_user_is_not_taken(
    tmp_path: Path, held: str, planted: str, between: str
) -> None:
    """Generations between two looks were FILE, created as FILE's were: owned by the held one's
    owner or the new FILE's. Another user's file of the right name, planted in a sticky shared
    directory, is not one (stamped or numbered), and the ones after it still go."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    shared, log, tailer = following_in_a_shared_directory(tmp_path, "shared")
    os.rename(log, shared / held)
    (shared / planted).write_bytes(b"someone else's\n")
    os.chown(shared / planted, 12345, 12345)
    (shared / between).write_bytes(b"between\n")
    log.write_bytes(b"third\n")
    tailer.request_hup(1.0)
    assert drain(tailer, 1.0) == b"between\nthird\n"


@pytest.mark.parametrize(
    ("base", "held", "between"),
    [
        ("log", "log-20261201", "log-20261202"),
        ("current", "@4000000065ab00010c8a31e2.s", "@4000000065ab00020c8a31e2.s"),
    ],
)
def test_a_stamped_generation_in_a_directory_its_writer_owns_is_sent(
    tmp_path: Path, base: str, held: str, between: str
) -> None:
    """Found by review: svlogd (and mysql, redis, an application's own dateext logs) writes in a
    directory its own user owns; tcppipe runs as root. The generations between two looks there are
    the writer's files, and go."""
    if os.geteuid() != 0:
        pytest.skip("giving files to another user needs root")
    writer = 12345
    directory = tmp_path / "svc"
    directory.mkdir()
    log = directory / base
    log.write_bytes(b"first\n")
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    tailer.resume(None, None, 0.0, first=True)
    assert drain(tailer, 0.0) == b"first\n"
    os.chown(directory, writer, writer)
    os.chown(log, writer, writer)
    os.rename(log, directory / held)
    (directory / between).write_bytes(b"second\n")
    os.chown(directory / between, writer, writer)
    log.write_bytes(b"third\n")
    os.chown(log, writer, writer)
    tailer.request_hup(1.0)
    assert drain(tailer, 1.0) == b"second\nthird\n"


def test_an_unpadded_counter_in_a_stamped_name_counts_by_its_length(tmp_path: Path) -> None:
    """Found by review: logback's ``app.%d.%i.log`` does not pad ``%i``: ``.10.`` comes after ``.9.``."""
    log, tailer = following(tmp_path, b"first\n")
    assert drain(tailer, 0.0) == b"first\n"
    os.rename(log, tmp_path / "app.2026-12-02.9.log")
    (tmp_path / "app.2026-12-02.10.log").write_bytes(b"second\n")
    (tmp_path / "app.2026-12-02.8.log").write_bytes(b"an older one\n")
    log.write_bytes(b"third\n")
    tailer.request_hup(1.0)
    assert drain(tailer, 1.0) == b"second\nthird\n"


def test_numbered_rotation_before_the_extension_is_followed(tmp_path: Path) -> None:
    """Found by review: logrotate's ``extension .log`` and logback's fixed window number before the
    extension (app.log -> app.1.log -> app.2.log): numbered rotation, the newest at .1."""
    log = tmp_path / "app.log"
    log.write_bytes(b"first\n")
    tailer = Tailer(str(log), GRACE_S)
    tailer.open(0.0)
    tailer.resume(None, None, 0.0, first=True)
    assert drain(tailer, 0.0) == b"first\n"
    os.rename(log, tmp_path / "app.1.log")
    log.write_bytes(b"second\n")
    os.rename(tmp_path / "app.1.log", tmp_path / "app.2.log")
    os.rename(log, tmp_path / "app.1.log")
    log.write_bytes(b"third\n")
    tailer.request_hup(1.0)
    assert drain(tailer, 1.0) == b"second\nthird\n"


@pytest.mark.parametrize("names", [("log.3", "log.2", "log.1"), ("log-20261201", "log-20261202", "log-20261203")])
def test_a_generation_with_a_second_name_or_a_third_owner_is_still_a_generation(
    tmp_path: Path, names: tuple[str, str, str]
) -> None:
    """Found by review: where only root and the writer may write, a generation between that has a
    hard-linked backup (``cp -al``), or that a third user created (``create`` changed), is sent;
    the ones after it too."""
    backup = tmp_path / "backup"
    backup.mkdir()
    log, tailer = following(tmp_path, b"first\n")
    assert drain(tailer, 0.0) == b"first\n"
    held, linked, plain = names
    os.rename(log, tmp_path / held)
    (tmp_path / linked).write_bytes(b"second\n")
    os.link(tmp_path / linked, backup / linked)
    (tmp_path / plain).write_bytes(b"third\n")
    if os.geteuid() == 0:
        os.chown(tmp_path / plain, 4242, 4242)
    log.write_bytes(b"fourth\n")
    tailer.request_hup(1.0)
    assert drain(tailer, 1.0) == b"second\nthird\nfourth\n"


@pytest.mark.parametrize("scheme", ["numbered", "dateext"])
def test_generations_rotated_into_another_directory_are_followed(tmp_path: Path, scheme: str) -> None:
    """logrotate's ``olddir``: FILE goes to old/FILE.1 (or old/FILE-20261202), not beside FILE.
    The held generation is found where the kernel says it is now, and the ones that came after
    it there are sent in their turn."""
    old = tmp_path / "old"
    old.mkdir()
    log, tailer = following(tmp_path, b"first\n")
    assert drain(tailer, 0.0) == b"first\n"
    if scheme == "numbered":
        os.rename(log, old / "log.1")
        log.write_bytes(b"second\n")
        os.rename(old / "log.1", old / "log.2")
        os.rename(log, old / "log.1")
    else:
        os.rename(log, old / "log-20261201")
        log.write_bytes(b"second\n")
        os.rename(log, old / "log-20261202")
    log.write_bytes(b"third\n")
    tailer.request_hup(1.0)
    assert drain(tailer, 1.0) == b"second\nthird\n"


def test_a_held_generation_deleted_under_its_stamped_name_still_leads_to_the_later_ones(tmp_path: Path) -> None:
    """Three rotations by dateext keeping two, all between two looks: the held generation was
    renamed to log-20261201 and deleted (tcppipe holds it open). The name it had last, by the
    kernel's account, leads to those after it."""
    log, tailer = following(tmp_path, b"first\n")
    assert drain(tailer, 0.0) == b"first\n"
    os.rename(log, tmp_path / "log-20261201")
    for day, content in ((2, b"second\n"), (3, b"third\n")):
        log.write_bytes(content)
        os.rename(log, tmp_path / f"log-2026120{day}")
    (tmp_path / "log-20261201").unlink()
    log.write_bytes(b"fourth\n")
    tailer.request_hup(1.0)
    assert drain(tailer, 1.0) == b"second\nthird\nfourth\n"
