"""The receivers a client may send to: ``-h a,b,c``, and which address to try next.

No I/O in this file: names are resolved by the caller (``client.py``) and
handed in; time is not needed.

Rule 1 (the list): ``-h`` is one host or a comma-separated list of them, each
``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` (a bare IPv6 literal has
no port of its own: ``::1`` is a host); without a port of its own an entry
uses ``-p``. Receivers are interchangeable (any tcppiped with the same config
and the same destination storage serves any pipe), so the list is a set for
naming a pipe: ``pipe_host`` (the key of the lock and status files, ``-I``,
``keep_tcppipe_alive``) is the entries normalised, de-duplicated and sorted.
The order as given is the order they are tried in.

Rule 2 (the round): each receiver's addresses (A and AAAA) are tried in turn,
the list's order kept. A name's addresses keep the order of the lookup that
first returned them (a round-robin DNS answer rotates them at every lookup;
a pipe must not wander between receivers that all work). A pipe stays with the
address that answered READY until that connection fails (closed, refused for
now, or dead: the heartbeat's dead-peer rule); then the next address is tried
at once. Only when every address of the round has failed since the last
READY does the caller back off (the single-host back-off, once per round, not
per address), and at start that is the end: nothing answered. A READY clears
the round's failures only once its connection has lasted ``STABLE_S``:
receivers that answer READY and then drop (storage full, EIO) are a failed
round like any other, backed off, not a reconnect storm.

Rule 3: where to resume is never this file's business: each READY says where
that receiver's destination stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tcppipe.errors import UsageError, escape

MAX_RECEIVERS = 64  # a list longer than this is a typo, not a deployment
# A connection that lasted this long after its READY worked: the failures before it are forgotten.
STABLE_S = 10.0


@dataclass(frozen=True, slots=True)
class Receiver:
    """One entry of ``-h``: a host (name or address literal) and its port."""

    host: str
    port: int
    # ``host:port`` for logs, keys and every status file write, an IPv6 literal in brackets; escaped.
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "label", escape(f"{host}:{self.port}"))


@dataclass(frozen=True, slots=True)
class Target:
    """One address of one receiver (``address`` None: connect by the name, whose lookup failed)."""

    receiver: Receiver
    address: str | None
    # The receiver, and the address when it is not the receiver's own literal.
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        label = self.receiver.label
        if self.address is not None and self.address != self.receiver.host:
            label = f"{label} ({escape(self.address)})"
        object.__setattr__(self, "label", label)


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _parse_entry(entry: str, default_port: int) -> Receiver:
    text = entry.strip()
    host, port = text, default_port
    if text.startswith("["):
        inside, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise UsageError(f"-h: {escape(text)!r} is not [IPv6] or [IPv6]:PORT (see --help)")
        host, rest = inside, rest[1:]
        if rest:
            port = _port_of(rest, text)
    elif text.count(":") == 1:
        host, _colon, rest = text.partition(":")
        port = _port_of(rest, text)
    host = _normalise_host(host)
    if not host:
        raise UsageError(f"-h: an empty host in {escape(entry)!r} (see --help)")
    return Receiver(host, port)


def _port_of(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"-h: {escape(entry)!r} has no valid port after ':' (see --help)")
    return int(text)


def parse_receivers(text: str, default_port: int) -> tuple[Receiver, ...]:
    """The receivers ``-h`` names, in its order, duplicates dropped (UsageError if malformed)."""
    entries = text.split(",")
    if len(entries) > MAX_RECEIVERS:
        raise UsageError(f"-h: more than {MAX_RECEIVERS} receivers (see --help)")
    receivers = [_parse_entry(e, default_port) for e in entries]
    return tuple(dict.fromkeys(receivers))


def is_plain_host(text: str) -> bool:
    """``-h`` is one host without a port of its own (the form before lists)."""
    return "," not in text and "[" not in text and text.count(":") != 1


def pipe_host(text: str, default_port: int) -> str:
    """The host part of a pipe's key (Rule 1): one plain host as before; otherwise the set of
    receivers, each ``host:port``, sorted."""
    if is_plain_host(text):
        return _normalise_host(text)  # one host: the key every earlier version used
    return ",".join(sorted({r.label for r in parse_receivers(text, default_port)}))


def describe_pipe_host(host: str, port: int) -> str:
    """A key's receivers for a log prefix or a status row: ``host:port``, or the list (ports in it)."""
    return f"{host}:{port}" if is_plain_host(host) else host


class Rotation:
    """Which address to try next, and whether a whole round has failed (Rules 2 and 3)."""

    def __init__(self, receivers: tuple[Receiver, ...]) -> None:
        self.receivers = receivers
        self.targets: list[Target] = []
        self.index = 0
        # Since the last READY (or the last back-off): why each address failed.
        self.failures: list[str] = []
        # The target of the last READY, and when it came.
        self.serving: Target | None = None
        self._ready_at: float | None = None
        # Each receiver's addresses in the order first seen (Rule 2).
        self._order: dict[Receiver, list[str]] = {}

    @property
    def round_due(self) -> bool:
        """The addresses must be (re)resolved: at the start and after the last of a round."""
        return self.index >= len(self.targets)

    def start_round(self, addresses: list[list[str] | None]) -> None:
        """The addresses each receiver resolves to now (None: its lookup failed), in order."""
        self.targets = []
        for receiver, found in zip(self.receivers, addresses, strict=True):
            if not found:
                self.targets.append(Target(receiver, None))
                continue
            kept = [a for a in self._order.get(receiver, []) if a in found]
            order = kept + [a for a in dict.fromkeys(found) if a not in kept]
            self._order[receiver] = order  # only what this lookup found: bounded by its answer
            self.targets += [Target(receiver, a) for a in order]
        self.index = 0

    @property
    def current(self) -> Target:
        return self.targets[self.index]

    def failed(self, reason: str, now: float) -> bool:
        """The current address failed; move on. True when every address of a round has failed
        since the last READY that held (back off, or at start give up)."""
        if self._ready_at is not None and now - self._ready_at >= STABLE_S:
            self.failures = []
        self._ready_at = None
        self.failures.append(f"{self.current.label}: {reason}")
        self.index += 1
        return len(self.failures) >= max(1, len(self.targets))

    def backed_off(self) -> None:
        self.failures = []

    def ready(self, now: float) -> Target | None:
        """The current address answered READY; the target it replaces (None: the same receiver)."""
        target = self.current
        before, self.serving = self.serving, target
        self._ready_at = now
        return before if before is not None and before != target else None
