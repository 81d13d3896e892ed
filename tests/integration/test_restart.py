"""Exactly once across restarts: SIGTERM, kill -9 of either side, at bad moments."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, kill9, same_bytes, size, stop, wait_until

FIFTY_MB = 50 * 1024 * 1024


def numbered_lines(start: int, count: int) -> bytes:
    return b"".join(b"line %08d %s\n" % (i, b"x" * (i % 97)) for i in range(start, start + count))


def write_big_file(path: Path, total: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(total // len(block)):
            f.write(block[i % 7 :] + block[: i % 7])


class Writer(threading.Thread):
    """Appends numbered lines at a steady pace until stopped."""

    def __init__(self, path: Path, lines_per_tick: int = 20, tick_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.path, self.lines_per_tick, self.tick_s = path, lines_per_tick, tick_s
        self.halt = threading.Event()
        self.written = 0

    def run(self) -> None:
        with open(self.path, "ab") as f:
            for _ in range(200_000):
                if self.halt.is_set():
                    return
                f.write(numbered_lines(self.written, self.lines_per_tick))
                f.flush()
                self.written += self.lines_per_tick
                time.sleep(self.tick_s)

    def finish(self) -> None:
        self.halt.set()
        self.join(timeout=10)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_clean_stop_and_restart_with_appends_in_between(pipes: Pipes, stop_signal: int) -> None:
    """SIGTERM or SIGINT stops tcppipe with status 0; restarted after more appends, it sends only the new bytes."""
    origin, dest = pipes.pipe("restart.log")
    origin.write_bytes(numbered_lines(0, 1000))
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    assert stop(client, stop_signal) == 0
    with open(origin, "ab") as f:
        f.write(numbered_lines(1000, 1000) + b"half a line")
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="resumed copy")


def test_kill9_client_during_a_50mb_catch_up(pipes: Pipes) -> None:
    """kill -9 of tcppipe in the middle of a 50 MB catch-up, then a restart: the destination is exact."""
    origin, dest = pipes.pipe("big.log")
    write_big_file(origin, FIFTY_MB)
    pipes.start_server()
    client = pipes.start_client(origin)
    # Polled every millisecond: the catch-up takes a fraction of a second.
    deadline = time.monotonic() + 30
    while size(dest) < 2 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.001)
    kill9(client)
    landed = size(dest)
    assert 0 < landed < FIFTY_MB, "the kill must land mid-stream"
    pipes.start_client(origin)
    wait_until(lambda: size(dest) >= FIFTY_MB, timeout=60, what="catch-up finished")
    assert same_bytes(origin, dest)


def test_kill9_client_repeatedly_while_a_writer_appends(pipes: Pipes) -> None:
    """Five kill -9 of tcppipe while lines keep coming: no line lost, none twice."""
    origin, dest = pipes.pipe("busy.log")
    pipes.start_server()
    writer = Writer(origin)
    writer.start()
    try:
        for _ in range(5):
            client = pipes.start_client(origin)
            landed = size(dest)
            wait_until(lambda: size(dest) > landed + 5000, what="streaming before the kill")  # noqa: B023
            kill9(client)
    finally:
        writer.finish()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="exact after kills")


def test_kill9_server_mid_stream_client_reconnects(pipes: Pipes) -> None:
    """kill -9 of tcppiped mid-stream; once restarted, the client reconnects by itself and ends exact."""
    origin, dest = pipes.pipe("server-crash.log")
    write_big_file(origin, 8 * 1024 * 1024)
    server = pipes.start_server()
    client = pipes.start_client(origin)
    writer = Writer(origin)
    writer.start()
    try:
        wait_until(lambda: size(dest) > 1024 * 1024, what="streaming")
        kill9(server)
        written = size(origin)
        wait_until(lambda: size(origin) > written + 20_000, what="appends while the server is down")
        pipes.start_server()
        wait_until(lambda: size(dest) > 9 * 1024 * 1024, what="streaming after restart")
        kill9(pipes.procs[-1])
        pipes.start_server()
    finally:
        writer.finish()
    wait_until(lambda: same_bytes(origin, dest), timeout=40, what="exact after server restarts")
    assert client.poll() is None, "the client must have reconnected, not exited"
    pipes.syslog.wait_for("reconnecting in")


def test_server_sigterm_and_restart_resumes_exactly(pipes: Pipes) -> None:
    """A server stopped with SIGTERM and started again resumes the pipe exactly where it stood."""
    origin, dest = pipes.pipe("server-term.log")
    origin.write_bytes(numbered_lines(0, 5000))
    server = pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    assert stop(server) == 0
    with open(origin, "ab") as f:
        f.write(numbered_lines(5000, 5000))
    pipes.start_server()
    wait_until(lambda: same_bytes(origin, dest), what="exact after server restart")


def test_full_resend_with_n(pipes: Pipes) -> None:
    """-n ignores history: the whole file is appended again after what the destination holds."""
    origin, dest = pipes.pipe("again.log")
    body = numbered_lines(0, 300)
    origin.write_bytes(body)
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    assert stop(client) == 0
    pipes.start_client(origin, "-n")
    wait_until(lambda: size(dest) == 2 * len(body), what="full resend")
    assert dest.read_bytes() == body + body


def test_status_file_is_the_fallback_when_the_server_lost_its_record(pipes: Pipes) -> None:
    """With the server's state wiped, the client's status file still prevents a duplicate."""
    origin, dest = pipes.pipe("fallback.log")
    origin.write_bytes(numbered_lines(0, 500))
    server = pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    assert stop(client) == 0
    assert stop(server) == 0
    for record in (pipes.server_state / "tcppiped").iterdir():
        record.unlink()
    with open(origin, "ab") as f:
        f.write(numbered_lines(500, 500))
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="exact from the status file")


def test_a_later_file_in_the_recorded_inode_with_the_same_head_is_sent_whole(pipes: Pipes) -> None:
    """Both ends down; FILE deleted and created again in its inode number, starting with the very
    bytes that landed (the recorded head); the status file lost. The restarted client cannot tell it
    from the recorded generation by inode or head: READY's inode generation (the recorded one's, as
    the server knows it) says it is another file, sent from its first byte, not resumed past them.
    ext4 hands a freed inode number out again at once most of the time: up to 4 tries."""
    head = b"the same first line\n"
    later = head + b"a later file's own second line\n"
    for attempt in range(4):
        origin, dest = pipes.pipe(f"reused{attempt}.log")
        origin.write_bytes(head)
        server = pipes.start_server()
        client = pipes.start_client(origin)
        wait_until(lambda: same_bytes(origin, dest), what="first copy")  # noqa: B023
        kill9(client)
        kill9(server)
        for status in pipes.client_state.glob("*.status"):
            status.unlink()
        ino = origin.stat().st_ino
        origin.unlink()
        origin.write_bytes(later)
        if origin.stat().st_ino == ino:
            break
    else:
        pytest.skip("this file system did not hand a freed inode number out again in 4 tries")
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: dest.read_bytes() == head + later, what="the later file whole after the first")
