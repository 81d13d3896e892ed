"""Issue 11 #3, the server side: plain TCP trusts the source address, so tcppiped can also
require a privileged source port, and says so when one address takes its own pipe over."""

from __future__ import annotations

import socket

from tests.integration.conftest import Pipes, same_bytes, wait_until


def test_unprivileged_source_port_is_closed_before_reading(pipes: Pipes) -> None:
    """With --require-privileged-port a connection from port >= 1024 is closed unread; --privileged-port passes."""
    origin, dest = pipes.pipe("auth.log")
    origin.write_bytes(b"sshd: accepted\n" * 10)
    pipes.start_server("--require-privileged-port")
    with socket.create_connection(("127.0.0.1", pipes.port), timeout=5) as sock:
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed by the server, no answer at all
    line = pipes.syslog.wait_for("is not privileged")
    assert "dropped" in line
    client = pipes.start_client(origin, "--privileged-port")
    wait_until(lambda: same_bytes(origin, dest), what="the privileged client's copy")
    assert client.poll() is None
    assert pipes.syslog.count("is not privileged") == 1


def test_takeover_from_the_same_address_is_a_warning(pipes: Pipes) -> None:
    """A second tcppipe from the same address taking a live pipe over is logged as a possible impersonation."""
    origin, dest = pipes.pipe("app.log")
    origin.write_bytes(b"line\n" * 100)
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    other_state = pipes.tmp / "other-state"
    pipes.spawn([*pipes.client_args(origin)[:-1], "--state-dir", str(other_state), "--foreground"])
    line = pipes.syslog.wait_for("takes over pipe")
    assert "from the same address" in line
    assert "impersonating" in line
