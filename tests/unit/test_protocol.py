"""The wire codec: golden vectors both ways, any split, trailing bytes, and fuzzing."""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcppipe.protocol import (
    DATA_ZSTD,
    HEADER,
    MAX_CONTROL_BYTES,
    MAX_DATA_BYTES,
    MAX_HISTORY_SPANS,
    MAX_VERIFY_PARTS,
    Ack,
    Data,
    Decoder,
    Digest,
    Event,
    FrameType,
    Generation,
    GenerationId,
    HeldSpan,
    Hello,
    NeedData,
    Ping,
    Progress,
    ProtocolError,
    Ready,
    Refuse,
    Verify,
    encode,
    split_range,
)

IDENT = GenerationId(dev=2049, ino=1234567, fp_len=12, fp_sha256="ab" * 32)


def control(kind: FrameType, body: bytes) -> bytes:
    return struct.pack("!BBII", kind, 0, len(body), zlib.crc32(body)) + body


GOLDEN: list[tuple[Event, bytes]] = [
    (
        Hello("/var/log/messages"),
        control(
            FrameType.HELLO,
            b'{"features":[],"heartbeat_s":15.0,"path":"/var/log/messages","purpose":"pipe","version":1}',
        ),
    ),
    (
        Hello("/x", ("zstd",), 0.5, "verify"),
        control(FrameType.HELLO, b'{"features":["zstd"],"heartbeat_s":0.5,"path":"/x","purpose":"verify","version":1}'),
    ),
    (Ping(), control(FrameType.PING, b"{}")),
    (Ready(None, None), control(FrameType.READY, b'{"features":[],"first":null,"offset":null,"record":null}')),
    (
        Ready(IDENT, 99, ("progress",), 7),
        control(
            FrameType.READY,
            b'{"features":["progress"],"first":7,"offset":99,"record":{"dev":2049,"fp_len":12,"fp_sha256":"'
            + b"ab" * 32
            + b'","ino":1234567}}',
        ),
    ),
    (
        Ready(IDENT, 99, (), None, igen=5),
        control(
            FrameType.READY,
            b'{"features":[],"first":null,"igen":5,"offset":99,"record":{"dev":2049,"fp_len":12,"fp_sha256":"'
            + b"ab" * 32
            + b'","ino":1234567}}',
        ),
    ),
    (Progress(10, 2), control(FrameType.PROGRESS, b'{"end":10,"queued":2}')),
    (Verify(3, 90, 64), control(FrameType.VERIFY, b'{"end":90,"parts":64,"start":3}')),
    (Verify(3, 90, 64, 2), control(FrameType.VERIFY, b'{"end":90,"parts":64,"span":2,"start":3}')),
    (Digest(("cd" * 32,)), control(FrameType.DIGEST, b'{"digests":["' + b"cd" * 32 + b'"]}')),
    (Refuse("no pipe"), control(FrameType.REFUSE, b'{"reason":"no pipe","retry":false}')),
    (Refuse("disk full", retry=True), control(FrameType.REFUSE, b'{"reason":"disk full","retry":true}')),
    (
        Generation(IDENT, 5),
        control(
            FrameType.GENERATION,
            b'{"ident":{"dev":2049,"fp_len":12,"fp_sha256":"' + b"ab" * 32 + b'","ino":1234567},"start":5}',
        ),
    ),
    (Data(b"\x00\xffline\n"), control(FrameType.DATA, b"\x00\xffline\n")),
    (Data(b""), control(FrameType.DATA, b"")),
    (Ack(3, 1 << 40), control(FrameType.ACK, b'{"generations":3,"offset":1099511627776}')),
]


def decode_all(chunks: list[bytes], eof: bool = True) -> list[Event]:
    decoder = Decoder()
    events: list[Event] = []
    for chunk in chunks:
        decoder.feed(chunk)
        events.extend(decoder.events())
    if eof:
        decoder.feed(b"")
        assert decoder.next_event() is None
    return events


@pytest.mark.parametrize(("event", "wire"), GOLDEN)
def test_golden_encoding(event: Event, wire: bytes) -> None:
    """Each event encodes to exactly its golden bytes."""
    assert encode(event) == wire


@pytest.mark.parametrize(("event", "wire"), GOLDEN)
def test_golden_decoding_whole_bytewise_and_with_trailing_bytes(event: Event, wire: bytes) -> None:
    """Golden bytes decode to the event fed whole, one byte at a time, and followed by more bytes."""
    assert decode_all([wire]) == [event]
    assert decode_all([wire[i : i + 1] for i in range(len(wire))]) == [event]
    decoder = Decoder()
    decoder.feed(wire + wire[:3])
    assert decoder.next_event() == event
    assert isinstance(decoder.next_event(), NeedData)
    assert decoder.buffered == 3


def test_eof_mid_frame_is_a_protocol_error() -> None:
    """A stream that ends inside a frame is the peer's fault."""
    decoder = Decoder()
    decoder.feed(encode(Data(b"abc"))[:-1])
    decoder.feed(b"")
    with pytest.raises(ProtocolError, match="mid-frame"):
        decoder.next_event()


def test_checksum_mismatch_is_detected() -> None:
    """One flipped payload bit fails the CRC check."""
    wire = bytearray(encode(Data(b"hello world")))
    wire[-1] ^= 0x01
    decoder = Decoder()
    decoder.feed(bytes(wire))
    with pytest.raises(ProtocolError, match="checksum"):
        decoder.next_event()


@pytest.mark.parametrize(("kind", "limit"), [(FrameType.DATA, MAX_DATA_BYTES), (FrameType.HELLO, MAX_CONTROL_BYTES)])
def test_oversized_frame_is_refused_from_its_header(kind: FrameType, limit: int) -> None:
    """A length over the limit is refused as soon as the header is in, before any payload is buffered."""
    decoder = Decoder()
    decoder.feed(HEADER.pack(kind, 0, limit + 1, 0))
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.next_event()


@pytest.mark.parametrize(
    "wire",
    [
        HEADER.pack(99, 0, 0, 0),
        HEADER.pack(FrameType.DATA, 1, 0, 0),
        control(FrameType.HELLO, b"not json"),
        control(FrameType.HELLO, b"[1]"),
        control(FrameType.HELLO, b'{"version":2,"path":"/x"}'),
        control(FrameType.HELLO, b'{"version":1,"path":7}'),
        control(FrameType.HELLO, b'{"version":1,"path":"/x","heartbeat_s":0}'),
        control(FrameType.HELLO, b'{"version":1,"path":"/x","heartbeat_s":"15"}'),
        control(FrameType.GENERATION, b'{"ident":{"dev":1,"ino":2,"fp_len":0,"fp_sha256":"zz"},"start":0}'),
        control(FrameType.ACK, b'{"generations":-1,"offset":0}'),
        control(FrameType.ACK, b'{"generations":true,"offset":0}'),
        control(FrameType.HELLO, b'{"version":1,"path":"/x","purpose":"steal"}'),
        control(FrameType.VERIFY, b'{"start":5,"end":4,"parts":1}'),
        control(FrameType.VERIFY, b'{"start":0,"end":4,"parts":0}'),
        control(FrameType.VERIFY, b'{"start":0,"end":4,"parts":%d}' % (MAX_VERIFY_PARTS + 1)),
        control(FrameType.DIGEST, b'{"digests":["xyz"]}'),
        HEADER.pack(FrameType.PING, DATA_ZSTD, 0, 0),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes) -> None:
    """Unknown types, flags, bad JSON and ill-typed fields raise ProtocolError, nothing else."""
    decoder = Decoder()
    decoder.feed(wire)
    with pytest.raises(ProtocolError):
        decoder.next_event()


def test_feeding_after_eof_is_an_error() -> None:
    """No bytes may follow the end of the stream."""
    decoder = Decoder()
    decoder.feed(b"")
    with pytest.raises(ProtocolError):
        decoder.feed(b"x")


def test_encode_refuses_an_oversized_payload() -> None:
    """Our own oversized DATA is our bug, reported as ValueError."""
    with pytest.raises(ValueError, match="over the limit"):
        encode(Data(b"x" * (MAX_DATA_BYTES + 1)))


idents = st.builds(
    GenerationId,
    dev=st.integers(0, 2**64 - 1),
    ino=st.integers(0, 2**64 - 1),
    fp_len=st.integers(0, 4096),
    fp_sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
)
events = st.one_of(
    st.builds(
        Hello,
        st.text(max_size=200),
        st.lists(st.text(max_size=10), max_size=3).map(tuple),
        st.floats(0.05, 3600, allow_nan=False),
        st.sampled_from(["pipe", "verify"]),
    ),
    st.just(Ping()),
    st.builds(Ready, st.none(), st.none()),
    st.builds(
        Ready,
        idents,
        st.integers(0, 2**63),
        st.lists(st.text(max_size=10), max_size=3).map(tuple),
        st.none() | st.integers(0, 2**63),
        st.lists(
            st.builds(HeldSpan, idents, st.integers(0, 2**40), st.integers(0, 2**40)).filter(lambda h: h.first < h.end),
            max_size=3,
        ).map(tuple),
        st.integers(0, 1000),
    ),
    st.builds(Progress, st.integers(0, 2**63), st.integers(0, 1000)),
    st.builds(
        Verify,
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(1, MAX_VERIFY_PARTS),
        st.none() | st.integers(0, MAX_HISTORY_SPANS - 1),
    ).filter(lambda v: v.start <= v.end),
    st.builds(Digest, st.lists(st.text("0123456789abcdef", min_size=64, max_size=64), max_size=5).map(tuple)),
    st.builds(Refuse, st.text(max_size=300), st.booleans()),
    st.builds(Generation, idents, st.integers(0, 2**63)),
    st.builds(Data, st.binary(max_size=2000)),
    st.builds(Ack, st.integers(0, 2**32), st.integers(0, 2**63)),
)


@given(st.lists(events, max_size=8), st.lists(st.integers(0, 20_000), max_size=10))
def test_any_event_sequence_round_trips_however_split(seq: list[Event], cuts: list[int]) -> None:
    """Every event sequence survives encoding and decoding at any split points."""
    wire = b"".join(encode(e) for e in seq)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]
    assert decode_all(chunks) == seq


@settings(max_examples=max(300, settings().max_examples))
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
def test_any_bytes_yield_events_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes, split anywhere, give events, NEED_DATA or ProtocolError, and nothing else."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    decoder = Decoder()
    try:
        for a, b in itertools.pairwise(points):
            decoder.feed(data[a:b])
            decoder.events()
        decoder.feed(b"")
        decoder.events()
    except ProtocolError:
        pass


def test_zero_copy_receive_path_gives_the_same_events() -> None:
    """Bytes written into get_buffer() decode like fed bytes; DATA payloads are views until the next receive."""
    sequence: list[Event] = [Hello("/x"), Data(b"a" * 300_000), Data(b"\x00z")]
    wire = b"".join(encode(e) for e in sequence)
    decoder = Decoder(copy_payloads=False)
    seen: list[bytes] = []
    for i in range(0, len(wire), 70_001):
        chunk = wire[i : i + 70_001]
        view = decoder.get_buffer(len(chunk))
        view[: len(chunk)] = chunk
        decoder.buffer_updated(len(chunk))
        for event in decoder.events():
            if isinstance(event, Data):
                assert isinstance(event.payload, memoryview)
                seen.append(bytes(event.payload))  # used at once, as the server does
    assert seen == [b"a" * 300_000, b"\x00z"]
    assert decoder.buffered == 0


def test_buffer_follows_need_and_is_released_when_idle() -> None:
    """A frame in flight asks for its whole rest; an idle decoder lets a large buffer go."""
    decoder = Decoder(copy_payloads=False)
    wire = encode(Data(b"x" * 500_000))
    decoder.feed(wire[:100])
    assert len(decoder.get_buffer(1)) >= len(wire) - 100
    decoder.feed(wire[100:])
    assert decoder.events() == [Data(b"x" * 500_000)]
    decoder.release_idle_buffer()
    assert len(decoder.get_buffer(1)) < 64 * 1024


def test_data_flags_need_the_handshake() -> None:
    """A compressed DATA frame is a protocol error until the handshake accepted zstd."""
    wire = encode(Data(b"packed", DATA_ZSTD))
    strict = Decoder()
    strict.feed(wire)
    with pytest.raises(ProtocolError, match="flags"):
        strict.next_event()
    agreed = Decoder()
    agreed.data_flags = DATA_ZSTD
    agreed.feed(wire)
    assert agreed.events() == [Data(b"packed", DATA_ZSTD)]


@given(st.integers(0, 10**12), st.integers(0, 10**6), st.integers(1, MAX_VERIFY_PARTS))
def test_split_range_covers_the_range_in_order(start: int, length: int, parts: int) -> None:
    """The parts are contiguous, non-empty (unless the range is), and at most ``parts``."""
    ranges = split_range(start, start + length, parts)
    assert ranges[0][0] == start
    assert ranges[-1][1] == start + length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert len(ranges) <= parts
    assert length == 0 or all(b > a for a, b in ranges)


@pytest.mark.parametrize(
    "body",
    [
        b'{"offset":1,"record":null}',
        b'{"offset":18446744073709551616,"record":{"dev":1,"ino":2,"fp_len":0,"fp_sha256":"' + b"ab" * 32 + b'"}}',
        b'{"offset":-1,"record":{"dev":1,"ino":2,"fp_len":0,"fp_sha256":"' + b"ab" * 32 + b'"}}',
    ],
)
def test_a_ready_whose_record_cannot_be_read_is_no_record(body: bytes) -> None:
    """Issue 11 #4: an absurd record in READY is taken as none, instead of wedging the pipe for ever."""
    decoder = Decoder()
    decoder.feed(control(FrameType.READY, body))
    assert decoder.next_event() == Ready(None, None)


def test_a_ready_whose_history_is_not_one_still_opens_the_pipe() -> None:
    """Only verify reads READY's history: a damaged list is no list, never a stalled pipe."""
    for history in ('"x"', '[{"record": 1, "first": 0, "end": 5}]', '[{"first": 3, "end": 3}]'):
        body = b'{"features":[],"offset":null,"record":null,"history":' + history.encode() + b',"dropped":2}'
        decoder = Decoder()
        decoder.feed(control(FrameType.READY, body))
        assert decoder.next_event() == Ready(None, None)
