"""The client's direct send: ``send_some`` and ``writable`` over a real socket pair."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from tcppipe.errors import ConnectionLost
from tcppipe.sockets import DIRECT_SEND, send_some, writable

pytestmark = pytest.mark.skipif(not DIRECT_SEND, reason="Linux only (epoll, MSG_NOSIGNAL)")


def test_what_the_kernel_does_not_take_stays_pending_in_order() -> None:
    """A full socket takes part of a batch: the rest waits (as views, in order) until there is room."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        frames = [os.urandom(100), os.urandom(300_000), b"tail"]
        pending = [memoryview(frame) for frame in frames]

        async def drive() -> bytes:
            received = b""
            loop = asyncio.get_running_loop()
            send_some(ours.fileno(), pending)
            assert pending, "a 4 KiB socket buffer took all of 300 KB"
            theirs.setblocking(False)
            while pending:
                received += await loop.sock_recv(theirs, 1 << 20)
                async with asyncio.timeout(5):
                    await writable(ours.fileno())
                send_some(ours.fileno(), pending)
            while len(received) < sum(map(len, frames)):
                received += await loop.sock_recv(theirs, 1 << 20)
            return received

        assert asyncio.run(drive()) == b"".join(frames)


def test_a_closed_peer_is_a_lost_connection() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        with pytest.raises(ConnectionLost):
            send_some(ours.fileno(), [memoryview(b"x" * 10)])
