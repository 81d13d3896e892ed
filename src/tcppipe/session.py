"""The tcppipe conversation, sans I/O: one state machine for each end.

Rule 1: everything that decides what may be said when lives in this file:
HELLO before READY, GENERATION before DATA, which GENERATION an ACK's count
refers to, which features were agreed, when a heartbeat is due and when the
peer counts as dead (which GENERATION a destination may admit is
``ledger.py``'s, re-exported here as ``admit_generation``). The
adapters (``client.py``, ``server.py``) and the simulation only move bytes,
time and file descriptors. No I/O here; time is passed in.

Rule 2: bytes in (``receive(data, now)``, ``b""`` for the end of the stream),
events out (``next_event()``); every ``send_*`` returns the bytes to write.
An event the peer may not send in the current state raises
``ProtocolError`` (the peer's fault); a send out of turn raises
``LocalProtocolError`` (a bug of ours).

Rule 3 (strangers get little): until the server has answered READY it takes
one frame type, HELLO, of at most ``MAX_HELLO_BYTES``, and both are checked
from the frame header before its payload is buffered. After READY the frame
types narrow to what the purpose needs.

The states::

    client  HANDSHAKE --READY--> STREAMING | VERIFYING
            HANDSHAKE / STREAMING --REFUSE or end of stream--> CLOSED
    server  AWAITING_HELLO --HELLO--> AUTHORIZING
            AUTHORIZING --ready()--> STREAMING | VERIFYING, --refuse()--> CLOSED
            any --end of stream--> CLOSED

Rule 4 (the ACK count): the server counts the GENERATION frames of this
connection; ``ACK(n, offset)`` says that ``offset`` bytes of the n-th have
landed. The client session remembers what each GENERATION stood for (an
opaque token: the client's open generation) and turns the ACK back into it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from tcppipe.ledger import admit_generation as admit_generation  # the rule is the ledger's (ledger.py)
from tcppipe.protocol import (
    DATA_ZSTD,
    DEAD_AFTER_HEARTBEATS,
    FEATURE_ZSTD,
    PURPOSE_VERIFY,
    Ack,
    Data,
    Decoder,
    Digest,
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
    data_header,
    encode,
)

# A HELLO holds a path of at most 4096 characters and a few short fields; 16 KiB
# leaves room for JSON escapes while a stranger's connection costs little.
MAX_HELLO_BYTES: Final = 16 * 1024
# After READY control frames are small too (ACK, PROGRESS, VERIFY, DIGEST).
MAX_SESSION_CONTROL_BYTES: Final = 64 * 1024

T = TypeVar("T")


class LocalProtocolError(Exception):
    """We tried to say something the conversation does not allow now (a bug)."""


class ClientState(enum.Enum):
    HANDSHAKE = enum.auto()
    STREAMING = enum.auto()
    VERIFYING = enum.auto()
    CLOSED = enum.auto()


class ServerState(enum.Enum):
    AWAITING_HELLO = enum.auto()
    AUTHORIZING = enum.auto()
    STREAMING = enum.auto()
    VERIFYING = enum.auto()
    CLOSED = enum.auto()


@dataclass(frozen=True, slots=True)
class Acked(Generic[T]):
    """Client: ``offset`` bytes of the generation ``token`` stood for have landed."""

    token: T
    offset: int


def _frames(*kinds: FrameType) -> frozenset[FrameType]:
    return frozenset(kinds)


CLIENT_EXPECTS: Final = {
    ClientState.HANDSHAKE: _frames(FrameType.READY, FrameType.REFUSE),
    ClientState.STREAMING: _frames(FrameType.ACK, FrameType.REFUSE),
    ClientState.VERIFYING: _frames(FrameType.DIGEST),
    ClientState.CLOSED: _frames(),
}
SERVER_EXPECTS: Final = {
    ServerState.AWAITING_HELLO: _frames(FrameType.HELLO),
    ServerState.AUTHORIZING: _frames(),
    ServerState.STREAMING: _frames(FrameType.GENERATION, FrameType.DATA, FrameType.PROGRESS, FrameType.PING),
    ServerState.VERIFYING: _frames(FrameType.VERIFY),
    ServerState.CLOSED: _frames(),
}


# Heartbeats fall on a grid of HEARTBEAT_GRID_STEPS per interval, at most MAX_HEARTBEAT_GRID_S
# apart (``_Heartbeat.due_in``): a word is late by less than one step, far from a dead peer's
# DEAD_AFTER_HEARTBEATS intervals.
HEARTBEAT_GRID_STEPS: Final = 16
MAX_HEARTBEAT_GRID_S: Final = 1.0


class _Heartbeat:
    """When this end must speak next, and when the peer's silence means it is gone."""

    def __init__(self, heartbeat_s: float, now: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.heard_at = now
        self.sent_at = now

    def heard(self, now: float) -> None:
        self.heard_at = now

    def sent(self, now: float) -> None:
        self.sent_at = now

    def peer_dead(self, now: float) -> bool:
        return now - self.heard_at > self.heartbeat_s * DEAD_AFTER_HEARTBEATS

    def silence(self, now: float) -> float:
        return now - self.heard_at

    def due_in(self, now: float) -> float:
        """Seconds until this end must say something (0 if it is due): a heartbeat after its
        last word, put off to the next instant of a grid on the clock every process shares
        (a sixteenth of the interval, at most a second). A host agent's 2,000 idle pipes then
        speak in a burst a second, a wake-up of each end for all of them, not one per pipe."""
        grid = min(self.heartbeat_s / HEARTBEAT_GRID_STEPS, MAX_HEARTBEAT_GRID_S)
        at = math.ceil((self.sent_at + self.heartbeat_s) / grid) * grid
        return max(0.0, at - now)


class ClientSession(Generic[T]):
    """The client's half: HELLO, then READY or REFUSE, then GENERATION/DATA out and ACKs in."""

    def __init__(self, hello: Hello, now: float) -> None:
        self.hello = hello
        self.state = ClientState.HANDSHAKE
        self.features: tuple[str, ...] = ()
        self.ready: Ready | None = None
        self._decoder = Decoder()
        self._heartbeat = _Heartbeat(hello.heartbeat_s, now)
        self._announced: list[T] = []
        self._acked: tuple[int, int] = (0, 0)
        self._verify_pending = False
        self._narrow()

    def _narrow(self) -> None:
        self._decoder.allowed = CLIENT_EXPECTS[self.state]

    # -- bytes in, events out ------------------------------------------------

    def start(self, now: float) -> bytes:
        """The HELLO that opens the conversation."""
        self._heartbeat.sent(now)
        return encode(self.hello)

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the server; ``b""`` when it closed."""
        if data:
            self._heartbeat.heard(now)
        self._decoder.feed(data)

    def next_event(self) -> Ready | Refuse | Acked[T] | Digest | NeedData | None:
        """The next event from the server, NEED_DATA, or None at the end of the stream."""
        while True:
            event = self._decoder.next_event()
            if event is None:
                self.state = ClientState.CLOSED
                return None
            if isinstance(event, NeedData):
                return event
            if isinstance(event, Ready):
                return self._on_ready(event)
            if isinstance(event, Refuse):
                self.state = ClientState.CLOSED
                self._narrow()
                return event
            if isinstance(event, Ack):
                acked = self._on_ack(event)
                if acked is not None:
                    return acked
                continue
            if isinstance(event, Digest):
                if not self._verify_pending:
                    raise ProtocolError("DIGEST without a VERIFY")
                self._verify_pending = False
                return event
            raise ProtocolError(f"unexpected {type(event).__name__} from the server")  # pragma: no cover

    def _on_ready(self, ready: Ready) -> Ready:
        unknown = set(ready.features) - set(self.hello.features)
        if unknown:
            raise ProtocolError(f"READY accepts features never offered: {', '.join(sorted(unknown))}")
        self.ready, self.features = ready, ready.features
        verifying = self.hello.purpose == PURPOSE_VERIFY
        self.state = ClientState.VERIFYING if verifying else ClientState.STREAMING
        self._narrow()
        return ready

    def _on_ack(self, ack: Ack) -> Acked[T] | None:
        count, offset = ack.generations, ack.offset
        if count > len(self._announced):
            raise ProtocolError(f"ACK of generation {count}, only {len(self._announced)} announced")
        last_count, last_offset = self._acked
        if count < last_count or (count == last_count and offset < last_offset and count > 0):
            raise ProtocolError(f"ACK went backwards ({count}/{offset} after {last_count}/{last_offset})")
        self._acked = (count, offset)
        if count == 0:
            return None  # a heartbeat before any GENERATION: it proves the server is alive
        return Acked(self._announced[count - 1], offset)

    # -- what we say ---------------------------------------------------------

    def _require(self, *states: ClientState) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"cannot send in state {self.state.name}")

    def send_generation(self, token: T, ident: GenerationId, start: int, now: float, igen: int | None = None) -> bytes:
        """GENERATION: the DATA that follows starts at byte ``start`` of ``ident`` (``igen``: its inode generation)."""
        self._require(ClientState.STREAMING)
        self._announced.append(token)
        self._heartbeat.sent(now)
        return encode(Generation(ident, start, igen))

    @property
    def announced(self) -> T | None:
        """What the latest GENERATION stood for, if any was sent."""
        return self._announced[-1] if self._announced else None

    def data_header(self, payload: bytes | memoryview, flags: int, now: float) -> bytes:
        """The header of a DATA frame carrying ``payload`` (sent right after it)."""
        self._require(ClientState.STREAMING)
        if not self._announced:
            raise LocalProtocolError("DATA before GENERATION")
        if flags and FEATURE_ZSTD not in self.features:
            raise LocalProtocolError("compressed DATA without the feature agreed")
        self._heartbeat.sent(now)
        return data_header(payload, flags)

    def send_progress(self, end: int, queued: int, now: float) -> bytes:
        self._require(ClientState.STREAMING)
        self._heartbeat.sent(now)
        return encode(Progress(end, queued))

    def send_ping(self, now: float) -> bytes:
        self._require(ClientState.STREAMING)
        self._heartbeat.sent(now)
        return encode(Ping())

    def send_verify(self, request: Verify, now: float) -> bytes:
        self._require(ClientState.VERIFYING)
        if self._verify_pending:
            raise LocalProtocolError("a VERIFY is already waiting for its DIGEST")
        self._verify_pending = True
        self._heartbeat.sent(now)
        return encode(request)

    # -- time ------------------------------------------------------------------

    def ping_due_in(self, now: float) -> float:
        return self._heartbeat.due_in(now)

    def peer_dead(self, now: float) -> bool:
        return self._heartbeat.peer_dead(now)

    def silence(self, now: float) -> float:
        return self._heartbeat.silence(now)


class ServerSession:
    """The server's half: a HELLO, our answer, then GENERATION/DATA in and ACKs out."""

    def __init__(self, now: float, features: tuple[str, ...], heartbeat_s: float) -> None:
        self.state = ServerState.AWAITING_HELLO
        self.hello: Hello | None = None
        self.server_features = features
        self.features: tuple[str, ...] = ()
        self.decoder = Decoder(copy_payloads=False)
        self.decoder.control_limit = MAX_HELLO_BYTES
        self._heartbeat = _Heartbeat(heartbeat_s, now)
        self.generations = 0
        self._acked: tuple[int, int] | None = None
        # The client's goodbye (end of stream while streaming) is answered by one
        # last ACK of exactly what landed, although the conversation is over.
        self._goodbye = False
        self._narrow()

    def _narrow(self) -> None:
        self.decoder.allowed = SERVER_EXPECTS[self.state]

    # -- bytes in, events out ------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        if data:
            self._heartbeat.heard(now)
        self.decoder.feed(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Room to receive into without a copy (asyncio's BufferedProtocol)."""
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        if nbytes:
            self._heartbeat.heard(now)
        self.decoder.buffer_updated(nbytes)

    def next_event(self) -> Hello | Generation | Data | Progress | Verify | NeedData | None:
        """The next event from the client, NEED_DATA, or None at a clean end of stream."""
        while True:
            event = self.decoder.next_event()
            if event is None:
                self._goodbye = self.state is ServerState.STREAMING
                self.state = ServerState.CLOSED
                self._narrow()
                return None
            if isinstance(event, NeedData):
                return event
            if isinstance(event, Hello):
                self.hello = event
                self._heartbeat.heartbeat_s = event.heartbeat_s
                self.state = ServerState.AUTHORIZING
                self._narrow()
                return event
            if isinstance(event, Generation):
                self.generations += 1
                return event
            if isinstance(event, Data):
                if self.generations == 0:
                    raise ProtocolError("DATA before GENERATION")
                return event
            if isinstance(event, Ping):
                continue  # it only proves the client is alive
            if isinstance(event, Progress | Verify):
                return event
            raise ProtocolError(f"unexpected {type(event).__name__} from the client")  # pragma: no cover

    # -- what we say ---------------------------------------------------------

    def ready(
        self,
        record: GenerationId | None,
        offset: int | None,
        now: float,
        first: int | None = None,
        history: tuple[HeldSpan, ...] = (),
        dropped: int = 0,
        igen: int | None = None,
    ) -> bytes:
        """READY, accepting the offered features this server has (``first``, ``history``
        and ``dropped`` tell a verifying client what the destination file holds; ``igen``
        is the recorded generation's inode generation, as its GENERATION named it)."""
        if self.state is not ServerState.AUTHORIZING or self.hello is None:
            raise LocalProtocolError(f"READY in state {self.state.name}")
        verifying = self.hello.purpose == PURPOSE_VERIFY
        self.features = () if verifying else tuple(f for f in self.hello.features if f in self.server_features)
        if FEATURE_ZSTD in self.features:
            self.decoder.data_flags = DATA_ZSTD
        self.decoder.control_limit = MAX_SESSION_CONTROL_BYTES
        self.state = ServerState.VERIFYING if verifying else ServerState.STREAMING
        self._narrow()
        self._heartbeat.sent(now)
        return encode(Ready(record, offset, self.features, first, history, dropped, igen))

    def refuse(self, reason: str, retry: bool, now: float) -> bytes:
        """REFUSE, at the handshake or to end a pipe; the conversation is over."""
        self.state = ServerState.CLOSED
        self._goodbye = False
        self._narrow()
        self._heartbeat.sent(now)
        return encode(Refuse(reason, retry))

    def ack(self, landed: int, now: float, heartbeat: bool = False) -> bytes:
        """ACK of what has landed of the latest GENERATION, if it says something new
        (or a heartbeat is wanted); else no bytes. Also the goodbye's answer."""
        if self.state is not ServerState.STREAMING and not self._goodbye:
            return b""
        current = (self.generations, landed)
        if current == self._acked and not heartbeat:
            return b""
        self._acked = current
        self._heartbeat.sent(now)
        return encode(Ack(*current))

    def digest(self, digests: tuple[str, ...], now: float) -> bytes:
        if self.state is not ServerState.VERIFYING:
            raise LocalProtocolError(f"DIGEST in state {self.state.name}")
        self._heartbeat.sent(now)
        return encode(Digest(digests))

    # -- time ------------------------------------------------------------------

    def heartbeat_due_in(self, now: float) -> float:
        return self._heartbeat.due_in(now)

    def peer_dead(self, now: float) -> bool:
        return self._heartbeat.peer_dead(now)

    def silence(self, now: float) -> float:
        return self._heartbeat.silence(now)
