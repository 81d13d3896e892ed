"""A TCP relay on loopback whose links can be stalled (a pulled cable) or cut.

Stalling stops reading both ways without closing anything: each end's kernel
keeps the connection open and the peers hear nothing, as when a cable is
pulled. A black hole (``Proxy.black_hole``) is a middlebox that accepts new
connections and swallows every byte they send, answering nothing and closing
nothing: the client's connect succeeds and its handshake waits. Threads are
bounded by a stop flag and socket timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

POLL_S = 0.05


class Shaping:
    """How a proxy forwards right now: delay per chunk, largest chunk, bandwidth."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.chunk_bytes = 65536
        # Bytes per second each way, 0 for no limit: a slow link.
        self.rate_bytes_s = 0
        # Set: flip one bit in the next chunk going client -> server, then clear.
        self.corrupt_next = threading.Event()
        self.bytes_up = 0
        self._lock = threading.Lock()

    def count_up(self, n: int) -> None:
        with self._lock:
            self.bytes_up += n


class Link:
    def __init__(self, client: socket.socket, server: socket.socket | None, shaping: Shaping | None = None) -> None:
        """Relay ``client`` to ``server``; with no server, swallow what the client sends (a black hole)."""
        self.shaping = shaping or Shaping()
        self.sockets = (client,) if server is None else (client, server)
        self.swallowing = server is None
        self.stalled = threading.Event()
        self.closed = threading.Event()
        for sock in self.sockets:
            sock.settimeout(POLL_S)
        if server is None:
            self.threads = [threading.Thread(target=self._swallow, args=(client,), daemon=True)]
        else:
            self.threads = [
                threading.Thread(target=self._pump, args=(client, server), daemon=True),
                threading.Thread(target=self._pump, args=(server, client), daemon=True),
            ]
        for t in self.threads:
            t.start()

    def _swallow(self, src: socket.socket) -> None:
        """Read and drop until cut; the client's own close ends it too."""
        while not self.closed.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
        self.cut()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self.closed.is_set():
            if self.stalled.is_set():
                self.closed.wait(POLL_S)
                continue
            try:
                data = src.recv(self.shaping.chunk_bytes)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                break
            if self.shaping.delay_s:
                self.closed.wait(self.shaping.delay_s)
            if src is self.sockets[0] and len(data) > 64 and self.shaping.corrupt_next.is_set():
                self.shaping.corrupt_next.clear()
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :]
            try:
                dst.sendall(data)
            except OSError:
                break
            if src is self.sockets[0]:
                self.shaping.count_up(len(data))
            if self.shaping.rate_bytes_s:
                self.closed.wait(len(data) / self.shaping.rate_bytes_s)
        if not self.stalled.is_set():
            self.cut()

    def cut(self) -> None:
        """Reset both connections."""
        self.closed.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(POLL_S)
        self.port = int(self.listener.getsockname()[1])
        self.links: list[Link] = []
        self.shaping = Shaping()
        # Set: new connections are accepted and swallowed (never relayed), until cleared.
        self.black_hole = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.black_hole.is_set():
                self.links.append(Link(client, None, self.shaping))
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            self.links.append(Link(client, server, self.shaping))

    def stall_all(self) -> None:
        for link in self.links:
            link.stalled.set()

    def live_links(self) -> list[Link]:
        return [link for link in self.links if not link.closed.is_set()]

    def swallowing(self) -> list[Link]:
        """Open connections accepted into the black hole."""
        return [link for link in self.live_links() if link.swallowing]

    def cut_all(self) -> None:
        for link in self.links:
            link.cut()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for link in self.links:
            link.cut()
            for t in link.threads:
                t.join(timeout=5)
