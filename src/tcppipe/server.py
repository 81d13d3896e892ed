"""tcppiped's asyncio adapter: accept, handshake, append, reload, stop.

Rule 1: thin. Who may send what where is ``config.py``'s decision; how bytes
land and are counted is ``destination.py``'s; the wire is ``protocol.py``'s.

Rule 2: one task per connection, tracked in a set; one pipe's failure never
touches another (no shared TaskGroup). A pipe has at most one live
connection: a newer one cancels the older and waits for it before it opens
the destination, so two connections never write one file.

Rule 3: signal handlers only set events; ``_serve_signals`` does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tcppipe import config as configuration
from tcppipe import control
from tcppipe.config import ConfigError, Entry
from tcppipe.destination import Destination, DestinationError
from tcppipe.errors import BadConfig, ConnectionLost, describe_os_error
from tcppipe.protocol import (
    DATA_ZSTD,
    DEAD_AFTER_HEARTBEATS,
    FEATURE_PROGRESS,
    FEATURE_ZSTD,
    PURPOSE_VERIFY,
    Ack,
    Data,
    Decoder,
    Digest,
    Event,
    Generation,
    Hello,
    NeedData,
    Ping,
    Progress,
    ProtocolError,
    Ready,
    Refuse,
    Verify,
    encode,
    split_range,
)
from tcppipe.sockets import READ_BYTES, close_writer, format_address, next_event, peer_name, tune
from tcppipe.stats import PipeStats, ServerStats
from tcppipe.tls import certificate_names, describe_tls_error
from tcppipe.verify import digest_ranges

HANDSHAKE_TIMEOUT_S: Final = 15.0
# Connections beyond these are closed at once, before a byte is read: a flood
# from one host cannot starve the others, nor all together exhaust our fds.
DEFAULT_MAX_CONNECTIONS: Final = 4096
DEFAULT_MAX_PER_HOST: Final = 256
RESOLVE_TIMEOUT_S: Final = 5.0
TAKEOVER_TIMEOUT_S: Final = 10.0
ACK_DELAY_S: Final = 0.05
# Smallest receive while streaming (a frame in flight asks for its whole rest).
RECEIVE_BYTES: Final = 64 * 1024
SHUTDOWN_TIMEOUT_S: Final = 10.0
SERVER_FEATURES: Final = (FEATURE_ZSTD, FEATURE_PROGRESS)
# A verify needs about log64(size) requests; more is a client gone astray.
MAX_VERIFY_REQUESTS: Final = 64


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


class FrameSink(asyncio.BufferedProtocol):
    """The streaming phase's protocol: bytes are received into the decoder's own
    buffer and each event is handled at once, so a DATA payload goes from the
    socket to the destination with no copy in between."""

    def __init__(self, decoder: Decoder, original: asyncio.BaseProtocol, handle: Callable[[Event], None]) -> None:
        self.decoder, self.original, self.handle = decoder, original, handle
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.heard_at = self.loop.time()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(max(sizehint, RECEIVE_BYTES))

    def buffer_updated(self, nbytes: int) -> None:
        self.heard_at = self.loop.time()
        self.decoder.buffer_updated(nbytes)
        self.drain()

    def drain(self) -> None:
        """Handle every complete event; the first failure ends the connection."""
        try:
            while not self.done.done():
                event = self.decoder.next_event()
                if event is None or isinstance(event, NeedData):
                    return
                self.handle(event)
        except (ProtocolError, DestinationError) as exc:
            self.finish(exc)

    def eof_received(self) -> bool:
        try:
            self.decoder.feed(b"")
        except ProtocolError as exc:
            self.finish(exc)
            return False
        self.drain()
        self.finish(None)
        return True  # keep our side open for the goodbye ACK

    def connection_lost(self, exc: Exception | None) -> None:
        reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc or "peer closed the connection")
        self.finish(ConnectionLost(reason))
        self.original.connection_lost(exc)

    def finish(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)


@dataclass
class PipeSession:
    entry: Entry
    peer: str
    task: asyncio.Task[Any]
    stats: PipeStats
    dest: Destination | None = None


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


@dataclass
class Server:
    opts: ServerOptions
    log: logging.Logger
    config: ConfigHolder
    sessions: dict[str, PipeSession] = field(default_factory=dict)
    per_host: dict[str, int] = field(default_factory=dict)
    live: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    hup: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: ServerStats = field(default_factory=ServerStats)
    _followed: list[Entry] | None = None

    def entries(self) -> list[Entry]:
        """The config in force (re-read if the file changed), with a stats row per pipe."""
        entries = self.config.current()
        if entries is not self._followed:
            self.stats.follow_config(entries)
            self._followed = entries
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
        }

    # -- connection handling --------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        peer = peer_name(writer)
        peer_ip = str(writer.get_extra_info("peername")[0])
        count = self.per_host.get(peer_ip, 0) + 1
        self.per_host[peer_ip] = count
        self.live += 1
        self.stats.connections_total += 1
        self.stats.connections_open = self.live
        try:
            if self.live > self.opts.max_connections:
                self.log.warning("%s dropped: %d connections (limit %d)", peer, self.live, self.opts.max_connections)
            elif count > self.opts.max_per_host:
                self.log.warning(
                    "%s dropped: %d connections from %s (limit %d)", peer, count, peer_ip, self.opts.max_per_host
                )
            else:
                await self._serve(reader, writer, task, peer, peer_ip)
        finally:
            # Released before the (bounded) close, so a closing connection never counts against a new one.
            self.live -= 1
            self.stats.connections_open = self.live
            left = self.per_host.get(peer_ip, 1) - 1
            if left > 0:
                self.per_host[peer_ip] = left
            else:
                self.per_host.pop(peer_ip, None)
            await close_writer(writer)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[Any],
        peer: str,
        peer_ip: str,
    ) -> None:
        session: PipeSession | None = None
        try:
            tune(writer)
            decoder = Decoder(copy_payloads=False)
            async with asyncio.timeout(self.opts.handshake_timeout_s):
                names = await self._start_tls(writer)
                hello = await next_event(reader, decoder)
            if not isinstance(hello, Hello):
                raise ProtocolError(f"expected HELLO, got {type(hello).__name__}")
            entry = await self._authorize(peer_ip, hello.path, names)
            if entry is None:
                who = f"host {peer_ip}" if names is None else f"certificate {'/'.join(names[0] + names[1]) or '?'}"
                await self._refuse(writer, peer, f"no pipe is defined for {who} and file {hello.path}")
                return
            if hello.purpose == PURPOSE_VERIFY:
                await self._verify(reader, writer, decoder, entry, peer)
                return
            session = PipeSession(entry, peer, task, self.stats.pipe(entry))
            await self._register(session)
            try:
                session.dest = Destination.open(entry.local, self.opts.state_dir)
            except DestinationError as exc:
                session.stats.refused()
                await self._refuse(writer, peer, str(exc), retry=True)
                return
            features = tuple(f for f in hello.features if f in SERVER_FEATURES)
            record, offset = session.dest.answer()
            writer.write(encode(Ready(record, offset, features)))
            session.stats.connected(peer)
            session.stats.generation_bytes = offset
            self.log.info(
                "%s pipe %s -> %s READY at %s%s",
                peer,
                hello.path,
                entry.local,
                "no record" if offset is None else f"offset {offset}",
                f", with {' '.join(features)}" if features else "",
            )
            if FEATURE_ZSTD in features:
                decoder.data_flags = DATA_ZSTD
            await self._stream(reader, writer, decoder, session, hello.heartbeat_s)
            self.log.info("%s pipe %s closed by the client", peer, entry.local)
        except TimeoutError:
            self.log.warning("%s dropped: handshake not completed in %.1f s", peer, self.opts.handshake_timeout_s)
        except ProtocolError as exc:
            self.stats.bad_frames_total += 1
            self.log.warning("%s dropped: protocol error: %s", peer, exc)
        except ConnectionLost as exc:
            self.log.info("%s connection lost: %s", peer, exc)
        except DestinationError as exc:
            self.stats.errors_total += 1
            self.log.error("%s dropped: %s", peer, exc)
        except OSError as exc:
            self.log.warning("%s dropped: %s", peer, describe_tls_error(exc))
        except asyncio.CancelledError:
            # Only this server cancels connection tasks (takeover, reload,
            # shutdown). Ending normally keeps 3.11's StreamReaderProtocol
            # from logging a traceback for a cancelled handler.
            self.log.info("%s connection closed by the server", peer)
        finally:
            if session is not None:
                if self.sessions.get(session.entry.local) is session:
                    del self.sessions[session.entry.local]
                    session.stats.disconnected()
                if session.dest is not None:
                    session.dest.close()

    async def _verify(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: Decoder,
        entry: Entry,
        peer: str,
    ) -> None:
        """Answer a verifying client: what the destination holds, then digests of
        the ranges it asks for, computed from the file itself off the event loop."""
        try:
            dest = Destination.inspect(entry.local, self.opts.state_dir)
        except DestinationError as exc:
            await self._refuse(writer, peer, str(exc))
            return
        held = None if dest is None else dest.held()
        if dest is None or held is None:
            writer.write(encode(Ready(None, None)))
            if dest is not None:
                dest.close()
            return
        record, first, offset = held
        writer.write(encode(Ready(record, offset, (), first)))
        self.log.info("%s verifies %s", peer, entry.local)
        try:
            for _ in range(MAX_VERIFY_REQUESTS):
                async with asyncio.timeout(self.opts.handshake_timeout_s):
                    try:
                        event = await next_event(reader, decoder)
                    except ConnectionLost:
                        return  # the client has its answer
                if not isinstance(event, Verify):
                    raise ProtocolError(f"expected VERIFY, got {type(event).__name__}")
                landed = dest.landed()
                if landed is None or event.start < first or event.end > landed:
                    raise ProtocolError(f"VERIFY of bytes {event.start}..{event.end} outside what is held")
                ranges = split_range(event.start, event.end, event.parts)
                digests = await asyncio.to_thread(digest_ranges, dest.fd, ranges, dest.base)
                writer.write(encode(Digest(tuple(digests))))
        finally:
            dest.close()

    async def _start_tls(self, writer: asyncio.StreamWriter) -> tuple[list[str], list[str]] | None:
        """Upgrade to TLS when configured; the client certificate's names when one is required."""
        if self.opts.tls is None:
            return None
        await writer.start_tls(self.opts.tls)
        if self.opts.tls.verify_mode != ssl.CERT_REQUIRED:
            return None
        return certificate_names(writer.get_extra_info("peercert"))

    async def _refuse(self, writer: asyncio.StreamWriter, peer: str, reason: str, retry: bool = False) -> None:
        self.stats.refusals_total += 1
        self.log.warning("%s REFUSE: %s", peer, reason)
        writer.write(encode(Refuse(reason, retry)))
        with contextlib.suppress(OSError):
            await writer.drain()

    async def _authorize(self, peer_ip: str, path: str, names: tuple[list[str], list[str]] | None) -> Entry | None:
        for entry in configuration.candidates(self.entries(), path):
            if names is not None:
                # Mutual TLS: the certificate, not the source address, says who the peer is.
                if configuration.host_matches_certificate(entry, *names):
                    return entry
                continue
            resolved: list[str] = []
            if entry.address is None:
                resolved = await self._resolve(entry.host)
            if configuration.host_matches(entry, peer_ip, resolved):
                return entry
        return None

    async def _resolve(self, host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            self.log.warning("cannot resolve %s: %s", host, exc)
            return []
        return [str(info[4][0]) for info in infos]

    async def _register(self, session: PipeSession) -> None:
        """Make ``session`` the pipe's only connection, ending an older one first."""
        local = session.entry.local
        lock = self.locks.setdefault(local, asyncio.Lock())
        async with lock:
            old = self.sessions.get(local)
            if old is not None and not old.task.done():
                self.log.info("%s takes over pipe %s from %s", session.peer, local, old.peer)
                old.task.cancel()
                await asyncio.wait({old.task}, timeout=TAKEOVER_TIMEOUT_S)
            self.sessions[local] = session

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: Decoder,
        session: PipeSession,
        heartbeat_s: float,
    ) -> None:
        """Append the client's DATA until it says goodbye, falls silent or breaks the protocol."""
        loop = asyncio.get_running_loop()
        dest, stats = session.dest, session.stats
        assert dest is not None
        dead_after = heartbeat_s * DEAD_AFTER_HEARTBEATS
        generations = 0
        acked: tuple[int, int] | None = None
        ack_timer: asyncio.TimerHandle | None = None
        decompressor = None
        if decoder.data_flags & DATA_ZSTD:
            from tcppipe.compression import Decompressor  # zstandard loads only when a client asks

            decompressor = Decompressor()
        count_lines = self.stats.count_lines

        def send_ack(heartbeat: bool = False) -> None:
            nonlocal acked, ack_timer
            ack_timer = None
            landed = dest.landed() or 0
            stats.generation_bytes = landed
            if writer.is_closing() or ((generations, landed) == acked and not heartbeat):
                return
            acked = (generations, landed)
            writer.write(encode(Ack(generations, landed)))

        def handle(event: Event) -> None:
            nonlocal generations, ack_timer
            if isinstance(event, Data):
                if generations == 0:
                    raise ProtocolError("DATA before GENERATION")
                payload = event.payload
                stats.wire_bytes_total += len(payload)
                if event.flags and decompressor is not None:
                    payload = decompressor.decode(payload, event.flags)
                dest.write(payload)
                stats.bytes_total += len(payload)
                stats.last_byte_at = time.time()
                if count_lines:
                    stats.lines_total += bytes(payload).count(b"\n")
            elif isinstance(event, Generation):
                old = dest.record
                if old is None or (old.dev, old.ino) != (event.ident.dev, event.ident.ino):
                    stats.generations += 1
                    stats.rotations += old is not None
                dest.begin_generation(event.ident, event.start)
                generations += 1
                send_ack()
            elif isinstance(event, Progress):
                stats.progress(event.end, event.queued)
            elif not isinstance(event, Ping):  # a PING only proves the client is alive
                raise ProtocolError(f"unexpected {type(event).__name__} while streaming")
            if ack_timer is None:
                ack_timer = loop.call_later(ACK_DELAY_S, send_ack)

        sink = FrameSink(decoder, writer.transport.get_protocol(), handle)
        # Bytes a client sent before READY (it should not) are in the stream reader.
        leftover = bytes(getattr(reader, "_buffer", b""))
        writer.transport.set_protocol(sink)
        if leftover:
            decoder.feed(leftover)
        sink.drain()
        try:
            for _ in range(1 << 62):
                finished, _pending = await asyncio.wait({sink.done}, timeout=heartbeat_s)
                if finished:
                    break
                silent = loop.time() - sink.heard_at
                if silent > dead_after:
                    raise ConnectionLost(f"no word from the client for {silent:.1f} s")
                send_ack(heartbeat=True)
                decoder.release_idle_buffer()
            sink.done.result()  # raises why the connection ended, if it failed
            send_ack()  # the client's goodbye: tell it exactly what landed
        finally:
            if ack_timer is not None:
                ack_timer.cancel()
            sink.finish(ConnectionLost("closed by the server"))
            if not sink.done.cancelled() and sink.done.done():
                sink.done.exception()  # retrieved: no "exception never retrieved" noise

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
        defined = {(e.host, e.remote, e.local) for e in self.config.entries}
        for local, session in list(self.sessions.items()):
            e = session.entry
            if (e.host, e.remote, e.local) not in defined:
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

    async def shutdown(self) -> None:
        """Cancel every connection and wait until each has closed its destination."""
        tasks = [t for t in self.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)


async def run_server(opts: ServerOptions, log: logging.Logger, on_listening: Any) -> None:
    """Listen and serve until SIGTERM/SIGINT."""
    _raise_fd_limit()
    holder = ConfigHolder(opts.config_path, log)
    holder.load_initial()
    server = Server(opts, log, holder)
    loop = asyncio.get_running_loop()
    listener = await asyncio.start_server(
        server.handle, host=opts.bind, port=opts.port, reuse_address=True, limit=READ_BYTES, backlog=512
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.hup.set)
    addresses = ", ".join(format_address(s.getsockname()) for s in listener.sockets)
    server.entries()
    controller = await _open_control_and_metrics(server)
    log.info("listening on %s with %d pipes from %s", addresses, len(holder.entries), opts.config_path)
    on_listening()
    signals = asyncio.create_task(server.serve_signals())
    try:
        await server.stop.wait()
        log.info("stopping")
    finally:
        listener.close()
        if controller is not None:
            controller.close()
            with contextlib.suppress(OSError):
                os.unlink(control.control_path(opts.state_dir, opts.port))
        signals.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await signals
        await server.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                await listener.wait_closed()


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
        serve_metrics(opts.metrics[0], opts.metrics[1], server.stats)
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
