"""Listening sockets handed over by systemd (socket activation, ``tcppiped.socket``).

Rule: the sd_listen_fds protocol, without libsystemd: ``LISTEN_PID`` must be
this process and ``LISTEN_FDS`` counts descriptors from 3 on. Only stream
sockets that are listening are taken; the variables are removed so a child
never takes them again. With ``tcppiped.socket`` systemd holds the port while
tcppiped restarts, so no local user can take it in between.
"""

from __future__ import annotations

import os
import socket
from typing import Final

SD_LISTEN_FDS_START: Final = 3
MAX_LISTEN_FDS: Final = 64


class ActivationError(Exception):
    """systemd said it passed sockets, but they are not listening stream sockets."""


def inherited_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (none without socket activation)."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    sockets: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + min(int(count), MAX_LISTEN_FDS)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"descriptor {fd} from systemd is not a socket: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ActivationError(f"descriptor {fd} from systemd is not a listening stream socket")
        os.set_inheritable(fd, False)
        sockets.append(sock)
    return sockets
