"""What tcppiped counts per pipe and in all, for ``status`` and ``--metrics``.

Rule 1: plain counters updated by the server's event loop (no locks: the
metrics thread only reads ints and floats). The DATA hot path adds two
numbers and reads the clock once; lines are counted only when metrics are on.

Rule 2: keyed by destination, which the config makes unique, and kept across
connections, so a reconnecting pipe keeps its history.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tcppipe.config import Entry
from tcppipe.status import DRAINING, RECONNECTING, REFUSED, STREAMING, WAITING, PipeRow


@dataclass
class PipeStats:
    host: str
    remote: str
    local: str
    state: str = WAITING
    peer: str = ""
    generation_bytes: int | None = None
    origin_end: int | None = None
    queued: int = 0
    last_byte_at: float | None = None
    generations: int = 0
    bytes_total: int = 0
    lines_total: int = 0
    connections: int = 0
    refusals: int = 0
    rotations: int = 0
    wire_bytes_total: int = 0
    # JetStream pipes: acknowledged publishes, appends the stream rejected (another receiver
    # appended first), and the latest publish's append-to-acknowledged time.
    publishes: int = 0
    rejected_appends: int = 0
    publish_latency_s: float | None = None

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    @property
    def behind(self) -> int | None:
        if self.origin_end is None or self.generation_bytes is None:
            return None
        return max(0, self.origin_end - self.generation_bytes)

    def connected(self, peer: str) -> None:
        self.peer = peer
        self.connections += 1
        self.origin_end = None
        self.state = STREAMING

    def disconnected(self) -> None:
        if self.state in (STREAMING, DRAINING):
            self.state = RECONNECTING

    def refused(self) -> None:
        self.refusals += 1
        self.state = REFUSED

    def progress(self, end: int, queued: int) -> None:
        self.origin_end, self.queued = end, queued
        self.state = DRAINING if queued else STREAMING

    def row(self, now: float) -> PipeRow:
        idle = None if self.last_byte_at is None else max(0.0, now - self.last_byte_at)
        host = f"{self.host} ({self.peer})" if self.peer and not self.peer.startswith(self.host) else self.host
        return PipeRow(
            host, self.remote, self.local, self.state, self.generation_bytes, self.behind, idle, self.generations
        )


@dataclass
class ServerStats:
    count_lines: bool = False
    pipes: dict[str, PipeStats] = field(default_factory=dict)
    connections_total: int = 0
    connections_open: int = 0
    bad_frames_total: int = 0
    errors_total: int = 0
    strangers_closed_total: int = 0
    refusals_total: int = 0
    started_at: float = field(default_factory=time.time)

    def pipe(self, entry: Entry) -> PipeStats:
        stats = self.pipes.get(entry.local)
        if stats is None or (stats.host, stats.remote) != (entry.host, entry.remote):
            stats = self.pipes[entry.local] = PipeStats(entry.host, entry.remote, entry.local)
        return stats

    def follow_config(self, entries: list[Entry], live: Iterable[str] = ()) -> None:
        """One row per configured pipe: new entries appear, removed ones go. A glob or
        network entry has no row of its own: each destination it fills has one while
        its pipe is ``live`` (and until the config next changes)."""
        defined = {e.local for e in entries if not e.is_template} | set(live)
        for local in [k for k in self.pipes if k not in defined]:
            del self.pipes[local]
        for entry in entries:
            if not entry.is_template:
                self.pipe(entry)

    def rows(self) -> list[PipeRow]:
        now = time.time()
        return [self.pipes[k].row(now) for k in sorted(self.pipes)]
