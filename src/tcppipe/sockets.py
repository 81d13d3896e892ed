"""Socket plumbing shared by the client and the server adapters.

Rule: the only place that touches socket options or turns stream reads into
protocol events, so both ends behave the same on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final

from tcppipe.errors import ConnectionLost, describe_os_error
from tcppipe.protocol import Decoder, Event, NeedData, ProtocolError
from tcppipe.session import ServerSession

READ_BYTES: Final = 256 * 1024
# Dead peers (a pulled cable) are noticed within about KEEPIDLE + INTVL*CNT
# seconds when idle, and within USER_TIMEOUT when data is unacknowledged.
KEEPIDLE_S: Final = 15
KEEPINTVL_S: Final = 5
KEEPCNT: Final = 3
USER_TIMEOUT_MS: Final = 45_000
WRITE_HIGH_WATER_BYTES: Final = 4 * 1024 * 1024
# One sendmsg takes at most this many buffers (Linux allows 1024; a round has about ten).
MAX_SEND_PIECES: Final = 64
# Sending straight to the socket needs a private epoll set to wait for room (Linux).
DIRECT_SEND: Final = hasattr(select, "epoll") and hasattr(socket, "MSG_NOSIGNAL")


def tune(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive, a bound on unacknowledged data, and a deep write buffer."""
    tune_transport(writer.transport)


def tune_transport(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive, a bound on unacknowledged data, and a deep write buffer."""
    sock = transport.get_extra_info("socket")
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
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)


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


# Computed once: an enum flag's ``|`` is a Python call, once a send otherwise.
_SEND_FLAGS: Final = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)


class BorrowedSocket:
    """A socket object on a descriptor a transport owns, made once per connection (making one
    asks the kernel its type, protocol and name: three system calls a send), given back by
    ``release`` (detached, never closed here: the transport closes it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._sock: socket.socket | None = socket.socket(fileno=fd)

    def send_some(self, pending: list[memoryview]) -> None:
        """Hand the kernel what it takes now of ``pending`` (one ``sendmsg``, no copy in user
        space), dropping what it took from the front of the list; OSError as ConnectionLost."""
        if self._sock is None:
            raise ConnectionLost("connection closed")
        try:
            sent = self._sock.sendmsg(pending[:MAX_SEND_PIECES], (), _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise ConnectionLost(describe_os_error(exc)) from None
        while sent and pending:
            head = pending[0]
            if sent < len(head):
                pending[0] = head[sent:]
                return
            sent -= len(head)
            del pending[0]

    def release(self) -> None:
        if self._sock is not None:
            self._sock.detach()
            self._sock = None


async def writable(fd: int) -> None:
    """Return when the kernel would take more bytes on ``fd`` (or the socket failed).

    A transport owns the socket, so the loop refuses to watch it: a one-shot epoll
    set does, itself watched by the loop (a few system calls a wait; a catch-up
    waits about once per socket buffer).
    """
    loop = asyncio.get_running_loop()
    epoll = select.epoll(1)
    try:
        epoll.register(fd, select.EPOLLOUT)
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        loop.add_reader(epoll.fileno(), wake)
        try:
            await woken
        finally:
            loop.remove_reader(epoll.fileno())
    finally:
        epoll.close()


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


# Before READY a connection is a stranger's: it is read a little at a time, so
# what it costs us is what it has sent (at most one HELLO), never what it announced.
PREAUTH_READ_BYTES: Final = 4096
# Smallest receive while streaming (a frame in flight asks for its whole rest).
RECEIVE_BYTES: Final = 64 * 1024

# A TLS stranger gets no TLS layer (asyncio's is 256 KiB of buffer and an SSL
# object) until the kernel holds its whole first record: a peer that sends
# nothing, half a ClientHello or no TLS at all costs a plain stranger's few KiB.
# The record is only peeked at, never read, so the TLS layer reads it as sent.
TLS_HANDSHAKE_RECORD: Final = 0x16
TLS_RECORD_HEADER_BYTES: Final = 5
# A peek that finds fewer bytes than SO_RCVLOWAT promised is looked at again this often, spaced.
SHORT_PEEKS: Final = 8
SHORT_PEEK_WAIT_S: Final = 0.02
MAX_TLS_RECORD_BYTES: Final = 2**14 + 256  # RFC 8446 5.1: a plaintext record holds at most 2^14 bytes
# Waiting strangers woken per turn of the event loop: the TLS layers they start are
# few enough that the strangers they push out are freed before the next ones start.
READINESS_BATCH: Final = 16


class ReadinessWatch:
    """Wakes a task when a socket holds bytes, without reading them.

    A paused transport's socket is watched by nobody, and the loop refuses to
    watch a socket a transport owns; so a private epoll set does, itself watched
    by the loop: one descriptor for every waiting stranger. Linux only
    (``available`` is False elsewhere). Each wait arms the socket once
    (EPOLLONESHOT) and disarms it when it ends, however it ends.
    """

    available: Final = hasattr(select, "epoll")

    def __init__(self) -> None:
        self._epoll: Any = None  # select.epoll, made at the first wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}

    async def readable(self, fd: int) -> None:
        """Return when ``fd`` is readable (bytes at or above its SO_RCVLOWAT, end of stream, or an error)."""
        if self._epoll is None:
            self._loop = asyncio.get_running_loop()
            self._epoll = select.epoll()
            self._loop.add_reader(self._epoll.fileno(), self._wake)
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        self._waiting[fd] = waiter
        try:
            await waiter
        finally:
            if self._waiting.get(fd) is waiter:
                del self._waiting[fd]
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)

    def _wake(self) -> None:
        for fd, _events in self._epoll.poll(0, READINESS_BATCH):
            waiter = self._waiting.get(fd)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Stop watching; waits still pending never end (their tasks are cancelled at shutdown)."""
        if self._epoll is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        self._waiting.clear()


def _peek(fd: int, size: int) -> bytes | None:
    """Up to ``size`` bytes the kernel holds for ``fd``, left there; None if none yet."""
    sock = socket.socket(fileno=fd)  # borrowed: detached below, so never closed here
    try:
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise ConnectionLost(describe_os_error(exc)) from None
    finally:
        sock.detach()


def tls_record_length(header: bytes) -> int:
    """The length of the TLS record that ``header`` (its first 5 bytes) begins;
    ProtocolError unless it is a handshake record, as a ClientHello is."""
    kind, major, minor, length = header[0], header[1], header[2], int.from_bytes(header[3:5])
    if kind != TLS_HANDSHAKE_RECORD or major != 3 or minor > 4 or not 0 < length <= MAX_TLS_RECORD_BYTES:
        raise ProtocolError(f"not a TLS handshake (first bytes {header.hex()})")
    return length


class ServerConnection(asyncio.BufferedProtocol):
    """One accepted connection, from the socket into its ``ServerSession``'s buffer.

    Two modes. Pulled (the handshake, verify): ``await next_event()`` reads
    until one event is whole, then stops reading, so a peer can never push
    more than one small frame ahead of us. Pushed (streaming): ``receive_with``
    installs a handler that gets each event as soon as its bytes are in, with
    no copy between the socket and the destination. Either way the end of the
    connection (clean, failed, or the handler's error) resolves ``done``.
    """

    def __init__(self, session: ServerSession, on_made: Callable[[ServerConnection], None]) -> None:
        self.session = session
        self.on_made = on_made
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._handler: Callable[[Event], None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._held = False

    # -- asyncio's side ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.transport is not None:
            return  # the TLS layer announcing itself again: same connection
        self.transport = transport
        # Not a byte is read until the server decides (TLS first, or budget).
        transport.pause_reading()
        self.on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._handler is None:
            return self.session.get_buffer(PREAUTH_READ_BYTES)[:PREAUTH_READ_BYTES]
        return self.session.get_buffer(max(sizehint, RECEIVE_BYTES))

    def buffer_updated(self, nbytes: int) -> None:
        self.session.buffer_updated(nbytes, self.loop.time())
        self._advance()

    def eof_received(self) -> bool:
        try:
            self.session.receive(b"", self.loop.time())
        except ProtocolError as exc:
            self.finish(exc)
            return False
        self._advance()
        # Keep our side open for the goodbye ACK (TLS cannot half-close).
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc or "peer closed the connection")
        self.finish(ConnectionLost(reason))
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- the server's side ---------------------------------------------------

    def _advance(self) -> None:
        if self._handler is None:
            self._wake()
            return
        try:
            while not self.done.done() and not self._held:
                event = self.session.next_event()
                if event is None:
                    self.finish(None)
                    return
                if isinstance(event, NeedData):
                    return
                self._handler(event)
        except Exception as exc:  # the connection task re-raises it (and logs a bug)
            self.finish(exc)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _reading(self, on: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if on and not transport.is_reading():
            transport.resume_reading()
        elif not on and transport.is_reading():
            transport.pause_reading()

    async def next_event(self) -> Event:
        """Read until one event is whole (then stop reading); ConnectionLost at the end."""
        while True:
            event = self.session.next_event()
            if event is None:
                raise ConnectionLost("peer closed the connection")
            if not isinstance(event, NeedData):
                self._reading(False)
                return event
            if self.done.done():
                self.done.result()
                raise ConnectionLost("peer closed the connection")
            self._wakeup = self.loop.create_future()
            self._reading(True)
            await self._wakeup

    def receive_with(self, handler: Callable[[Event], None]) -> None:
        """Hand every later event to ``handler`` as it arrives (bytes already in go first)."""
        self._handler = handler
        self._advance()
        if not self._held:
            self._reading(True)

    def hold(self, held: bool) -> None:
        """Streaming: stop handing events to the handler and reading (True), or go on (False).
        What the socket already gave stays in the session's buffer until then: back-pressure
        from a destination that lands bytes later than it takes them (a JetStream subject)."""
        if held == self._held:
            return
        self._held = held
        if held:
            self._reading(False)
            return
        self._advance()
        if not self.done.done() and not self._held:
            self._reading(True)

    def finish(self, exc: BaseException | None) -> None:
        """End the conversation: ``done`` says why (None: the client said goodbye)."""
        if self.done.done():
            return
        self._handler = None if exc is not None else self._handler
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)
        self._reading(False)

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._writable is not None:
            await self._writable

    async def wait_for_tls_record(self, watch: ReadinessWatch) -> None:
        """Return when the kernel holds the peer's whole first TLS record, having read
        nothing; ProtocolError if it is no TLS handshake, ConnectionLost if the peer
        ends first."""
        assert self.transport is not None
        if not watch.available:
            return
        sock = self.transport.get_extra_info("socket")
        fd = sock.fileno()
        want = TLS_RECORD_HEADER_BYTES
        short = 0
        try:
            while True:
                # Readable only once ``want`` bytes are in, or at the end: no wake-up per byte dribbled.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                await watch.readable(fd)
                held = _peek(fd, want) or b""
                if len(held) < want:
                    # The end of the peer's stream, or (rarely) the kernel waking us below the
                    # mark under memory pressure: a few more looks, spaced, then it is the end.
                    short += 1
                    if not held or short > SHORT_PEEKS:
                        raise ConnectionLost("peer closed before its first TLS record was whole")
                    await asyncio.sleep(SHORT_PEEK_WAIT_S)
                    continue
                if want > TLS_RECORD_HEADER_BYTES:
                    return
                want += tls_record_length(held)
                if len(_peek(fd, want) or b"") >= want:
                    return
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade to TLS as the server (nothing has been read before it)."""
        assert self.transport is not None
        upgraded = await self.loop.start_tls(self.transport, self, context, server_side=True)
        assert isinstance(upgraded, asyncio.Transport)
        self.transport, self.tls = upgraded, True
        self._reading(False)

    def get_extra_info(self, name: str) -> Any:
        return None if self.transport is None else self.transport.get_extra_info(name)

    def peer(self) -> str:
        return format_address(self.get_extra_info("peername"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.finish(ConnectionLost("closed by the server"))

    def abort(self) -> None:
        """Close at once, dropping what is unsent (for strangers)."""
        if self.transport is not None:
            self.transport.abort()
        self.finish(ConnectionLost("closed by the server"))

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        """Bounded: a peer that does not take our last bytes is cut off."""
        if self.transport is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self.transport.abort()

    def retrieve(self) -> None:
        """Mark ``done``'s outcome as seen (no 'exception never retrieved')."""
        if self.done.done() and not self.done.cancelled():
            self.done.exception()
