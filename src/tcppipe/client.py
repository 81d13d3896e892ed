"""tcppipe's asyncio adapter: connect, handshake, send, reconnect.

Rule 1: thin. What to send and where to resume is ``tailer.py``'s decision;
the wire format is ``protocol.py``'s. This file moves bytes and waits.

Rule 2: signal handlers only set flags and wake the send loop; the loop does
the work, so repeated signals coalesce harmlessly.

Rule 3: before the first READY every failure ends the program with its exit
status; after it, a lost connection is retried forever with capped back-off,
and only a REFUSE (the pipe was removed) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tcppipe import state
from tcppipe.errors import ConnectionLost, Refused, TcppipeError, Unreachable, describe_os_error
from tcppipe.origin import OriginGeneration, find_generation, matches, open_origin
from tcppipe.progress import CatchUp
from tcppipe.protocol import (
    DEAD_AFTER_HEARTBEATS,
    DEFAULT_HEARTBEAT_S,
    FEATURE_PROGRESS,
    FEATURE_ZSTD,
    MAX_DATA_BYTES,
    PURPOSE_VERIFY,
    Ack,
    Decoder,
    Digest,
    Generation,
    GenerationId,
    Hello,
    Ping,
    Progress,
    ProtocolError,
    Ready,
    Refuse,
    Verify,
    data_header,
    encode,
    split_range,
)
from tcppipe.sockets import close_writer, next_event, tune
from tcppipe.state import PipeKey
from tcppipe.status import DRAINING, RECONNECTING, REFUSED, STREAMING
from tcppipe.tailer import Tailer
from tcppipe.tls import describe_tls_error
from tcppipe.verify import Bisector, ChangedWhileVerifying, digest_ranges

if TYPE_CHECKING:
    from tcppipe.compression import Compressor

CONNECT_TIMEOUT_S: Final = 10.0
HANDSHAKE_TIMEOUT_S: Final = 15.0
STATUS_INTERVAL_S: Final = 1.0
PROGRESS_INTERVAL_S: Final = 1.0
GOODBYE_TIMEOUT_S: Final = 5.0
# The server hashes up to the whole destination for one answer.
DIGEST_TIMEOUT_S: Final = 600.0
MAX_VERIFY_ROUNDS: Final = 32
# Chunks sent per wake-up before looking at signals and rotation again.
MAX_CHUNKS_PER_TICK: Final = 64
ROTATION_CHECK_CHUNKS: Final = 16
# DATA payloads up to this size are copied behind their header and sent in one write.
COALESCE_BYTES: Final = 64 * 1024


_early_hups: list[int] = []


def catch_early_hup() -> None:
    """Record a SIGHUP that arrives before the event loop handles signals.

    The default action would end the process; logrotate may send HUP as soon
    as ``tcppipe -I`` finds the new pid. ``Client.run`` replays it.
    """
    signal.signal(signal.SIGHUP, lambda signum, frame: _early_hups.append(signum))


class Backoff:
    """Capped exponential back-off with jitter, reset by a successful handshake."""

    def __init__(self, first_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self._next = first_s
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = self._next * self._rng.uniform(0.8, 1.0)
        self._next = min(self._next * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        self._next = self.first_s


@dataclass(frozen=True)
class ClientOptions:
    key: PipeKey
    interval_s: float
    full: bool
    bind: str | None
    state_dir: str
    grace_s: float
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    tls: ssl.SSLContext | None = None
    compress: bool = False
    show_progress: bool = False


class Watcher:
    """Wakes the send loop on inotify events for FILE, its directory and open generations."""

    def __init__(self, path: str, wake: Callable[[], None], log: logging.LoggerAdapter[Any]) -> None:
        self._wake = wake
        self._inotify: Any = None
        self._watched: set[int] = set()
        try:
            import inotify_simple

            flags = inotify_simple.flags
            self._file_mask = flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE | flags.MOVE_SELF | flags.DELETE_SELF
            # No MODIFY on the directory: every append to every file beside FILE would wake
            # us (1,000 pipes from one directory made 1,000,000 wake-ups a second).
            # Appends come from the watches on the open generations.
            self._dir_mask = flags.CREATE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
            self._inotify = inotify_simple.INotify(nonblocking=True)
            asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_readable)
            self._inotify.add_watch(os.path.dirname(path) or "/", self._dir_mask)
        except (ImportError, OSError) as exc:
            log.warning("no file-change events (%s); polling every -t seconds", exc)
            self.close()

    def watch_file(self, gen: OriginGeneration) -> None:
        """Follow ``gen``'s inode even after it is renamed out of the directory."""
        if self._inotify is None or gen.ino in self._watched:
            return
        with contextlib.suppress(OSError):
            self._inotify.add_watch(f"/proc/self/fd/{gen.fd}", self._file_mask)
            self._watched.add(gen.ino)

    def fileno(self) -> int:
        """The inotify fd (-1 when polling): readable while events wait."""
        return -1 if self._inotify is None else int(self._inotify.fileno())

    def _on_readable(self) -> None:
        # Which event it was does not matter (each wake-up looks at everything): drain unparsed.
        with contextlib.suppress(OSError):
            for _ in range(64):
                if len(os.read(self._inotify.fileno(), 65536)) < 4096:
                    break
        self._wake()

    def close(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None


class Client:
    def __init__(self, opts: ClientOptions, logger: logging.Logger, on_ready: Callable[[], None]) -> None:
        self.opts = opts
        key = opts.key
        self.log = logging.LoggerAdapter(logger, {})
        self.prefix = f"[{key.host}:{key.port} {key.path}]"
        self.tailer = Tailer(key.path, opts.grace_s)
        self.on_ready = on_ready
        self.wake = asyncio.Event()
        self.stopping = False
        # Set at the first READY: from then on failures mean "reconnect", not "exit".
        self.established = False
        self.status_path = key.status_path(opts.state_dir)
        self._status_saved_at = 0.0
        self._status_last: dict[str, Any] | None = None
        self._status_shape: list[tuple[int, int]] = []
        self._status_timer: asyncio.TimerHandle | None = None
        self._announced: list[OriginGeneration] = []
        self.watcher: Watcher | None = None
        self.state = RECONNECTING
        self.generations_sent: set[tuple[int, int]] = set()
        self.bytes_sent = 0
        self.wire_bytes = 0
        self.last_byte_at: float | None = None
        self.compressor: Compressor | None = None
        self.report_progress = False
        self._progress_sent: tuple[int, int] | None = None
        self._progress_at = 0.0
        self.catch_up = CatchUp() if opts.show_progress else None

    def say(self, level: int, message: str, *args: object) -> None:
        self.log.log(level, f"{self.prefix} {message}", *args)

    # -- signals -------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def request_hup(self) -> None:
        self.tailer.hup_requested = True
        self.wake.set()

    # -- main loop -------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_hup)
        if _early_hups:
            _early_hups.clear()
            self.request_hup()
        self.tailer.open(time.monotonic())
        watcher = Watcher(self.opts.key.path, self.wake.set, self.log)
        self.watcher = watcher
        try:
            await self._connect_forever()
        finally:
            watcher.close()
            if self._status_timer is not None:
                self._status_timer.cancel()
            self._save_status(force=True)
            self.tailer.close()

    async def _connect_forever(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            first = not self.established
            try:
                reader, writer = await self._connect()
            except OSError as exc:
                reason = describe(exc)
                if first:
                    key = self.opts.key
                    raise Unreachable(f"cannot connect to {key.host} port {key.port}: {reason}") from None
                delay = backoff.next_delay()
                self.say(logging.WARNING, "cannot connect (%s); retrying in %.1f s", reason, delay)
                await self._sleep(delay)
                continue
            try:
                await self._session(reader, writer, first)
            except (ConnectionLost, ProtocolError, OSError, TimeoutError) as exc:
                if not self.established:
                    reason = describe(exc)
                    if self.opts.tls is not None and isinstance(exc, ConnectionLost | ConnectionError):
                        # TLS 1.3 checks our certificate after our side of the handshake is
                        # done; the server's alert is often lost to the reset that follows.
                        reason += " right after the TLS handshake (the server may have rejected our certificate)"
                    raise Unreachable(f"connection to {self.opts.key.host} failed: {reason}") from None
                delay = backoff.next_delay()
                self.say(logging.WARNING, "connection lost (%s); reconnecting in %.1f s", describe(exc), delay)
                await self._sleep(delay)
                continue
            finally:
                await close_writer(writer)
            backoff.reset()

    async def _sleep(self, delay: float) -> None:
        """Wait out a back-off while still following rotations: several can happen
        while disconnected, and each generation must be opened before the next
        one replaces it at FILE."""
        deadline = time.monotonic() + delay
        for _ in range(1 << 62):
            self.wake.clear()
            self._follow_rotation()
            remaining = deadline - time.monotonic()
            if self.stopping or remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, self.opts.interval_s)):
                    await self.wake.wait()

    def _follow_rotation(self) -> None:
        """Notice a replaced or truncated FILE, watch the new generation, record it in the status."""
        self.tailer.poll_rotation(time.monotonic())
        for note in self.tailer.take_notices():
            self.say(logging.INFO, "%s", note)
        if self.watcher is not None:
            for gen in self.tailer.queue:
                self.watcher.watch_file(gen)
        self._save_status()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await connect(self.opts.key, self.opts.bind, self.opts.tls)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool) -> None:
        tune(writer)
        decoder = Decoder()
        features = (FEATURE_PROGRESS, FEATURE_ZSTD) if self.opts.compress else (FEATURE_PROGRESS,)
        writer.write(encode(Hello(self.opts.key.path, features, self.opts.heartbeat_s)))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            answer = await next_event(reader, decoder)
        if isinstance(answer, Refuse):
            if answer.retry and not first:
                # A defined pipe whose destination cannot be opened right now
                # (disk full, permissions): keep retrying, as after a lost connection.
                self._set_state(REFUSED)
                raise ConnectionLost(f"server cannot take the pipe now: {answer.reason}")
            raise Refused(f"server refused the pipe: {answer.reason}")
        if not isinstance(answer, Ready):
            raise ProtocolError(f"expected READY or REFUSE, got {type(answer).__name__}")
        if first:
            fallback, queued = self._last_status()
        else:
            # Reconnecting: what this process saw acknowledged is the fallback.
            fallback, queued = (self.tailer.sending.ident(), self.tailer.sending.acked), []
        resumed = self.tailer.resume(
            answer.record, answer.offset, fallback, time.monotonic(), first, self.opts.full and first, queued
        )
        self.say(logging.INFO, "READY: sending %s from byte %d, %s", resumed.path, resumed.position, resumed.how)
        self.compressor = None
        if FEATURE_ZSTD in answer.features:
            from tcppipe import compression  # zstandard loads only for -z

            self.compressor = compression.Compressor()
        if self.opts.compress and self.compressor is None:
            self.say(logging.WARNING, "the server does not take compressed data; sending it as it is")
        self.report_progress = FEATURE_PROGRESS in answer.features
        self._set_state(STREAMING)
        if first:
            self.established = True
            self.on_ready()
        self._announced = []
        self.last_heard = time.monotonic()
        receiver = asyncio.create_task(self._receive(reader, decoder))
        try:
            await self._send(writer, receiver)
            await self._say_goodbye(writer, receiver)
        finally:
            self._set_state(RECONNECTING)
            if not receiver.done():
                receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver

    async def _say_goodbye(self, writer: asyncio.StreamWriter, receiver: asyncio.Task[None]) -> None:
        """Half-close and wait (bounded) for the server's final ACK, so the
        status file records exactly what landed."""
        with contextlib.suppress(OSError, RuntimeError):
            await writer.drain()
            if not writer.can_write_eof():
                return  # TLS cannot half-close: the server's record is the authority anyway
            writer.write_eof()
        await asyncio.wait({receiver}, timeout=GOODBYE_TIMEOUT_S)

    def _last_status(self) -> tuple[tuple[GenerationId, int] | None, list[GenerationId]]:
        """From the previous run's status file: where it stood (the fallback when the
        server has no record) and the generations it held, oldest first."""
        raw = state.read_json(self.status_path) or {}
        queued: list[GenerationId] = []
        for item in raw.get("queue", []):
            with contextlib.suppress(ProtocolError):
                queued.append(GenerationId.from_json(item))
        offset = raw.get("offset")
        try:
            ident = GenerationId.from_json(raw.get("generation"))
        except ProtocolError:
            return None, queued
        return ((ident, offset) if isinstance(offset, int) and offset >= 0 else None), queued

    async def _receive(self, reader: asyncio.StreamReader, decoder: Decoder) -> None:
        try:
            while True:
                event = await next_event(reader, decoder)
                self.last_heard = time.monotonic()
                if isinstance(event, Ack):
                    if 0 < event.generations <= len(self._announced):
                        self.tailer.acknowledged(self._announced[event.generations - 1], event.offset)
                        self._save_status()
                elif isinstance(event, Refuse):
                    raise Refused(f"server ended the pipe: {event.reason}")
                else:
                    raise ProtocolError(f"unexpected {type(event).__name__} from the server")
        finally:
            self.wake.set()

    async def _send(self, writer: asyncio.StreamWriter, receiver: asyncio.Task[None]) -> None:
        tailer = self.tailer
        heartbeat = self.opts.heartbeat_s
        dead_after = heartbeat * DEAD_AFTER_HEARTBEATS
        last_sent = time.monotonic()
        self._progress_sent, self._progress_at = None, 0.0
        while not self.stopping:
            self.wake.clear()
            if receiver.done():
                receiver.result()  # raises why it ended
                raise ConnectionLost("server closed the connection")
            now = time.monotonic()
            if now - self.last_heard > dead_after:
                raise ConnectionLost(f"no word from the server for {now - self.last_heard:.1f} s")
            self._follow_rotation()
            self._show_catch_up()
            busy = False
            for sent in range(MAX_CHUNKS_PER_TICK):
                if sent and sent % ROTATION_CHECK_CHUNKS == 0:
                    # During a long catch-up, look for rotations often: two quick ones
                    # between checks would hide the middle generation.
                    self._follow_rotation()
                chunk = tailer.next_chunk(now, MAX_DATA_BYTES)
                if chunk is None:
                    break
                self._write_chunk(writer, *chunk)
                self._show_catch_up()
                async with asyncio.timeout(dead_after):
                    await writer.drain()
                busy = True
            for note in tailer.take_notices():
                self.say(logging.INFO, "%s", note)
            now = time.monotonic()
            if busy:
                self.last_byte_at = time.time()
            self._set_state(DRAINING if len(tailer.queue) > 1 else STREAMING)
            if self.report_progress:
                self._report_progress(writer, now)
            self._save_status()
            if busy:
                last_sent = now
                continue
            if now - last_sent >= heartbeat:
                writer.write(encode(Ping()))
                last_sent = now
            timeout = min(self.opts.interval_s, heartbeat - (now - last_sent))
            grace = tailer.next_wakeup(now)
            if grace is not None:
                timeout = min(timeout, grace + 0.01)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.001)):
                    await self.wake.wait()

    def _write_chunk(self, writer: asyncio.StreamWriter, gen: OriginGeneration, data: bytes) -> None:
        """Frame one chunk (after a GENERATION if it starts one) and hand it to the transport."""
        if not self._announced or self._announced[-1] is not gen:
            writer.write(encode(Generation(gen.ident(), gen.position)))
            self._announced.append(gen)
            self.generations_sent.add((gen.dev, gen.ino))
        payload, flags = (data, 0) if self.compressor is None else self.compressor.encode(data)
        if len(payload) <= COALESCE_BYTES:
            # One write, one segment: a lone header would leave as its own packet (TCP_NODELAY).
            writer.write(data_header(payload, flags) + payload)
        else:
            writer.write(data_header(payload, flags))
            writer.write(payload)
        self.tailer.advance(gen, len(data))
        self.bytes_sent += len(data)
        self.wire_bytes += len(payload)

    def _report_progress(self, writer: asyncio.StreamWriter, now: float) -> None:
        """PROGRESS when the origin's end or the queue changed: a new queue at once, a new end
        at most once a second (a busy origin would otherwise add a frame per tick)."""
        shape = self._progress()
        last = self._progress_sent
        due = last is None or shape[1] != last[1] or now - self._progress_at >= PROGRESS_INTERVAL_S
        if shape != last and due:
            writer.write(encode(Progress(*shape)))
            self._progress_sent, self._progress_at = shape, now

    def _origin_ends(self) -> list[int]:
        try:
            return [g.size() for g in self.tailer.queue]
        except OSError:
            return [g.position for g in self.tailer.queue]

    def _progress(self) -> tuple[int, int]:
        """(end of the generation being sent, newer generations waiting)."""
        sending = self.tailer.sending
        try:
            end = sending.size()
        except OSError:
            end = sending.position
        return end, len(self.tailer.queue) - 1

    def _show_catch_up(self) -> None:
        """The progress line on a terminal, during a long catch-up."""
        if self.catch_up is None:
            return
        queue = self.tailer.queue
        behind = sum(max(0, end - g.position) for end, g in zip(self._origin_ends(), queue, strict=True))
        line = self.catch_up.update(time.monotonic(), self.bytes_sent, behind)
        if line is not None:
            with contextlib.suppress(OSError):
                sys.stderr.write(line)
                sys.stderr.flush()

    def _set_state(self, new: str) -> None:
        if new != self.state:
            self.state = new
            self._save_status(force=True)

    def _deferred_save(self) -> None:
        self._status_timer = None
        if self.tailer.queue:
            self._save_status()

    def _save_status(self, force: bool = False) -> None:
        now = time.monotonic()
        held = [g for g in self.tailer.retired + self.tailer.queue if not g.closed]
        shape = [(g.dev, g.ino) for g in held]
        # A change of generations is saved at once: a restart must know them all.
        # Otherwise at most once a second, and a skipped save is done later, not dropped.
        new_shape = shape != self._status_shape
        if not force and not new_shape and now - self._status_saved_at < STATUS_INTERVAL_S:
            if self._status_timer is None:
                delay = STATUS_INTERVAL_S - (now - self._status_saved_at)
                self._status_timer = asyncio.get_running_loop().call_later(delay, self._deferred_save)
            return
        if not self.tailer.queue:
            return
        gen = self.tailer.sending
        try:
            ident = gen.ident()
            queue = [g.ident().to_json() for g in held]
        except OSError:
            return
        self._status_shape = shape
        status = {
            "pid": os.getpid(),
            "file": self.opts.key.path,
            "host": self.opts.key.host,
            "port": self.opts.key.port,
            "generation": ident.to_json(),
            "offset": gen.acked,
            "sent": gen.position,
            "queue": queue,
            "state": self.state,
            "origin_end": _size_or_none(gen),
            "generations": len(self.generations_sent),
            "last_byte_at": self.last_byte_at,
            "bytes_sent": self.bytes_sent,
            "wire_bytes": self.wire_bytes,
        }
        self._status_saved_at = now
        if status == self._status_last:
            return
        try:
            # Durable when the generations held change: a restart after a power loss needs them all.
            state.write_json_atomically(self.status_path, status, durable=new_shape or force)
            self._status_last = status
        except OSError as exc:
            self.say(logging.WARNING, "cannot write status file %s: %s", self.status_path, describe_os_error(exc))


def _size_or_none(gen: OriginGeneration) -> int | None:
    try:
        return gen.size()
    except OSError:
        return None


async def connect(
    key: PipeKey, bind: str | None, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the server of ``key`` (TLS when ``tls`` is given), bounded in time."""
    local = (bind, 0) if bind else None
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        return await asyncio.open_connection(
            key.host,
            key.port,
            local_addr=local,
            limit=MAX_DATA_BYTES,
            ssl=tls,
            server_hostname=key.host if tls else None,
        )


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return describe_tls_error(exc)
    return str(exc) or type(exc).__name__


async def run_client(opts: ClientOptions, logger: logging.Logger, on_ready: Callable[[], None]) -> None:
    """Run one pipe until stopped (returns) or until it cannot go on (raises TcppipeError)."""
    await Client(opts, logger, on_ready).run()


async def verify_pipe(key: PipeKey, bind: str | None, tls: ssl.SSLContext | None) -> tuple[bool, str]:
    """Compare what the destination holds of its current generation with the
    origin's bytes: (exact, what to print)."""
    try:
        reader, writer = await connect(key, bind, tls)
    except OSError as exc:
        raise Unreachable(f"cannot connect to {key.host} port {key.port}: {describe(exc)}") from None
    fd = -1
    try:
        tune(writer)
        decoder = Decoder()
        writer.write(encode(Hello(key.path, purpose=PURPOSE_VERIFY)))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            answer = await next_event(reader, decoder)
        if isinstance(answer, Refuse):
            raise Refused(f"server refused: {answer.reason}")
        if not isinstance(answer, Ready):
            raise ProtocolError(f"expected READY or REFUSE, got {type(answer).__name__}")
        if answer.record is None or answer.offset is None:
            return False, "nothing to verify: tcppiped has no record of this pipe yet"
        record, first, end = answer.record, answer.first or 0, answer.offset
        found = _find_origin(key.path, record)
        if found is None:
            return False, (
                f"the generation the destination holds (inode {record.ino}) is neither {key.path} "
                "nor beside it any more (rotated away?)"
            )
        path, fd = found
        size = os.fstat(fd).st_size
        bisector = Bisector(first, min(end, size))
        for _ in range(MAX_VERIFY_ROUNDS):
            request = bisector.request()
            if request is None:
                break
            writer.write(encode(Verify(*request)))
            async with asyncio.timeout(DIGEST_TIMEOUT_S):
                reply = await next_event(reader, decoder)
            if not isinstance(reply, Digest):
                raise ProtocolError(f"expected DIGEST, got {type(reply).__name__}")
            ours = await asyncio.to_thread(digest_ranges, fd, split_range(*request))
            bisector.answer(reply.digests, ours)
        if bisector.differs_at is not None:
            held = f"the destination holds bytes {first}..{end}"
            return False, f"differs at byte {bisector.differs_at} of {path} ({held})"
        if size < end:
            return False, f"differs at byte {size}: the destination holds {end - size} bytes more than {path} has"
        where = f"bytes {first}..{end} of {path}" + ("" if path == key.path else f" (rotated from {key.path})")
        pending = f"; {size - end} bytes of the origin not landed yet" if size > end else ""
        return True, f"exact: {end - first} bytes ({where}){pending}"
    except ChangedWhileVerifying as exc:
        return False, f"cannot tell: {exc}"
    except (ConnectionLost, OSError, TimeoutError) as exc:
        raise Unreachable(f"verify with {key.host} failed: {describe(exc)}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        await close_writer(writer)


def _find_origin(path: str, record: GenerationId) -> tuple[str, int] | None:
    """FILE if it is the recorded generation, else the file beside it that is."""
    with contextlib.suppress(OSError, TcppipeError):
        fd = open_origin(path)
        if matches(record, fd):
            return path, fd
        os.close(fd)
    return find_generation(os.path.dirname(path) or "/", record)
