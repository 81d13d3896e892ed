"""The client's direct send: ``BorrowedSocket.send_some`` and ``writable`` over a real socket pair."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from tcppipe.errors import ConnectionLost
from tcppipe.sockets import DIRECT_SEND, BorrowedSocket, writable

pytestmark = pytest.mark.skipif(not DIRECT_SEND, reason="Linux only (epoll, MSG_NOSIGNAL)")


def test_what_the_kernel_does_not_take_stays_pending_in_order() -> None:
    """A full socket takes part of a batch: the rest waits (as views, in order) until there is room."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        frames = [os.urandom(100), os.urandom(300_000), b"tail"]
        pending = [memoryview(frame) for frame in frames]

        borrowed = BorrowedSocket(ours.fileno())

        async def drive() -> bytes:
            received = b""
            loop = asyncio.get_running_loop()
            borrowed.send_some(pending)
            assert pending, "a 4 KiB socket buffer took all of 300 KB"
            theirs.setblocking(False)
            while pending:
                received += await loop.sock_recv(theirs, 1 << 20)
                async with asyncio.timeout(5):
                    await writable(ours.fileno())
                borrowed.send_some(pending)
            while len(received) < sum(map(len, frames)):
                received += await loop.sock_recv(theirs, 1 << 20)
            return received

        assert asyncio.run(drive()) == b"".join(frames)
        borrowed.release()
        assert ours.fileno() >= 0, "released, never closed: the transport owns the descriptor"


def test_a_closed_peer_is_a_lost_connection() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        borrowed = BorrowedSocket(ours.fileno())
        with pytest.raises(ConnectionLost):
            borrowed.send_some([memoryview(b"x" * 10)])
        borrowed.release()
        with pytest.raises(ConnectionLost):
            borrowed.send_some([memoryview(b"x" * 10)])  # released: never a send on a number reused since
