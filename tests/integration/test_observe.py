"""Seeing a pipe and proving it: status on both sides, verify, Prometheus metrics."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.conftest import (
    Pipes,
    command,
    free_port,
    kill9,
    same_bytes,
    size,
    stop,
    wait_until,
)


def server_status(pipes: Pipes, *extra: str) -> Any:
    out = pipes.run(
        [command("tcppiped"), "status", "-p", str(pipes.port), "--state-dir", str(pipes.server_state), *extra]
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "--json" in extra else out.stdout


def row_of(answer: Any, dest: Path) -> dict[str, Any]:
    rows = [r for r in answer["pipes"] if r["destination"] == str(dest)]
    assert len(rows) == 1, answer
    return dict(rows[0])


def client_status(pipes: Pipes, *extra: str) -> Any:
    out = pipes.run([command("tcppipe"), "status", "--state-dir", str(pipes.client_state), *extra])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "--json" in extra else out.stdout


def verify(pipes: Pipes, origin: Path) -> tuple[int, str]:
    out = pipes.run([command("tcppipe"), "verify", "-f", str(origin), "-h", "127.0.0.1", "-p", str(pipes.port)])
    assert "Traceback" not in out.stderr
    return out.returncode, (out.stdout + out.stderr).strip()


def flip_byte(path: Path, offset: int) -> None:
    """Edit one byte of ``path`` by hand (its case flipped)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x20]))


def test_server_status_follows_a_pipe_through_its_states(pipes: Pipes) -> None:
    """tcppiped status: a defined pipe waits, streams with bytes and lag, drains a rotated file, reconnects."""
    origin, dest = pipes.pipe("app.log")
    _idle_origin, idle_dest = pipes.pipe("idle.log")
    origin.write_bytes(b"first line\n" * 1000)
    pipes.start_server()
    answer = server_status(pipes, "--json")
    assert row_of(answer, dest)["state"] == "waiting"
    assert row_of(answer, idle_dest)["state"] == "waiting"

    client = pipes.start_client(origin, "--rotate-grace", "60")
    wait_until(lambda: same_bytes(origin, dest), what="the first copy")

    def streaming_row() -> dict[str, Any]:
        return row_of(server_status(pipes, "--json"), dest)

    wait_until(
        lambda: streaming_row()["state"] == "streaming" and streaming_row()["generation_bytes"] == size(origin),
        what="status to show the pipe streaming with every byte landed",
    )
    row = streaming_row()
    assert row["behind_bytes"] == 0
    assert row["generations"] == 1
    assert row["idle_s"] is not None
    assert row["idle_s"] < 60
    assert row["host"].startswith("127.0.0.1")
    table = server_status(pipes)
    assert table.splitlines()[0].split()[:4] == ["HOST", "ORIGIN", "DESTINATION", "STATE"]
    assert re.search(rf"{re.escape(str(origin))}\s+{re.escape(str(dest))}\s+streaming", table)

    # Renamed without a signal, with a long grace: the old file is still being drained.
    origin.rename(origin.with_name("app.log.1"))
    origin.write_bytes(b"second generation\n")
    wait_until(lambda: streaming_row()["state"] == "rotated-draining", what="status to show rotated-draining")

    kill9(client)
    wait_until(lambda: streaming_row()["state"] == "reconnecting", what="status to show the pipe reconnecting")

    sock = pipes.server_state / "tcppiped" / f"control-{pipes.port}.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_status_and_verify_failures_are_one_clear_line(pipes: Pipes) -> None:
    """No tcppiped on that port (status, verify: exit 4) or half a pipe's options (status: exit 2):
    one line naming the problem on stderr, no traceback."""
    origin = pipes.tmp / "lonely.log"
    origin.write_bytes(b"x\n")
    port = str(free_port())
    cases = [
        ([command("tcppiped"), "status", "-p", port, "--state-dir", str(pipes.server_state)], 4, "no tcppiped answers"),
        ([command("tcppipe"), "verify", "-f", str(origin), "-h", "127.0.0.1", "-p", port], 4, "cannot connect"),
        ([command("tcppipe"), "status", "-f", str(origin), "--state-dir", str(pipes.client_state)], 2, "both -f"),
    ]
    for args, code, says in cases:
        out = pipes.run(args)
        assert (out.returncode, len(out.stderr.strip().splitlines())) == (code, 1), out.stderr
        assert says in out.stderr
        assert "Traceback" not in out.stderr


def test_client_status_shows_the_pipe_then_stopped(pipes: Pipes) -> None:
    """tcppipe status: the pipe streams with its bytes landed; after SIGTERM it is stopped."""
    origin, dest = pipes.pipe("c.log")
    origin.write_bytes(b"x" * 5000 + b"\n")
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="the copy")
    one = ["-f", str(origin), "-h", "127.0.0.1", "-p", str(pipes.port), "--json"]

    def row() -> dict[str, Any]:
        rows = client_status(pipes, *one)["pipes"]
        assert len(rows) == 1
        return dict(rows[0])

    wait_until(lambda: row()["generation_bytes"] == size(origin), what="the status file to catch up")
    assert row()["state"] == "streaming"
    assert row()["behind_bytes"] == 0
    assert row()["generations"] == 1
    assert str(origin) in client_status(pipes)  # all pipes, as a table
    assert stop(client) == 0
    assert row()["state"] == "stopped"


def test_verify_says_exact_and_finds_a_byte_edited_by_hand(pipes: Pipes) -> None:
    """verify: exit 0 with 'exact: N bytes'; after one destination byte is changed, exit 1 naming that byte."""
    origin, dest = pipes.pipe("v.log")
    origin.write_bytes(b"".join(b"line %d of the log\n" % i for i in range(50_000)))
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="the copy")
    code, text = verify(pipes, origin)
    assert (code, text) == (0, f"exact: {size(origin)} bytes (bytes 0..{size(origin)} of {origin})")

    flip_byte(dest, 123_457)
    code, text = verify(pipes, origin)
    assert code == 1
    assert text.startswith(f"differs at byte 123457 of {origin}")

    # The live pipe was not disturbed by either verify.
    with open(origin, "ab") as f:
        f.write(b"after verify\n")
    wait_until(lambda: size(dest) == size(origin), what="the pipe to carry on")


def test_verify_of_a_pipe_not_defined_is_refused(pipes: Pipes) -> None:
    """A client can only verify the pipe the config defines for it (exit 3)."""
    pipes.pipe("defined.log")
    stranger = pipes.tmp / "origin" / "stranger.log"
    stranger.write_bytes(b"x\n")
    pipes.start_server()
    code, text = verify(pipes, stranger)
    assert code == 3
    assert "no pipe is defined" in text


def test_verify_before_any_byte_landed_says_so(pipes: Pipes) -> None:
    """A defined pipe that never ran has nothing to verify: exit 1 with a reason."""
    origin, _dest = pipes.pipe("never.log")
    origin.write_bytes(b"x\n")
    pipes.start_server()
    code, text = verify(pipes, origin)
    assert (code, text) == (1, "nothing to verify: tcppiped has no record of this pipe yet")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_are_scraped_over_http(pipes: Pipes) -> None:
    """--metrics: per-pipe bytes, lines, rotations, reconnects and lag; server connections and bad frames."""
    origin, dest = pipes.pipe("m.log")
    lines = b"".join(b"metric line %d\n" % i for i in range(3000))
    origin.write_bytes(lines)
    metrics_port = free_port()
    pipes.start_server("--metrics", f"127.0.0.1:{metrics_port}")
    client = pipes.start_client(origin, "-t", "0.2")
    wait_until(lambda: same_bytes(origin, dest), what="the copy")
    labels = f'{{destination="{dest}",host="127.0.0.1",origin="{origin}"}}'

    def metric(name: str) -> float:
        return scrape(metrics_port).get(name + labels, -1)

    wait_until(lambda: metric("tcppiped_pipe_lag_bytes") == 0, what="lag 0 in the metrics")
    assert metric("tcppiped_pipe_bytes_total") == size(origin)
    assert metric("tcppiped_pipe_lines_total") == 3000
    assert metric("tcppiped_pipe_up") == 1
    assert metric("tcppiped_pipe_reconnects_total") == 0

    kill9(client)
    with open(origin, "ab") as f:
        f.write(b"while down\n")
    pipes.start_client(origin, "-t", "0.2")
    wait_until(lambda: same_bytes(origin, dest), what="the copy after a restart")
    wait_until(lambda: metric("tcppiped_pipe_reconnects_total") == 1, what="one reconnect counted")

    os.rename(origin, origin.with_name("m.log.1"))
    origin.write_bytes(b"new generation\n")
    wait_until(lambda: metric("tcppiped_pipe_rotations_total") == 1, what="one rotation counted")
    wait_until(lambda: metric("tcppiped_pipe_lines_total") == 3002, what="every line counted once")

    with socket.create_connection(("127.0.0.1", pipes.port), timeout=5) as s:
        s.sendall(b"\x63" * 64)
        s.settimeout(5)
        assert s.recv(100) == b""
    samples = scrape(metrics_port)
    assert samples["tcppiped_bad_frames_total"] == 1
    assert samples["tcppiped_connections_open"] == 1
    assert samples["tcppiped_connections_total"] == 3


def test_a_destination_that_cannot_be_opened_shows_refused_on_both_sides(pipes: Pipes) -> None:
    """The destination's directory replaced by a file: the reconnecting pipe is 'refused' in both
    status tables, and flows again (exactly) once the directory is back."""
    origin, dest = pipes.pipe("r.log")
    origin.write_bytes(b"before\n")
    server = pipes.start_server()
    pipes.start_client(origin, "--heartbeat", "0.5")
    wait_until(lambda: same_bytes(origin, dest), what="the first copy")
    kill9(server)
    parked = dest.parent.with_name("dest.parked")
    dest.parent.rename(parked)
    dest.parent.write_bytes(b"a file where the directory was\n")
    with open(origin, "ab") as f:
        f.write(b"while refused\n")
    pipes.start_server()
    wait_until(lambda: row_of(server_status(pipes, "--json"), dest)["state"] == "refused", what="server: refused")
    one = ["-f", str(origin), "-h", "127.0.0.1", "-p", str(pipes.port), "--json"]
    wait_until(lambda: client_status(pipes, *one)["pipes"][0]["state"] == "refused", what="client: refused")
    dest.parent.unlink()
    parked.rename(dest.parent)
    wait_until(lambda: same_bytes(origin, dest), timeout=30, what="the pipe to flow again")


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_half_sent_metrics_requests_hold_no_threads(pipes: Pipes) -> None:
    """Issue 11: 200 half-sent scrapes create no thread, and a real scrape is still answered."""
    metrics_port = free_port()
    server = pipes.start_server("--metrics", f"127.0.0.1:{metrics_port}")
    before = threads_of(server.pid)
    hanging = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", metrics_port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            hanging.append(s)
        assert threads_of(server.pid) <= before + 1
        for s in hanging[:16]:
            s.close()
        wait_until(lambda: _scrapes(metrics_port), what="a scrape answered beside the hanging requests")
        assert threads_of(server.pid) <= before + 1
    finally:
        for s in hanging:
            s.close()


def _scrapes(port: int) -> bool:
    try:
        return "tcppiped_connections_open" in scrape(port)
    except OSError:
        return False


def test_verify_checks_every_generation_the_destination_holds(pipes: Pipes) -> None:
    """After a rotation verify checks both generations: a byte edited in the older one's part
    of the destination is found there (the old verify looked at the current one only and said
    exact); once the rotated file is gone from the origin host it is listed as not checked."""
    origin, dest = pipes.pipe("g.log")
    rotated = origin.with_name("g.log.1")
    first = b"".join(b"first generation line %d\n" % i for i in range(20_000))
    second = b"".join(b"second generation line %d\n" % i for i in range(5_000))
    origin.write_bytes(first)
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: size(dest) == len(first), what="the first generation")
    origin.rename(rotated)
    origin.write_bytes(second)
    wait_until(lambda: dest.read_bytes() == first + second, what="both generations")

    code, text = verify(pipes, origin)
    assert code == 0, text
    assert text.splitlines() == [
        f"generation 1 of 2: exact: {len(first)} bytes (bytes 0..{len(first)} of {rotated}, rotated from {origin})",
        f"generation 2 of 2 (current): exact: {len(second)} bytes (bytes 0..{len(second)} of {origin})",
    ]

    flip_byte(dest, 4_321)
    code, text = verify(pipes, origin)
    assert code == 1, text
    assert text.splitlines()[0].startswith(f"generation 1 of 2: differs at byte 4321 of {rotated}")
    assert text.splitlines()[1].startswith("generation 2 of 2 (current): exact:")

    rotated.unlink()
    code, text = verify(pipes, origin)
    assert code == 0, text
    assert text.splitlines()[0].startswith("generation 1 of 2: not checked: inode")
