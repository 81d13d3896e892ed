"""One pipe's server core, sans I/O: the client's events into its destination, ACKs back.

Rule 1: no sockets, no asyncio; time is passed in. ``server.py`` (asyncio)
and the deterministic simulation drive the same object: they hand it each
event as it is decoded and write the bytes it returns; timers (the ACK delay,
heartbeats) are theirs.

Rule 2 (the ledger): every GENERATION passes ``ledger.admit_generation``
before the store (a file or a JetStream subject: ``ledger.Store``) takes
it; a refusal raises ``Inadmissible`` and nothing of it is written.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tcppipe.ledger import Store, admit_generation
from tcppipe.protocol import FEATURE_ZSTD, Data, Generation, Progress, ProtocolError
from tcppipe.session import ServerSession
from tcppipe.stats import PipeStats

if TYPE_CHECKING:
    from tcppipe.compression import Decompressor


class Inadmissible(ProtocolError):
    """The client's GENERATION breaks the ledger's rule (``session.admit_generation``)."""


class PipeServer:
    """A streaming connection's events applied to its destination."""

    def __init__(self, session: ServerSession, dest: Store, stats: PipeStats, count_lines: bool = False) -> None:
        self.session, self.dest, self.stats, self.count_lines = session, dest, stats, count_lines
        self.decompressor: Decompressor | None = None
        if FEATURE_ZSTD in session.features:
            from tcppipe.compression import Decompressor  # zstandard loads only when a client asks

            self.decompressor = Decompressor()

    def apply(self, event: Data | Generation | Progress, now: float) -> bytes:
        """Apply one event; the bytes to send at once (an ACK answers every GENERATION)."""
        stats, dest = self.stats, self.dest
        if isinstance(event, Data):
            payload = event.payload
            stats.wire_bytes_total += len(payload)
            if event.flags and self.decompressor is not None:
                payload = self.decompressor.decode(payload, event.flags)
            dest.write(payload)
            stats.bytes_total += len(payload)
            stats.last_byte_at = time.time()
            if self.count_lines:
                stats.lines_total += bytes(payload).count(b"\n")
            return b""
        if isinstance(event, Generation):
            old = dest.record
            reason = admit_generation(old, dest.landed(), event.ident, event.start)
            if reason is not None:
                raise Inadmissible(reason)
            if old is None or (old.dev, old.ino) != (event.ident.dev, event.ident.ino):
                stats.generations += 1
                stats.rotations += old is not None
            dest.begin_generation(event.ident, event.start, event.igen)
            return self.ack(now)
        if isinstance(event, Progress):
            stats.progress(event.end, event.queued)
            return b""
        raise ProtocolError(f"unexpected {type(event).__name__} while streaming")  # pragma: no cover

    def ack(self, now: float, heartbeat: bool = False) -> bytes:
        """ACK what has landed, if that is news (or a heartbeat is due)."""
        landed = self.dest.landed() or 0
        self.stats.generation_bytes = landed
        return self.session.ack(landed, now, heartbeat)
