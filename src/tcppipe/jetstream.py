"""NATS JetStream as a destination: the cluster connection, the streams, and one pipe's subject as a ``Store``.

Rule 1: a thin adapter. What a message says and what may be appended is
``ledger.py``'s (pure); this module only moves bytes between a pipe and its
subject, with the official client (nats-py).

Rule 2 (compare-and-append): every publish carries
``Nats-Expected-Last-Subject-Sequence``, the subject's last sequence as this
receiver last read or wrote it (0 for an empty subject). The stream rejects
it if anyone else appended since, so two receivers racing for one pipe can
never both append. A rejection, or a publish whose outcome is unknown (a
timeout: it may have landed), ends the connection with a retryable refusal
(``ledger.Contended``) after one re-read of the subject's last message; the
client resumes from the ledger as it stands, and no byte range is published
twice under one expected sequence.

Rule 3 (what an ACK means): a pipe's bytes count as landed only when
JetStream acknowledged their publish (with R3: stored on a quorum).
``JetStreamStore.write`` only queues; one publish per pipe is in flight at a
time, carrying up to ``ledger.message_limit`` queued bytes, so messages stay
under the server's ``max_payload`` and the record is always the last
acknowledged message.

Rule 4 (the streams): tcppiped creates a missing stream (file storage,
``--nats-replicas``, the config's subjects for it, direct gets on) and
checks an existing one: a stream whose limits could discard a subject's last
message would lose the ledger, and one that cannot take a configured subject
cannot serve it. Problems are one line each, at start and on reload.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from tcppipe.config import Entry, JetStreamTarget
from tcppipe.destination import DestinationError
from tcppipe.errors import EXIT_TEMPFAIL, TcppipeError, escape
from tcppipe.ledger import Contended, Continuity, LedgerError, MessageRecord, message_limit, parse_headers
from tcppipe.protocol import FINGERPRINT_BYTES, GenerationId
from tcppipe.stats import PipeStats

# JetStream's error codes for "wrong last sequence": another receiver appended first (10071), or
# (10164) the same, or a clustered stream still applying our own acknowledged append.
WRONG_LAST_SEQUENCE: Final = 10071
WRONG_LAST_SEQUENCE_CODES: Final = (WRONG_LAST_SEQUENCE, 10164)
SPURIOUS_REJECTIONS: Final = 3  # rejections with the ledger unmoved retried this often
SPURIOUS_RETRY_S: Final = 0.002
STREAM_NOT_FOUND: Final = 10059
PUBLISH_TIMEOUT_S: Final = 5.0
LINGER_S: Final = 0.002
API_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 2
RECONNECT_WAIT_S: Final = 0.5
# How long tcppiped tries to reach the cluster at start before it gives up (EX_TEMPFAIL: the unit restarts it).
CONNECT_BUDGET_S: Final = 3.0
ERROR_LOG_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0


class NatsUnavailable(TcppipeError):
    """The cluster cannot be reached or its streams cannot be used at start: a temporary failure."""

    exit_code = EXIT_TEMPFAIL


@dataclass(frozen=True)
class NatsOptions:
    servers: tuple[str, ...]
    replicas: int = 1
    creds: str | None = None
    tls_ca: str | None = None


def streams_of(entries: Iterable[Entry]) -> dict[str, set[str]]:
    """Each stream the config names and the subjects its entries write."""
    wanted: dict[str, set[str]] = {}
    for entry in entries:
        target = entry.jetstream
        if target is not None:
            wanted.setdefault(target.stream, set()).add(target.subject)
    return wanted


def subject_matches(pattern: str, subject: str) -> bool:
    """Does stream subject filter ``pattern`` (with ``*`` and ``>``) take ``subject``?"""
    want, have = pattern.split("."), subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or part not in ("*", have[i]):
            return False
    return len(want) == len(have)


def stream_problems(name: str, config: StreamConfig) -> list[str]:
    """Why stream ``name`` as configured cannot hold tcppipe's ledger (Rule 4), one line each."""
    problems: list[str] = []
    if config.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(f"stream {name} has retention {config.retention}: consumers would remove the ledger")
    if config.max_age:
        problems.append(f"stream {name} has max_age {config.max_age:g} s: an idle pipe's record would expire")
    if config.discard in (None, DiscardPolicy.OLD) and any(
        limit is not None and limit > 0 for limit in (config.max_msgs, config.max_bytes)
    ):
        problems.append(
            f"stream {name} discards old messages at max_msgs/max_bytes: an idle pipe's record would be discarded"
        )
    if config.discard_new_per_subject:
        problems.append(f"stream {name} has discard_new_per_subject: appends would be refused for good")
    if config.mirror is not None:
        problems.append(f"stream {name} is a mirror: it takes no publishes")
    if config.sealed:
        problems.append(f"stream {name} is sealed")
    return problems


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return escape(f"{exc.description or 'JetStream error'} (code {exc.err_code})")
    return escape(str(exc) or type(exc).__name__)


class JetStreamHub:
    """tcppiped's one connection to the cluster, its streams, and a store per JetStream pipe."""

    def __init__(self, opts: NatsOptions, log: logging.Logger) -> None:
        self.opts, self.log = opts, log
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.closing = False
        self._last_error, self._last_error_at = "", 0.0

    async def connect(self) -> None:
        """Connect (retried a few times), reconnecting by itself later; NatsUnavailable if it cannot."""
        tls = None
        if self.opts.tls_ca is not None:
            try:
                tls = ssl.create_default_context(cafile=self.opts.tls_ca)
            except (OSError, ssl.SSLError) as exc:
                raise NatsUnavailable(f"--nats-tls-ca {self.opts.tls_ca}: {exc}") from None

        async def error(exc: Exception) -> None:
            # The client retries forever; one line per distinct error each ERROR_LOG_S is enough.
            line, now = _describe(exc), time.monotonic()
            if line != self._last_error or now - self._last_error_at > ERROR_LOG_S:
                self._last_error, self._last_error_at = line, now
                self.log.warning("NATS: %s", line)

        async def disconnected() -> None:
            if not self.closing:
                self.log.warning("NATS: disconnected; reconnecting")

        async def reconnected() -> None:
            url = self.nc.connected_url if self.nc is not None else None
            self.log.info("NATS: reconnected to %s", escape(str(url.netloc if url else "?")))

        nc = NatsClient()
        try:
            # nats-py retries the initial connect as often as later reconnects (forever): bounded here.
            async with asyncio.timeout(CONNECT_BUDGET_S):
                await nc.connect(
                    servers=list(self.opts.servers),
                    name="tcppiped",
                    user_credentials=self.opts.creds,
                    tls=tls,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    # Typed int by nats-py, used as seconds for asyncio.sleep: a fraction is fine.
                    reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1,
                    error_cb=error,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                )
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            self.closing = True
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await nc.close()
            why = self._last_error or _describe(exc) or f"no answer in {CONNECT_BUDGET_S:.0f} s"
            raise NatsUnavailable(f"cannot connect to NATS {','.join(self.opts.servers)}: {why}") from None
        self.nc = nc
        self.js = self.nc.jetstream(timeout=API_TIMEOUT_S)

    @property
    def message_limit(self) -> int:
        return message_limit(self.nc.max_payload if self.nc is not None else 1024 * 1024)

    async def ensure_streams(self, entries: Iterable[Entry]) -> list[str]:
        """Create the config's missing streams, check the others, add missing subjects; the problems."""
        assert self.js is not None
        problems: list[str] = []
        for name, subjects in sorted(streams_of(entries).items()):
            try:
                info = await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(
                        StreamConfig(
                            name=name,
                            subjects=sorted(subjects),
                            retention=RetentionPolicy.LIMITS,
                            storage=StorageType.FILE,
                            num_replicas=self.opts.replicas,
                            allow_direct=True,
                        )
                    )
                    replicas = self.opts.replicas
                    self.log.info("NATS: created stream %s (R%d) for %d subjects", name, replicas, len(subjects))
                except (nats.errors.Error, TimeoutError) as exc:
                    problems.append(f"cannot create stream {name}: {_describe(exc)}")
                continue
            except (nats.errors.Error, TimeoutError) as exc:
                problems.append(f"cannot look up stream {name}: {_describe(exc)}")
                continue
            config = info.config
            found = stream_problems(name, config)
            if found:
                problems.extend(found)
                continue
            have = list(config.subjects or [])
            missing = sorted(s for s in subjects if not any(subject_matches(p, s) for p in have))
            if missing or not config.allow_direct:
                # READY reads a pipe's record with a direct get: allowed along with the subjects.
                config.subjects, config.allow_direct = have + missing, True
                try:
                    await self.js.update_stream(config)
                    self.log.info("NATS: stream %s now takes %s", name, ", ".join(missing) or "direct gets")
                except (nats.errors.Error, TimeoutError) as exc:
                    what = ", ".join(missing) or "direct gets"
                    problems.append(f"stream {name} cannot be changed to take {what}: {_describe(exc)}")
        return problems

    async def last_message(self, target: JetStreamTarget) -> tuple[int, MessageRecord | None]:
        """The subject's last sequence (0 if empty) and the record its message states."""
        assert self.js is not None
        try:
            try:
                msg = await self.js.get_last_msg(target.stream, target.subject, direct=True)
            except nats.errors.NoRespondersError:
                # A stream without direct gets (one tcppiped has not adopted yet): its API answers.
                msg = await self.js.get_last_msg(target.stream, target.subject)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                raise DestinationError(f"{target}: stream {target.stream} does not exist (yet)") from None
            return 0, None
        data = msg.data or b""
        try:
            return msg.seq or 0, parse_headers(msg.headers, len(data))
        except LedgerError as exc:
            raise DestinationError(f"{target}: message {msg.seq} is no tcppipe record: {exc}") from None

    async def open_store(self, target: JetStreamTarget, stats: PipeStats) -> JetStreamStore:
        """The pipe's subject as a store, its record read from the last message; DestinationError if unreachable."""
        if self.js is None:
            raise DestinationError(f"{target}: tcppiped was started without --nats")
        try:
            sequence, record = await self.last_message(target)
        except (nats.errors.Error, TimeoutError) as exc:
            raise DestinationError(f"{target}: cannot read the ledger: {_describe(exc)}") from None
        return JetStreamStore(self.js, target, sequence, record, self.message_limit, stats)

    async def messages(self, target: JetStreamTarget) -> AsyncIterator[tuple[int, MessageRecord, bytes]]:
        """Every message the subject holds now, in order: (sequence, record, payload)."""
        assert self.js is not None
        last, _ = await self.last_message(target)
        if last == 0:
            return
        sub = await self.js.subscribe(target.subject, stream=target.stream, ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=API_TIMEOUT_S)
                seq = msg.metadata.sequence.stream
                try:
                    record = parse_headers(msg.headers, len(msg.data))
                except LedgerError as exc:
                    raise DestinationError(f"{target}: message {seq} is no tcppipe record: {exc}") from None
                yield seq, record, msg.data
                if seq >= last:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()

    async def continuous(self, target: JetStreamTarget) -> AsyncIterator[tuple[int, MessageRecord, bytes, bool]]:
        """The subject's messages in order, each with whether it begins a generation;
        DestinationError at a gap or a duplicate offset (verify and export read the same way)."""
        continuity = Continuity()
        async for seq, record, data in self.messages(target):
            previous = continuity.last
            problem = continuity.check(record)
            if problem is not None:
                raise DestinationError(f"{target}: message {seq}: {problem}")
            yield seq, record, data, previous is None or record.start == 0

    async def held_generations(self, target: JetStreamTarget) -> list[HeldGeneration]:
        """The generations the subject holds, in order, each with its messages (``tcppipe verify``);
        DestinationError at a gap or a duplicate offset."""
        held: list[HeldGeneration] = []
        try:
            async for seq, record, _data, begins in self.continuous(target):
                if begins:
                    held.append(HeldGeneration(record.ident, record.igen, record.start, record.end))
                gen = held[-1]
                gen.ident, gen.end = record.ident, record.end  # a longer fingerprint as the generation grew
                gen.messages.append((seq, record.start, record.end))
            for gen in held[:-1]:
                await self._name_by_held_head(target, gen)
        except (nats.errors.Error, TimeoutError) as exc:
            raise DestinationError(f"{target}: cannot read the subject: {_describe(exc)}") from None
        return held

    async def _name_by_held_head(self, target: JetStreamTarget, gen: HeldGeneration) -> None:
        """Name an earlier generation by the head the subject holds of it, as a file destination
        names its journal's spans (``destination.py`` Rule 3b): its messages carry the client's
        head as the client last saw it, bytes that may never have landed (a tail deleted while
        both ends were down). Not where the subject lacks the head (the span starts later)."""
        want = min(gen.end, FINGERPRINT_BYTES)
        if gen.first > 0 or want == gen.ident.fp_len:
            return
        (digest,) = await self.digest_ranges(target, gen, [(0, want)])
        gen.ident = GenerationId(gen.ident.dev, gen.ident.ino, want, digest)

    async def digest_ranges(
        self, target: JetStreamTarget, gen: HeldGeneration, ranges: Sequence[tuple[int, int]]
    ) -> list[str]:
        """sha256 of bytes [a, b) of generation ``gen`` for each range, from the stream's own messages
        (a range past what is held hashes a marker too, as ``verify.digest_ranges`` does)."""
        assert self.js is not None
        cached: tuple[int, bytes] | None = None
        digests = []
        for a, b in ranges:
            h = hashlib.sha256()
            position = a
            first = max(0, bisect.bisect_right([m[1] for m in gen.messages], a) - 1)
            for seq, start, end in gen.messages[first:]:
                if position >= b:
                    break
                if end <= position:
                    continue
                if cached is None or cached[0] != seq:
                    try:
                        msg = await self.js.get_msg(target.stream, seq, direct=True)
                    except (nats.errors.Error, TimeoutError) as exc:
                        raise DestinationError(f"{target}: cannot read message {seq}: {_describe(exc)}") from None
                    cached = (seq, msg.data or b"")
                data = cached[1]
                h.update(data[position - start : min(b, end) - start])
                position = min(b, end)
            if position < b:
                h.update(b"\0short")
            digests.append(h.hexdigest())
        return digests

    async def close(self) -> None:
        """Close the connection (bounded: a cluster that does not answer cannot hold up a shutdown)."""
        self.closing = True
        if self.nc is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.nc.close()
            self.nc = None


@dataclass
class HeldGeneration:
    """Bytes [``first``, ``end``) of generation ``ident`` in a subject, and its messages (seq, start, end)."""

    ident: GenerationId
    igen: int | None
    first: int
    end: int
    messages: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class JetStreamStore:
    """One pipe's subject as a ``ledger.Store``: bytes queued by ``write``, published in order by ``run``."""

    js: JetStreamContext
    target: JetStreamTarget
    sequence: int  # the subject's last sequence, as last read or written (Rule 2)
    head: MessageRecord | None  # what that message states
    limit: int
    stats: PipeStats
    on_landed: Callable[[], None] = lambda: None
    current: GenerationId | None = None
    igen: int | None = None
    end: int | None = None  # landed bytes of ``current`` (acknowledged)
    pending: bytearray = field(default_factory=bytearray)
    in_flight: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    publish_latency_s: float = 0.0
    last_size: int = 0  # bytes of the last message published

    def __post_init__(self) -> None:
        if self.head is not None:
            self.current, self.igen, self.end = self.head.ident, self.head.igen, self.head.end

    @property
    def record(self) -> GenerationId | None:
        return self.current

    def landed(self) -> int | None:
        return self.end

    def answer(self) -> tuple[GenerationId | None, int | None]:
        return self.current, self.end

    def busy(self) -> bool:
        """Bytes queued or in flight, not yet acknowledged."""
        return bool(self.pending) or self.in_flight > 0

    def begin_generation(self, ident: GenerationId, start: int, igen: int | None = None) -> None:
        # Only ever called with nothing queued (the receiver holds a GENERATION until then), so the
        # landed count always belongs to the generation just begun.
        assert not self.busy(), "GENERATION with bytes of the previous one unacknowledged"
        if ident == self.current and start == self.end:
            return
        self.current, self.end = ident, start
        if self.head is None or (self.head.ident.dev, self.head.ident.ino) != (ident.dev, ident.ino) or start == 0:
            self.igen = igen

    def write(self, data: bytes | memoryview) -> None:
        if self.current is None:
            raise DestinationError(f"{self.target}: DATA before any GENERATION")  # pragma: no cover
        self.pending += data
        self.wake.set()

    def reopen(self) -> bool:
        return False  # nothing to reopen: the stream is the destination

    def close(self) -> None:
        self.pending.clear()

    async def run(self) -> None:
        """Publish what is queued, one message in flight, until cancelled; Contended when the ledger moved."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                await self._linger()
                await self.publish_next()

    async def _linger(self) -> None:
        """In a catch-up (the last message was large), a message under half full waits up to LINGER_S
        for more: with one publish in flight, fewer larger messages are what keeps the rate up. A pipe
        that sends a line now and then never waits."""
        if len(self.pending) >= self.limit // 2 or self.last_size < self.limit // 4:
            return
        deadline = asyncio.get_running_loop().time() + LINGER_S
        while len(self.pending) < self.limit // 2:
            self.wake.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.wake.wait()

    async def _ledger_unmoved(self) -> bool:
        """Is the subject's last sequence still the one this store expects (re-read after a rejection)?"""
        try:
            msg = await self.js.get_last_msg(self.target.stream, self.target.subject, direct=True)
        except nats.js.errors.NotFoundError:
            return self.sequence == 0
        except (nats.errors.Error, TimeoutError, OSError):
            return False
        return msg.seq == self.sequence

    async def publish_next(self) -> None:
        """Publish the next message's worth of what is queued (compare-and-append); Contended if it did not land."""
        assert self.current is not None
        assert self.end is not None
        size = min(len(self.pending), self.limit)
        # Taken off the queue now, so the receiver reads on while this publish is in flight.
        payload = bytes(self.pending[:size])
        del self.pending[:size]
        record = MessageRecord(self.current, self.igen, self.end, self.end + size)
        self.in_flight = self.last_size = size
        started = time.monotonic()
        for attempt in range(SPURIOUS_REJECTIONS + 1):
            try:
                ack = await self.js.publish(
                    self.target.subject,
                    payload,
                    timeout=PUBLISH_TIMEOUT_S,
                    stream=self.target.stream,
                    headers=record.headers(self.sequence),
                )
                break
            except nats.js.errors.APIError as exc:
                if exc.err_code not in WRONG_LAST_SEQUENCE_CODES:
                    why = f"the publish was refused: {_describe(exc)}"
                    raise Contended(f"{self.target}: {why}; the client resumes from the ledger") from None
                if attempt < SPURIOUS_REJECTIONS and await self._ledger_unmoved():
                    # A clustered stream can reject an append whose predecessor it has acknowledged
                    # but not yet applied: the ledger is as we left it, so the same compare-and-append
                    # is tried again (it can still land at most once).
                    await asyncio.sleep(SPURIOUS_RETRY_S * (attempt + 1))
                    continue
                self.stats.rejected_appends += 1
                why = "another receiver appended to it"
                raise Contended(f"{self.target}: {why}; the client resumes from the ledger") from None
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                why = f"the publish's outcome is unknown ({_describe(exc)})"
                raise Contended(f"{self.target}: {why}; the client resumes from the ledger") from None
        else:  # pragma: no cover - every attempt ends in break, continue or raise
            raise Contended(f"{self.target}: rejected {SPURIOUS_REJECTIONS + 1} times")
        self.in_flight = 0
        self.publish_latency_s = time.monotonic() - started
        self.stats.publishes += 1
        self.sequence, self.head, self.end = ack.seq, record, record.end
        self.on_landed()


class ExportError(TcppipeError):
    """The subject holds something that is not one contiguous ledger (the message names the sequence)."""


async def export_subject(
    hub: JetStreamHub,
    target: JetStreamTarget,
    out: Callable[[bytes], object],
    generation: int | None = None,
    from_offset: int = 0,
) -> int:
    """Write every byte the subject holds to ``out``, generations in order (only the ``generation``-th
    from 1 if given; in each, bytes from ``from_offset`` on); the bytes written. ExportError at a gap
    or a duplicate offset, after the bytes before it."""
    ordinal = 0
    written = 0
    try:
        async for _seq, record, data, begins in hub.continuous(target):
            if begins:
                ordinal += 1
            if generation is not None and ordinal != generation:
                if ordinal > generation:
                    break
                continue
            if record.end <= from_offset:
                continue
            out(data[max(0, from_offset - record.start) :])
            written += record.end - max(record.start, from_offset)
    except (nats.errors.Error, TimeoutError) as exc:
        raise NatsUnavailable(f"{target}: cannot read the subject: {_describe(exc)}") from None
    except DestinationError as exc:
        raise ExportError(str(exc)) from None
    return written
