"""One pipe's client core, sans I/O: the file side, the conversation, what to send next.

Rule 1: no sockets, no asyncio; time is passed in. ``client.py`` (asyncio)
and the deterministic simulation drive the same object: they hand it the
bytes that arrive and write the frames it returns, and call ``follow`` on
every file event or tick, whatever the connection is doing.

Rule 2: ``tailer.py`` decides which bytes go next and where to resume;
``session.py`` decides what may be said when. This file joins the two: READY
positions the tailer, ACK retires generations, each chunk goes out behind a
GENERATION when it starts one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from tcppipe import draining
from tcppipe.checkpoint import StatusFile
from tcppipe.errors import ConnectionLost, Refused, RefusedForNow, escape
from tcppipe.origin import OriginGeneration
from tcppipe.protocol import (
    FEATURE_PROGRESS,
    FEATURE_ZSTD,
    MAX_DATA_BYTES,
    GenerationId,
    Hello,
    NeedData,
    Ready,
    Refuse,
)
from tcppipe.session import Acked, ClientSession, ClientState
from tcppipe.status import DRAINING, RECONNECTING, REFUSED, STREAMING
from tcppipe.tailer import History, Recorded, Resumed, Tailer

if TYPE_CHECKING:
    from tcppipe.compression import Compressor

# DATA payloads up to this size go out in one piece with their header (one segment).
COALESCE_BYTES: Final = 64 * 1024
# Bytes handed out per ``outgoing`` call: the caller drains and looks at the file side between calls.
BATCH_BYTES: Final = 4 * MAX_DATA_BYTES
PROGRESS_INTERVAL_S: Final = 1.0


class RetryLater(ConnectionLost):
    """The server cannot take a defined pipe now (its destination cannot be opened)."""


class PipeClient:
    """The client side of one pipe, driven by an adapter that moves bytes and time."""

    def __init__(
        self,
        path: str,
        grace_s: float,
        heartbeat_s: float,
        *,
        compress: bool = False,
        full: bool = False,
        history: History | None = None,
        drain_only: bool = False,
    ) -> None:
        """``drain_only``: hold only the generations ``history`` lists, never FILE, and end once
        they have landed (``draining.py``; a host agent's pipe whose FILE is gone or another's)."""
        self.path = path
        self.drain_only = drain_only
        self.tailer = Tailer(path, grace_s)
        self.heartbeat_s = heartbeat_s
        self.compress = compress
        self.full = full
        self.history = history or History()
        self.tailer.finished = list(self.history.finished)
        self.session: ClientSession[OriginGeneration] | None = None
        # Set at the first READY: from then on failures mean "reconnect", not "exit".
        self.established = False
        self.resumed: Resumed | None = None
        self.compressor: Compressor | None = None
        self.offline_state = RECONNECTING
        self.generations_sent: set[tuple[int, int]] = set()
        self.bytes_sent = 0
        self.wire_bytes = 0
        # What the last status file written showed (see ``save_status``).
        self._status_news: tuple[object, ...] | None = None
        self.sent_any = False
        self.more = False
        self._progress_sent: tuple[int, int] | None = None
        self._progress_at = float("-inf")
        # What an earlier run recorded and this one does not hold, but a restart still needs:
        # until the first READY all of the last run's list; then the recorded generation if it
        # was gone (the server's record still names it) until an ACK moves the record on.
        self.remembered: tuple[Recorded, ...] = ()
        # Everything held landed and the pipe ends (``end_drained``).
        self.ended = False
        # Drain-only: the listed generations found nowhere at the start.
        self.missing: tuple[Recorded, ...] = ()

    # -- the file side -----------------------------------------------------------

    def start(self, now: float, admit: Callable[[OriginGeneration], bool] | None = None) -> None:
        """Open FILE (OriginError if it cannot be read); drain-only, the listed generations
        still on disk that ``admit`` allows instead (maybe none)."""
        if self.drain_only:
            self.missing = tuple(draining.open_listed(self.tailer, self.history, admit, now))
        else:
            self.tailer.open(now)

    def end_drained(self) -> None:
        """Everything held has landed and the pipe ends: every generation is let go (a host
        agent's let-go claims) and its status file says so ("drained"): it owes nothing
        (``discovery.py`` Rule 6)."""
        draining.let_go_all(self.tailer)
        self.ended = True

    def follow(self, now: float, hup: bool = False) -> None:
        """The file side's work on every file event and tick; ``hup``: a SIGHUP came."""
        if hup:
            self.tailer.request_hup(now)
        else:
            self.tailer.follow(now)

    # -- the connection side -----------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self.session is not None and self.session.state is ClientState.STREAMING

    def connect(self, now: float) -> bytes:
        """A new connection: its HELLO. Whatever the last one sent counts for nothing now."""
        features = (FEATURE_PROGRESS, FEATURE_ZSTD) if self.compress else (FEATURE_PROGRESS,)
        restart = self.full and not self.established
        self.session = ClientSession(Hello(self.path, features, self.heartbeat_s, restart=restart), now)
        return self.session.start(now)

    def disconnect(self) -> None:
        self.session = None
        self.compressor = None

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the server (``b""``: it closed). Raises Refused (final), ConnectionLost
        (reconnect) or ProtocolError."""
        session = self.session
        if session is None:
            return
        session.receive(data, now)
        while True:
            event = session.next_event()
            if isinstance(event, NeedData):
                return
            if event is None:
                raise ConnectionLost("server closed the connection")
            if isinstance(event, Ready):
                self._on_ready(event, now)
            elif isinstance(event, Refuse):
                self._on_refuse(event)
            elif isinstance(event, Acked):
                self.tailer.acknowledged(event.token, event.offset)
                self.remembered = ()

    def _on_ready(self, ready: Ready, now: float) -> None:
        first = not self.established
        if self.drain_only:
            self.resumed = draining.resume_draining(
                self.tailer, self.history, ready.record, ready.offset, first, ready.igen
            )
        else:
            self.resumed = self.tailer.resume(
                ready.record, ready.offset, now, first, full=self.full and first, history=self.history, igen=ready.igen
            )
        self.compressor = None
        if self.session is not None and FEATURE_ZSTD in self.session.features:
            from tcppipe import compression  # zstandard loads only for -z

            self.compressor = compression.Compressor()
        self._progress_sent, self._progress_at = None, float("-inf")
        if first:
            gone = self.tailer.gone_record
            self.remembered = () if gone is None else (gone,)
        self.established = True

    def _on_refuse(self, refuse: Refuse) -> None:
        reason = escape(refuse.reason)  # the server's words, logged: one line, no control characters
        if refuse.retry and self.established:
            # A defined pipe whose destination cannot be opened right now: keep retrying.
            self.offline_state = REFUSED
            raise RetryLater(f"server cannot take the pipe now: {reason}")
        if self.streaming:
            raise Refused(f"server ended the pipe: {reason}")
        if refuse.retry:
            raise RefusedForNow(f"server refused the pipe for now: {reason}")
        raise Refused(f"server refused the pipe: {reason}")

    def outgoing(self, now: float, budget: int = BATCH_BYTES) -> list[bytes]:
        """The frames to write now: GENERATION and DATA while there is something to send,
        PROGRESS when the origin's shape changed, PING when silence is due to end."""
        return [bytes(frame) for frame in self.outgoing_into(now, None, budget)]  # all bytes already: no copy

    def outgoing_into(
        self, now: float, buffer: bytearray | None, budget: int = BATCH_BYTES
    ) -> list[bytes | memoryview]:
        """``outgoing``, reading into ``buffer`` (``budget`` long) when given: large payloads
        are then views of it, valid until it is read into again. A buffer reused costs no
        allocation and no page faults; a new 1 MiB bytes object a read faulted in every page."""
        session = self.session
        frames: list[bytes | memoryview] = []
        if session is None or session.state is not ClientState.STREAMING:
            return frames
        self.offline_state = RECONNECTING
        sent = 0
        into = None if buffer is None or self.compressor is not None else memoryview(buffer)
        while sent < budget:
            room = None if into is None or len(into) - sent < MAX_DATA_BYTES else into[sent:]
            chunk = self.tailer.next_chunk(now, MAX_DATA_BYTES, room)
            if chunk is None:
                break
            gen, data = chunk
            if session.announced is not gen:
                frames.append(session.send_generation(gen, gen.ident(), gen.position, now, gen.igen))
                self.generations_sent.add((gen.dev, gen.ino))
            payload, flags = (data, 0) if self.compressor is None else self.compressor.encode(bytes(data))
            header = session.data_header(payload, flags, now)
            if len(payload) <= COALESCE_BYTES:
                frames.append(header + payload)
            else:
                frames += (header, payload)
            self.tailer.advance(gen, len(data))
            self.bytes_sent += len(data)
            self.wire_bytes += len(payload)
            sent += len(data)
        if sent:
            self.sent_any = True
        # The budget ran out before the backlog did: the caller comes back at once.
        self.more = sent >= budget
        progress = self._progress(now)
        if progress is not None:
            frames.append(session.send_progress(*progress, now))
        if not frames and session.ping_due_in(now) <= 0:
            frames.append(session.send_ping(now))
        return frames

    def _progress(self, now: float) -> tuple[int, int] | None:
        """PROGRESS when the origin's end or the queue changed: a new queue at once, a new end
        at most once a second (a busy origin would otherwise add a frame per tick)."""
        if self.session is None or FEATURE_PROGRESS not in self.session.features or not self.tailer.gens:
            return None
        shape = (self.origin_end(), self.tailer.queued)
        last = self._progress_sent
        due = last is None or shape[1] != last[1] or now - self._progress_at >= PROGRESS_INTERVAL_S
        if shape == last or not due:
            return None
        self._progress_sent, self._progress_at = shape, now
        return shape

    def origin_end(self) -> int:
        if not self.tailer.gens:
            return 0
        gen = self.tailer.sending
        try:
            return gen.size()
        except OSError:
            return gen.position

    # -- time ----------------------------------------------------------------------

    def peer_dead(self, now: float) -> bool:
        return self.session is not None and self.session.peer_dead(now)

    def silence(self, now: float) -> float:
        return 0.0 if self.session is None else self.session.silence(now)

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until this pipe must act by itself (a grace ending, a PING due)."""
        # A drain-only pipe may hold nothing (everything had landed): it has no grace to wait for.
        times = [t for t in (self.tailer.next_wakeup(now) if self.tailer.gens else None,) if t is not None]
        if self.streaming and self.session is not None:
            times.append(self.session.ping_due_in(now))
        return min(times) if times else None

    # -- for the status file -------------------------------------------------------

    @property
    def state(self) -> str:
        if self.streaming:
            return DRAINING if self.tailer.gens and self.tailer.queued else STREAMING
        return self.offline_state

    def _kept(self) -> list[Recorded]:
        """The generations the status file lists ahead of those held (see ``remembered``)."""
        if self.established:
            return list(self.remembered)
        gens = [g for g in self.tailer.gens if not g.closed]
        return [r for r in self.history.held if not any(r.names(g) for g in gens)]

    def open_inodes(self) -> list[tuple[int, int]]:
        """The (dev, ino) of every generation held open, oldest first: what a host agent counts as
        this pipe's without a check. Those the status file lists and are not open (the last run's,
        until READY) are not among them: their inode may have been freed and its number reused by
        another pipe's file; the agent claims them from the status file, checked."""
        return [(g.dev, g.ino) for g in self.tailer.gens if not g.closed]

    def shape(self) -> list[tuple[int, int]]:
        """The (dev, ino) of every generation the status file lists, oldest first."""
        kept = [(r.ident.dev, r.ident.ino) for r in self._kept()]
        return kept + [(g.dev, g.ino) for g in self.tailer.gens if not g.closed]

    def snapshot(self) -> dict[str, Any] | None:
        """What the status file should say now (None if FILE is not open)."""
        if not self.tailer.gens:
            return self._ended_snapshot() if self.ended else None
        gen = self.tailer.sending
        # Where to stand if the server has no record: the oldest generation held (older ones
        # are closed only once a later one is acknowledged), at what was acknowledged of it.
        oldest = self.tailer.gens[0]
        try:
            held = [Recorded(g.ident(), g.size(), g.igen) for g in self.tailer.gens if not g.closed]
            position: tuple[GenerationId, int] = (oldest.ident(), oldest.acked)
        except OSError:
            return None
        listed = self._kept() + held
        if not self.established and self.history.position is not None:
            position = self.history.position  # until READY, where the last run stood
        return {
            "pid": os.getpid(),
            "file": self.path,
            "generation": position[0].to_json(),
            "offset": position[1],
            "sent": gen.position,
            "queue": [r.ident.to_json() for r in listed],
            "sizes": [r.size for r in listed],
            "igens": [r.igen for r in listed],
            "finished": [f.to_json() for f in self.tailer.finished],
            "rotated_into": list(self.tailer.rotated_into),  # a copy: the last snapshot is compared
            "state": self.state,
            "origin_end": self.origin_end(),
            "generations": len(self.generations_sent),
            "bytes_sent": self.bytes_sent,
            "wire_bytes": self.wire_bytes,
        }

    def _ended_snapshot(self) -> dict[str, Any]:
        """The status file of a pipe that ended with everything landed: it holds nothing and owes
        nothing. A drain-only pipe that found nothing it listed still lists those (the server's
        record may name one of them, and a later pipe of the path finds what came after by the
        list); the generations let go are its claims."""
        listed = self.remembered if self.established else self.missing
        position = None if self.established else self.history.position
        return {
            "pid": os.getpid(),
            "file": self.path,
            "generation": None if position is None else position[0].to_json(),
            "offset": None if position is None else position[1],
            "sent": None if position is None else position[1],
            "queue": [r.ident.to_json() for r in listed],
            "sizes": [r.size for r in listed],
            "igens": [r.igen for r in listed],
            "finished": [f.to_json() for f in self.tailer.finished],
            "rotated_into": list(self.tailer.rotated_into),  # a copy: the last snapshot is compared
            "state": self.state,
            "drained": True,
            "origin_end": 0,
            "generations": len(self.generations_sent),
            "bytes_sent": self.bytes_sent,
            "wire_bytes": self.wire_bytes,
        }

    def save_status(self, status: StatusFile, now: float, force: bool = False, **extra: object) -> None:
        """Write the status file by its rules (``checkpoint.py``); OSError is the caller's."""
        shape = self.shape()
        if not shape and not self.ended:
            return
        # Everything a snapshot shows, cheaply: an idle pipe's tick builds no snapshot.
        news = (
            tuple(shape),
            tuple((g.position, g.acked, g.seen_size, g.done) for g in self.tailer.gens),
            self.state,
            self.established,
            self.bytes_sent,
            self.wire_bytes,
            len(self.generations_sent),
            tuple(extra.items()),
        )
        if not force and news == self._status_news:
            status.owed = False  # the file already shows this
            return
        if not status.due(shape, now, force):
            return
        snapshot = self.snapshot()
        if snapshot is None:
            return
        snapshot.update(extra)
        status.save(snapshot, shape, now, force=force)
        self._status_news = news

    def take_notices(self) -> list[str]:
        return self.tailer.take_notices()

    def close(self) -> None:
        self.tailer.close()
