"""The server's half of the conversation, with no socket: what it takes when, and its answers."""

from __future__ import annotations

import struct

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
from tcppipe.session import ServerSession, ServerState, admit_generation

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


@pytest.mark.parametrize(
    ("record", "landed", "ident", "start", "restart", "admitted"),
    [
        (None, None, IDENT, 77, False, True),
        (IDENT, 10, IDENT, 10, False, True),
        (IDENT, 10, IDENT, 11, False, False),
        (IDENT, 10, IDENT, 9, False, False),
        (IDENT, 10, IDENT, 0, False, False),
        (IDENT, 10, IDENT, 0, True, True),
        (IDENT, 10, GenerationId(1, 3, 4, "cd" * 32), 0, False, True),
        (IDENT, 10, GenerationId(1, 3, 4, "cd" * 32), 5, False, False),
    ],
)
def test_admission_rule(
    record: GenerationId | None, landed: int | None, ident: GenerationId, start: int, restart: bool, admitted: bool
) -> None:
    """The recorded generation continues where it landed; any other starts at 0; -n restarts the recorded one."""
    assert (admit_generation(record, landed, ident, start, restart) is None) is admitted
