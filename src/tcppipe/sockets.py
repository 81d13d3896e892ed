"""Socket plumbing shared by the client and the server adapters.

Rule: the only place that touches socket options or turns stream reads into
protocol events, so both ends behave the same on the wire.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final

from tcppipe.errors import ConnectionLost, describe_os_error
from tcppipe.protocol import Decoder, Event, NeedData, ProtocolError

READ_BYTES: Final = 256 * 1024
# Dead peers (a pulled cable) are noticed within about KEEPIDLE + INTVL*CNT
# seconds when idle, and within USER_TIMEOUT when data is unacknowledged.
KEEPIDLE_S: Final = 15
KEEPINTVL_S: Final = 5
KEEPCNT: Final = 3
USER_TIMEOUT_MS: Final = 45_000
WRITE_HIGH_WATER_BYTES: Final = 4 * 1024 * 1024


def tune(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive, a bound on unacknowledged data, and a deep write buffer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
    writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)


async def next_event(reader: asyncio.StreamReader, decoder: Decoder) -> Event:
    """Read until one whole event is decoded; ConnectionLost at end of stream."""
    for _ in range(1_000_000):
        event = decoder.next_event()
        if event is None:
            raise ConnectionLost("peer closed the connection")
        if not isinstance(event, NeedData):
            return event
        try:
            data = await reader.read(READ_BYTES)
        except OSError as exc:
            raise ConnectionLost(describe_os_error(exc)) from None
        decoder.feed(data)
    raise ProtocolError("no event after a million reads")  # pragma: no cover


async def close_writer(writer: asyncio.StreamWriter, timeout_s: float = 5.0) -> None:
    """Close a stream and wait (bounded) until it is closed."""
    writer.close()
    try:
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    except (OSError, TimeoutError, ConnectionError):
        pass


def format_address(address: object) -> str:
    """A socket address as HOST:PORT, IPv6 hosts in brackets."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def peer_name(writer: asyncio.StreamWriter) -> str:
    return format_address(writer.get_extra_info("peername"))
