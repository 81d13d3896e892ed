"""One streaming connection's work on the server, after READY: events into the destination, ACKs back.

Rule 1: thin. What each event means for the destination is ``pipe_server.py``'s
decision (sans-IO); this adapter hands it events and the loop's time, writes
what it answers, and owns the one timer that batches ACKs.

Rule 2: the destination is used only between construction and ``close()``;
``close()`` stops the timer before the destination closes (see PipeReceiver).
Which connection may stream into which pipe is ``server.py``'s.

Rule 3 (a store that lands later than it takes): ``StreamReceiver`` serves a
JetStream subject, whose ``write`` only queues. It holds the connection
(reads nothing more) while too much is queued, and while a GENERATION waits
for the previous generation's bytes to be acknowledged, so an ACK's count
always names the generation its offset belongs to; it ACKs each publish as
JetStream acknowledges it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from tcppipe.errors import ConnectionLost
from tcppipe.pipe_server import PipeServer
from tcppipe.protocol import MIN_HEARTBEAT_S, Data, Event, Generation, Progress, ProtocolError
from tcppipe.sockets import ServerConnection
from tcppipe.stats import PipeStats

if TYPE_CHECKING:
    from tcppipe.jetstream import JetStreamStore
    from tcppipe.ledger import Store

ACK_DELAY_S: Final = 0.05
# A JetStream pipe reads no further while this many messages' worth is queued (besides the one in flight).
HELD_MESSAGES: Final = 2
# The client's goodbye waits this long for what is queued to be acknowledged.
SETTLE_TIMEOUT_S: Final = 30.0


class PipeReceiver:
    """One streaming connection's work: GENERATION/DATA/PROGRESS into the destination,
    ACKs back; the adapter hands it events and time.

    Rule: the destination is used only between construction and ``close()``.
    ``close()`` is the one place that cancels the ACK timer, and it runs before
    the destination closes; a late callback or event after it is a bug, caught
    by an assertion instead of touching a descriptor number that may already
    belong to another pipe's file.
    """

    def __init__(
        self,
        conn: ServerConnection,
        dest: Store,
        stats: PipeStats,
        count_lines: bool,
        on_bug: Callable[[BaseException], None],
    ) -> None:
        self.conn, self.session = conn, conn.session
        self.dest, self.on_bug = dest, on_bug
        self.core = PipeServer(conn.session, dest, stats, count_lines)
        self.loop = conn.loop
        self.ack_timer: asyncio.TimerHandle | None = None
        self.closed = False

    def handle(self, event: Event) -> None:
        """One event from the client (called from the protocol as its bytes arrive)."""
        assert not self.closed, "event for a closed destination"
        if not isinstance(event, Data | Generation | Progress):
            raise ProtocolError(f"unexpected {type(event).__name__} while streaming")  # pragma: no cover
        self.conn.write(self.core.apply(event, self.loop.time()))
        if self.ack_timer is None:
            self.ack_timer = self.loop.call_later(ACK_DELAY_S, self._fire, self._ack_due)

    def _fire(self, callback: Callable[[], None]) -> None:
        """Run a timer's callback. What it raises is a bug: it ends this connection, and the
        connection task's reaper logs it with the pipe (or, if the task has gone, ``on_bug``)."""
        try:
            callback()
        except Exception as exc:
            if self.conn.done.done():
                self.on_bug(exc)
            else:
                self.conn.finish(exc)

    def _ack_due(self) -> None:
        self.ack_timer = None
        self.send_ack()

    def send_ack(self, heartbeat: bool = False) -> None:
        """ACK what has landed, if that is news (or a heartbeat is due)."""
        assert not self.closed, "ACK of a closed destination"
        self.conn.write(self.core.ack(self.loop.time(), heartbeat))

    async def run(self) -> None:
        """Receive until the client says goodbye (answered with a last ACK), falls silent
        or breaks the protocol (raised)."""
        session, conn = self.session, self.conn
        conn.receive_with(self.handle)
        while True:
            wait_s = max(session.heartbeat_due_in(self.loop.time()), MIN_HEARTBEAT_S)
            finished, _pending = await asyncio.wait({conn.done}, timeout=wait_s)
            if finished:
                break
            now = self.loop.time()
            if session.peer_dead(now):
                raise ConnectionLost(f"no word from the client for {session.silence(now):.1f} s")
            if session.heartbeat_due_in(now) <= 0:
                self.send_ack(heartbeat=True)
            session.decoder.release_idle_buffer()
        conn.done.result()  # raises why the connection ended, if it failed
        await self.settle()
        self.send_ack()  # the client's goodbye: tell it exactly what landed

    async def settle(self) -> None:
        """Before the goodbye's ACK: wait until what was taken has landed (a file: at once)."""

    def close(self) -> None:
        """Stop every timer, then close the destination; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        self.conn.finish(ConnectionLost("closed by the server"))
        self.dest.close()


class StreamReceiver(PipeReceiver):
    """A streaming connection into a JetStream subject (Rule 3): publishes run in their own task."""

    def __init__(
        self,
        conn: ServerConnection,
        dest: JetStreamStore,
        stats: PipeStats,
        count_lines: bool,
        on_bug: Callable[[BaseException], None],
    ) -> None:
        super().__init__(conn, dest, stats, count_lines, on_bug)
        self.store, self.stats = dest, stats
        self.deferred: Generation | None = None
        self.publisher: asyncio.Task[None] | None = None
        dest.on_landed = self._landed

    def handle(self, event: Event) -> None:
        if isinstance(event, Generation) and self.store.busy():
            self.deferred = event  # applied once the previous generation's bytes are acknowledged
            self.conn.hold(True)
            return
        super().handle(event)
        if len(self.store.pending) >= HELD_MESSAGES * self.store.limit:
            self.conn.hold(True)

    def _landed(self) -> None:
        """A publish was acknowledged: ACK it, apply a waiting GENERATION, read on if there is room."""
        assert not self.closed, "publish acknowledged after close"
        self.stats.publish_latency_s = self.store.publish_latency_s
        if self.deferred is not None:
            if self.store.busy():
                return
            event, self.deferred = self.deferred, None
            super().handle(event)
        self.send_ack()
        # Queued bytes exclude the publish in flight: at this mark the next message is whole already.
        if len(self.store.pending) < HELD_MESSAGES * self.store.limit:
            self.conn.hold(False)

    def send_ack(self, heartbeat: bool = False) -> None:
        if self.deferred is None:  # the count has moved on to a GENERATION not yet applied
            super().send_ack(heartbeat)

    async def run(self) -> None:
        self.publisher = asyncio.ensure_future(self.store.run())
        self.publisher.add_done_callback(self._publisher_ended)
        await super().run()

    def _publisher_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.conn.finish(task.exception())

    async def settle(self) -> None:
        deadline = self.loop.time() + SETTLE_TIMEOUT_S
        while self.store.busy() and self.publisher is not None and not self.publisher.done():
            if self.loop.time() > deadline:
                raise ConnectionLost(f"what was sent is not acknowledged after {SETTLE_TIMEOUT_S:.0f} s")
            await asyncio.wait({self.publisher}, timeout=0.01)
        if self.publisher is not None and self.publisher.done() and not self.publisher.cancelled():
            exc = self.publisher.exception()
            if exc is not None:
                raise exc

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.cancel()
        super().close()
