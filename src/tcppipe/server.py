"""tcppiped's asyncio adapter: accept, handshake, append, reload, stop.

Rule 1: thin. Who may send what where is ``config.py``'s decision; what may
be said when is ``session.py``'s; how bytes land and are admitted is
``pipe_server.py``'s and ``destination.py``'s. What strangers (not yet
answered READY) may cost is ``strangers.py``'s, and whose TLS handshake
waits its turn ``handshake_turns.py``'s; after READY, ``receiver.py``
streams one connection into its destination (``StreamReceiver`` into a
JetStream subject, through ``jetstream.py``'s hub, when the entry names one).

Rule 2: one task per connection, tracked in a set; one pipe's failure never
touches another (no shared TaskGroup). A pipe has at most one live
connection: a newer one cancels the older and waits for it before it opens
the destination, so two connections never write one file.

Rule 3: signal handlers only set events; ``_serve_signals`` does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import resource
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from tcppipe import config as configuration
from tcppipe import control
from tcppipe.activation import ActivationError, inherited_sockets
from tcppipe.config import ConfigError, Entry, JetStreamTarget
from tcppipe.destination import Destination, DestinationError, Span
from tcppipe.errors import EXIT_TEMPFAIL, BadConfig, ConnectionLost, TcppipeError, describe_os_error, escape
from tcppipe.handshake_turns import HandshakeTurns
from tcppipe.ledger import Contended, Store
from tcppipe.logs import RateLimitedLog
from tcppipe.pipe_server import Inadmissible
from tcppipe.protocol import (
    DEFAULT_HEARTBEAT_S,
    FEATURE_PROGRESS,
    FEATURE_ZSTD,
    MAX_HISTORY_SPANS,
    PURPOSE_VERIFY,
    HeldSpan,
    Hello,
    ProtocolError,
    Verify,
    split_range,
)
from tcppipe.receiver import PipeReceiver, StreamReceiver
from tcppipe.resolver import NameCache
from tcppipe.session import ServerSession
from tcppipe.sockets import ReadinessWatch, ServerConnection, format_address, tune_transport
from tcppipe.stats import PipeStats, ServerStats
from tcppipe.strangers import (
    MAX_TLS_HANDSHAKES_PER_SOURCE,
    STRANGER_UNITS,
    STRANGER_UNITS_PER_SOURCE,
    TLS_STRANGER_UNITS,
    Strangers,
    source_of,
)
from tcppipe.tasks import TaskReaper, log_loop_errors
from tcppipe.tls import certificate_names, describe_tls_error
from tcppipe.verify import digest_ranges

if TYPE_CHECKING:
    from tcppipe.jetstream import HeldGeneration, JetStreamHub, NatsOptions


class _HeldBytes(Protocol):
    """What a verified span has: the first and the end offset of its bytes."""

    @property
    def first(self) -> int: ...

    @property
    def end(self) -> int: ...


HeldT = TypeVar("HeldT", bound=_HeldBytes)

HANDSHAKE_TIMEOUT_S: Final = 15.0
PRIVILEGED_PORTS: Final = 1024  # source ports below this are bound only by root
# Connections beyond these are closed at once, before a byte is read: a flood
# from one host cannot starve the others, nor all together exhaust our fds. A host
# agent opens one connection per file: 4,096 lets one host send 4,000 files.
# (Strangers, not yet authenticated, have their own small budget: see strangers.py.)
DEFAULT_MAX_CONNECTIONS: Final = 16384
DEFAULT_MAX_PER_HOST: Final = 4096
# Verify digests read whole destination files: their own threads, so they never starve
# name lookups (the loop's default executor), at most one per pipe and DIGEST_THREADS in all.
DIGEST_THREADS: Final = 4
TAKEOVER_TIMEOUT_S: Final = 10.0
SHUTDOWN_TIMEOUT_S: Final = 10.0
SERVER_FEATURES: Final = (FEATURE_ZSTD, FEATURE_PROGRESS)
# A verify needs about log64(size) requests; more is a client gone astray.
MAX_VERIFY_REQUESTS: Final = 64
# "Address in use" at start (a restart racing the old process, or a squatter) is retried this
# long, with a line at the first failure and then every BIND_RETRY_LOG_S, before tcppiped gives
# up with EX_TEMPFAIL (which the unit restarts).
BIND_RETRY_S: Final = 60.0
BIND_RETRY_LOG_S: Final = 10.0
BIND_RETRY_STEP_S: Final = 0.25
# Lines a second about dropped connections; the rest are counted in a summary.
DROP_LINES_PER_S: Final = 20


def read_config(path: str) -> tuple[list[Entry], list[ConfigError]]:
    """Parse the config file at ``path``; an unreadable file is one error."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        return [], [ConfigError(path, 0, f"cannot read config: {describe_os_error(exc)}")]
    return configuration.parse(text, path)


class ConfigHolder:
    """The config in force; re-read when the file changes, kept when the new one is wrong."""

    def __init__(self, path: str, log: logging.Logger) -> None:
        self.path = path
        self.log = log
        self.entries: list[Entry] = []
        self._stamp: tuple[int, int, int] | None = None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load_initial(self) -> None:
        stamp = self._file_stamp()
        entries, errors = read_config(self.path)
        if errors:
            raise BadConfig("\n".join(str(e) for e in errors))
        self.entries, self._stamp = entries, stamp

    def reload(self, force: bool = False) -> bool:
        """Re-read if forced or changed; False if the new text has errors (old one kept)."""
        stamp = self._file_stamp()
        if not force and stamp == self._stamp:
            return True
        self._stamp = stamp
        entries, errors = read_config(self.path)
        if errors:
            for error in errors:
                self.log.error("%s", error)
            self.log.error("config %s has errors; the previous config stays in force", self.path)
            return False
        if entries != self.entries:
            self.log.info("config %s loaded: %d pipes", self.path, len(entries))
        self.entries = entries
        return True

    def current(self) -> list[Entry]:
        self.reload()
        return self.entries


class PortInUse(TcppipeError):
    """The listening port stayed in use for BIND_RETRY_S: a temporary failure, to be retried."""

    exit_code = EXIT_TEMPFAIL


class Unresolved(Exception):
    """An entry that might be the peer's names a host whose addresses are not known now."""

    def __init__(self, host: str, error: str) -> None:
        super().__init__(f"cannot resolve {host}: {error}; retry later")


@dataclass
class PipeSession:
    entry: Entry
    peer: str
    task: asyncio.Task[Any]
    stats: PipeStats
    dest: Store | None = None
    receiver: PipeReceiver | None = None
    peer_ip: str = ""


@dataclass
class ServerOptions:
    config_path: str
    port: int
    bind: str | None
    state_dir: str
    tls: ssl.SSLContext | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_host: int = DEFAULT_MAX_PER_HOST
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    metrics: tuple[str, int] | None = None
    stranger_units: int = STRANGER_UNITS
    stranger_units_per_source: int = STRANGER_UNITS_PER_SOURCE
    # Plain mode only: a source port below 1024 means root (or CAP_NET_BIND_SERVICE) on the origin host.
    require_privileged_port: bool = False
    # --nats: the JetStream cluster that jetstream:STREAM/SUBJECT entries append to.
    nats: NatsOptions | None = None


@dataclass
class Server:
    opts: ServerOptions
    log: logging.Logger
    config: ConfigHolder
    sessions: dict[str, PipeSession] = field(default_factory=dict)
    per_host: dict[str, int] = field(default_factory=dict)
    live: int = 0
    # Every task, and what it is for (a peer, then its pipe once known), for its death's line.
    reaper: TaskReaper = field(init=False)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    hup: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: ServerStats = field(default_factory=ServerStats)
    strangers: Strangers[asyncio.Task[Any]] = field(init=False)
    evicted: set[asyncio.Task[Any]] = field(default_factory=set)
    readiness: ReadinessWatch = field(default_factory=ReadinessWatch)
    handshake_turns: HandshakeTurns = field(default_factory=lambda: HandshakeTurns(MAX_TLS_HANDSHAKES_PER_SOURCE))
    drops: RateLimitedLog = field(init=False)
    _followed: list[Entry] | None = None
    resolver: NameCache = field(init=False)
    digests: ThreadPoolExecutor = field(init=False)
    digest_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    metrics_server: asyncio.AbstractServer | None = None
    jetstream: JetStreamHub | None = None

    def __post_init__(self) -> None:
        self.resolver = NameCache(self.log)
        self.digests = ThreadPoolExecutor(DIGEST_THREADS, thread_name_prefix="digest")
        self.reaper = TaskReaper(self.log, on_error=self._count_error)
        self.strangers = Strangers(self.opts.stranger_units, self.opts.stranger_units_per_source)
        self.drops = RateLimitedLog(self.log, DROP_LINES_PER_S, time.monotonic, self._call_later)

    def _call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(delay_s, callback)

    def _charge(self, task: asyncio.Task[Any], peer_ip: str, units: int) -> None:
        """Count ``task`` among the strangers; close the oldest ones if the budget is full."""
        for victim in self.strangers.charge(task, source_of(peer_ip), units):
            self.stats.strangers_closed_total += 1
            self.evicted.add(victim)
            victim.cancel()

    def entries(self) -> list[Entry]:
        """The config in force (re-read if the file changed), with a stats row per pipe."""
        entries = self.config.current()
        if entries is not self._followed:
            self.stats.follow_config(entries, live=self.sessions)
            if self._followed is not None and self.jetstream is not None:
                self.spawn(self.check_streams(entries), "JetStream stream check")
            self._followed = entries
            self.resolver.want(e.host for e in entries if e.is_name)
        return entries

    def status(self) -> dict[str, Any]:
        """What ``tcppiped status`` prints."""
        self.entries()  # rows for pipes added to the config since the last look
        return {
            "pid": os.getpid(),
            "port": self.opts.port,
            "config": self.config.path,
            "connections": self.live,
            "pipes": [row.to_json() for row in self.stats.rows()],
            # JetStream pipes: acknowledged publishes, rejected appends (another receiver was first), last latency.
            "jetstream": [
                {
                    "destination": p.local,
                    "publishes": p.publishes,
                    "rejected_appends": p.rejected_appends,
                    "publish_latency_ms": None if p.publish_latency_s is None else round(p.publish_latency_s * 1000, 2),
                }
                for p in self.stats.pipes.values()
                if p.local.startswith(configuration.JETSTREAM_PREFIX)
            ],
        }

    # -- tasks ------------------------------------------------------------------

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        """Every task this server runs (connections and signal handling)."""
        return self.reaper.tasks

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Start a task this server tracks; if it dies of anything unexpected, syslog says so."""
        return self.reaper.spawn(coro, what)

    def _count_error(self) -> None:
        self.stats.errors_total += 1

    def _connection(self) -> ServerConnection:
        """The protocol of one accepted connection, with its own session."""
        loop = asyncio.get_running_loop()
        return ServerConnection(ServerSession(loop.time(), SERVER_FEATURES, DEFAULT_HEARTBEAT_S), self.accepted)

    async def listen(self) -> asyncio.Server:
        """Listen on the configured address; every accepted connection gets its own session."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self._connection, host=self.opts.bind, port=self.opts.port, reuse_address=True, backlog=512
        )

    async def listen_all(self) -> list[asyncio.Server]:
        """Serve on the sockets systemd passed (socket activation), else bind, retrying "address in use"."""
        loop = asyncio.get_running_loop()
        try:
            inherited = inherited_sockets()
        except ActivationError as exc:
            raise BadConfig(str(exc)) from None
        if inherited:
            return [await loop.create_server(self._connection, sock=sock, backlog=512) for sock in inherited]
        start = loop.time()
        logged_at: float | None = None
        while True:
            try:
                return [await self.listen()]
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                now = loop.time()
                where = f"{self.opts.bind or '*'} port {self.opts.port}"
                if now - start >= BIND_RETRY_S:
                    raise PortInUse(f"cannot listen on {where}: still in use after {BIND_RETRY_S:.0f} s") from None
                if logged_at is None or now - logged_at >= BIND_RETRY_LOG_S:
                    logged_at = now
                    self.log.warning(
                        "cannot listen on %s: %s; retrying for up to %.0f s",
                        where,
                        describe_os_error(exc),
                        BIND_RETRY_S - (now - start),
                    )
            await asyncio.sleep(BIND_RETRY_STEP_S)

    # -- connection handling --------------------------------------------------

    def accepted(self, conn: ServerConnection) -> None:
        """A new connection (from the protocol factory): its task starts now."""
        self.spawn(self.handle(conn), conn.peer())

    async def handle(self, conn: ServerConnection) -> None:
        """One connection from accept to close (limits, handshake, then the pipe)."""
        task = asyncio.current_task()
        assert task is not None
        peer = conn.peer()
        peer_ip, peer_port = (conn.get_extra_info("peername") or ("?", 0))[:2]
        peer_ip = str(peer_ip)
        count = self.per_host.get(peer_ip, 0) + 1
        self.per_host[peer_ip] = count
        self.live += 1
        self.stats.connections_total += 1
        self.stats.connections_open = self.live
        try:
            if self.opts.require_privileged_port and self.opts.tls is None and int(peer_port) >= PRIVILEGED_PORTS:
                # Closed before a byte is read: an unprivileged process on the origin host is no client.
                self.stats.refusals_total += 1
                self.drops.warning(
                    "%s dropped: source port %d is not privileged (--require-privileged-port)", peer, peer_port
                )
            elif self.live > self.opts.max_connections:
                self.drops.warning("%s dropped: %d connections (limit %d)", peer, self.live, self.opts.max_connections)
            elif count > self.opts.max_per_host:
                self.drops.warning(
                    "%s dropped: %d connections from %s (limit %d)", peer, count, peer_ip, self.opts.max_per_host
                )
            else:
                self._charge(task, peer_ip, 1)
                await self._serve(conn, task, peer, peer_ip)
        finally:
            # Released before the (bounded) close, so a closing connection never counts against a new one.
            stranger = task in self.strangers or task in self.evicted
            self.strangers.release(task)
            self.evicted.discard(task)
            self.live -= 1
            self.stats.connections_open = self.live
            left = self.per_host.get(peer_ip, 1) - 1
            if left > 0:
                self.per_host[peer_ip] = left
            else:
                self.per_host.pop(peer_ip, None)
            if stranger:
                # Nothing owed to a stranger (not even a flush): its memory goes now,
                # not after a close that a TLS layer in mid-handshake would never report.
                conn.abort()
            else:
                conn.close()
                await conn.wait_closed()
            conn.retrieve()

    async def _serve(self, conn: ServerConnection, task: asyncio.Task[Any], peer: str, peer_ip: str) -> None:
        session: PipeSession | None = None
        loop = conn.loop
        try:
            tune_transport(conn.transport)  # type: ignore[arg-type]
            async with asyncio.timeout(self.opts.handshake_timeout_s):
                names = await self._start_tls(conn)
                hello = await conn.next_event()
            assert isinstance(hello, Hello)  # the session takes nothing else first
            try:
                entry = self._authorize(peer_ip, hello.path, names)
            except Unresolved as exc:
                self.strangers.release(task)
                await self._refuse(conn, peer, str(exc), retry=True)
                return
            self.strangers.release(task)  # answered now, either way
            if entry is None:
                who = f"host {peer_ip}" if names is None else f"certificate {'/'.join(names[0] + names[1]) or '?'}"
                await self._refuse(conn, peer, f"no pipe is defined for {who} and file {hello.path}")
                return
            if hello.purpose == PURPOSE_VERIFY:
                await self._verify(conn, entry, peer)
                return
            session = PipeSession(entry, peer, task, self.stats.pipe(entry), peer_ip=peer_ip)
            await self._register(session)
            target = entry.jetstream
            try:
                if target is None:
                    session.dest = Destination.open(entry.local, self.opts.state_dir)
                elif self.jetstream is None:
                    raise DestinationError(f"{target}: tcppiped was started without --nats")
                else:
                    session.dest = await self.jetstream.open_store(target, session.stats)
            except DestinationError as exc:
                session.stats.refused()
                await self._refuse(conn, peer, str(exc), retry=True)
                return
            record, offset = session.dest.answer()
            igen = session.dest.igen if record is not None else None
            conn.write(conn.session.ready(record, offset, loop.time(), igen=igen))
            features = conn.session.features
            session.stats.connected(peer)
            session.stats.generation_bytes = offset
            self.log.info(
                "%s pipe %s -> %s READY at %s%s",
                peer,
                escape(hello.path),
                entry.local,
                "no record" if offset is None else f"offset {offset}",
                f", with {' '.join(features)}" if features else "",
            )
            where = f"{peer} pipe {entry.local}"
            self.reaper.relabel(task, where)
            on_bug = functools.partial(self.reaper.report, where)
            if target is None:
                session.receiver = PipeReceiver(conn, session.dest, session.stats, self.stats.count_lines, on_bug)
            else:
                from tcppipe.jetstream import JetStreamStore

                assert isinstance(session.dest, JetStreamStore)
                session.receiver = StreamReceiver(conn, session.dest, session.stats, self.stats.count_lines, on_bug)
            await session.receiver.run()
            self.log.info("%s pipe %s closed by the client", peer, entry.local)
        except TimeoutError:
            self.drops.warning("%s dropped: handshake not completed in %.1f s", peer, self.opts.handshake_timeout_s)
        except Contended as exc:
            self.stats.refusals_total += 1
            self.log.warning("%s REFUSE (retry): %s", peer, escape(str(exc)))
            conn.write(conn.session.refuse(str(exc), True, loop.time()))
        except Inadmissible as exc:
            self.stats.refusals_total += 1
            self.log.warning("%s REFUSE: %s", peer, escape(str(exc)))
            conn.write(conn.session.refuse(str(exc), True, loop.time()))
        except ProtocolError as exc:
            self.stats.bad_frames_total += 1
            log = self.drops.warning if task in self.strangers else self.log.warning
            log("%s dropped: protocol error: %s", peer, escape(str(exc)))
        except ConnectionLost as exc:
            if task not in self.strangers:
                self.log.info("%s connection lost: %s", peer, exc)
        except DestinationError as exc:
            self.stats.errors_total += 1
            self.log.error("%s dropped: %s", peer, exc)
        except OSError as exc:
            log = self.drops.warning if task in self.strangers else self.log.warning
            log("%s dropped: %s", peer, escape(describe_tls_error(exc)))
        except asyncio.CancelledError:
            # Only this server cancels connection tasks (takeover, reload,
            # shutdown, the strangers' budget); the task then ends normally.
            if task in self.evicted:
                self.drops.warning("%s dropped: the budget for unauthenticated connections is full", peer)
            else:
                self.log.info("%s connection closed by the server", peer)
        finally:
            if session is not None:
                if self.sessions.get(session.entry.local) is session:
                    del self.sessions[session.entry.local]
                    session.stats.disconnected()
                if session.receiver is not None:
                    session.receiver.close()  # its timers first, then the destination
                elif session.dest is not None:
                    session.dest.close()

    async def _verify(self, conn: ServerConnection, entry: Entry, peer: str) -> None:
        """Answer a verifying client: what the destination holds, then digests of
        the ranges it asks for, computed from the file itself off the event loop."""
        session, loop = conn.session, conn.loop
        if entry.jetstream is not None:
            await self._verify_stream(conn, entry.jetstream, peer)
            return
        try:
            dest = Destination.inspect(entry.local, self.opts.state_dir)
        except DestinationError as exc:
            await self._refuse(conn, peer, str(exc))
            return
        held = None if dest is None else dest.held()
        earlier = [] if dest is None else dest.journal
        if dest is None or (held is None and not earlier):
            conn.write(session.ready(None, None, loop.time()))
            if dest is not None:
                dest.close()
            return
        # The current generation is READY's record; the journal's spans are its history.
        listed = earlier[-MAX_HISTORY_SPANS:]
        history = tuple(HeldSpan(span.record, span.first, span.end, span.igen) for span in listed)
        dropped = dest.earlier + len(earlier) - len(listed)
        record, first, offset = held if held is not None else (None, None, None)
        conn.write(session.ready(record, offset, loop.time(), first, history, dropped))
        self.log.info("%s verifies %s", peer, entry.local)
        opened = dest

        def span_of(index: int | None) -> Span | None:
            if index is None:
                landed = opened.landed()
                return None if held is None or landed is None else Span(held[0], opened.base, held[1], landed)
            return listed[index] if index < len(listed) else None

        async def digest(ranges: list[tuple[int, int]], span: Span) -> list[str]:
            async with self.digest_locks.setdefault(entry.local, asyncio.Lock()):
                return await loop.run_in_executor(self.digests, digest_ranges, opened.fd, ranges, span.base)

        try:
            await self._answer_verifies(conn, span_of, digest)
        finally:
            dest.close()

    async def _answer_verifies(
        self,
        conn: ServerConnection,
        span_of: Callable[[int | None], HeldT | None],
        digest: Callable[[list[tuple[int, int]], HeldT], Coroutine[Any, Any, list[str]]],
    ) -> None:
        """A verifying client's VERIFY requests (at most MAX_VERIFY_REQUESTS), each answered with
        the digests of its ranges: one loop for a file and a subject. ``span_of`` names what is
        held of a span (None: the current generation), ``digest`` hashes ranges of it."""
        session, loop = conn.session, conn.loop
        for _ in range(MAX_VERIFY_REQUESTS):
            async with asyncio.timeout(self.opts.handshake_timeout_s):
                try:
                    event = await conn.next_event()
                except ConnectionLost:
                    return  # the client has its answer
            assert isinstance(event, Verify)  # the session takes nothing else now
            span = span_of(event.span)
            if span is None or event.start < span.first or event.end > span.end:
                raise ProtocolError(f"VERIFY of bytes {event.start}..{event.end} outside what is held")
            digests = await digest(split_range(event.start, event.end, event.parts), span)
            conn.write(session.digest(tuple(digests), loop.time()))

    async def _verify_stream(self, conn: ServerConnection, target: JetStreamTarget, peer: str) -> None:
        """Answer a verifying client from a JetStream subject: its generations, then digests
        of the ranges asked for, computed from the stream's own messages."""
        session, loop = conn.session, conn.loop
        if self.jetstream is None:
            await self._refuse(conn, peer, f"{target}: tcppiped was started without --nats", retry=True)
            return
        try:
            held = await self.jetstream.held_generations(target)
        except DestinationError as exc:
            await self._refuse(conn, peer, str(exc), retry=True)
            return
        if not held:
            conn.write(session.ready(None, None, loop.time()))
            return
        *earlier, current = held
        listed = earlier[-MAX_HISTORY_SPANS:]
        history = tuple(HeldSpan(g.ident, g.first, g.end, g.igen) for g in listed)
        dropped = len(earlier) - len(listed)
        conn.write(session.ready(current.ident, current.end, loop.time(), current.first, history, dropped))
        self.log.info("%s verifies %s", peer, target)
        hub = self.jetstream

        def span_of(index: int | None) -> HeldGeneration | None:
            if index is None:
                return current
            return listed[index] if index < len(listed) else None

        async def digest(ranges: list[tuple[int, int]], gen: HeldGeneration) -> list[str]:
            return await hub.digest_ranges(target, gen, ranges)

        await self._answer_verifies(conn, span_of, digest)

    async def _start_tls(self, conn: ServerConnection) -> tuple[list[str], list[str]] | None:
        """Upgrade to TLS when configured; the client certificate's names when one is required."""
        if self.opts.tls is None:
            return None
        task = asyncio.current_task()
        assert task is not None
        peer_ip = str(conn.get_extra_info("peername")[0])
        # No TLS layer, nor its cost, before the peer has sent a whole first record,
        # and none while its source has MAX_TLS_HANDSHAKES_PER_SOURCE in progress.
        await conn.wait_for_tls_record(self.readiness)
        async with self.handshake_turns.turn(source_of(peer_ip)):
            # TLS costs a stranger 8 units from here on: at most MAX_TLS_HANDSHAKES at once.
            self._charge(task, peer_ip, TLS_STRANGER_UNITS)
            await conn.start_tls(self.opts.tls)
        if self.opts.tls.verify_mode != ssl.CERT_REQUIRED:
            return None
        return certificate_names(conn.get_extra_info("peercert"))

    async def _refuse(self, conn: ServerConnection, peer: str, reason: str, retry: bool = False) -> None:
        self.stats.refusals_total += 1
        self.log.warning("%s REFUSE: %s", peer, escape(reason))
        conn.write(conn.session.refuse(reason, retry, conn.loop.time()))
        with contextlib.suppress(OSError, ConnectionLost):
            async with asyncio.timeout(self.opts.handshake_timeout_s):
                await conn.drain()

    def _authorize(self, peer_ip: str, path: str, names: tuple[list[str], list[str]] | None) -> Entry | None:
        """The entry for this peer and path, from the name cache only (a connection never
        waits for DNS); Unresolved if none matched but a name entry could not be checked."""
        unresolved: Unresolved | None = None
        for entry in configuration.candidates(self.entries(), path):
            addresses: tuple[str, ...] = ()
            # With mutual TLS the certificate, not the source address, says who the peer is: no lookup.
            if names is None and entry.is_name:
                known = self.resolver.get(entry.host)
                if known is None:
                    unresolved = unresolved or Unresolved(entry.host, "not looked up yet")
                    continue
                if known.error is not None and not known.addresses:
                    unresolved = unresolved or Unresolved(entry.host, known.error)
                    continue
                addresses = known.addresses
            admitted = configuration.admit(entry, path, peer_ip, names, addresses)
            if admitted is not None:
                return admitted  # its own remote path and destination, placeholders filled
        if unresolved is not None:
            raise unresolved
        return None

    async def _register(self, session: PipeSession) -> None:
        """Make ``session`` the pipe's only connection, ending an older one first."""
        local = session.entry.local
        lock = self.locks.setdefault(local, asyncio.Lock())
        async with lock:
            old = self.sessions.get(local)
            if old is not None and not old.task.done():
                if old.peer_ip == session.peer_ip:
                    # A real client reconnects so only after its connection broke; otherwise another
                    # process on the origin host may be speaking for the client.
                    self.log.warning(
                        "%s takes over pipe %s from %s, from the same address: if the old connection was alive,"
                        " another process on %s may be impersonating the client",
                        session.peer,
                        local,
                        old.peer,
                        session.peer_ip,
                    )
                else:
                    self.log.info("%s takes over pipe %s from %s", session.peer, local, old.peer)
                old.task.cancel()
                await asyncio.wait({old.task}, timeout=TAKEOVER_TIMEOUT_S)
            self.sessions[local] = session

    # -- signals ------------------------------------------------------------------

    async def serve_signals(self) -> None:
        """Do what SIGHUP asks, each time it is asked (coalesced)."""
        while True:
            await self.hup.wait()
            self.hup.clear()
            self.reload_and_reopen()

    def reload_and_reopen(self) -> None:
        self.log.info("SIGHUP: rereading %s and reopening destinations", self.config.path)
        self.config.reload(force=True)
        self.entries()
        defined = {e.defined_as for e in self.config.entries}
        for local, session in list(self.sessions.items()):
            e = session.entry
            if e.defined_as not in defined:
                self.log.info("pipe %s:%s -> %s is no longer in the config: closed", e.host, e.remote, local)
                session.task.cancel()
                continue
            if session.dest is None:
                continue
            try:
                if session.dest.reopen():
                    self.log.info("reopened destination %s", local)
            except DestinationError as exc:
                self.log.error("%s", exc)
                session.task.cancel()

    async def check_streams(self, entries: list[Entry]) -> None:
        """After a reload: create or check the streams the config now names (problems logged, one line each)."""
        if self.jetstream is None:
            if any(e.jetstream is not None for e in entries):
                self.log.error("config %s names JetStream destinations, but tcppiped has no --nats", self.config.path)
            return
        for problem in await self.jetstream.ensure_streams(entries):
            self.log.error("NATS: %s", problem)

    async def shutdown(self) -> None:
        """Cancel every connection and wait until each has closed its destination."""
        self.resolver.close()
        tasks = self.reaper.cancel_all()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)
        if self.jetstream is not None:
            await self.jetstream.close()
        self.digests.shutdown(wait=False, cancel_futures=True)
        self.readiness.close()


async def run_server(opts: ServerOptions, log: logging.Logger, on_listening: Any) -> None:
    """Listen and serve until SIGTERM/SIGINT."""
    _raise_fd_limit()
    holder = ConfigHolder(opts.config_path, log)
    holder.load_initial()
    server = Server(opts, log, holder)
    loop = asyncio.get_running_loop()
    log_loop_errors(loop, log, server._count_error)
    await _start_jetstream(server)
    server.entries()
    await server.resolver.refresh()  # the config's names, resolved before the first connection
    server.spawn(server.resolver.run(), "name refresh")
    listeners = await server.listen_all()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.hup.set)
    addresses = ", ".join(format_address(s.getsockname()) for listener in listeners for s in listener.sockets)
    server.entries()
    controller = await _open_control_and_metrics(server)
    log.info("listening on %s with %d pipes from %s", addresses, len(holder.entries), opts.config_path)
    on_listening()
    signals = server.spawn(server.serve_signals(), "signal handling")
    try:
        await server.stop.wait()
        log.info("stopping")
    finally:
        for listener in listeners:
            listener.close()
        if controller is not None:
            controller.close()
            with contextlib.suppress(OSError):
                os.unlink(control.control_path(opts.state_dir, opts.port))
        if server.metrics_server is not None:
            server.metrics_server.close()
        signals.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await signals
        await server.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                for listener in listeners:
                    await listener.wait_closed()


async def _start_jetstream(server: Server) -> None:
    """Connect to the cluster and make or check the config's streams; a problem stops tcppiped (one line each)."""
    entries = server.config.entries
    wanted = [e for e in entries if e.jetstream is not None]
    if server.opts.nats is None:
        if wanted:
            raise BadConfig(f"{server.config.path}: JetStream destinations (line {wanted[0].line}) need --nats URL")
        return
    from tcppipe.jetstream import JetStreamHub  # nats-py loads only with --nats

    hub = JetStreamHub(server.opts.nats, server.log)
    await hub.connect()
    problems = await hub.ensure_streams(entries)
    if problems:
        await hub.close()
        raise BadConfig("\n".join(f"NATS: {p}" for p in problems))
    server.jetstream = hub


async def _open_control_and_metrics(server: Server) -> asyncio.AbstractServer | None:
    """The control socket for ``tcppiped status`` and, if asked, the metrics endpoint.
    Both are conveniences: either failing is one error line, and the pipes are served
    all the same (None when there is no control socket)."""
    opts = server.opts
    path = control.control_path(opts.state_dir, opts.port)
    controller: asyncio.AbstractServer | None = None
    try:
        controller = await control.serve(path, server.status)
    except OSError as exc:
        server.log.error(
            "cannot create control socket %s: %s; serving the pipes without tcppiped status",
            path,
            describe_os_error(exc),
        )
    if opts.metrics is None:
        return controller
    from tcppipe.metrics import serve_metrics  # prometheus_client loads only with --metrics

    try:
        server.metrics_server = await serve_metrics(opts.metrics[0], opts.metrics[1], server.stats)
    except OSError as exc:
        server.log.error(
            "cannot serve metrics on %s: %s; serving the pipes without metrics",
            format_address(opts.metrics),
            describe_os_error(exc),
        )
        return controller
    server.stats.count_lines = True
    server.log.info("metrics on http://%s/metrics", format_address(opts.metrics))
    return controller


def _raise_fd_limit() -> None:
    """Use the hard fd limit: every connection costs one, every open pipe two."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
