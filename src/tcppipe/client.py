"""tcppipe's asyncio adapter: a file-side task, and connect, handshake, send, reconnect.

Rule 1: thin. What to send and where to resume is ``pipe_client.py``'s
decision (over ``tailer.py`` and ``session.py``); this file moves bytes, time
and descriptors, and waits.

Rule 2: two tasks per pipe. The file side (``_file_side``) follows FILE on
every inotify event and -t tick, whatever the connection is doing; the
connection loop connects, hands the core what arrives and writes what it
returns. Both run on one event loop, so the core needs no lock.

Rule 3 (signals): handlers only set flags and wake the tasks; the tasks do
the work, so repeated signals coalesce harmlessly. A stop ends a connect or a
handshake at once; while streaming it says goodbye first.

Rule 4: before the first READY every failure ends the program with its exit
status; after it, a lost connection is retried forever with capped back-off,
and only a REFUSE (the pipe was removed) ends it.

Rule 5 (receivers, ``-h a,b,c``): which address is tried next is
``receivers.Rotation``'s decision. A failed connection (or a dead or stalled
peer, or before the first READY a refusal for now) moves on to the next
address at once; the back-off of Rule 4 comes once a whole round has failed,
and before the first READY a whole round's failure is the end (Unreachable
as with one host; RefusedForNow if a receiver said so). Each READY, from
whichever receiver, says where to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import random
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from tcppipe import daemon
from tcppipe.checkpoint import StatusFile, load_history
from tcppipe.errors import ConnectionLost, RefusedForNow, TcppipeError, Unreachable, UsageError, describe_os_error
from tcppipe.origin import OriginGeneration
from tcppipe.pipe_client import BATCH_BYTES, PipeClient
from tcppipe.progress import CatchUp
from tcppipe.protocol import (
    DEAD_AFTER_HEARTBEATS,
    DEFAULT_HEARTBEAT_S,
    MAX_DATA_BYTES,
    ProtocolError,
)
from tcppipe.receivers import Receiver, Rotation, Target, describe_pipe_host, parse_receivers
from tcppipe.sockets import DIRECT_SEND, READ_BYTES, BorrowedSocket, close_writer, tune, writable
from tcppipe.state import PipeKey
from tcppipe.tailer import RESUMED_AT_ACKED, Finished
from tcppipe.tasks import TaskReaper, log_loop_errors
from tcppipe.tls import describe_tls_error
from tcppipe.watch import close_inotify

CONNECT_TIMEOUT_S: Final = 10.0
# --privileged-port picks a free source port in this range (as rsh and NFS clients do).
PRIVILEGED_PORTS: Final = (600, 1024)
MAX_PORT_TRIES: Final = 64
HANDSHAKE_TIMEOUT_S: Final = 15.0
# A receiver's name lookup at each round of -h's list; a name that fails is tried by name.
RESOLVE_TIMEOUT_S: Final = 5.0
GOODBYE_TIMEOUT_S: Final = 5.0
# Above the default heartbeat and its grid step (15 s + 1 s): an idle pipe's sender wakes once
# per PING, not at 15 s and again at the PING due just after it.
SENDER_IDLE_S: Final = 60.0

# Frames of one sender round up to this size go out in one write (one send system call).
COALESCE_BYTES: Final = 64 * 1024


T = TypeVar("T")

# How a connection ends without a bug: the connection loop handles each.
CONNECTION_ENDS: Final = (ConnectionLost, ProtocolError, OSError, TimeoutError, TcppipeError)


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
    # Connect from a source port below 1024 (root only), for servers that require one.
    privileged_port: bool = False
    # -h's receivers in the order given (empty: the key's one host and port).
    receivers: tuple[Receiver, ...] = ()

    def receiver_list(self) -> tuple[Receiver, ...]:
        return self.receivers or parse_receivers(self.key.host, self.key.port)


class WatcherLike(Protocol):
    """What a Client asks of its watcher: ``Watcher`` here, a shared instance's handle in a host agent."""

    def watch_file(self, gen: OriginGeneration) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def sees_all(self, gens: list[OriginGeneration]) -> bool: ...
    def recheck(self) -> None: ...


# Makes a pipe's watcher from FILE, the wake callback and the logger (``Watcher`` is one).
MakeWatcher = Callable[[str, Callable[[], None], logging.Logger], WatcherLike]


class Watcher:
    """Wakes the send loop on inotify events for FILE, its directory and open generations."""

    def __init__(self, path: str, wake: Callable[[], None], log: logging.Logger) -> None:
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

    def sees_all(self, gens: list[OriginGeneration]) -> bool:
        """A single-file pipe polls every -t whatever its events (one stat and fstat)."""
        return False

    def recheck(self) -> None:
        """Polled every -t: a stale watch costs nothing here."""

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
            close_inotify(self._inotify)
            self._inotify = None


class Client:
    """One pipe's asyncio adapter around ``PipeClient``: a file-side task and a connection loop."""

    def __init__(
        self,
        opts: ClientOptions,
        logger: logging.Logger,
        on_ready: Callable[[], None],
        *,
        own_signals: bool = True,
        admit: Callable[[OriginGeneration], bool] | None = None,
        polled: bool = False,
        handshakes: asyncio.Semaphore | None = None,
        watcher: MakeWatcher | None = None,
        drain_only: bool = False,
    ) -> None:
        """``own_signals``: this pipe is the program (a host agent handles signals for all
        its pipes instead). ``admit``: asked about each new generation at FILE; one it
        refuses (another pipe's inode) retires this pipe (see ``_retire``). ``polled``: the
        host agent keeps the -t tick for all its pipes and calls ``poll`` (no timer here).
        ``handshakes``: slots shared by a host agent's pipes, one held from connect to READY,
        so 2,000 pipes starting at once stay within the server's budget for strangers.
        ``watcher``: makes this pipe's watcher (a host agent's shares one inotify instance);
        by default a ``Watcher`` of its own. ``drain_only``: a host agent's pipe whose FILE is
        gone or another pipe's file, whose status file lists generations it held: it sends only
        those (``draining.py``), never opens FILE, and ends once they have landed, retiring."""
        self.opts = opts
        key = opts.key
        self.log = logger
        self.prefix = f"[{describe_pipe_host(key.host, key.port)} {key.path}]"
        self.status_file = StatusFile(key.status_path(opts.state_dir))
        self.core = PipeClient(
            key.path,
            opts.grace_s,
            opts.heartbeat_s,
            compress=opts.compress,
            full=opts.full,
            history=load_history(self.status_file.path),
            drain_only=drain_only,
        )
        self.on_ready = on_ready
        # The file side task wakes on signals and its -t tick (file events are followed in their
        # callback, see poll); the sender on file-side news and ACKs.
        self.file_event = asyncio.Event()
        self.send_event = asyncio.Event()
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.hup_pending = False
        self.make_watcher: MakeWatcher = watcher or Watcher
        self.watcher: WatcherLike | None = None
        self.last_byte_at: float | None = None
        self.catch_up = CatchUp() if opts.show_progress else None
        self.tasks = TaskReaper(logger, self.prefix)
        self.own_signals = own_signals
        self.admit = admit
        self.core.tailer.admit = admit
        # FILE now holds a generation this pipe may not take (or, drain-only, is not this pipe's
        # to open): send what it holds, then stop.
        self.retiring = drain_only
        # Stopping with everything landed: every generation is let go at the end (``end_drained``).
        self.ending_drained = False
        self.polled = polled
        self.handshakes = handshakes
        self._handshake_slot = False
        self._following = False  # the file side runs: ``poll`` may act
        self._poll_failure: Exception | None = None
        self.rotation = Rotation(opts.receiver_list())
        # A receiver of the list refused the pipe for now before the first READY: if none takes
        # it, the start fails as refused for now (75, started again later), not as unreachable.
        self._refused_for_now = False

    def say(self, level: int, message: str, *args: object) -> None:
        self.log.log(level, f"{self.prefix} {message}", *args)

    # -- signals -------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping = True
        self.stop_event.set()
        self.file_event.set()
        self.send_event.set()

    def request_hup(self) -> None:
        self.hup_pending = True
        self.file_event.set()

    # -- main loop -------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.own_signals:
            log_loop_errors(loop, self.log)
            daemon.handle_signals(loop, self.request_stop, self.request_hup)
        if self.core.drain_only:
            self.core.start(time.monotonic(), self.admit)
            self._log_notices()
            if not self.core.tailer.gens:
                self.say(logging.INFO, "nothing its status file lists is left to send: pipe ended")
                self.core.end_drained()
                self._save_status(force=True)
                return
            self.say(logging.INFO, "drain-only: sending what the last run held, never FILE")
        else:
            self.core.start(time.monotonic())
        if not self.core.drain_only and self.admit is not None and not self.admit(self.core.tailer.current):
            # Replaced, between the agent's look and our open, by another pipe's file.
            self.say(logging.INFO, "%s is now another pipe's file: not started", self.opts.key.path)
            self.core.close()
            return
        # A file event is followed right in its callback (no hop through the file side task).
        self.watcher = self.make_watcher(self.opts.key.path, self.poll, self.log)
        self._follow_files()
        files = self.tasks.spawn(self._file_side(), "file side")
        self._following = True
        # Without its file side a pipe would miss rotations: if that task dies (a bug; the
        # reaper has logged it), the pipe stops and the program exits with an error.
        files.add_done_callback(lambda _task: self.request_stop())
        try:
            await self._connect_forever()
        finally:
            self._following = False
            files.cancel()
            await asyncio.wait({files})
            self.watcher.close()
            if self.ending_drained:
                self.core.end_drained()
            self._save_status(force=True)
            self.core.close()
        if not files.cancelled() and files.exception() is not None:
            raise RuntimeError(f"the file side of {self.opts.key.path} died: {files.exception()!r}")

    async def _file_side(self) -> None:
        """Follow FILE through rotations whatever the connection is doing (Rule 1 of tailer.py)."""
        while not self.stopping:
            self.file_event.clear()
            if self._poll_failure is not None:
                raise self._poll_failure
            self._follow_files()
            if self.polled:
                await self.file_event.wait()  # a signal, or a failed poll
                continue
            timeout = self.opts.interval_s
            owed = self.status_file.due_in(time.monotonic())
            if owed is not None:
                timeout = min(timeout, owed + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.file_event.wait()

    def poll(self, look: bool = True) -> None:
        """The file side's work, done now by the caller: a file event's callback, or the host
        agent's -t tick of a ``polled`` pipe (100 idle pipes cost one timer, not 100). No
        task is woken for it; a failure (a bug) goes to the file side task, which dies of it
        as it would itself. ``look`` False (a tick, not this pipe's turn to look at its
        files): nothing is done if inotify reports every change of them."""
        if not self._following or self.stopping or self._poll_failure is not None:
            return
        try:
            idle = not (self.hup_pending or self.retiring or self.status_file.owed)
            if look and self.watcher is not None:
                self.watcher.recheck()
            if idle and not look and self.watcher is not None and self.watcher.sees_all(self.core.tailer.gens):
                return  # 2,000 idle pipes on inotify: a tick costs each nothing but this test
            if idle and self.core.tailer.unchanged():
                return  # polled: a stat and an fstat each per tick, nothing more
            self._follow_files()
        except Exception as exc:
            self._poll_failure = exc
            self.file_event.set()

    def _follow_files(self) -> None:
        """Notice growth, a replaced or truncated FILE, a SIGHUP; open and watch each new generation."""
        now = time.monotonic()
        before = len(self.core.tailer.gens)
        shape = self._file_shape()
        hup, self.hup_pending = self.hup_pending, False
        if self.retiring:
            self._retire(now, hup)
        else:
            self.core.follow(now, hup)
            self._log_notices()
            if self.admit is not None and len(self.core.tailer.gens) > before:
                self._admit_new(before)
        if self.watcher is not None:
            for gen in self.core.tailer.gens:
                self.watcher.watch_file(gen)
        # The sender wakes for news only: an idle pipe costs one tick of this side per -t. A
        # streaming sender woken writes the status file after it sends; else it is written here.
        if hup or self.retiring or self._file_shape() != shape:
            self.send_event.set()
            if self.core.streaming:
                return
        self._save_status()

    def _file_shape(self) -> list[tuple[int, int]]:
        """What the sender acts on: each generation held and the size it was last seen at."""
        return [(gen.ino, gen.seen_size) for gen in self.core.tailer.gens]

    def _admit_new(self, before: int) -> None:
        """Ask ``admit`` about the generation opened at FILE since ``before`` (those found
        between two looks were asked by the tailer: ``Tailer.admit``)."""
        gens = self.core.tailer.gens
        if len(gens) > before and gens[-1].path == self.opts.key.path:
            self._admit_newest()

    def _admit_newest(self) -> None:
        """Ask ``admit`` about the generation just opened at FILE; refused, it is closed
        unsent and this pipe retires."""
        gens = self.core.tailer.gens
        newest = gens[-1]
        if self.admit is None or self.admit(newest):
            return
        gens.pop()
        newest.close()
        self.retiring = True
        self.say(
            logging.WARNING,
            "%s is now inode %d, a file another pipe of this tcppipe holds (rotated onto this name):"
            " not sent again; this pipe ends once what it holds has landed",
            self.opts.key.path,
            newest.ino,
        )

    def _retire(self, now: float, hup: bool) -> None:
        """Retiring: FILE is no longer followed (it is another pipe's file); the generations
        held still grow and go out, and once all of them have landed the pipe stops."""
        tailer = self.core.tailer
        for gen in tailer.gens:
            gen.observe(now)
            gen.released = gen.released or hup  # SIGHUP: every writer has reopened
        # A drain-only pipe may have started mid-rotation (FILE renamed, its successor not made
        # yet): what it holds is let go only once quiet for the grace (or released by a SIGHUP),
        # as any rotated generation is (Rule 3 of tailer.py): a late writer loses nothing.
        quiet = not self.core.drain_only or all(
            g.released or now - g.last_growth >= tailer.grace_s for g in tailer.gens if not g.closed
        )
        if quiet and self.drained():
            self.say(logging.INFO, "everything it held has landed: pipe ended")
            self.end_drained()

    def end_drained(self) -> None:
        """Stop, everything held having landed (``drained``): each generation is let go at the
        end, so its status file owes nothing (``discovery.py`` Rule 6)."""
        self.ending_drained = True
        self.request_stop()

    # -- read-only, for a host agent ------------------------------------------------

    def held_inodes(self) -> frozenset[tuple[int, int]]:
        """The (st_dev, st_ino) of every generation this pipe holds open (FILE, those draining or
        queued; not those its status file lists from the last run: ``PipeClient.open_inodes``)."""
        return frozenset(self.core.open_inodes())

    def let_go(self) -> list[Finished]:
        """The generations this pipe sent to their end and let go (its status file's and since), oldest first."""
        return self.core.tailer.finished

    def drained(self) -> bool:
        """Connected, and every generation held acknowledged to its end: nothing left to send."""
        if not self.core.streaming:
            return False
        try:
            return all(gen.acked >= gen.size() for gen in self.core.tailer.gens if not gen.closed)
        except OSError:
            return False

    def _log_notices(self) -> None:
        for note in self.core.take_notices():
            self.say(logging.INFO, "%s", note)

    async def _take_handshake_slot(self) -> bool:
        """Wait for a handshake slot (always True without ``handshakes``); False if stopped first."""
        if self.handshakes is None:
            return True
        if await self._unless_stopped(self.handshakes.acquire()) is None:
            return False
        self._handshake_slot = True
        return True

    def _release_handshake_slot(self) -> None:
        if self._handshake_slot and self.handshakes is not None:
            self._handshake_slot = False
            self.handshakes.release()

    async def _connect_forever(self) -> None:
        try:
            await self._connect_and_stream()
        finally:
            self._release_handshake_slot()

    async def _connect_and_stream(self) -> None:
        backoff = Backoff()
        rotation = self.rotation
        while not self.stopping:
            self._release_handshake_slot()
            if not await self._take_handshake_slot():
                return
            if rotation.round_due:
                await self._start_round()
            target = rotation.current
            try:
                connected = await self._unless_stopped(self._connect(target))
            except OSError as exc:
                await self._failed(describe(exc), backoff, "connect")
                continue
            if connected is None:
                return  # stopped while connecting
            reader, writer = connected
            try:
                await self._session(reader, writer)
            except (ConnectionLost, ProtocolError, OSError, TimeoutError) as exc:
                # Dead, stalled or broken: drop it now (a close would wait, up to close_writer's
                # bound, to flush bytes a stalled receiver will not take) and move on.
                writer.transport.abort()
                reason = describe(exc)
                if (
                    not self.core.established
                    and self.opts.tls is not None
                    and isinstance(exc, ConnectionLost | ConnectionError)
                ):
                    # TLS 1.3 checks our certificate after our side of the handshake is
                    # done; the server's alert is often lost to the reset that follows.
                    reason += " right after the TLS handshake (the server may have rejected our certificate)"
                await self._failed(reason, backoff, "lost" if self.core.established else "handshake")
                continue
            except RefusedForNow as exc:
                # Before the first READY (after it this is RetryLater, a lost connection): this
                # receiver cannot take the pipe now (its storage, its name cache); another may.
                if len(rotation.targets) == 1:
                    raise
                self._refused_for_now = True
                await self._failed(exc.message.removeprefix("server refused the pipe for now: "), backoff, "refused")
                continue
            finally:
                self.core.disconnect()
                self._save_status(force=True)
                await close_writer(writer)
            backoff.reset()

    async def _start_round(self) -> None:
        """Resolve every receiver of -h (bounded; a failed lookup is tried by name) for a round."""
        loop = asyncio.get_running_loop()
        family = _family_of(self.opts.bind)

        async def lookup(receiver: Receiver) -> list[str] | None:
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    infos = await loop.getaddrinfo(receiver.host, receiver.port, family=family, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError):
                return None
            return [str(info[4][0]) for info in infos]

        # Every address of every receiver is ours to try (one name with several addresses
        # fails over between them too): asyncio's connect by name would always start at the first.
        receivers = self.rotation.receivers
        self.rotation.start_round(list(await asyncio.gather(*(lookup(r) for r in receivers))))

    async def _failed(self, reason: str, backoff: Backoff, kind: str) -> None:
        """A connection to the current address failed (``kind``: "connect", "handshake", "lost"
        or "refused" for now): move on to the next address at once, or back off once a whole
        round has failed (before the first READY: Unreachable, or RefusedForNow if one did)."""
        rotation = self.rotation
        first = not self.core.established
        target = rotation.current
        round_failed = rotation.failed(reason, time.monotonic())
        receiver = target.receiver
        if len(rotation.targets) == 1:  # one address: the messages of one host, as before lists
            if first and kind == "connect":
                raise Unreachable(f"cannot connect to {receiver.host} port {receiver.port}: {reason}")
            if first:
                raise Unreachable(f"connection to {receiver.host} failed: {reason}")
            delay = backoff.next_delay()
            if kind == "connect":
                self.say(logging.WARNING, "cannot connect (%s); retrying in %.1f s", reason, delay)
            else:
                self.say(logging.WARNING, "connection lost (%s); reconnecting in %.1f s", reason, delay)
            rotation.backed_off()
            await self._sleep(delay)
            return
        if first and round_failed:
            if self._refused_for_now:
                raise RefusedForNow("no receiver took the pipe now: " + "; ".join(rotation.failures))
            raise Unreachable("no receiver answered: " + "; ".join(rotation.failures))
        what = {
            "connect": "cannot connect to {}",
            "handshake": "connection to {} failed",
            "lost": "connection to {} lost",
            "refused": "{} refused the pipe for now",
        }
        said = what[kind].format(target.label)
        if not round_failed:
            upcoming = rotation.targets[0] if rotation.round_due else rotation.current
            self.say(logging.WARNING, "%s (%s); trying %s", said, reason, upcoming.label)
            return
        rotation.backed_off()
        delay = backoff.next_delay()
        self.say(logging.WARNING, "%s (%s); every receiver tried, trying again in %.1f s", said, reason, delay)
        await self._sleep(delay)

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T | None:
        """``work``'s result, or None if a SIGTERM/SIGINT came first (``work`` is then cancelled):
        connecting and the handshake are bounded, but a stop must not wait for them."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            return None
        return task.result()

    async def _sleep(self, delay: float) -> None:
        """Wait out a back-off (the file side goes on in its own task), holding no handshake slot."""
        self._release_handshake_slot()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                while not self.stopping:
                    self.send_event.clear()
                    await self.send_event.wait()

    async def _connect(self, target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await connect(target, self.opts.bind, self.opts.tls, self.opts.privileged_port)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tune(writer)
        core = self.core
        first = not core.established
        writer.write(core.connect(time.monotonic()))

        async def handshake() -> bool:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                while not core.streaming:
                    data = await _read(reader)
                    core.receive(data, time.monotonic())
            return True

        if await self._unless_stopped(handshake()) is None:
            return  # stopped during the handshake: nothing was sent yet
        self._release_handshake_slot()
        moved_from = self._note_receiver(first)
        resumed = core.resumed
        if resumed is not None:
            self.say(logging.INFO, "READY: sending %s from byte %d, %s", resumed.path, resumed.position, resumed.how)
            if moved_from is not None and resumed.how == RESUMED_AT_ACKED:
                # The bytes before it landed at the receiver that acknowledged them: across the
                # receivers each byte is once, but this one's storage does not hold them.
                self.say(
                    logging.WARNING,
                    "%s has no record of this pipe: its destination starts at byte %d of %s;"
                    " the bytes before it are at %s (receivers should share their storage)",
                    self.rotation.current.label,
                    resumed.position,
                    resumed.path,
                    moved_from.label,
                )
        self._log_notices()
        if self.opts.compress and core.compressor is None:
            self.say(logging.WARNING, "the server does not take compressed data; sending it as it is")
        self._save_status(force=True)
        if first:
            self.on_ready()
        receiver = self.tasks.spawn(self._receive(reader), "receiver", expected=CONNECTION_ENDS)
        try:
            raw = writer.get_extra_info("socket")
            fd = raw.fileno() if DIRECT_SEND and self.opts.tls is None and raw is not None else -1
            borrowed = BorrowedSocket(fd) if fd >= 0 else None
            try:
                await self._send(writer, receiver, borrowed)
            finally:
                if borrowed is not None:
                    borrowed.release()
            await self._say_goodbye(writer, receiver)
        finally:
            if not receiver.done():
                receiver.cancel()
            await asyncio.wait({receiver})
            if not receiver.cancelled():
                receiver.exception()  # retrieved: the sender already said why the connection ended

    def _note_receiver(self, first: bool) -> Target | None:
        """READY came from the current address: say so when the pipe moved to another receiver
        (and return the one it moved from)."""
        target = self.rotation.current
        before = self.rotation.ready(time.monotonic())
        if before is not None:
            self.say(logging.WARNING, "receiver is now %s (was %s)", target.label, before.label)
        elif first and len(self.rotation.receivers) > 1:
            self.say(logging.INFO, "receiver is %s", target.label)
        return before

    async def _say_goodbye(self, writer: asyncio.StreamWriter, receiver: asyncio.Task[None]) -> None:
        """Half-close and wait (bounded) for the server's final ACK, so the
        status file records exactly what landed."""
        with contextlib.suppress(OSError, RuntimeError):
            await writer.drain()
            if not writer.can_write_eof():
                return  # TLS cannot half-close: the server's record is the authority anyway
            writer.write_eof()
        await asyncio.wait({receiver}, timeout=GOODBYE_TIMEOUT_S)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await _read(reader)
                self.core.receive(data, time.monotonic())
                self._save_status()
        finally:
            self.send_event.set()

    async def _send(
        self, writer: asyncio.StreamWriter, receiver: asyncio.Task[None], borrowed: BorrowedSocket | None
    ) -> None:
        """Plain TCP: frames go straight to the socket (``borrowed``: sendmsg of the frames as
        they are) while the transport holds nothing, rather than through it: asyncio 3.11's
        transport copies what the kernel does not take at once into its buffer and sends it
        from there, a quarter of the client's CPU in a catch-up once crc32 was cheap. TLS
        (``borrowed`` None) goes through its transport."""
        core = self.core
        dead_after = self.opts.heartbeat_s * DEAD_AFTER_HEARTBEATS
        fd = -1 if borrowed is None else borrowed.fd

        async def room() -> None:
            """Until the socket takes more, the connection ends (the receiver's news), or the peer is dead."""
            waiting = asyncio.ensure_future(writable(fd))
            try:
                done, _ = await asyncio.wait(
                    {waiting, receiver}, timeout=dead_after, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiting.cancel()
            if waiting in done and waiting.exception() is not None:
                # The socket was closed under the wait (EBADF): send_direct says so next.
                return
            if not done:
                raise TimeoutError

        def send_direct(pending: list[memoryview]) -> None:
            if receiver.done():
                receiver.result()  # raises why it ended
                raise ConnectionLost("server closed the connection")
            if writer.transport.is_closing():
                # Its socket may be closed and the descriptor's number someone else's.
                raise ConnectionLost("connection closed")
            assert borrowed is not None
            borrowed.send_some(pending)

        read_buffer: bytearray | None = None
        while not self.stopping:
            self.send_event.clear()
            if receiver.done():
                receiver.result()  # raises why it ended
                raise ConnectionLost("server closed the connection")
            now = time.monotonic()
            if core.peer_dead(now):
                raise ConnectionLost(f"no word from the server for {core.silence(now):.1f} s")
            self._show_catch_up()
            frames = core.outgoing_into(now, read_buffer)
            if frames and fd >= 0 and not writer.transport.get_write_buffer_size():
                pending = [memoryview(frame) for frame in frames]
                send_direct(pending)
                while pending:
                    await room()
                    send_direct(pending)
            elif frames and sum(len(frame) for frame in frames) <= COALESCE_BYTES:
                # A small append: one send, not one per frame (header, payload, PROGRESS).
                writer.write(b"".join(frames))
            else:
                for frame in frames:
                    # A view of the read buffer is copied: the transport may keep what it is given.
                    writer.write(frame if isinstance(frame, bytes) else bytes(frame))
            # During a catch-up (a full batch, more to come) reads go into one buffer, reused each
            # round: every frame above is gone to the kernel or copied by now. Dropped when the
            # backlog is gone, so a host agent's idle pipes hold no 4 MiB each.
            if fd < 0 or not core.more:
                read_buffer = None
            elif read_buffer is None:
                read_buffer = bytearray(BATCH_BYTES)
            self._log_notices()
            if core.sent_any:
                core.sent_any = False
                self.last_byte_at = time.time()
            self._show_catch_up()
            self._save_status()
            if frames:
                if writer.transport.get_write_buffer_size():
                    async with asyncio.timeout(dead_after):
                        await writer.drain()
                if core.more:
                    # Let the file side and the receiver run between batches of a long catch-up.
                    await asyncio.sleep(0)
                    continue
            # The file side wakes this loop for news; a PING due or a grace ending wake it by time,
            # and SENDER_IDLE_S bounds what a missed wake-up could cost.
            timeout = max(self.opts.interval_s, SENDER_IDLE_S)
            wakeup = core.next_wakeup(time.monotonic())
            if wakeup is not None:
                timeout = min(timeout, wakeup + 0.01)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.001)):
                    await self.send_event.wait()

    def _show_catch_up(self) -> None:
        """The progress line on a terminal, during a long catch-up."""
        if self.catch_up is None:
            return
        behind = 0
        for gen in self.core.tailer.gens:
            with contextlib.suppress(OSError):
                behind += max(0, gen.size() - gen.position) if not gen.done else 0
        line = self.catch_up.update(time.monotonic(), self.core.bytes_sent, behind)
        if line is not None:
            with contextlib.suppress(OSError):
                sys.stderr.write(line)
                sys.stderr.flush()

    def _save_status(self, force: bool = False) -> None:
        key = self.opts.key
        try:
            self.core.save_status(
                self.status_file,
                time.monotonic(),
                force,
                host=key.host,
                port=key.port,
                last_byte_at=self.last_byte_at,
                receiver=self._receiver_now(),
            )
        except OSError as exc:
            self.say(logging.WARNING, "cannot write status file %s: %s", self.status_file.path, describe_os_error(exc))

    def _receiver_now(self) -> str | None:
        """The receiver this pipe streams to now (None: not connected); for the status file."""
        serving = self.rotation.serving
        return None if serving is None or not self.core.streaming else serving.label


def _family_of(bind: str | None) -> socket.AddressFamily:
    """The address family a -b address allows connecting to (any, without -b or for a name)."""
    try:
        version = ipaddress.ip_address(bind or "").version
    except ValueError:
        return socket.AF_UNSPEC
    return socket.AF_INET6 if version == 6 else socket.AF_INET


async def _read(reader: asyncio.StreamReader) -> bytes:
    """The next bytes from the peer (b"" at its end); OSError as ConnectionLost."""
    try:
        return await reader.read(READ_BYTES)
    except OSError as exc:
        raise ConnectionLost(describe_os_error(exc)) from None


async def connect(
    target: Target, bind: str | None, tls: ssl.SSLContext | None, privileged_port: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``target`` (TLS when ``tls`` is given, checked against the receiver's
    name), bounded in time."""
    host, port = target.address or target.receiver.host, target.receiver.port
    server_hostname = target.receiver.host if tls else None
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        if not privileged_port:
            local = (bind, 0) if bind else None
            return await asyncio.open_connection(
                host, port, local_addr=local, limit=MAX_DATA_BYTES, ssl=tls, server_hostname=server_hostname
            )
        sock = await _connect_from_privileged_port(host, port, bind)
        return await asyncio.open_connection(sock=sock, limit=MAX_DATA_BYTES, ssl=tls, server_hostname=server_hostname)


async def _connect_from_privileged_port(host: str, port: int, bind: str | None) -> socket.socket:
    """A socket bound to a free port below 1024 and connected to the server: only root
    can bind one, so a server that requires it knows no other local user sent this."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    failure: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            _bind_privileged(sock, bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"))  # noqa: S104
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        return sock
    raise failure


def _bind_privileged(sock: socket.socket, host: str) -> None:
    ports = list(range(PRIVILEGED_PORTS[0], PRIVILEGED_PORTS[1]))
    random.shuffle(ports)
    for port in ports[:MAX_PORT_TRIES]:
        try:
            sock.bind((host, port))
            return
        except PermissionError:
            raise UsageError("--privileged-port needs root (a source port below 1024)") from None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free source port below 1024 after {MAX_PORT_TRIES} tries")


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return describe_tls_error(exc)
    return str(exc) or type(exc).__name__


async def run_client(opts: ClientOptions, logger: logging.Logger, on_ready: Callable[[], None]) -> None:
    """Run one pipe until stopped (returns) or until it cannot go on (raises TcppipeError)."""
    await Client(opts, logger, on_ready).run()
