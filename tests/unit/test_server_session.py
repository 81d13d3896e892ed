"""The server's half of the conversation, with no socket: what it takes when, and its answers."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tcppipe.protocol import (
    Ack,
    Data,
    Decoder,
    Event,
    FrameType,
    Generation,
    GenerationId,
    Hello,
    NeedData,
    ProtocolError,
    data_header,
    encode,
)
from tcppipe.receiver import PipeReceiver
from tcppipe.server import ConfigHolder, Server, ServerOptions
from tcppipe.session import ServerSession, ServerState

IDENT = GenerationId(1, 2, 4, "ab" * 32)


def streaming(restart: bool = False) -> ServerSession:
    session = ServerSession(0.0, (), 15.0)
    session.receive(encode(Hello("/var/log/x", restart=restart)), 0.0)
    assert isinstance(session.next_event(), Hello)
    session.ready(None, None, 0.0)
    return session


def acks(wire: bytes) -> list[Event]:
    decoder = Decoder()
    decoder.feed(wire)
    return decoder.events()


def test_data_header_before_hello_is_refused_from_the_header() -> None:
    """A DATA header before HELLO is a protocol error at once, before its payload is buffered."""
    session = ServerSession(0.0, (), 15.0)
    session.receive(struct.pack("!BBII", FrameType.DATA, 0, 1 << 20, 0) + b"x", 0.0)
    with pytest.raises(ProtocolError, match="unexpected DATA"):
        session.next_event()


def test_nothing_is_taken_between_hello_and_the_answer() -> None:
    """Bytes after HELLO wait in the buffer until READY; then they are decoded as streaming frames."""
    session = ServerSession(0.0, (), 15.0)
    session.receive(encode(Hello("/x")) + encode(Generation(IDENT, 0)), 0.0)
    assert isinstance(session.next_event(), Hello)
    assert session.state is ServerState.AUTHORIZING
    with pytest.raises(ProtocolError):
        session.next_event()


def test_goodbye_is_answered_by_a_last_ack() -> None:
    """After the client's end of stream while streaming, ``ack`` still says what landed (the goodbye)."""
    session = streaming()
    payload = b"line\n"
    session.receive(encode(Generation(IDENT, 0)) + data_header(payload) + payload, 1.0)
    assert isinstance(session.next_event(), Generation)
    assert isinstance(session.next_event(), Data)
    assert session.next_event() is NeedData.NEED_DATA
    session.receive(b"", 2.0)
    assert session.next_event() is None
    assert acks(session.ack(5, 2.0)) == [Ack(1, 5)]


def test_no_ack_after_a_refusal() -> None:
    """Once REFUSE has ended the conversation, ``ack`` has nothing to say."""
    session = streaming()
    session.refuse("no", True, 1.0)
    assert session.ack(5, 1.0) == b""


# -- the adapter's tasks: a bug in any of them reaches our logger, with its peer --


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_with_server(tmp_path: Path, body: Callable[[Server, int], Awaitable[None]]) -> tuple[list[str], list[str]]:
    """Run ``body`` against a listening Server; return (our log lines, asyncio's unhandled contexts)."""
    log = logging.getLogger("tcppipe.test")
    log.propagate = False
    collect = Collect()
    log.addHandler(collect)
    unhandled: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unhandled.append(str(context.get("message"))))
        (tmp_path / "c.conf").write_text("")
        holder = ConfigHolder(str(tmp_path / "c.conf"), log)
        server = Server(ServerOptions(str(tmp_path / "c.conf"), 0, "127.0.0.1", str(tmp_path)), log, holder)
        listener = await server.listen()
        port = listener.sockets[0].getsockname()[1]
        try:
            await body(server, port)
        finally:
            listener.close()
            await server.shutdown()

    try:
        asyncio.run(main())
    finally:
        log.removeHandler(collect)
    return collect.lines, unhandled


async def hello_and_wait(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Hello("/var/log/x")))
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # the server closes the connection
    writer.close()
    await writer.wait_closed()


def test_a_connection_task_that_raises_is_logged_with_its_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a connection's handling (here: authorising raises KeyError) is one error line naming the peer."""

    def broken(*_args: object) -> None:
        raise KeyError("boom")

    async def body(server: Server, port: int) -> None:
        monkeypatch.setattr(server, "_authorize", broken)
        await hello_and_wait(port)
        async with asyncio.timeout(10):
            while server.tasks:
                await asyncio.wait(set(server.tasks), timeout=10)

    lines, unhandled = run_with_server(tmp_path, body)
    errors = [line for line in lines if "internal error" in line]
    assert len(errors) == 1
    assert "127.0.0.1:" in errors[0]
    assert "KeyError('boom')" in errors[0]
    assert unhandled == []


def test_a_timer_callback_that_raises_is_logged_and_ends_its_connection(tmp_path: Path) -> None:
    """An ACK timer that raises is logged with its pipe and ends only that connection."""
    origin = "/var/log/x"

    async def body(server: Server, port: int) -> None:
        (tmp_path / "c.conf").write_text(f"127.0.0.1:{origin} | {tmp_path / 'dest'}\n")

        def broken_ack(self: PipeReceiver) -> None:
            raise ZeroDivisionError("tick")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(PipeReceiver, "_ack_due", broken_ack)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = b"x\n"
            writer.write(encode(Hello(origin)) + encode(Generation(IDENT, 0)) + data_header(payload) + payload)
            async with asyncio.timeout(10):
                while await reader.read(65536):
                    pass
            writer.close()
            await writer.wait_closed()
            async with asyncio.timeout(10):
                while server.tasks:
                    await asyncio.wait(set(server.tasks), timeout=10)

    lines, unhandled = run_with_server(tmp_path, body)
    errors = [line for line in lines if "internal error" in line]
    assert len(errors) == 1, lines
    assert "ZeroDivisionError('tick')" in errors[0]
    assert str(tmp_path / "dest") in errors[0]
    assert unhandled == []
