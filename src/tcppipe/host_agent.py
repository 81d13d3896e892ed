"""One tcppipe for a whole host: the asyncio supervisor of one ``Client`` per matching file.

Rule 1: thin. Which paths get a pipe, which are rotated names of another
pipe's file, which pipes are finished: ``discovery.py`` decides; this file
globs and stats (every -t seconds, and on an inotify event in a directory the
patterns name), takes each pipe's lock, runs its Client and reports what each
pipe holds back to the discovery.

Rule 2: a pipe is exactly the single-file pipe: its own Client (file side,
connection, generations, resume, rotation following), its own lock and status
file keyed by (FILE, HOST, PORT) as ``tcppipe -f FILE -h HOST`` has them, so
``tcppipe -I -f FILE`` names this process and ``tcppipe status`` lists each.
One connection per pipe: the server's one-pipe-one-connection rule, its
resume rule and its per-connection back-pressure stay as they are.

Rule 3 (failures stay local): each Client runs in its own task, never in a
shared TaskGroup. A pipe that ends with an error (refused, unreachable,
unreadable, an internal error) is logged to syslog, its lock released, and it
is tried again after a delay (``discovery.py`` Rule 5) or at the next SIGHUP; the
other pipes go on. Exit status: at start, once every pipe found by the first
scan has had its first answer, the agent is ready (detaches, 0) if one of them
got READY or none was found; if all of them failed, it stops with the first
failure's status, as the single-file form would. Afterwards it runs until
SIGTERM/SIGINT (0).

Rule 4 (signals): handlers only set flags and wake the scan task. SIGHUP
makes every pipe check for rotation (each Client's own SIGHUP rule) and
retries failed pipes at once; SIGTERM/SIGINT stop every pipe cleanly (each
says goodbye and saves its status) and then the program.

Rule 5 (one inotify instance): the scan's directories and every pipe's file
events share one instance (``watch.py``; Linux allows 128 per user, not one
per file). A pipe is woken by events of its own FILE name and its own
generations only; the one -t timer polls every pipe, whatever was missed.

Rule 6 (drain-only pipes): a path whose status file still lists generations
its pipe held, with no pipe running (after a restart, or once its pipe ended
without everything landed: failed, or retiring with FILE another pipe's file),
gets a pipe again: an ordinary one if its FILE is its own, else a drain-only
one (``discovery.py`` Rule 6) that sends only those generations and ends, or
hands the path over once FILE is a new file or one the status file lists. A
pipe that ends with everything landed (retired, gone, drained) lets every
generation go (let-go claims: one let go empty that grows is a new pipe) and
its status file says "drained", so it owes nothing.

Rule 7 (idle costs nothing per file): where inotify reports every change (a
local file system, every directory and generation watched, no glob in a
directory part of a pattern), the -t tick neither scans nor polls a pipe:
the events wake them. Each still looks once in ``LOOK_EVERY_TICKS`` ticks,
and the scan runs when a retry or the end of a grace period is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import glob
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import Final

from tcppipe import daemon
from tcppipe.checkpoint import load_history
from tcppipe.client import Client, ClientOptions
from tcppipe.discovery import (
    Decision,
    Discovery,
    Identify,
    Inode,
    Seen,
    claims_of,
    is_pattern,
    let_go_claims,
    let_go_since,
    owes,
    watched_directories,
)
from tcppipe.errors import TcppipeError, describe_os_error
from tcppipe.origin import OriginGeneration, file_identity_number, others_may_plant, read_identity
from tcppipe.receivers import describe_pipe_host
from tcppipe.state import HeldLock, PipeKey, holder_pid, read_json
from tcppipe.tailer import Finished
from tcppipe.tasks import TaskReaper, log_loop_errors
from tcppipe.watch import SharedInotify

# Scans triggered by directory events run at most this often (a logrotate run of 100 files
# makes hundreds of events; one scan after them sees every change).
MIN_SCAN_GAP_S = 0.05
# Where inotify reports every change (Rule 7), a pipe looks at its files, and the scan at the
# directories, once in this many -t ticks (each pipe in its own tick, spread): a safety net.
LOOK_EVERY_TICKS: Final = 30
# Pipes between connect and READY at once: tcppiped closes the oldest of a source's
# strangers past its budget, so 2,000 pipes starting together would evict each other.
HANDSHAKES_AT_ONCE: Final = 8


@dataclasses.dataclass(eq=False)
class Pipe:
    """One running pipe of the agent."""

    key: PipeKey
    client: Client
    lock: HeldLock
    task: asyncio.Task[None] | None = None
    # Its path matched nothing for the grace period and it had sent everything: stopping.
    finishing: bool = False
    # The newest generation it let go that the discovery has been told of.
    last_let_go: Finished | None = None
    # Its turn among the LOOK_EVERY_TICKS ticks to look at its files (fixed at its start: an
    # index in the pipes that shifted as others end could skip its turn for good).
    phase: int = 0


class HostAgent:
    """Runs a Client for every file the patterns match, on one event loop."""

    def __init__(
        self,
        patterns: Sequence[str],
        template: ClientOptions,
        logger: logging.Logger,
        on_ready: Callable[[], None],
    ) -> None:
        """``patterns``: absolute paths and globs; ``template``: the options every pipe
        shares (its key names the host and port; the path is each file's)."""
        self.patterns = list(patterns)
        self.template = template
        self.host, self.port = template.key.host, template.key.port
        self.state_dir = template.state_dir
        self.log = logger
        self.on_ready = on_ready
        self.discovery = Discovery(template.grace_s)
        self.pipes: dict[str, Pipe] = {}
        self.where = describe_pipe_host(self.host, self.port)
        self.tasks = TaskReaper(logger, f"[{self.where}]")
        self.wake = asyncio.Event()
        # The next pipe's turn among the ticks (``Pipe.phase``): pipes started in a row spread.
        self._phases = 0
        self.stopping = False
        self.hup_pending = False
        # The first scan's pipes that have not answered yet; the first of their failures.
        self._initial: set[str] = set()
        self._any_ready = False
        self._settled = False
        self.start_failure: TcppipeError | None = None
        # What was last said about a path that gets no pipe, so a scan does not repeat it.
        self._said: dict[str, str] = {}
        self.handshakes = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
        # Every pipe's file events, on one inotify instance (made in ``run``, on the loop).
        self.inotify: SharedInotify | None = None

    # -- signals -----------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping = True
        for pipe in list(self.pipes.values()):
            pipe.client.request_stop()
        self.wake.set()

    def request_hup(self) -> None:
        self.hup_pending = True
        self.wake.set()

    # -- main loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (returns), or raise the start-up failure (TcppipeError)."""
        loop = asyncio.get_running_loop()
        log_loop_errors(loop, self.log)
        daemon.handle_signals(loop, self.request_stop, self.request_hup)
        self._claim_recorded()
        directories = watched_directories(self.patterns)
        self.inotify = SharedInotify(self.log)
        watch = self.inotify.directory_watch(self.wake.set)
        try:
            watch.watch(directories)
            self._scan(first=True)
            self._settle()
            next_tick = time.monotonic() + self.template.interval_s
            # Directory events can tell every change of what the patterns match (Rule 7).
            evented = not any(is_pattern(os.path.dirname(p)) for p in self.patterns)
            ticks = 0
            while not self.stopping:
                self.wake.clear()
                woken = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_tick - time.monotonic())):
                        await self.wake.wait()
                    woken = True
                    await asyncio.sleep(MIN_SCAN_GAP_S)  # let a burst of directory events settle
                if self.stopping:
                    break
                watch.watch(directories)
                if self.hup_pending:
                    self.hup_pending = False
                    for pipe in self.pipes.values():
                        pipe.client.request_hup()
                    self.discovery.retry_now()
                now = time.monotonic()
                ticked = now >= next_tick or self.inotify.fileno() < 0
                looking = ticked and ticks % LOOK_EVERY_TICKS == 0
                if looking:
                    watch.recheck()  # a directory renamed or replaced: watched again, there now
                    watch.watch(directories)
                told = evented and watch.sees_all(directories)
                if woken or not told or self.discovery.due(now) or looking:
                    self._scan(first=False)
                if ticked:
                    # Every pipe's -t tick, from this one timer. A scan woken by a directory
                    # event between ticks polls none of them (without inotify, all): the shared
                    # instance has woken the pipes whose FILE the event named, and only those.
                    # A pipe inotify tells everything looks at its files in its turn only.
                    next_tick = now + self.template.interval_s
                    ticks += 1
                    for pipe in list(self.pipes.values()):
                        pipe.client.poll(look=(pipe.phase + ticks) % LOOK_EVERY_TICKS == 0)
        finally:
            watch.close()
            self.request_stop()
            running = [p.task for p in self.pipes.values() if p.task is not None]
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            self.inotify.close()
        if self.start_failure is not None:
            raise self.start_failure

    def _claim_recorded(self) -> None:
        """Before the first scan: every generation a status file of this host and port lists
        for a file these patterns match is claimed by that file's path (Rules 2 and 3 of
        discovery.py, across restarts)."""
        for path in sorted(glob.glob(os.path.join(glob.escape(self.state_dir), "tcppipe.*.status"))):
            raw = read_json(path) or {}
            origin = raw.get("file")
            if raw.get("host") != self.host or raw.get("port") != self.port or not isinstance(origin, str):
                continue
            if any(fnmatch.fnmatchcase(origin, p) for p in self.patterns):
                self._claim_status(origin, path)

    def _claim_status(self, origin: str, status_path: str) -> None:
        """Claim for ``origin`` what its status file lists; one that owes (Rule 6) leaves the
        path undrained: it gets a pipe again (a drain-only one if FILE is not its own)."""
        history = load_history(status_path)
        for inode, claim in claims_of(origin, history):
            self.discovery.claim(inode, claim)
        if owes(history, (read_json(status_path) or {}).get("drained") is True):
            self.discovery.left_undrained(origin)
        else:
            self.discovery.drained(origin)

    def _found(self) -> dict[str, Seen]:
        """Every regular file the patterns match now, with its inode, size and mtime."""
        found: dict[str, Seen] = {}
        for pattern in self.patterns:
            for path in glob.glob(pattern) if is_pattern(pattern) else [pattern]:
                try:
                    st = os.lstat(path)
                    if stat.S_ISLNK(st.st_mode):
                        if others_may_plant(os.path.dirname(path)):
                            self._say_once(
                                path,
                                f"{path} is a symbolic link in a directory others may write: not followed",
                                logging.WARNING,
                            )
                            continue
                        st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[path] = _seen(st)
        return found

    def _scan(self, first: bool) -> None:
        now = time.monotonic()
        running = {path: pipe.client.held_inodes() for path, pipe in self.pipes.items()}
        self._claim_let_go()
        found = self._found()

        def identify(path: str, length: int) -> tuple[int | None, bytes] | None:
            return read_identity(path, length, found[path].inode)

        decision = self.discovery.decide(found, running, now, identify)
        self._report_rotated(decision)
        self._hand_over_drains(found, running, identify)
        for path in decision.gone:
            pipe = self.pipes[path]
            if not pipe.finishing and pipe.client.drained():
                pipe.finishing = True
                self.log.info(
                    "%s gone for %.0f s and everything sent: pipe ended", pipe.client.prefix, self.template.grace_s
                )
                pipe.client.end_drained()
        for path in decision.start:
            self._start(path, first, now)
        for path in decision.drain:
            self._start(path, first, now, drain_only=True)

    def _hand_over_drains(
        self, found: dict[str, Seen], running: dict[str, frozenset[Inode]], identify: Identify
    ) -> None:
        """A drain-only pipe whose FILE is its path's own file again (the writer made a new one;
        ``Discovery.hands_over``, never a generation the path let go) stops unfinished: its
        status file still owes, so an ordinary pipe takes the path over, adopts what it lists
        and follows FILE (Rule 6). Else a generation that keeps growing would hold the path,
        and FILE's bytes with it, for as long as it grows."""
        for path, pipe in self.pipes.items():
            seen = found.get(path)
            if not pipe.client.core.drain_only or pipe.finishing or seen is None or seen.inode in running[path]:
                continue
            # Only once FILE can be read: an ordinary pipe that cannot open it would wait out its
            # back-off while the drain-only pipe could have gone on sending.
            if identify(path, 0) is not None and self.discovery.hands_over(path, seen, identify):
                pipe.finishing = True
                pipe.client.say(logging.INFO, "FILE is this path's own again: an ordinary pipe takes it over")
                pipe.client.request_stop()

    def _claim_let_go(self) -> None:
        """Claim what each pipe has let go since the last look (Rule 3 of discovery.py)."""
        for path, pipe in self.pipes.items():
            let_go = pipe.client.let_go()
            if let_go and let_go[-1] is not pipe.last_let_go:
                fresh = let_go_since(let_go, pipe.last_let_go)
                pipe.last_let_go = let_go[-1]
                for inode, claim in let_go_claims(path, fresh):
                    self.discovery.claim(inode, claim)

    def _report_rotated(self, decision: Decision) -> None:
        for path, owner in decision.rotated.items():
            if path in decision.grew:
                size = decision.grew[path][1]
                self._say_once(
                    path,
                    f"{path} (a rotated generation of {owner}) grew after it was sent to its end"
                    f" at {size} bytes and let go: what was written to it later is not sent",
                    logging.WARNING,
                )
            else:
                self._say_once(
                    path, f"{path} is a rotated generation of {owner} (same inode): sent as part of that pipe"
                )

    def _say_once(self, path: str, message: str, level: int = logging.INFO) -> None:
        if self._said.get(path) != message:
            self._said[path] = message
            self.log.log(level, "[%s] %s", self.where, message)

    # -- one pipe ----------------------------------------------------------------

    def _start(self, path: str, first: bool, now: float, drain_only: bool = False) -> None:
        key = PipeKey(path, self.host, self.port)
        lock_path = key.lock_path(self.state_dir)
        try:
            lock = HeldLock.acquire(lock_path)
        except OSError as exc:
            self._say_once(path, f"cannot lock {lock_path}: {describe_os_error(exc)}", logging.ERROR)
            self._not_started(path, now, drain_only)
            return
        if lock is None:
            pid = holder_pid(lock_path)
            self._say_once(path, f"{path} is already sent to {self.host} port {self.port} by pid {pid}: left to it")
            self._not_started(path, now, drain_only)
            return
        self._said.pop(path, None)
        opts = dataclasses.replace(self.template, key=key, full=self.template.full and first and not drain_only)
        client = Client(
            opts,
            self.log,
            lambda: self._pipe_ready(path),
            own_signals=False,
            admit=lambda gen: self._admits(path, gen),
            polled=True,
            handshakes=self.handshakes,
            watcher=None if self.inotify is None else self.inotify.watcher_for,
            drain_only=drain_only,
        )
        # What its status file lists as let go is claimed already (at the restart, or when
        # its last run ended): only what it lets go from now on is news for the discovery.
        let_go = client.let_go()
        pipe = Pipe(key, client, lock, last_let_go=let_go[-1] if let_go else None, phase=self._phases)
        self._phases = (self._phases + 1) % LOOK_EVERY_TICKS
        self.pipes[path] = pipe
        if drain_only:
            # Not one of the first scan's answers: FILE is not its own (it may have none).
            client.say(logging.INFO, "its status file lists what may not have landed: drain-only pipe started")
        elif first:
            self._initial.add(path)
        else:
            client.say(logging.INFO, "new file: pipe started")
        pipe.task = self.tasks.spawn(self._run_pipe(pipe), f"pipe {path}")

    def _not_started(self, path: str, now: float, drain_only: bool) -> None:
        """No pipe for ``path`` now (its lock): tried again later, a drain-only one as one still."""
        self.discovery.failed(path, now)
        if drain_only:
            self.discovery.left_undrained(path)

    async def _run_pipe(self, pipe: Pipe) -> None:
        path = pipe.key.path
        failure: TcppipeError | None = None
        try:
            await pipe.client.run()
        except TcppipeError as exc:
            failure = exc
        except Exception as exc:
            self.log.error("%s internal error: %r", pipe.client.prefix, exc, exc_info=exc)
            failure = TcppipeError(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            pipe.lock.release()
            del self.pipes[path]
            self.discovery.ended(path)
            # What it held stays its own (a failed pipe's queue; what a pipe that ended drained
            # let go): no longer held open, claimed as its status file lists them (Rule 6).
            self._claim_status(path, pipe.key.status_path(self.state_dir))
        if failure is not None:
            for line in failure.message.splitlines():
                pipe.client.say(logging.ERROR, "%s", line)
            if not self.stopping:
                delay = self.discovery.failed(path, time.monotonic())
                pipe.client.say(logging.INFO, "pipe ended; trying it again in %.0f s (or at a SIGHUP)", delay)
            if path in self._initial and self.start_failure is None and not self._any_ready:
                self.start_failure = failure
        elif not self.stopping:
            pipe.client.say(logging.INFO, "stopped")
        self._initial.discard(path)
        self._settle()
        self.wake.set()  # its path and what it held are the scan's to decide on now

    def _admits(self, path: str, gen: OriginGeneration) -> bool:
        """May ``path``'s pipe take ``gen``, just opened (at its FILE, or found beside it)? Its
        identity is read from its own descriptor, not from a name that may have moved on."""

        def identify(_name: str, length: int) -> tuple[int | None, bytes] | None:
            try:
                return file_identity_number(gen.fd), os.pread(gen.fd, length, 0) if length else b""
            except OSError:
                return None

        seen = _seen(os.fstat(gen.fd))
        owner = self.discovery.held.get(seen.inode)
        if owner is not None and owner != path:
            held = self.pipes.get(owner)
            if held is None or seen.inode not in held.client.held_inodes():
                # Held as of the last scan (up to LOOK_EVERY_TICKS ticks ago), let go since: its
                # claim, made now, is what decides (a reused inode number is not that file).
                del self.discovery.held[seen.inode]
                self._claim_let_go()
        return self.discovery.admits(path, seen, identify)

    def _pipe_ready(self, path: str) -> None:
        self.discovery.succeeded(path)
        self._any_ready = True
        self._initial.discard(path)
        self._settle()

    def _settle(self) -> None:
        """Once every pipe of the first scan has answered: ready, or stop with the first failure."""
        if self._settled or self._initial:
            return
        self._settled = True
        if self._any_ready or self.start_failure is None:
            self.start_failure = None
            self.on_ready()
        else:
            self.request_stop()


def _seen(st: os.stat_result) -> Seen:
    return Seen((st.st_dev, st.st_ino), st.st_size, st.st_mtime_ns)


async def run_agent(
    patterns: Sequence[str], template: ClientOptions, logger: logging.Logger, on_ready: Callable[[], None]
) -> None:
    """Run the pipes of every file ``patterns`` match until stopped (returns), or raise the
    start-up failure (TcppipeError) when every pipe found at start failed."""
    await HostAgent(patterns, template, logger, on_ready).run()
