"""A simulated JetStream subject, and several receivers racing to append one pipe into it.

Rule 1: deterministic. One seeded ``random.Random`` decides every step; the
real ``JetStreamHub.open_store`` and ``JetStreamStore`` (tcppiped's own code)
run against ``SimStream``, whose coroutines never wait for anything but the
store's own short retry sleeps; each is driven to its end, one at a time, on
the world's private event loop.

Rule 2 (the stream): ``SimStream.publish`` is compare-and-append: it stores a
message only if ``Nats-Expected-Last-Subject-Sequence`` is the subject's last
sequence, else raises JetStream's "wrong last sequence" error (and now and
then raises it spuriously, as a clustered stream still applying the last
append does: the ledger unmoved, nothing stored). It can also
lose a publish's acknowledgement (the message is stored, the receiver hears
a timeout) or delay the publish itself (the receiver hears a timeout; the
message reaches the stream some steps later, and is stored only if the
subject's last sequence is still the one it expects).

Rule 3 (the model): the origin is a list of generations, each with all its
bytes. A connection goes to any receiver, reads the ledger (READY), and
sends what the client would send from there: the named generation from the
offset READY gives, then every later one from byte 0. Connections overlap
(two receivers serving one pipe at once, one client each). After every step
the subject is read back with ``ledger.Continuity``: never a gap, never a
duplicate offset, and every generation's bytes equal to the origin's; at the
end, one clean connection completes it, and the subject equals the origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import RawStreamMsg
from nats.js.errors import BadRequestError, NotFoundError

from tcppipe.config import JetStreamTarget
from tcppipe.jetstream import WRONG_LAST_SEQUENCE, JetStreamHub, JetStreamStore, NatsOptions
from tcppipe.ledger import EXPECTED_LAST_SUBJECT_SEQUENCE, Contended, Continuity, admit_generation, parse_headers
from tcppipe.protocol import GenerationId
from tcppipe.stats import PipeStats

TARGET = JetStreamTarget("SIM", "sim.pipe")
MAX_STEPS = 2000


class SimFailure(Exception):
    """The ledger's invariant broke."""


def drive(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run one coroutine to its result on the world's loop (nothing else runs there)."""
    return loop.run_until_complete(coro)


@dataclass
class SimAck:
    seq: int


@dataclass
class SimStream:
    """One stream's messages on one subject, with compare-and-append and lossy acknowledgements."""

    rng: random.Random
    lose_ack: float = 0.0
    lose_publish: float = 0.0
    spurious: float = 0.0
    messages: list[RawStreamMsg] = field(default_factory=list)
    lost_acks: int = 0
    rejected: int = 0
    spurious_rejections: int = 0
    delayed: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    late_landed: int = 0

    def _append(self, subject: str, payload: bytes, headers: dict[str, str]) -> int | None:
        """Compare-and-append: the new sequence, or None if the subject moved on."""
        last = self.messages[-1].seq or 0 if self.messages else 0
        if headers[EXPECTED_LAST_SUBJECT_SEQUENCE] != str(last):
            self.rejected += 1
            return None
        self.messages.append(RawStreamMsg(subject=subject, seq=last + 1, data=payload, headers=dict(headers)))
        return last + 1

    def land_delayed(self) -> None:
        """The oldest delayed publish reaches the stream now (stored only if it still fits)."""
        if self.delayed:
            subject, payload, headers = self.delayed.pop(0)
            self.late_landed += self._append(subject, payload, headers) is not None

    async def publish(
        self, subject: str, payload: bytes, timeout: float, stream: str, headers: dict[str, str]
    ) -> SimAck:
        if self.rng.random() < self.spurious:
            self.spurious_rejections += 1
            raise BadRequestError(code=400, err_code=10164, description="wrong last sequence")
        if self.rng.random() < self.lose_publish:
            self.delayed.append((subject, payload, dict(headers)))
            raise TimeoutError("no acknowledgement in time")
        seq = self._append(subject, payload, headers)
        if seq is None:
            raise BadRequestError(code=400, err_code=WRONG_LAST_SEQUENCE, description="wrong last sequence")
        if self.rng.random() < self.lose_ack:
            self.lost_acks += 1
            raise TimeoutError("acknowledgement lost")
        return SimAck(seq)

    async def get_last_msg(self, stream_name: str, subject: str, direct: bool = False) -> RawStreamMsg:
        if not self.messages:
            raise NotFoundError(code=404, description="no message found")
        return self.messages[-1]


@dataclass
class Connection:
    """One client connection to one receiver: its store, and what it still has to send."""

    store: JetStreamStore
    plan: list[tuple[int, int]]  # (generation index, next offset), in order
    announced: int | None = None  # the generation whose GENERATION this connection sent


class StreamWorld:
    """The origin's generations, a simulated subject, and up to ``receivers`` connections at once."""

    def __init__(
        self, seed: int, receivers: int = 3, lose_ack: float = 0.05, lose_publish: float = 0.03, spurious: float = 0.05
    ) -> None:
        self.rng = random.Random(seed)
        self.stream = SimStream(self.rng, lose_ack, lose_publish, spurious)
        self.hub = JetStreamHub(NatsOptions(("nats://sim",)), logging.getLogger("sim"))
        self.hub.js = self.stream  # type: ignore[assignment]  # the simulated stream stands in for JetStream
        self.receivers = receivers
        self.gens = [self.rng.randbytes(self.rng.randrange(1, 20_000)) for _ in range(self.rng.randrange(1, 4))]
        self.idents = [
            GenerationId(1, 100 + i, min(len(g), 4096), hashlib.sha256(g[:4096]).hexdigest())
            for i, g in enumerate(self.gens)
        ]
        self.live: list[Connection] = []
        self.stats = PipeStats("sim", "/sim", str(TARGET))

    def connect(self) -> None:
        """A client connects to some receiver: READY from the ledger, and the client's plan from it."""
        store: JetStreamStore = drive(self.loop, self.hub.open_store(TARGET, self.stats))
        store.limit = self.rng.choice((7, 512, 4096, 1 << 20))
        record, offset = store.answer()
        if record is None:
            plan = [(i, 0) for i in range(len(self.gens))]
        else:
            i = self.idents.index(record)
            plan = [(i, offset or 0)] + [(j, 0) for j in range(i + 1, len(self.gens))]
        self.live.append(Connection(store, [p for p in plan if p[1] < len(self.gens[p[0]])] or plan[-1:]))

    def step(self, conn: Connection) -> None:
        """The connection sends its next GENERATION or chunk and the receiver publishes it."""
        store = conn.store
        if not conn.plan:
            self.live.remove(conn)
            return
        index, offset = conn.plan[0]
        if conn.announced != index:
            reason = admit_generation(store.record, store.landed(), self.idents[index], offset)
            if reason is not None:
                raise SimFailure(f"the ledger refused the client's own resume: {reason}")
            store.begin_generation(self.idents[index], offset)
            conn.announced = index
        size = min(len(self.gens[index]) - offset, self.rng.randrange(1, 9000))
        if size > 0:
            store.write(self.gens[index][offset : offset + size])
            try:
                while store.pending:
                    drive(self.loop, store.publish_next())
            except Contended:
                self.live.remove(conn)  # the client is refused (retryably) and reconnects
                return
        offset += size
        if offset >= len(self.gens[index]):
            conn.plan.pop(0)
        else:
            conn.plan[0] = (index, offset)

    def check(self) -> list[bytes]:
        """The subject read back: no gap, no duplicate, every byte the origin's (SimFailure if not)."""
        continuity = Continuity()
        held: list[bytearray] = []
        for msg in self.stream.messages:
            record = parse_headers(msg.headers, len(msg.data or b""))
            previous = continuity.last
            problem = continuity.check(record)
            if problem is not None:
                raise SimFailure(f"message {msg.seq}: {problem}")
            if previous is None or record.start == 0:
                held.append(bytearray())
            index = self.idents.index(record.ident)
            if self.gens[index][record.start : record.end] != msg.data:
                raise SimFailure(f"message {msg.seq}: bytes {record.start}..{record.end} are not the origin's")
            held[-1] += msg.data or b""
        return [bytes(h) for h in held]

    def run(self, steps: int) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self._run(steps)
        finally:
            self.loop.close()

    def _run(self, steps: int) -> None:
        for _ in range(min(steps, MAX_STEPS)):
            if self.stream.delayed and self.rng.random() < 0.3:
                self.stream.land_delayed()
            elif len(self.live) < self.receivers and (not self.live or self.rng.random() < 0.2):
                self.connect()
            else:
                self.step(self.rng.choice(self.live))
            self.check()
        # Quiescence: no more faults, one connection at a time until the subject holds everything.
        self.stream.lose_ack = self.stream.lose_publish = self.stream.spurious = 0.0
        while self.stream.delayed:
            self.stream.land_delayed()
            self.check()
        self.live.clear()
        for _ in range(MAX_STEPS):
            if self.check() == self.gens:
                return
            if not self.live:
                self.connect()
            self.step(self.live[0])
        raise SimFailure(f"not complete at quiescence: {[len(h) for h in self.check()]} of {list(map(len, self.gens))}")
