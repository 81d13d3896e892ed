"""tcppiped under abuse: bad frames, stalled handshakes, floods. The server and real pipes go on."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pytest

from tcppipe.protocol import Decoder, FrameType, Generation, GenerationId, Hello, NeedData, Ready, data_header, encode
from tests.integration.conftest import Pipes, command, rss_mb, same_bytes, size, stop, wait_until
from tests.integration.test_restart import Writer


def connect(pipes: Pipes, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", pipes.port), timeout=10, source_address=(source, 0))
    return s


def closed_by_server(s: socket.socket, timeout: float = 20) -> bool:
    """Read (and drop) whatever the server still sends, until it closes; False on timeout."""
    s.settimeout(timeout)
    try:
        for _ in range(10_000):
            if s.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


@pytest.fixture
def live_pipe(pipes: Pipes) -> Iterator[tuple[Pipes, Writer]]:
    """A real pipe with a writer, to prove the abuse leaves it exact."""
    origin, _dest = pipes.pipe("live.log")
    writer = Writer(origin, lines_per_tick=5, tick_s=0.01)
    writer.start()
    try:
        yield pipes, writer
    finally:
        writer.finish()


def assert_live_pipe_exact(pipes: Pipes, writer: Writer) -> None:
    writer.finish()
    origin, dest = pipes.tmp / "origin" / "live.log", pipes.tmp / "dest" / "live.log"
    wait_until(lambda: same_bytes(origin, dest), what="live pipe exact")


@pytest.mark.parametrize(
    ("wire", "logged"),
    [
        (encode(Hello("/x"))[:12], "peer closed mid-frame"),
        (struct.pack("!BBII", FrameType.DATA, 0, 1 << 30, 0), "unexpected DATA frame now"),
        (struct.pack("!BBII", FrameType.HELLO, 0, 1 << 20, 0), "over the limit"),
        (struct.pack("!BBII", FrameType.HELLO, 0, 2, 0) + b"{}", "checksum mismatch"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "unknown frame type 22"),
    ],
)
def test_bad_frames_close_only_that_connection(live_pipe: tuple[Pipes, Writer], wire: bytes, logged: str) -> None:
    """Truncated, out-of-turn, oversized, corrupt, foreign bytes: that connection is closed, logged with its peer."""
    pipes, writer = live_pipe
    pipes.start_server()
    pipes.start_client(pipes.tmp / "origin" / "live.log")
    with connect(pipes) as s:
        s.sendall(wire)
        if logged == "peer closed mid-frame":
            s.shutdown(socket.SHUT_WR)
        assert closed_by_server(s)
    message = pipes.syslog.wait_for(logged)
    assert "127.0.0.1:" in message
    assert "dropped" in message
    assert_live_pipe_exact(pipes, writer)


def test_handshake_that_never_finishes_is_closed_after_the_timeout(pipes: Pipes) -> None:
    """A connection that never sends HELLO is closed after --handshake-timeout, with a syslog line."""
    pipes.start_server("--handshake-timeout", "1")
    with connect(pipes) as s:
        started = time.monotonic()
        s.sendall(encode(Hello("/x"))[:5])
        assert closed_by_server(s)
        assert 0.5 < time.monotonic() - started < 15
    pipes.syslog.wait_for("handshake not completed in 1.0 s")


def test_per_host_and_overall_connection_limits(pipes: Pipes) -> None:
    """Beyond --max-per-host from one address, or --max-connections in all, connections are closed at once."""
    pipes.start_server("--max-per-host", "5", "--max-connections", "8")
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(pipes)) for _ in range(5)]
        extra = stack.enter_context(connect(pipes))
        assert closed_by_server(extra, timeout=10)
        pipes.syslog.wait_for("connections from 127.0.0.1 (limit 5)")
        others = [stack.enter_context(connect(pipes, "127.0.0.2")) for _ in range(3)]
        over = stack.enter_context(connect(pipes, "127.0.0.3"))
        assert closed_by_server(over, timeout=10)
        pipes.syslog.wait_for("(limit 8)")
        assert len(held) + len(others) == 8


def test_thousand_idle_connections_and_a_connect_storm(live_pipe: tuple[Pipes, Writer]) -> None:
    """1,000 idle connections and 2,000 connect/disconnects: tcppiped stays up, its RSS bounded, the real pipe exact."""
    pipes, writer = live_pipe
    server = pipes.start_server("--handshake-timeout", "3", "--max-per-host", "2000")
    pipes.start_client(pipes.tmp / "origin" / "live.log")
    wait_until(lambda: size(pipes.tmp / "dest" / "live.log") > 0, what="live pipe running")
    rss_before = rss_mb(server.pid)
    idle = []
    try:
        for i in range(1000):
            idle.append(connect(pipes, f"127.0.1.{i % 200 + 1}"))
        wait_until(lambda: len(pipes.syslog.drain()) > 0 and server.poll() is None, what="server alive")
        rss_idle = rss_mb(server.pid)
        for _ in range(2000):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", pipes.port), timeout=10):
                pass
        assert server.poll() is None
        closed = sum(closed_by_server(s, timeout=20) for s in idle)
        assert closed == 1000
    finally:
        for s in idle:
            s.close()
    rss_after = rss_mb(server.pid)
    print(f"tcppiped RSS: {rss_before:.1f} MB before, {rss_idle:.1f} MB with 1,000 idle, {rss_after:.1f} MB after")
    assert rss_idle < rss_before + 100
    assert rss_after < rss_before + 100
    assert_live_pipe_exact(pipes, writer)


def test_client_silent_after_ready_is_dropped_after_three_heartbeats(pipes: Pipes) -> None:
    """A client that goes quiet after READY (a pulled cable) is dropped after 3 of its heartbeats."""
    origin, _ = pipes.pipe("silent.log")
    pipes.start_server()
    with connect(pipes) as s:
        s.sendall(encode(Hello(str(origin), heartbeat_s=0.3)))
        s.settimeout(10)
        assert s.recv(4096)[0] == FrameType.READY
        started = time.monotonic()
        pipes.syslog.wait_for("no word from the client", timeout=10)
        assert time.monotonic() - started < 5
        assert closed_by_server(s)


def test_forged_generation_gap_is_refused(pipes: Pipes) -> None:
    """A GENERATION that would leave a gap in the recorded generation is answered REFUSE, logged, and closed."""
    origin, dest = pipes.pipe("ledger.log")
    origin.write_bytes(b"one\n")
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: size(dest) == 4, what="first line landed")
    stop(client)
    record = json.loads(next((pipes.server_state).rglob("*.json")).read_text())
    ident = GenerationId.from_json(record["record"])
    with connect(pipes) as s:
        s.sendall(encode(Hello(str(origin))) + encode(Generation(ident, 100)))
        s.settimeout(10)
        assert s.recv(4096)[0] == FrameType.READY
        assert closed_by_server(s)
    message = pipes.syslog.wait_for("REFUSE: GENERATION at byte 100")
    assert "(a gap)" in message
    assert dest.read_bytes() == b"one\n"


def test_ack_timer_never_outlives_its_destination(pipes: Pipes) -> None:
    """Two GENERATIONs and a quick goodbye: no ACK timer fires on the closed destination (issue 10 #3)."""
    origin, dest = pipes.pipe("timer.log")
    server = pipes.start_server()
    first, second = GenerationId(1, 1, 0, hashlib.sha256(b"").hexdigest()), None
    for round_ in range(20):
        second = GenerationId(1, 1000 + round_, 0, hashlib.sha256(b"").hexdigest())
        with connect(pipes) as s:
            payload = b"x\n"
            s.sendall(
                encode(Hello(str(origin), restart=True))
                + encode(Generation(first, 0))
                + data_header(payload)
                + payload
                + encode(Generation(second, 0))
            )
            s.shutdown(socket.SHUT_WR)
            assert closed_by_server(s)
        first = second
    pipes.syslog.wait_for("closed by the client")
    # The old code's orphaned timer fired 50 ms after the close; an absence can only
    # be waited for, so give it ten times that.
    time.sleep(0.5)
    assert server.poll() is None
    stderr = pipes.stderr_of(server)
    assert "Bad file descriptor" not in stderr
    assert "Traceback" not in stderr
    assert all("internal error" not in line for line in pipes.syslog.drain())
    assert dest.exists()


def test_a_hello_path_cannot_forge_or_drop_log_lines(pipes: Pipes) -> None:
    """Issue 11 #7: a HELLO path with a newline, ESC and a lone surrogate is logged as one escaped line."""
    pipes.start_server()
    body = b'{"version":1,"path":"/x\\ntcppiped[1]: forged line \\u001b[2J \\udcff","features":[],"purpose":"pipe"}'
    wire = struct.pack("!BBII", FrameType.HELLO, 0, len(body), zlib.crc32(body)) + body
    with connect(pipes) as s:
        s.sendall(wire)
        assert closed_by_server(s)
    line = pipes.syslog.wait_for("REFUSE")
    forged = [m for m in pipes.syslog.drain() if "forged" in m]
    assert forged == [line]
    assert "\\n" in line
    assert "\\x1b" in line
    assert "\x1b" not in line
    assert "\\udcff" in line


def test_verify_finds_bytes_forged_into_the_head_of_a_pipe(pipes: Pipes) -> None:
    """Issue 11 #3: a local user appends a forged line to a pipe within its first 4 KiB; the real
    client then sends the file again from byte 0 (its head no longer matches), so the current
    generation is exact. verify now checks the earlier span too, compares it with FILE (same inode,
    same inode generation) and names the forged byte; the old verify said "exact"."""
    origin, dest = pipes.pipe("auth.log")
    origin.write_bytes(b"one\n")
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: size(dest) == 4, what="first line landed")
    assert stop(client) == 0
    forged = b"sshd[1]: Accepted password for root\n"
    with connect(pipes) as s:
        s.sendall(encode(Hello(str(origin))))
        decoder = Decoder()
        ready = None
        s.settimeout(10)
        for _ in range(100):
            decoder.feed(s.recv(4096))
            ready = decoder.next_event()
            if not isinstance(ready, NeedData):
                break
        assert isinstance(ready, Ready), ready
        assert ready.record is not None, ready
        assert ready.offset == 4, ready
        s.sendall(encode(Generation(ready.record, 4)) + data_header(forged) + forged)
        s.shutdown(socket.SHUT_WR)
        assert closed_by_server(s)
    assert dest.read_bytes() == b"one\n" + forged
    client = pipes.start_client(origin)
    wait_until(lambda: dest.read_bytes() == b"one\n" + forged + b"one\n", what="the real client to send FILE again")
    out = pipes.run([command("tcppipe"), "verify", "-f", str(origin), "-h", "127.0.0.1", "-p", str(pipes.port)])
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("generation 1 of 2: differs at byte 4"), lines
    assert str(origin) in lines[0], lines
    assert lines[1].startswith("generation 2 of 2 (current): exact: 4 bytes"), lines
    assert stop(client) == 0
