"""Network faults and several NOCs: pulled cables, cut connections, one origin to two servers."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Pipes, SyslogSink, free_port, same_bytes, size, wait_until
from tests.integration.proxy import Proxy
from tests.integration.test_restart import Writer


def client_via(pipes: Pipes, proxy: Proxy, origin: Path, *extra: str) -> list[str]:
    args = pipes.client_args(origin, *extra)
    args[args.index("-p") + 1] = str(proxy.port)
    return args


def test_pulled_cable_is_noticed_and_the_pipe_resumes_exactly(proxied: tuple[Pipes, Proxy]) -> None:
    """A connection that goes silent both ways is declared dead after 3 heartbeats; the reconnect is exact."""
    pipes, proxy = proxied
    origin, dest = pipes.pipe("cable.log")
    pipes.start_server()
    writer = Writer(origin)
    writer.start()
    try:
        pipes.spawn(client_via(pipes, proxy, origin, "--heartbeat", "0.3"))
        wait_until(lambda: size(dest) > 2000, what="streaming through the proxy")
        proxy.stall_all()
        pipes.syslog.wait_for("no word from the server", timeout=15)
        # The server either notices the silence itself or sees the reconnect take over first.
        wait_until(
            lambda: pipes.syslog.count("no word from the client") + pipes.syslog.count("takes over pipe") > 0,
            timeout=15,
            what="the server letting go of the dead connection",
        )
        wait_until(lambda: size(dest) > size(origin) - 2000, what="streaming again on a new link")
    finally:
        writer.finish()
    wait_until(lambda: same_bytes(origin, dest), what="exact after the pulled cable")


def test_connection_reset_mid_stream_resumes_exactly(proxied: tuple[Pipes, Proxy]) -> None:
    """Connections reset (RST) several times mid-frame: the client reconnects and the destination is exact."""
    pipes, proxy = proxied
    origin, dest = pipes.pipe("reset.log")
    origin.write_bytes(b"seed line\n" * 200_000)
    pipes.start_server()
    writer = Writer(origin)
    writer.start()
    try:
        pipes.spawn(client_via(pipes, proxy, origin))
        for round_ in range(4):
            links, landed = round_ + 1, size(dest)
            wait_until(lambda: len(proxy.links) >= links, what=f"connection {links}")  # noqa: B023
            wait_until(lambda: size(dest) > landed + 5000, what=f"streaming, round {round_}")  # noqa: B023
            proxy.cut_all()
    finally:
        writer.finish()
    wait_until(lambda: len(proxy.links) >= 5, what="a reconnect after the last cut")
    wait_until(lambda: same_bytes(origin, dest), timeout=40, what="exact after resets")


def test_frame_damaged_in_transit_is_caught_and_the_resume_is_exact(proxied: tuple[Pipes, Proxy]) -> None:
    """One flipped bit on the wire: the CRC catches it, the connection is dropped, the reconnect is exact."""
    pipes, proxy = proxied
    origin, dest = pipes.pipe("bitflip.log")
    origin.write_bytes(b"before the damage\n" * 100)
    pipes.start_server()
    pipes.spawn(client_via(pipes, proxy, origin))
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    proxy.shaping.corrupt_next.set()
    with open(origin, "ab") as f:
        f.write(b"this append is damaged on the way " * 200 + b"\n")
    pipes.syslog.wait_for("checksum mismatch")
    wait_until(lambda: same_bytes(origin, dest), what="exact after the damaged frame")
    assert not proxy.shaping.corrupt_next.is_set()
    assert len(proxy.links) >= 2


def test_one_origin_to_two_nocs(pipes: Pipes, tmp_path: Path) -> None:
    """Two servers, two tcppipe on one origin file: both destinations exact, each pipe with its own status."""
    origin, dest_a = pipes.pipe("noc.log")
    origin.write_bytes(b"to both NOCs\n" * 100)
    pipes.start_server()
    second = Pipes(tmp_path / "noc2", SyslogSink(tmp_path / "noc2.sock"), port=free_port())
    try:
        second.tmp.mkdir()
        dest_b = second.tmp / "archive" / "noc.log"
        second.define(f"127.0.0.1:{origin} | {dest_b}")
        second.start_server()
        client_a = pipes.start_client(origin)
        client_b = pipes.spawn(
            [*second.client_args(origin)[:-1], "--state-dir", str(pipes.client_state), "--foreground"]
        )
        writer = Writer(origin)
        writer.start()
        try:
            wait_until(lambda: size(dest_a) > 10_000 and size(dest_b) > 10_000, what="both streaming")
        finally:
            writer.finish()
        wait_until(lambda: same_bytes(origin, dest_a) and same_bytes(origin, dest_b), what="both exact")
        assert pipes.client_pid(origin) == client_a.pid
        assert pipes.client_pid(origin, port=second.port) == client_b.pid
        statuses = sorted(p.name for p in pipes.client_state.glob("*.status"))
        assert len(statuses) == 2
    finally:
        second.cleanup()
