"""Rotation on the origin host (with and without SIGHUP, rename and truncate) and on the destination host."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, kill9, same_bytes, size, wait_until
from tests.integration.test_restart import Writer, numbered_lines


def concat(*paths: Path) -> bytes:
    return b"".join(p.read_bytes() for p in paths)


def test_rename_then_sighup_sends_the_old_file_to_its_end_then_the_new(pipes: Pipes) -> None:
    """mv log log.1; touch log; (late lines to log.1); kill -HUP: destination is log.1 then log."""
    origin, dest = pipes.pipe("hup.log")
    origin.write_bytes(numbered_lines(0, 100))
    pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "600")
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    rotated = origin.with_name("hup.log.1")
    origin.rename(rotated)
    origin.write_bytes(b"")
    with open(rotated, "ab") as f:
        f.write(numbered_lines(100, 50))  # a writer that has not reopened yet
    with open(origin, "ab") as f:
        f.write(numbered_lines(150, 50))
    client.send_signal(signal.SIGHUP)
    expected = concat(rotated, origin)
    wait_until(lambda: dest.read_bytes() == expected, what="old then new generation")
    client.send_signal(signal.SIGHUP)  # a second HUP changes nothing
    with open(origin, "ab") as f:
        f.write(b"after the second hup\n")
    wait_until(lambda: dest.read_bytes() == concat(rotated, origin), what="no resend after a repeated HUP")


def test_rename_without_a_signal_waits_for_the_grace_period(pipes: Pipes) -> None:
    """A rename-and-create is noticed alone; the old file is drained (late writes included) before the new one."""
    origin, dest = pipes.pipe("quiet.log")
    origin.write_bytes(numbered_lines(0, 100))
    pipes.start_server()
    pipes.start_client(origin, "--rotate-grace", "1")
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    rotated = origin.with_name("quiet.log.1")
    origin.rename(rotated)
    origin.write_bytes(numbered_lines(1000, 10))
    with open(rotated, "ab") as f:
        for i in range(5):
            f.write(numbered_lines(100 + i * 10, 10))
            f.flush()
            time.sleep(0.1)  # a slow writer still on the old file
    wait_until(lambda: dest.read_bytes() == concat(rotated, origin), what="rotation without signal")


def test_copytruncate_sends_the_file_again_from_its_first_byte(pipes: Pipes) -> None:
    """Truncation is noticed alone: the new content follows the old in the destination."""
    origin, dest = pipes.pipe("trunc.log")
    first = numbered_lines(0, 500)
    origin.write_bytes(first)
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    with open(origin, "r+b") as f:
        f.truncate(0)
    wait_until(lambda: size(dest) == len(first), what="truncation does not resend")
    second = b"after truncation\n" * 3
    with open(origin, "ab") as f:
        f.write(second)
    wait_until(lambda: dest.read_bytes() == first + second, what="new content from byte 0")


def test_kill9_in_the_middle_of_a_rotation_still_ends_exact(pipes: Pipes) -> None:
    """kill -9 after the mv and before log.1 is drained: the restart finds log.1 by identity and finishes it."""
    origin, dest = pipes.pipe("mid.log")
    origin.write_bytes(numbered_lines(0, 100))
    pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "600")
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    kill9(client)
    rotated = origin.with_name("mid.log.1")
    origin.rename(rotated)
    with open(rotated, "ab") as f:
        f.write(numbered_lines(100, 400))
    origin.write_bytes(numbered_lines(10_000, 50))
    client = pipes.start_client(origin, "--rotate-grace", "600")
    wait_until(lambda: size(dest) >= size(rotated), what="old generation drained")
    client.send_signal(signal.SIGHUP)
    wait_until(lambda: dest.read_bytes() == concat(rotated, origin), what="exact across restart and rotation")


def test_destination_rotation_with_sighup_keeps_exactly_once(pipes: Pipes) -> None:
    """mv dest dest.1; HUP tcppiped: reopened by name; dest.1 + dest equals the origin, also after a restart."""
    origin, dest = pipes.pipe("dest-rot.log")
    origin.write_bytes(numbered_lines(0, 300))
    server = pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    rotated = dest.with_name("dest-rot.log.1")
    dest.rename(rotated)
    server.send_signal(signal.SIGHUP)
    pipes.syslog.wait_for("reopened destination")
    with open(origin, "ab") as f:
        f.write(numbered_lines(300, 300))
    wait_until(lambda: concat(rotated, dest) == origin.read_bytes(), what="dest.1 + dest == origin")
    kill9(server)
    with open(origin, "ab") as f:
        f.write(numbered_lines(600, 300))
    pipes.start_server()
    wait_until(lambda: concat(rotated, dest) == origin.read_bytes(), what="exact after restart following rotation")


def test_sighup_closes_pipes_removed_from_the_config(pipes: Pipes) -> None:
    """A pipe deleted from the config is closed on HUP; its client is refused on reconnect and exits 3; others go on."""
    kept_origin, kept_dest = pipes.pipe("kept.log")
    gone_origin, gone_dest = pipes.pipe("gone.log")
    kept_origin.write_bytes(b"kept\n")
    gone_origin.write_bytes(b"gone\n")
    server = pipes.start_server()
    kept = pipes.start_client(kept_origin)
    gone = pipes.start_client(gone_origin)
    wait_until(lambda: same_bytes(kept_origin, kept_dest) and same_bytes(gone_origin, gone_dest), what="both")
    lines = [line for line in pipes.config.read_text().splitlines() if "gone.log" not in line]
    pipes.config.write_text("\n".join(lines) + "\n")
    server.send_signal(signal.SIGHUP)
    assert gone.wait(timeout=30) == 3
    assert kept.poll() is None
    with open(kept_origin, "ab") as f:
        f.write(b"still flowing\n")
    wait_until(lambda: same_bytes(kept_origin, kept_dest), what="kept pipe untouched")


def test_reload_with_errors_keeps_the_old_config(pipes: Pipes) -> None:
    """A HUP with a broken config logs FILE:LINE and keeps serving the previous entries."""
    origin, dest = pipes.pipe("stays.log")
    origin.write_bytes(b"one\n")
    server = pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    with open(pipes.config, "a") as f:
        f.write("this line is broken\n")
    server.send_signal(signal.SIGHUP)
    pipes.syslog.wait_for(f"{pipes.config}:2:")
    with open(origin, "ab") as f:
        f.write(b"two\n")
    wait_until(lambda: same_bytes(origin, dest), what="pipe still served")


def test_second_connection_takes_over_the_pipe(pipes: Pipes) -> None:
    """A new connection for a live pipe replaces the old one; the destination stays exact."""
    origin, dest = pipes.pipe("takeover.log")
    pipes.start_server()
    writer = Writer(origin)
    writer.start()
    try:
        first = pipes.start_client(origin)
        wait_until(lambda: size(dest) > 1000, what="first streaming")
        other_state = pipes.tmp / "other-state"
        second = pipes.spawn([*pipes.client_args(origin)[:-1], "--state-dir", str(other_state), "--foreground"])
        pipes.syslog.wait_for("takes over pipe")
        wait_until(lambda: size(dest) > size(origin) // 2, what="second streaming")
    finally:
        writer.finish()
    kill9(first)
    wait_until(lambda: same_bytes(origin, dest), what="exact after takeover")
    assert second.poll() is None


def test_kill9_with_two_rotated_generations_queued(pipes: Pipes) -> None:
    """Two rotations queued behind a slow drain, then kill -9: the restart sends both, in order, then the new file."""
    origin, dest = pipes.pipe("queued.log")
    origin.write_bytes(numbered_lines(0, 100))
    pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "600")
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    first, second = origin.with_name("queued.log.2"), origin.with_name("queued.log.1")
    origin.rename(first)
    origin.write_bytes(numbered_lines(100, 100))
    wait_until(lambda: _queued(pipes) == 2, what="status lists two generations")
    origin.rename(second)
    origin.write_bytes(numbered_lines(200, 100))
    wait_until(lambda: _queued(pipes) == 3, what="status lists three generations")
    kill9(client)
    ready = pipes.syslog.count("READY: sending")
    client = pipes.start_client(origin, "--rotate-grace", "600")
    wait_until(lambda: pipes.syslog.count("READY: sending") > ready, what="restart resumed")
    client.send_signal(signal.SIGHUP)
    wait_until(lambda: dest.read_bytes() == concat(first, second, origin), what="all generations in order")


def _queued(pipes: Pipes) -> int:
    statuses = list(pipes.client_state.glob("*.status"))
    if not statuses:
        return 0
    return len(json.loads(statuses[0].read_text()).get("queue", []))


def test_rotations_while_disconnected_are_all_delivered(pipes: Pipes) -> None:
    """Three rotations while the server is down: after it returns, every generation arrives, in order."""
    origin, dest = pipes.pipe("offline.log")
    origin.write_bytes(numbered_lines(0, 100))
    server = pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "600")
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    kill9(server)
    pipes.syslog.wait_for("reconnecting in")
    rotated = []
    for n in range(3, 0, -1):
        with open(origin, "ab") as f:
            f.write(numbered_lines(1000 * n, 50))
        rotated.append(origin.with_name(f"offline.log.{n}"))
        origin.rename(rotated[-1])
        origin.write_bytes(b"")
        client.send_signal(signal.SIGHUP)
        wait_until(lambda: _queued(pipes) >= 5 - n, what="rotation noticed while disconnected")  # noqa: B023
    with open(origin, "ab") as f:
        f.write(numbered_lines(9000, 50))
    pipes.start_server()
    expected = b"".join(p.read_bytes() for p in rotated) + origin.read_bytes()
    wait_until(lambda: dest.read_bytes() == expected, timeout=40, what="every generation, in order")


def shift_rotate(origin: Path, content: bytes, keep: int = 8, into: Path | None = None) -> None:
    """logrotate's numbered scheme (and RotatingFileHandler's): FILE.keep is deleted, FILE.2 ->
    FILE.3, FILE.1 -> FILE.2, FILE -> FILE.1, then a new FILE holding ``content``. With ``into``
    (logrotate's ``olddir``), the numbered names are in that directory."""
    rotated = (into or origin.parent) / origin.name
    rotated.with_name(f"{origin.name}.{keep}").unlink(missing_ok=True)
    for n in range(keep - 1, 0, -1):
        older = rotated.with_name(f"{origin.name}.{n}")
        if older.exists():
            older.rename(rotated.with_name(f"{origin.name}.{n + 1}"))
    origin.rename(rotated.with_name(f"{origin.name}.1"))
    origin.write_bytes(content)


def stamp_rotate(origin: Path, scheme: str, n: int, content: bytes, keep: int = 0, into: Path | None = None) -> None:
    """Rotation by a stamped name: logrotate's ``dateext`` (FILE-YYYYMMDDHH) or svlogd's
    ``@<TAI64N>.s`` beside ``current``; then a new FILE holding ``content``. With ``keep``, the
    stamped names older than the last ``keep`` are deleted; with ``into`` (``olddir``), the
    stamped names are in that directory."""
    rotated = (into or origin.parent) / origin.name
    if scheme == "dateext":
        rotated = rotated.with_name(f"{origin.name}-20261202{n:02d}")
        if keep and n > keep:
            rotated.with_name(f"{origin.name}-20261202{n - keep:02d}").unlink()
    else:
        rotated = rotated.with_name(f"@4000000065ab{n:04x}0c8a31e2.s")
    origin.rename(rotated)
    origin.write_bytes(content)


@pytest.mark.parametrize(
    "scheme",
    ["numbered", "numbered, 2 kept", "numbered, olddir", "dateext", "dateext, 3 kept", "dateext, olddir", "svlogd"],
)
def test_generations_that_came_and_went_while_tcppipe_was_not_looking_are_sent(pipes: Pipes, scheme: str) -> None:
    """Four rotations while tcppipe cannot run (SIGSTOP: a loaded host, a long pause): when it
    looks again FILE is the fifth generation. Numbered, the one it held is FILE.4 (or, keeping
    two, deleted: it still holds it open); stamped, it is under its new name (or, keeping three,
    deleted under it); with ``olddir``, in another directory. The ones in between (written after
    it) are sent too, in order, never skipped; never an older generation, a compressed name
    (another shape) or one that sorts before the held one."""
    stamped = scheme.startswith(("dateext", "svlogd"))
    origin, dest = pipes.pipe("current" if scheme == "svlogd" else "quick.log")
    into = origin.parent / "old" if "olddir" in scheme else None
    if into is not None:
        into.mkdir()
    if stamped:
        older = "@4000000065aa00000c8a31e2.s" if scheme == "svlogd" else f"{origin.name}-2026113023"
        ((into or origin.parent) / older).write_bytes(b"an older generation, never sent\n")
    first = numbered_lines(0, 100)
    origin.write_bytes(first)
    pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "1")
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    generations = [first]
    client.send_signal(signal.SIGSTOP)
    try:
        for n in range(1, 5):
            time.sleep(0.01)  # a generation's mtime is after the one before it (a coarse clock)
            generations.append(numbered_lines(n * 1000, 50))
            if stamped:
                stamp_rotate(origin, scheme.split(",")[0], n, generations[-1], 3 if "3 kept" in scheme else 0, into)
            else:
                shift_rotate(origin, generations[-1], 3 if "2 kept" in scheme else 8, into)
        if stamped:
            compressed = "@x.gz" if scheme == "svlogd" else f"{origin.name}-2026120101.gz"
            ((into or origin.parent) / compressed).write_bytes(b"gz")
    finally:
        client.send_signal(signal.SIGCONT)
    wait_until(lambda: dest.read_bytes() == b"".join(generations), what="every generation, in order")


@pytest.mark.parametrize("scheme", ["numbered", "dateext", "numbered, olddir", "dateext, olddir seen before"])
def test_generations_that_came_and_went_while_tcppipe_was_stopped_are_sent(pipes: Pipes, scheme: str) -> None:
    """kill -9 of tcppipe, three rotations (the last generation it saw rotated away, two that were
    FILE only while it was down), a restart: it finishes the one it saw, then sends the two it never
    saw, then FILE; nothing twice. With logrotate's ``olddir``: a subdirectory of FILE's is looked
    in, and so is a directory elsewhere where tcppipe saw an earlier rotation put a generation."""
    origin, dest = pipes.pipe("down.log")
    into = None
    if "olddir seen before" in scheme:
        into = pipes.tmp / "archive"
    elif "olddir" in scheme:
        into = origin.parent / "old"
    if into is not None:
        into.mkdir()
    first = numbered_lines(0, 100)
    origin.write_bytes(first)
    pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "1")
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    generations = [first]
    stamped = scheme.startswith("dateext")
    if "seen before" in scheme:
        # One rotation while tcppipe runs: it sees where the generation went.
        generations.append(numbered_lines(500, 50))
        stamp_rotate(origin, "dateext", 0, generations[-1], into=into)
        wait_until(lambda: dest.read_bytes() == b"".join(generations), what="the rotation seen")
        wait_until(lambda: "rotated_into" in _status(pipes), what="the directory noted in the status file")
    kill9(client)
    with open(origin, "ab") as f:
        f.write(numbered_lines(100, 20))  # unsent when it died
    generations[-1] = origin.read_bytes()
    for n in range(1, 4):
        time.sleep(0.01)  # a generation's mtime is after the one before it (a coarse clock)
        generations.append(numbered_lines(n * 1000, 50))
        if stamped:
            stamp_rotate(origin, "dateext", n, generations[-1], into=into)
        else:
            shift_rotate(origin, generations[-1], into=into)
    pipes.start_client(origin, "--rotate-grace", "1")
    wait_until(lambda: dest.read_bytes() == b"".join(generations), what="every generation, in order")


def _status(pipes: Pipes) -> dict[str, object]:
    statuses = list(pipes.client_state.glob("*.status"))
    return json.loads(statuses[0].read_text()) if statuses else {}
