"""tcppiped's budget for strangers: connections not yet answered READY.

Rule 1: pure. No sockets, no asyncio, no clock: the adapter (``server.py``)
names each connection by a handle of its own (its task), charges it here,
and closes what ``Strangers.charge`` names; TLS handshake turns, which wait,
are ``handshake_turns.py``'s.

Rule 2: a stranger is charged when it is accepted, charged more when its TLS
layer starts, and released at READY, at REFUSE, or at its end. Authorised
pipes never count against this budget.

Rule 3: a flood cannot keep a real client out, only hurry the strangers
along: when the budget is full the oldest stranger of the source with the
most strangers is closed, so a source with one stranger is not closed while
another has two.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

# Strangers (connections not yet answered READY) share a budget of their own,
# in units of about 32 KiB of our memory: a plain stranger costs 1 (a few KiB of
# socket and session, at most one HELLO of 16 KiB), a TLS one 8 (asyncio's TLS
# layer holds a 256 KiB buffer from the handshake on). When the budget is full
# the oldest stranger of the source with the most is closed: a flood cannot keep
# a real client out, only hurry the strangers along. 512 units: about 16 MiB, or 64 TLS handshakes at once.
# Under TLS a stranger is a plain one until its first TLS record is whole
# (sockets.ServerConnection.wait_for_tls_record), and only then gets a TLS layer.
STRANGER_UNITS: Final = 512
STRANGER_UNITS_PER_SOURCE: Final = 128
TLS_STRANGER_UNITS: Final = 8
MAX_TLS_HANDSHAKES: Final = STRANGER_UNITS // TLS_STRANGER_UNITS
# TLS handshakes of one source (address, or IPv6 /64) at once: its ninth waits, with no
# TLS state, until one of the eight is done (HandshakeTurns), so one source can hold
# at most an eighth of MAX_TLS_HANDSHAKES. A handshake takes a few round trips, so a
# host whose many pipes connect at once (tcppipe with a glob) is served 8 at a time.
MAX_TLS_HANDSHAKES_PER_SOURCE: Final = 8

C = TypeVar("C", bound=Hashable)  # the adapter's handle of one connection (tcppiped: its task)


def source_of(ip: str) -> str:
    """Whose budget a connection counts against: its IPv4 address, or its IPv6 /64."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return ip


class Strangers(Generic[C]):
    """The connections not yet answered READY, oldest first, and their cost in units.

    ``charge`` admits a stranger (or raises its cost, at TLS) and names the
    strangers to close to make room: first the oldest of its own source if
    that source is over its share, then, while the budget is over, the oldest
    stranger of the source with the most strangers (the oldest of all when
    sources tie): a source with one stranger is not closed while another has
    two, however many sources flood together. A connection leaves with
    ``release`` at READY, at REFUSE, or at its end.
    """

    def __init__(self, units: int, per_source: int) -> None:
        self.units, self.per_source = units, per_source
        self.charged: dict[C, tuple[str, int]] = {}  # insertion order: oldest first
        self.used = 0
        self.by_source: dict[str, int] = {}  # units
        self.strangers: dict[str, int] = {}  # connections

    def charge(self, task: C, source: str, units: int) -> list[C]:
        if task in self.charged:
            self.release(task, keep_place=True)
        else:
            self.strangers[source] = self.strangers.get(source, 0) + 1
        self.charged[task] = (source, units)
        self.used += units
        self.by_source[source] = self.by_source.get(source, 0) + units
        victims: list[C] = []
        for other, (other_source, _units) in list(self.charged.items()):
            if self.by_source.get(source, 0) <= self.per_source:
                break
            if other is not task and other_source == source:
                victims.append(other)
                self.release(other)
        while self.used > self.units:
            victim = self._oldest_of_busiest(task)
            if victim is None:
                break
            victims.append(victim)
            self.release(victim)
        return victims

    def _oldest_of_busiest(self, task: C) -> C | None:
        """The oldest stranger but ``task`` of the source with the most strangers."""
        victim, most = None, 0
        for other, (source, _units) in self.charged.items():  # oldest first
            if other is not task and self.strangers[source] > most:
                victim, most = other, self.strangers[source]
        return victim

    def release(self, task: C, keep_place: bool = False) -> None:
        charged = self.charged.get(task)
        if charged is None:
            return
        source, units = charged
        if not keep_place:
            del self.charged[task]
            take(self.strangers, source, 1)
        self.used -= units
        take(self.by_source, source, units)

    def __contains__(self, task: object) -> bool:
        return task in self.charged


def take(counts: dict[str, int], key: str, n: int) -> None:
    """Lower ``counts[key]`` by ``n``, dropping the key at zero."""
    left = counts[key] - n
    if left > 0:
        counts[key] = left
    else:
        del counts[key]
