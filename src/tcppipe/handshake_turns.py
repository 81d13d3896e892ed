"""TLS handshake turns: at most a few handshakes of one source at once, the rest queued.

Rule 1: only waiting lives here. What a stranger costs, and which strangers
are closed to make room, is ``strangers.py``'s (pure); ``server.py`` takes a
turn around each TLS handshake.

Rule 2: a waiting connection holds no TLS state, and a finished turn is
handed to the next waiter of its source, first come first served, never
given back first: a source with stalled handshakes delays only itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from tcppipe.strangers import take


class HandshakeTurns:
    """At most ``per_source`` TLS handshakes of one source at once; the next wait their
    turn, first come first served, as plain strangers (no TLS state yet). A source
    with stalled handshakes delays only itself, and a host whose many pipes connect
    at once is served a few at a time instead of closed."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self.running: dict[str, int] = {}
        self.waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, source: str) -> AsyncIterator[None]:
        """Hold one of ``source``'s turns for the body (waiting for it first if need be)."""
        if self.running.get(source, 0) < self.per_source and not self.waiting.get(source):
            self.running[source] = self.running.get(source, 0) + 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue = self.waiting.setdefault(source, collections.deque())
            queue.append(waiter)
            try:
                await waiter  # a finished turn is handed over, never given back first
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_over(source)  # handed to us just as we were cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):  # passed over already, if a turn ended meanwhile
                        queue.remove(waiter)
                    if not queue and self.waiting.get(source) is queue:
                        del self.waiting[source]
                raise
        try:
            yield
        finally:
            self._hand_over(source)

    def _hand_over(self, source: str) -> None:
        """A turn of ``source`` has ended: the next waiter's now, else one fewer running."""
        queue = self.waiting.get(source)
        while queue:
            waiter = queue.popleft()
            if not queue:
                del self.waiting[source]
            if not waiter.done():
                waiter.set_result(None)
                return
        take(self.running, source, 1)
