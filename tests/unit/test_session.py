"""The conversation as two state machines talking without a socket (h11's ConnectionPair)."""

from __future__ import annotations

import pytest

from tcppipe.protocol import (
    FEATURE_PROGRESS,
    FEATURE_ZSTD,
    HEADER,
    MAX_DATA_BYTES,
    PURPOSE_VERIFY,
    Ack,
    Data,
    FrameType,
    Generation,
    GenerationId,
    Hello,
    NeedData,
    ProtocolError,
    Ready,
    Refuse,
    Verify,
    encode,
)
from tcppipe.session import (
    MAX_HELLO_BYTES,
    Acked,
    ClientSession,
    ClientState,
    LocalProtocolError,
    ServerSession,
    ServerState,
    admit_generation,
)

IDENT = GenerationId(1, 2, 3, "ab" * 32)
OTHER = GenerationId(1, 9, 3, "cd" * 32)


class Pair:
    """A client and a server session wired back to back."""

    def __init__(self, features: tuple[str, ...] = (FEATURE_PROGRESS,), purpose: str = "pipe") -> None:
        self.client: ClientSession[str] = ClientSession(Hello("/var/log/x", features, 1.0, purpose), 0.0)
        self.server = ServerSession(0.0, (FEATURE_ZSTD, FEATURE_PROGRESS), 15.0)
        self.to_server(self.client.start(0.0))

    def to_server(self, data: bytes) -> list[object]:
        self.server.receive(data, 0.0)
        events: list[object] = []
        for _ in range(100):
            event = self.server.next_event()
            if isinstance(event, NeedData) or event is None:
                return events
            events.append(event)
        raise AssertionError("endless events")

    def to_client(self, data: bytes) -> list[object]:
        self.client.receive(data, 0.0)
        events: list[object] = []
        for _ in range(100):
            event = self.client.next_event()
            if isinstance(event, NeedData) or event is None:
                return events
            events.append(event)
        raise AssertionError("endless events")


def test_handshake_then_generation_data_and_ack_map_back_to_the_token() -> None:
    """READY opens the stream; an ACK's count names the GENERATION's token."""
    pair = Pair()
    hello = pair.server.hello
    assert hello is not None
    assert hello.path == "/var/log/x"
    assert pair.server.state is ServerState.AUTHORIZING
    [ready] = pair.to_client(pair.server.ready(None, None, 0.0))
    assert isinstance(ready, Ready)
    assert ready.features == (FEATURE_PROGRESS,)
    assert pair.client.state is ClientState.STREAMING
    gen = pair.client.send_generation("first", IDENT, 0, 0.0)
    header = pair.client.data_header(b"hello", 0, 0.0)
    events = pair.to_server(gen + header + b"hello")
    assert events[0] == Generation(IDENT, 0)
    assert isinstance(events[1], Data)
    assert bytes(events[1].payload) == b"hello"
    second = pair.client.send_generation("second", OTHER, 0, 0.0)
    pair.to_server(second)
    assert pair.to_client(pair.server.ack(5, 0.0)) == [Acked("second", 5)]
    assert pair.server.ack(5, 0.0) == b""  # nothing new to say
    assert pair.to_client(pair.server.ack(5, 0.0, heartbeat=True)) == [Acked("second", 5)]


def test_server_takes_only_a_small_hello_before_ready() -> None:
    """A DATA header, or a HELLO over the limit, is refused from its header alone."""
    server = ServerSession(0.0, (), 15.0)
    server.receive(HEADER.pack(FrameType.DATA, 0, MAX_DATA_BYTES, 0) + b"x", 0.0)
    with pytest.raises(ProtocolError, match="unexpected DATA"):
        server.next_event()
    big = ServerSession(0.0, (), 15.0)
    big.receive(HEADER.pack(FrameType.HELLO, 0, MAX_HELLO_BYTES + 1, 0) + b"{", 0.0)
    with pytest.raises(ProtocolError, match="over the limit"):
        big.next_event()
    # And the buffer never grew towards the announced size.
    assert len(big.get_buffer(1)) < 64 * 1024


def test_frames_out_of_turn_are_the_peers_fault() -> None:
    """DATA before GENERATION, a second HELLO, an ACK of an unannounced generation: ProtocolError."""
    pair = Pair()
    pair.to_client(pair.server.ready(None, None, 0.0))
    with pytest.raises(ProtocolError, match="DATA before GENERATION"):
        pair.to_server(encode(Data(b"x")))
    pair = Pair()
    pair.to_client(pair.server.ready(None, None, 0.0))
    with pytest.raises(ProtocolError, match="unexpected HELLO"):
        pair.to_server(encode(Hello("/again")))
    pair = Pair()
    pair.to_client(pair.server.ready(None, None, 0.0))
    with pytest.raises(ProtocolError, match="only 0 announced"):
        pair.to_client(encode(Ack(1, 0)))
    pair = Pair()
    with pytest.raises(ProtocolError, match="unexpected ACK"):
        pair.to_client(encode(Ack(0, 0)))


def test_our_own_mistakes_are_local_errors() -> None:
    """Sending DATA before READY or before a GENERATION is a bug of ours, not the peer's."""
    client: ClientSession[str] = ClientSession(Hello("/x"), 0.0)
    with pytest.raises(LocalProtocolError):
        client.send_generation("g", IDENT, 0, 0.0)
    pair = Pair()
    pair.to_client(pair.server.ready(None, None, 0.0))
    with pytest.raises(LocalProtocolError, match="DATA before GENERATION"):
        pair.client.data_header(b"x", 0, 0.0)
    pair.client.send_generation("g", IDENT, 0, 0.0)
    with pytest.raises(LocalProtocolError, match="compressed"):
        pair.client.data_header(b"x", 1, 0.0)


def test_ready_with_a_feature_never_offered_is_refused() -> None:
    """A server cannot switch on zstd the client did not offer."""
    client: ClientSession[str] = ClientSession(Hello("/x", (FEATURE_PROGRESS,)), 0.0)
    client.receive(encode(Ready(None, None, (FEATURE_ZSTD,))), 0.0)
    with pytest.raises(ProtocolError, match="never offered"):
        client.next_event()


def test_refuse_closes_and_acks_must_not_go_backwards() -> None:
    """REFUSE ends the client's conversation; an ACK smaller than the last is an error."""
    pair = Pair()
    [refuse] = pair.to_client(pair.server.refuse("no pipe", False, 0.0))
    assert refuse == Refuse("no pipe", False)
    assert pair.client.state is ClientState.CLOSED
    pair = Pair()
    pair.to_client(pair.server.ready(None, None, 0.0))
    pair.to_server(pair.client.send_generation("g", IDENT, 0, 0.0))
    pair.to_client(pair.server.ack(10, 0.0))
    with pytest.raises(ProtocolError, match="backwards"):
        pair.to_client(encode(Ack(1, 5)))


def test_verify_rounds_alternate() -> None:
    """A verifying client sends one VERIFY at a time and gets exactly one DIGEST back."""
    pair = Pair(purpose=PURPOSE_VERIFY)
    pair.to_client(pair.server.ready(IDENT, 10, 0.0, first=0))
    assert pair.client.state is ClientState.VERIFYING
    [request] = pair.to_server(pair.client.send_verify(Verify(0, 10, 2), 0.0))
    assert request == Verify(0, 10, 2)
    with pytest.raises(LocalProtocolError):
        pair.client.send_verify(Verify(0, 10, 2), 0.0)
    [digest] = pair.to_client(pair.server.digest(("0" * 64, "1" * 64), 0.0))
    assert digest is not None
    with pytest.raises(ProtocolError, match="unexpected GENERATION"):
        pair.to_server(encode(Generation(IDENT, 0)))


def test_heartbeat_deadlines_follow_time() -> None:
    """A PING is due after a heartbeat of silence; three silent heartbeats make the peer dead."""
    pair = Pair()
    pair.to_client(pair.server.ready(None, None, 0.0))
    assert pair.client.ping_due_in(0.5) == pytest.approx(0.5)
    assert pair.client.ping_due_in(2.0) == 0.0
    assert not pair.client.peer_dead(2.9)
    assert pair.client.peer_dead(3.1)
    pair.client.receive(pair.server.ack(0, 3.0, heartbeat=True), 3.0)
    assert not pair.client.peer_dead(3.1)


def test_the_ledger_admits_only_a_continuation_or_a_fresh_start() -> None:
    """The recorded generation continues where it landed or restarts at 0; another starts at 0."""
    assert admit_generation(None, None, IDENT, 123) is None  # no record: the client's word
    assert admit_generation(IDENT, 50, IDENT, 50) is None
    assert admit_generation(IDENT, 50, IDENT, 0) is None  # copytruncate, or -n
    assert "gap" in (admit_generation(IDENT, 50, IDENT, 51) or "")
    assert "overlap" in (admit_generation(IDENT, 50, IDENT, 49) or "")
    assert admit_generation(IDENT, 50, OTHER, 0) is None
    assert "byte 0" in (admit_generation(IDENT, 50, OTHER, 7) or "")
    assert admit_generation(IDENT, 50, IDENT, 2**64 - 1) is not None  # the wedge of issue 11 #4
