"""Issue 11 #9: the port during a restart. tcppiped serves on a listening socket systemd
passes (socket activation), and "address in use" at start is retried, not fatal."""

from __future__ import annotations

import os
import socket
import time

from tests.integration.conftest import Pipes, same_bytes, wait_until

FD_FROM_SYSTEMD = 3


def test_serves_on_a_socket_passed_by_systemd(pipes: Pipes) -> None:
    """With LISTEN_PID/LISTEN_FDS set, tcppiped accepts on the inherited fd 3 instead of binding its port."""
    origin, dest = pipes.pipe("app.log")
    origin.write_bytes(b"activated\n" * 50)
    pipes.config.touch()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(16)
    pipes.port = holder.getsockname()[1]  # the client connects to the socket systemd holds
    fd = holder.fileno()

    def as_fd_3() -> None:  # before the child closes its other fds (fd 3 is kept: pass_fds)
        os.dup2(fd, FD_FROM_SYSTEMD)

    # -p names another port: tcppiped must not bind it, only take fd 3.
    args = [*pipes.server_args()]
    args[args.index("-p") + 1] = "1"
    script = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
    server = pipes.spawn(["sh", "-c", script, "sh", *args], pass_fds=(fd, FD_FROM_SYSTEMD), preexec_fn=as_fd_3)
    try:
        line = pipes.syslog.wait_for("listening on")
        assert f"127.0.0.1:{pipes.port}" in line
        pipes.start_client(origin)
        wait_until(lambda: same_bytes(origin, dest), what="a copy through the inherited socket")
        assert server.poll() is None
    finally:
        holder.close()


def test_address_in_use_is_retried_until_the_port_is_free(pipes: Pipes) -> None:
    """A port held by another socket at start: tcppiped says so, waits, then listens and serves once it is free."""
    origin, dest = pipes.pipe("app.log")
    origin.write_bytes(b"after the squatter\n" * 50)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", pipes.port))
    squatter.listen(1)
    try:
        server = pipes.spawn(pipes.server_args())
        line = pipes.syslog.wait_for("cannot listen on")
        assert "retrying" in line
        time.sleep(2)  # the squatter holds on for a while: tcppiped must still be there
        assert server.poll() is None, pipes.stderr_of(server)
    finally:
        squatter.close()
    pipes.syslog.wait_for("listening on", timeout=10)
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="a copy once the port was free")
    assert pipes.syslog.count("cannot listen on") == 1  # once, then every 10 s
