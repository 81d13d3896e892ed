"""tcppiped's cache of the addresses its config's host names resolve to.

Rule 1: a connection never waits for DNS. Names are resolved when the config
is loaded and refreshed in the background every REFRESH_S; a handshake only
reads the cache. A name not (yet) resolved, or whose last lookup failed, is
a retryable refusal ("cannot resolve NAME: ...; retry later"), never "no
pipe is defined": a DNS blip must not end a pipe.

Rule 2: bounded. Each lookup has a timeout; at most one refresh is in flight,
and a refresh asked for while one runs only marks another as due.

Rule 3: a failed lookup keeps the addresses of the last good one: the cache
answers from what it knew until a lookup says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from tcppipe.errors import describe_os_error

RESOLVE_TIMEOUT_S: Final = 5.0
REFRESH_S: Final = 60.0

Lookup = Callable[[str], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Resolved:
    """What is known of one name: its addresses (maybe from an earlier lookup), and the last error."""

    addresses: tuple[str, ...]
    error: str | None = None


async def system_lookup(host: str) -> list[str]:
    """The addresses ``host`` resolves to (getaddrinfo in the loop's executor)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class NameCache:
    """Host names of the config and their addresses; refreshed off the connection path."""

    def __init__(self, log: logging.Logger, lookup: Lookup = system_lookup) -> None:
        self.log, self.lookup = log, lookup
        self.names: dict[str, Resolved] = {}
        self.wanted: set[str] = set()
        self._refreshing: asyncio.Task[None] | None = None
        self._again = False

    def get(self, host: str) -> Resolved | None:
        """What the cache knows of ``host`` (None: not looked up yet; a refresh is started)."""
        known = self.names.get(host)
        if known is None:
            self.want([host])
        return known

    def want(self, hosts: Iterable[str]) -> None:
        """Names the config holds now; any new one starts a refresh."""
        hosts = set(hosts)
        new = hosts - self.wanted
        self.wanted |= hosts
        if new:
            self.refresh_soon()

    def refresh_soon(self) -> None:
        """Start a refresh, or mark one due after the one in flight."""
        if self._refreshing is not None and not self._refreshing.done():
            self._again = True
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh_all())
        self._refreshing.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("name refresh: internal error: %r", exc, exc_info=exc)
        if self._again:
            self._again = False
            self.refresh_soon()

    async def refresh(self) -> None:
        """Resolve every wanted name now (bounded by RESOLVE_TIMEOUT_S); for the start."""
        self.refresh_soon()
        if self._refreshing is not None:
            await asyncio.wait({self._refreshing})

    async def run(self) -> None:
        """Refresh every REFRESH_S, forever (a task of the server's)."""
        while True:
            await asyncio.sleep(REFRESH_S)
            self.refresh_soon()

    def close(self) -> None:
        """Stop a refresh in flight."""
        if self._refreshing is not None:
            self._refreshing.cancel()

    async def _refresh_all(self) -> None:
        hosts = sorted(self.wanted)
        results = await asyncio.gather(*(self._resolve(h) for h in hosts))
        for host, result in zip(hosts, results, strict=True):
            old = self.names.get(host)
            if result.error is not None and old is not None and old.addresses:
                result = Resolved(old.addresses, result.error)
            if result.error is not None and (old is None or old.error != result.error):
                self.log.warning("cannot resolve %s: %s", host, result.error)
            self.names[host] = result

    async def _resolve(self, host: str) -> Resolved:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                return Resolved(tuple(await self.lookup(host)))
        except TimeoutError:
            return Resolved((), f"no answer in {RESOLVE_TIMEOUT_S:.0f} s")
        except OSError as exc:
            return Resolved((), describe_os_error(exc))
