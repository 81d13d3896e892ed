"""The tcppipe wire protocol, sans I/O: bytes in, events out.

Rule 1: no I/O in this file, no asyncio, no sockets. The adapters in
``client.py`` and ``server.py`` read, feed, act and write.

Rule 2: every frame is ``type:u8 flags:u8 length:u32 crc32:u32`` followed by
``length`` payload bytes, big-endian. The CRC covers the payload, so a frame
damaged on the way is caught before a byte of it reaches a destination.

Rule 3: control frames (everything but DATA) carry one JSON object; unknown
keys are ignored, so later versions can add fields without a new frame
layout. ``flags`` is the payload encoding of a DATA frame (``DATA_ZSTD``) and
must be 0 unless HELLO offered and READY accepted that encoding.

Rule 4: the conversation is
    client HELLO(features) -> server READY(accepted features) | REFUSE
    client GENERATION, DATA*, (GENERATION, DATA*)*  ... with PING when idle,
           PROGRESS now and then (if accepted: how far the origin is ahead)
    server ACK*  (ACK answers every GENERATION, and is the server's heartbeat)
A HELLO with purpose "verify" carries no pipe: READY names what the
destination holds (the current generation, and in ``history`` the earlier
generations still in the destination file), then each VERIFY (a byte range of
one of them, cut into parts) is answered by one DIGEST (a sha256 per part),
until the client closes.
Each side sends something at least every ``heartbeat_s`` (named in HELLO) and
treats ``DEAD_AFTER_HEARTBEATS`` silent intervals as a dead peer.
A GENERATION frame says "the DATA that follows starts at byte ``start`` of the
origin generation ``ident``"; the server derives its exactly-once record from
it, so resuming, ``-n`` and rotation are all the same operation.

Errors: ``ProtocolError`` is the peer's fault (bad bytes, wrong order).
``ValueError`` from ``encode`` is ours.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Final

try:
    # ISA-L's crc32 is zlib's checksum (the same values) at ~40 GB/s instead of ~2-3 GB/s:
    # with zlib's, the check of Rule 2 was a third of each side's CPU in a catch-up.
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib's gives the same values
    from zlib import crc32

PROTOCOL_VERSION: Final = 1

HEADER: Final = struct.Struct("!BBII")
HEADER_BYTES: Final = HEADER.size
# A DATA frame carries one read() of the origin; 1 MiB amortises the per-frame
# Python work while keeping one frame's buffering small.
MAX_DATA_BYTES: Final = 1024 * 1024
# Control frames are small JSON objects; the limit stops a peer from making us
# buffer megabytes before the handshake has proven anything.
MAX_CONTROL_BYTES: Final = 64 * 1024
MAX_PATH_BYTES: Final = 4096
MAX_REASON_CHARS: Final = 1000
# The decoder's buffer grows to what the frames need and is dropped when idle
# above this size.
IDLE_BUFFER_BYTES: Final = 64 * 1024
# The fingerprint covers up to this many leading bytes of an origin generation.
FINGERPRINT_BYTES: Final = 4096
# Silence longer than DEAD_AFTER_HEARTBEATS heartbeats means the peer is gone
# (a pulled cable): 3 x 15 s keeps detection under a minute.
DEFAULT_HEARTBEAT_S: Final = 15.0
MIN_HEARTBEAT_S: Final = 0.05
MAX_HEARTBEAT_S: Final = 3600.0
DEAD_AFTER_HEARTBEATS: Final = 3


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


class FrameType(enum.IntEnum):
    HELLO = 1
    READY = 2
    REFUSE = 3
    GENERATION = 4
    DATA = 5
    ACK = 6
    PING = 7
    PROGRESS = 8
    VERIFY = 9
    DIGEST = 10


# DATA frame flags: the payload encoding.
DATA_ZSTD: Final = 0x01
# Features a HELLO may offer and a READY accept.
FEATURE_ZSTD: Final = "zstd"
FEATURE_PROGRESS: Final = "progress"
PURPOSE_PIPE: Final = "pipe"
PURPOSE_VERIFY: Final = "verify"
# One VERIFY asks for at most this many digests (a DIGEST frame stays small).
MAX_VERIFY_PARTS: Final = 256
# A verifying READY lists at most this many earlier generations (about 190 bytes each).
MAX_HISTORY_SPANS: Final = 128


@dataclass(frozen=True, slots=True)
class GenerationId:
    """Identity of one origin generation: its inode plus a digest of its head.

    ``fp_len`` leading bytes hash to ``fp_sha256``; a file that reuses the inode
    but starts differently is a different generation.
    """

    dev: int
    ino: int
    fp_len: int
    fp_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "fp_len": self.fp_len, "fp_sha256": self.fp_sha256}

    def heads(self, head: bytes) -> bool:
        """Does a file whose first bytes are ``head`` start as this generation did?"""
        return len(head) >= self.fp_len and hashlib.sha256(head[: self.fp_len]).hexdigest() == self.fp_sha256

    @classmethod
    def from_json(cls, value: object) -> GenerationId:
        if not isinstance(value, dict):
            raise ProtocolError("generation is not an object")
        dev = _int_field(value, "dev")
        ino = _int_field(value, "ino")
        fp_len = _int_field(value, "fp_len")
        fp = value.get("fp_sha256")
        if not isinstance(fp, str) or len(fp) != 64 or not _is_hex(fp):
            raise ProtocolError("generation fp_sha256 is not a sha256 hex digest")
        if fp_len > FINGERPRINT_BYTES:
            raise ProtocolError("generation fp_len too large")
        return cls(dev, ino, fp_len, fp)


@dataclass(frozen=True, slots=True)
class Hello:
    """Client: which origin file this connection carries, and how often each side must speak."""

    path: str
    features: tuple[str, ...] = ()
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    purpose: str = PURPOSE_PIPE
    # tcppipe -n: the whole file again from byte 0, even the generation the destination holds.
    restart: bool = False


@dataclass(frozen=True, slots=True)
class HeldSpan:
    """Bytes [``first``, ``end``) of origin generation ``record`` (inode generation
    ``igen`` if the client named one), held by a destination file."""

    record: GenerationId
    first: int
    end: int
    igen: int | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """Server: the pipe is open; ``record`` is the generation the destination
    holds and ``offset`` how many of its bytes have landed (both None when the
    server has no record for this pipe). ``features`` are those of the HELLO
    the server accepted; ``first`` is the first byte of the generation the
    destination file still holds (its earlier bytes were rotated away), sent
    to a verifying client, with ``history``, the earlier generations the file
    holds (oldest first), and ``dropped``, how many older ones it no longer lists."""

    record: GenerationId | None
    offset: int | None
    features: tuple[str, ...] = ()
    first: int | None = None
    history: tuple[HeldSpan, ...] = ()
    dropped: int = 0
    # The inode generation number the client named with the recorded generation (None: not
    # known): a later file that reused the inode number is then not taken for it.
    igen: int | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """Server: no pipe for you, and why. ``retry`` marks a passing trouble of a
    defined pipe (its destination cannot be opened now), not a missing pipe."""

    reason: str
    retry: bool = False


@dataclass(frozen=True, slots=True)
class Generation:
    """Client: the DATA that follows starts at byte ``start`` of ``ident``; ``igen``
    is its inode's generation number where the file system has one (it tells the
    file from a later one reusing the inode, for verify)."""

    ident: GenerationId
    start: int
    igen: int | None = None


@dataclass(frozen=True, slots=True)
class Data:
    """Client: the next bytes of the current generation, encoded as ``flags`` says."""

    payload: bytes | memoryview
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    """Server: ``generations`` GENERATION frames of this connection were
    processed, and ``offset`` bytes of the latest have landed."""

    generations: int
    offset: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Client: still here (sent when there is nothing else to say)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Client: the generation being sent ends at byte ``end`` of the origin now,
    and ``queued`` newer generations wait behind it (for status and metrics)."""

    end: int
    queued: int


@dataclass(frozen=True, slots=True)
class Verify:
    """Verifying client: the sha256 of each of ``parts`` parts of bytes
    [``start``, ``end``) of the held generation, please (see ``split_range``);
    of READY's ``history[span]`` instead when ``span`` is given."""

    start: int
    end: int
    parts: int
    span: int | None = None


@dataclass(frozen=True, slots=True)
class Digest:
    """Server: the sha256 hex digests answering one VERIFY, in order."""

    digests: tuple[str, ...]


Event = Hello | Ready | Refuse | Generation | Data | Ack | Ping | Progress | Verify | Digest


def split_range(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) cut into ``parts`` consecutive ranges as equal as can be
    (fewer if the range is shorter); both sides of VERIFY cut the same way."""
    length = end - start
    parts = max(1, min(parts, length))
    return [(start + length * i // parts, start + length * (i + 1) // parts) for i in range(parts)]


class NeedData(enum.Enum):
    NEED_DATA = enum.auto()


NEED_DATA: Final = NeedData.NEED_DATA


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _int_field(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**64:
        raise ProtocolError(f"field {key!r} is not a non-negative integer")
    return value


def _str_field(obj: dict[str, Any], key: str, limit: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"field {key!r} is not a string of at most {limit} characters")
    return value


def _frame(kind: FrameType, payload: bytes) -> bytes:
    return HEADER.pack(kind, 0, len(payload), crc32(payload)) + payload


def _control(kind: FrameType, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    if len(payload) > MAX_CONTROL_BYTES:
        raise ValueError(f"{kind.name} frame of {len(payload)} bytes is over the limit")
    return _frame(kind, payload)


def data_header(payload: bytes | memoryview, flags: int = 0) -> bytes:
    """The header of a DATA frame, so the adapter can send the payload without copying it."""
    if len(payload) > MAX_DATA_BYTES:
        raise ValueError(f"DATA payload of {len(payload)} bytes is over the limit")
    return HEADER.pack(FrameType.DATA, flags, len(payload), crc32(payload))


def encode(event: Event) -> bytes:
    """The wire bytes of one event."""
    match event:
        case Hello(path, features, heartbeat_s, purpose, restart):
            hello: dict[str, Any] = {
                "version": PROTOCOL_VERSION,
                "path": path,
                "features": list(features),
                "heartbeat_s": heartbeat_s,
                "purpose": purpose,
            }
            if restart:
                hello["restart"] = True
            return _control(FrameType.HELLO, hello)
        case Ready(record, offset, features, first, history, dropped, igen):
            body: dict[str, Any] = {"offset": offset, "features": list(features), "first": first}
            body["record"] = None if record is None else record.to_json()
            if igen is not None and record is not None:
                body["igen"] = igen
            if history or dropped:
                if len(history) > MAX_HISTORY_SPANS:
                    raise ValueError(f"READY lists {len(history)} earlier generations")
                body["history"] = [_held_json(h) for h in history]
                body["dropped"] = dropped
            return _control(FrameType.READY, body)
        case Refuse(reason, retry):
            return _control(FrameType.REFUSE, {"reason": reason[:MAX_REASON_CHARS], "retry": retry})
        case Generation(ident, start, igen):
            body = {"ident": ident.to_json(), "start": start}
            if igen is not None:
                body["igen"] = igen
            return _control(FrameType.GENERATION, body)
        case Data(payload, flags):
            return data_header(payload, flags) + payload
        case Ack(generations, offset):
            return _control(FrameType.ACK, {"generations": generations, "offset": offset})
        case Ping():
            return _control(FrameType.PING, {})
        case Progress(end, queued):
            return _control(FrameType.PROGRESS, {"end": end, "queued": queued})
        case Verify(start, end, parts, span):
            if not 0 <= start <= end or not 1 <= parts <= MAX_VERIFY_PARTS:
                raise ValueError(f"bad VERIFY range {start}..{end} in {parts} parts")
            request: dict[str, Any] = {"start": start, "end": end, "parts": parts}
            if span is not None:
                request["span"] = span
            return _control(FrameType.VERIFY, request)
        case Digest(digests):
            return _control(FrameType.DIGEST, {"digests": list(digests)})
    raise ValueError(f"not an event: {event!r}")


def _features(body: dict[str, Any]) -> tuple[str, ...]:
    features = body.get("features", [])
    if not isinstance(features, list) or len(features) > 64 or not all(isinstance(f, str) for f in features):
        raise ProtocolError("field 'features' is not a list of strings")
    return tuple(features)


def _held_json(held: HeldSpan) -> dict[str, Any]:
    body: dict[str, Any] = {"record": held.record.to_json(), "first": held.first, "end": held.end}
    if held.igen is not None:
        body["igen"] = held.igen
    return body


def _history(body: dict[str, Any]) -> tuple[tuple[HeldSpan, ...], int]:
    """READY's earlier generations; a list that is not one is no list (only verify
    reads it, and a pipe must not stall on it)."""
    raw = body.get("history", [])
    if not isinstance(raw, list) or len(raw) > MAX_HISTORY_SPANS:
        return (), 0
    spans = []
    try:
        for item in raw:
            if not isinstance(item, dict):
                return (), 0
            record = GenerationId.from_json(item.get("record"))
            igen = None if item.get("igen") is None else _int_field(item, "igen")
            span = HeldSpan(record, _int_field(item, "first"), _int_field(item, "end"), igen)
            if span.first >= span.end:
                return (), 0
            spans.append(span)
        dropped = _int_field(body, "dropped") if "dropped" in body else 0
    except ProtocolError:
        return (), 0
    return tuple(spans), dropped


def _decode_control(kind: FrameType, payload: bytes) -> Event:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{kind.name} frame is not JSON") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind.name} frame is not a JSON object")
    if kind is FrameType.HELLO:
        if body.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol version {body.get('version')!r}")
        path = _str_field(body, "path", MAX_PATH_BYTES)
        features = _features(body)
        purpose = body.get("purpose", PURPOSE_PIPE)
        if purpose not in (PURPOSE_PIPE, PURPOSE_VERIFY):
            raise ProtocolError(f"unknown purpose {purpose!r}")
        heartbeat = body.get("heartbeat_s", DEFAULT_HEARTBEAT_S)
        if (
            not isinstance(heartbeat, int | float)
            or isinstance(heartbeat, bool)
            or not MIN_HEARTBEAT_S <= heartbeat <= MAX_HEARTBEAT_S
        ):
            raise ProtocolError(f"heartbeat_s must be between {MIN_HEARTBEAT_S} and {MAX_HEARTBEAT_S} seconds")
        return Hello(path, features, float(heartbeat), purpose, body.get("restart") is True)
    if kind is FrameType.READY:
        try:
            raw = body.get("record")
            record = None if raw is None else GenerationId.from_json(raw)
            offset = None if body.get("offset") is None else _int_field(body, "offset")
            first = None if body.get("first") is None else _int_field(body, "first")
        except ProtocolError:
            # A record we cannot read (an absurd offset) is no record: the pipe goes on from
            # the client's own status file instead of reconnecting for ever on it.
            record, offset, first = None, None, None
        if (record is None) != (offset is None):
            record, offset = None, None
        raw_igen = body.get("igen")
        igen = raw_igen if isinstance(raw_igen, int) and not isinstance(raw_igen, bool) and record is not None else None
        history, dropped = _history(body)
        return Ready(record, offset, _features(body), first, history, dropped, igen)
    if kind is FrameType.REFUSE:
        return Refuse(_str_field(body, "reason", MAX_CONTROL_BYTES), body.get("retry") is True)
    if kind is FrameType.GENERATION:
        igen = None if body.get("igen") is None else _int_field(body, "igen")
        return Generation(GenerationId.from_json(body.get("ident")), _int_field(body, "start"), igen)
    if kind is FrameType.ACK:
        return Ack(_int_field(body, "generations"), _int_field(body, "offset"))
    if kind is FrameType.PING:
        return Ping()
    if kind is FrameType.PROGRESS:
        return Progress(_int_field(body, "end"), _int_field(body, "queued"))
    if kind is FrameType.VERIFY:
        start, end, parts = _int_field(body, "start"), _int_field(body, "end"), _int_field(body, "parts")
        if start > end or not 1 <= parts <= MAX_VERIFY_PARTS:
            raise ProtocolError(f"bad VERIFY range {start}..{end} in {parts} parts")
        span = None if body.get("span") is None else _int_field(body, "span")
        if span is not None and span >= MAX_HISTORY_SPANS:
            raise ProtocolError(f"VERIFY of earlier generation {span}: at most {MAX_HISTORY_SPANS} are listed")
        return Verify(start, end, parts, span)
    if kind is FrameType.DIGEST:
        digests = body.get("digests")
        if (
            not isinstance(digests, list)
            or len(digests) > MAX_VERIFY_PARTS
            or not all(isinstance(d, str) and len(d) == 64 and _is_hex(d) for d in digests)
        ):
            raise ProtocolError("field 'digests' is not a list of sha256 hex digests")
        return Digest(tuple(digests))
    raise ProtocolError(f"unexpected frame type {kind.name}")  # pragma: no cover


class Decoder:
    """Turns a byte stream into events; ``feed(b"")`` marks the end of the stream.

    Bytes come in with ``feed(data)``, or without a copy through
    ``get_buffer(n)`` + ``buffer_updated(nbytes)`` (the shape of asyncio's
    BufferedProtocol). With ``copy_payloads=False`` a DATA payload is a
    memoryview into the buffer, valid only until the next ``feed`` or
    ``get_buffer``: the caller must use it at once (the server writes it).
    """

    def __init__(self, copy_payloads: bool = True) -> None:
        # Allocated on demand: a thousand idle connections must cost kilobytes, not gigabytes.
        self._buffer = bytearray()
        self._start = 0
        self._end = 0
        self._closed = False
        self._copy = copy_payloads
        # DATA flags the peer may use: set once the handshake agreed on an encoding.
        self.data_flags = 0
        # What the peer may send now (None: any type) and how large a control frame
        # may be. ``session.py`` narrows both per state: before READY a server takes
        # only a small HELLO, so a stranger cannot make it buffer a DATA frame.
        self.allowed: frozenset[FrameType] | None = None
        self.control_limit = MAX_CONTROL_BYTES

    def feed(self, data: bytes) -> None:
        """Add received bytes; an empty ``data`` means the peer closed."""
        if self._closed:
            raise ProtocolError("data after end of stream")
        if not data:
            self._closed = True
            return
        self.get_buffer(len(data))[: len(data)] = data
        self.buffer_updated(len(data))

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space at the end of the buffer: at least ``sizehint`` bytes, and room
        for the rest of a frame already begun."""
        if self._closed:
            raise ProtocolError("data after end of stream")
        want = max(sizehint, self._rest_of_frame(), 1)
        if len(self._buffer) - self._end < want:
            pending = self._end - self._start
            if len(self._buffer) - pending >= want:
                # Same-size move: allowed even while a payload view is still exported.
                self._buffer[0:pending] = self._buffer[self._start : self._end]
            else:
                # A new, larger buffer; views into the old one stay valid.
                grown = bytearray(max(2 * len(self._buffer), pending + want))
                grown[0:pending] = self._buffer[self._start : self._end]
                self._buffer = grown
            self._start, self._end = 0, pending
        return memoryview(self._buffer)[self._end :]

    def _rest_of_frame(self) -> int:
        """Room still needed for the frame begun, if its header is one we would take."""
        available = self._end - self._start
        if available < HEADER_BYTES:
            return 0
        kind, _flags, length, _crc = HEADER.unpack_from(self._buffer, self._start)
        limit = self._limit(kind)
        if limit is None or length > limit:
            return 0  # next_event refuses it; never grow the buffer for it
        rest: int = length + HEADER_BYTES - available
        return max(0, rest)

    def _limit(self, kind_value: int) -> int | None:
        """The largest payload of a frame of this type allowed now, or None if the type is not."""
        if self.allowed is not None and kind_value not in self.allowed:
            return None
        if kind_value == FrameType.DATA:
            return MAX_DATA_BYTES
        return self.control_limit

    def release_idle_buffer(self) -> None:
        """Drop a large buffer while nothing is pending (an idle pipe keeps no megabytes)."""
        if self._start == self._end and len(self._buffer) > IDLE_BUFFER_BYTES:
            self._buffer = bytearray()
            self._start = self._end = 0

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``get_buffer``."""
        self._end += nbytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return self._end - self._start

    def next_event(self) -> Event | NeedData | None:
        """The next complete event, NEED_DATA, or None at a clean end of stream."""
        start, available = self._start, self._end - self._start
        if available < HEADER_BYTES:
            return self._end_or_need(available)
        kind_value, flags, length, crc = HEADER.unpack_from(self._buffer, start)
        try:
            kind = FrameType(kind_value)
        except ValueError:
            raise ProtocolError(f"unknown frame type {kind_value}") from None
        limit = self._limit(kind)
        if limit is None:
            raise ProtocolError(f"unexpected {kind.name} frame now")
        if flags & ~(self.data_flags if kind is FrameType.DATA else 0):
            raise ProtocolError(f"unsupported {kind.name} frame flags {flags:#x}")
        # Checked before buffering the payload: an oversized length is refused at once.
        if length > limit:
            raise ProtocolError(f"{kind.name} frame of {length} bytes is over the limit of {limit}")
        if available < HEADER_BYTES + length:
            return self._end_or_need(available)
        payload = memoryview(self._buffer)[start + HEADER_BYTES : start + HEADER_BYTES + length]
        self._start += HEADER_BYTES + length
        if self._start == self._end:
            self._start = self._end = 0
        if crc32(payload) != crc:
            raise ProtocolError(f"{kind.name} frame checksum mismatch")
        if kind is FrameType.DATA:
            return Data(bytes(payload) if self._copy else payload, flags)
        return _decode_control(kind, bytes(payload))

    def _end_or_need(self, available: int) -> NeedData | None:
        if not self._closed:
            return NEED_DATA
        if available:
            raise ProtocolError("peer closed mid-frame")
        return None

    def events(self) -> list[Event]:
        """All complete events buffered now (convenience for tests)."""
        out: list[Event] = []
        while True:
            event = self.next_event()
            if isinstance(event, NeedData) or event is None:
                return out
            out.append(event)
