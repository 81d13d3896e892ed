"""The simulated world: origin file system, network, both tcppipe ends, one clock.

Rule 1: one seeded ``random.Random`` and one event heap; everything runs in
sequence on simulated time, so a seed (and the list of actions kept) replays
exactly. Files are real (a fresh temporary directory per schedule); the real
``PipeClient``, ``StatusFile``, ``Destination``, ``ServerSession`` and
``PipeServer`` run against them. The adapters here are thin copies of
what ``client.py`` and ``server.py`` do with those cores.

Rule 2 (the model): every write carries its generation number and a global
sequence number. Each origin generation is remembered with all its bytes and
whether its tail may be lost (copytruncate's window; a file deleted, or
rotated away unrecorded, while no tcppipe ran). ``Checker`` matches the
destination (rotated files in order, then the current one) against the
generations in order after every step: a prefix, no duplicate, no gap except
an allowed tail; equal at quiescence.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tcppipe.checkpoint import StatusFile, load_history
from tcppipe.client import HANDSHAKE_TIMEOUT_S, Backoff
from tcppipe.destination import Destination, DestinationError
from tcppipe.errors import ConnectionLost, OriginError, Refused
from tcppipe.origin import identify
from tcppipe.pipe_client import PipeClient
from tcppipe.pipe_server import Inadmissible, PipeServer
from tcppipe.protocol import DEAD_AFTER_HEARTBEATS, Data, Generation, Hello, NeedData, Progress, ProtocolError
from tcppipe.receiver import ACK_DELAY_S
from tcppipe.server import SERVER_FEATURES
from tcppipe.session import ServerSession
from tcppipe.stats import PipeStats

HEARTBEAT_S = 1.0
GRACE_S = 2.0
INTERVAL_S = 1.0  # -t (the default)
BACKOFF_CAP_S = 10.0
# After the last fault: a dead peer noticed (3 heartbeats and the next check while
# streaming; the handshake timeout when the last fault cut a connection silently
# during its handshake, where no heartbeat runs), one capped back-off, the grace,
# and a little for the transfer itself.
DEAD_PEER_NOTICED_S = max(HANDSHAKE_TIMEOUT_S, (DEAD_AFTER_HEARTBEATS + 1) * HEARTBEAT_S)
QUIET_S = GRACE_S + BACKOFF_CAP_S + DEAD_PEER_NOTICED_S + 2.0
FOLLOW_DELAY_S = 0.0003  # inotify: the file side runs this soon after an origin event


ROTATED_UNSEEN = "rotated away while no tcppipe ran, never held by one"


class SimFailure(Exception):
    """The invariant broke, or a core raised what it must not."""


@dataclass
class Action:
    t: float
    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"t={self.t:8.3f} {self.kind} {args}".rstrip()


@dataclass
class Gen:
    """One origin generation in the model: every byte written to it."""

    index: int
    content: bytearray = field(default_factory=bytearray)
    sealed: bool = False  # the writer no longer appends to it
    tail_ok: str | None = None  # why its tail may be lost


# -- the checker --------------------------------------------------------------------


class Checker:
    """Is the destination stream a prefix of the generations in order, with only allowed tails lost?

    An NFA over (generation, offset): a sealed generation may be left at its
    end, one with an allowed loss at any byte. Data is fed as it appears.
    """

    def __init__(self, gens: list[Gen]) -> None:
        self.gens = gens
        self.states: set[tuple[int, int]] = {(0, 0)}
        self.fed = 0

    def _jumps(self, i: int, j: int) -> list[int]:
        """Generations the stream may continue with after byte j of generation i."""
        out: list[int] = []
        gens = self.gens
        while i < len(gens):
            g = gens[i]
            if not (g.tail_ok or (g.sealed and j >= len(g.content))):
                break
            i, j = i + 1, 0
            if i < len(gens):
                out.append(i)
        return out

    def feed(self, data: bytes) -> None:
        gens = self.gens
        ends: set[tuple[int, int]] = set()
        work = [(i, j, 0) for i, j in self.states]
        seen: set[tuple[int, int, int]] = set()
        n = len(data)
        while work:
            i, j, k = work.pop()
            if (i, j, k) in seen or i >= len(gens):
                continue
            seen.add((i, j, k))
            content = gens[i].content
            length = 0
            limit = min(len(content) - j, n - k)
            # common prefix (fast path: whole comparison)
            if content[j : j + limit] == data[k : k + limit]:
                length = limit
            else:
                lo, hi = 0, limit
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if content[j : j + mid] == data[k : k + mid]:
                        lo = mid
                    else:
                        hi = mid - 1
                length = lo
            if k + length == n:
                ends.add((i, j + length))
            if gens[i].tail_ok:
                # Any byte may be the last kept: the stream may go on with a later generation wherever
                # the data shows that generation's first byte.
                nexts = [i + 1, *self._jumps(i + 1, 0)] if i + 1 < len(gens) else []
                for nxt in nexts:
                    first = bytes(gens[nxt].content[:1])
                    if k + length == n:
                        ends.add((nxt, 0))
                    if not first:
                        continue
                    p = data.find(first, k, k + length + 1)
                    while p != -1:
                        work.append((nxt, 0, p))
                        p = data.find(first, p + 1, k + length + 1)
            elif j + length == len(content):
                p = k + length
                for nxt in self._jumps(i, len(content)):
                    if p == n:
                        ends.add((nxt, 0))
                    else:
                        work.append((nxt, 0, p))
        if not ends:
            raise SimFailure(self._explain(data))
        self.states = ends
        self.fed += n

    def _explain(self, data: bytes) -> str:
        where = sorted(self.states)[:3]
        parts = []
        for i, j in where:
            want = bytes(self.gens[i].content[j : j + 60]) if i < len(self.gens) else b""
            parts.append(
                f"gen {i} byte {j} (of {len(self.gens[i].content) if i < len(self.gens) else 0}) wants {want!r}"
            )
        return f"destination diverges after byte {self.fed}: got {bytes(data[:60])!r}; expected one of: " + "; ".join(
            parts
        )

    def complete(self) -> str | None:
        """None if some state has everything after it allowed to be missing; else what is missing."""
        best = None
        for i, j in self.states:
            missing = []
            for g in self.gens[i:]:
                start = j if g.index == i else 0
                rest = len(g.content) - start
                if rest > 0 and not g.tail_ok:
                    missing.append(f"gen {g.index}: {rest} of {len(g.content)} bytes from byte {start}")
            if not missing:
                return None
            best = missing if best is None or len(missing) < len(best) else best
        return "at quiescence the destination lacks " + "; ".join(best or ["?"])


# -- the network -----------------------------------------------------------------------


class Direction:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.scheduled = False
        self.eof = False  # the sender closed: EOF after the buffer
        self.gone = False  # bytes go nowhere


class Conn:
    """One TCP connection: two byte streams with latency, chunking, stalls and cuts."""

    def __init__(self, world: World, client: ClientProc, blackhole: bool) -> None:
        self.world = world
        self.client: ClientProc | None = client
        self.server: ServerConn | None = None
        self.blackhole = blackhole
        self.up = Direction()  # client -> server
        self.down = Direction()  # server -> client
        self.broken = False

    def send(self, d: Direction, data: bytes) -> None:
        if self.broken or self.blackhole or d.gone or d.eof or not data:
            return
        d.buf += data
        self._schedule(d)

    def _schedule(self, d: Direction) -> None:
        if d.scheduled:
            return
        d.scheduled = True
        w = self.world
        when = max(w.now, w.stall_until) + w.rng.uniform(0.0005, 0.01)
        w.at(when, lambda: self._deliver(d))

    def _deliver(self, d: Direction) -> None:
        d.scheduled = False
        w = self.world
        if self.broken or d.gone:
            return
        if w.now < w.stall_until:
            self._schedule(d)
            return
        if d.buf:
            r = w.rng.random()
            n = len(d.buf) if r < 0.5 else w.rng.randint(1, len(d.buf))
            data = bytes(d.buf[:n])
            del d.buf[:n]
            self._hand(d, data)
            if d.buf or d.eof:
                self._schedule(d)
            return
        if d.eof:
            d.gone = True
            self._hand(d, b"")

    def _hand(self, d: Direction, data: bytes) -> None:
        if d is self.up:
            if self.server is not None:
                self.server.on_data(data)
        elif self.client is not None:
            self.client.on_data(self, data)

    def close_from(self, side: str) -> None:
        """That side closed (FIN): the other sees EOF after what is in flight; its own bytes die."""
        mine, theirs = (self.up, self.down) if side == "client" else (self.down, self.up)
        if side == "client":
            self.client = None
        else:
            self.server = None
        theirs.gone = True
        theirs.buf.clear()
        if not self.broken and not self.blackhole:
            mine.eof = True
            self._schedule(mine)

    def reset_from(self, side: str, delay: float | None) -> None:
        """That side vanished (RST): all bytes in flight lost; the other side learns after ``delay``."""
        client, server = self.client, self.server
        self.client = None if side == "client" else client
        self.server = None if side == "server" else server
        self.up.buf.clear()
        self.down.buf.clear()
        self.up.gone = self.down.gone = True
        if self.broken or delay is None:
            return
        w = self.world
        if side == "client" and server is not None:
            w.at(w.now + delay, lambda: server.lost("reset by the client"))
        elif side == "server" and client is not None:
            w.at(w.now + delay, lambda: client.lost(self, "connection reset"))

    def cut(self, keep_up: int, keep_down: int, client_learns: float | None, server_learns: float | None) -> None:
        """The path breaks: the first bytes in flight may still arrive, the rest are lost."""
        w = self.world
        up, down = bytes(self.up.buf[:keep_up]), bytes(self.down.buf[:keep_down])
        self.up.buf.clear()
        self.down.buf.clear()
        if up:
            self._hand(self.up, up)
        if down:
            self._hand(self.down, down)
        self.broken = True
        client, server = self.client, self.server
        if client is not None and client_learns is not None:
            w.at(w.now + client_learns, lambda: client.lost(self, "connection cut"))
        if server is not None and server_learns is not None:
            w.at(w.now + server_learns, lambda: server.lost("connection cut"))


# -- the client ---------------------------------------------------------------------------


class ClientProc:
    """One tcppipe process: the real PipeClient and StatusFile, driven like client.py drives them."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.alive = True
        self.core = PipeClient(world.file, GRACE_S, HEARTBEAT_S, history=load_history(world.status_path))
        self.status = StatusFile(world.status_path)
        self.backoff = Backoff(cap_s=BACKOFF_CAP_S, rng=world.rng)
        self.conn: Conn | None = None
        self.phase = "idle"  # idle | connecting | handshake | streaming | backoff
        self.hup_pending = False
        self.pump_at = float("inf")
        self.handshake_token = 0
        self.core.start(world.now)  # OriginError: FILE missing, the process exits
        self.file_side()
        self._tick()
        world.at(world.now + 0.001, self.connect)

    # the file side, on its own

    def _tick(self) -> None:
        if not self.alive:
            return
        self.file_side()
        self.pump()
        self.world.at(self.world.now + INTERVAL_S, self._tick)

    def file_side(self) -> None:
        if not self.alive:
            return
        if self.world.opts.get("no_offline_follow") and self.phase != "streaming":
            return  # emulates the old client: the file side ran only in the send loop
        now = self.world.now
        before = len(self.core.tailer.gens)
        hup, self.hup_pending = self.hup_pending, False
        self.core.follow(now, hup)
        self.world.notes(self.core.take_notices())
        self.world.mark_held(self.core)
        self.save_status()
        owed = self.status.due_in(now)
        if owed is not None:
            self.world.at(now + owed + 0.001, self.file_side)
        if len(self.core.tailer.gens) != before or self.core.streaming:
            self.pump()

    def save_status(self, force: bool = False) -> None:
        self.core.save_status(self.status, self.world.now, force)

    # the connection side

    def connect(self) -> None:
        if not self.alive:
            return
        self.phase = "connecting"
        self.world.net_connect(self)

    def connect_failed(self, why: str) -> None:
        if not self.alive or self.phase != "connecting":
            return
        self.world.log(f"client: cannot connect ({why})")
        self._failed(why)

    def connected(self, conn: Conn) -> None:
        if not self.alive:
            return
        self.conn = conn
        self.phase = "handshake"
        self.handshake_token += 1
        token = self.handshake_token
        conn.send(conn.up, self.core.connect(self.world.now))
        self.world.at(self.world.now + HANDSHAKE_TIMEOUT_S, lambda: self._handshake_timeout(token))

    def _handshake_timeout(self, token: int) -> None:
        if self.alive and self.phase == "handshake" and token == self.handshake_token:
            self.lost(self.conn, "handshake timed out")

    def on_data(self, conn: Conn, data: bytes) -> None:
        if not self.alive or conn is not self.conn:
            return
        now = self.world.now
        try:
            self.core.receive(data, now)
        except Refused as exc:
            raise SimFailure(f"client refused: {exc}") from None
        except (ConnectionLost, ProtocolError) as exc:
            self.lost(conn, str(exc))
            return
        if self.phase == "handshake" and self.core.streaming:
            self.phase = "streaming"
            resumed = self.core.resumed
            if resumed is not None:
                self.world.log(f"client READY: {resumed.path} from byte {resumed.position}, {resumed.how}")
            self.world.notes(self.core.take_notices())
            self.world.mark_held(self.core)
            self.save_status(force=True)
            self.file_side()  # the old client followed only here (no_offline_follow)
            self.pump()
        elif self.phase == "streaming":
            self.save_status()
            self.pump()

    def pump(self) -> None:
        """The send loop: frames while there are any, then sleep until a wake-up."""
        if not self.alive or self.phase != "streaming" or self.conn is None:
            return
        now = self.world.now
        if self.core.peer_dead(now):
            self.lost(self.conn, f"no word from the server for {self.core.silence(now):.1f} s")
            return
        for _ in range(64):
            try:
                frames = self.core.outgoing(now)
            except OSError as exc:
                self.world.log(f"client: outgoing raised {exc!r}")
                self.lost(self.conn, str(exc))
                return
            for frame in frames:
                self.conn.send(self.conn.up, frame)
            if not self.core.more:
                break
        self.world.notes(self.core.take_notices())
        self.save_status()
        wake = self.core.next_wakeup(now)
        if wake is not None:
            when = now + wake + 0.01
            if when < self.pump_at - 1e-9 or self.pump_at <= now:
                self.pump_at = when
                self.world.at(when, self.pump)

    def lost(self, conn: Conn | None, why: str) -> None:
        if not self.alive or conn is None or conn is not self.conn:
            return
        self.world.log(f"client: connection lost ({why})")
        self.conn = None
        conn.close_from("client")
        self._failed(why)

    def _failed(self, why: str) -> None:
        self.core.disconnect()
        self.save_status(force=True)
        if not self.core.established:
            # Before the first READY a failure ends the process (keep_tcppipe_alive restarts it).
            self.world.log("client exits: not established")
            self.world.client_exit(self, restart_in=self.world.rng.uniform(0.2, 2.0))
            return
        self.phase = "backoff"
        self.world.at(self.world.now + self.backoff.next_delay(), self.connect)

    def kill(self) -> None:
        """kill -9: fds closed, nothing saved."""
        self.alive = False
        self.core.close()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.reset_from("client", self.world.rng.uniform(0.0005, 0.01))

    def exit_cleanly(self) -> None:
        self.alive = False
        self.core.close()


# -- the server -------------------------------------------------------------------------------


class ServerConn:
    """One connection on tcppiped, as ``server.py`` serves it (HELLO, takeover, READY, stream, ACKs)."""

    def __init__(self, server: ServerProc, conn: Conn) -> None:
        self.server = server
        self.world = server.world
        self.conn = conn
        self.session = ServerSession(self.world.now, SERVER_FEATURES, HEARTBEAT_S)
        self.dest: Destination | None = None
        self.core: PipeServer | None = None
        self.hello: Hello | None = None
        self.open = True
        self.ack_timer = False
        server.conns.append(self)

    def send(self, data: bytes) -> None:
        if data and self.open:
            self.conn.send(self.conn.down, data)

    def on_data(self, data: bytes) -> None:
        if not self.open:
            return
        now = self.world.now
        self.session.receive(data, now)
        try:
            while self.open:
                event = self.session.next_event()
                if isinstance(event, NeedData):
                    return
                if event is None:
                    self._ack()  # the goodbye: exactly what landed
                    self.close("closed by the client")
                    return
                self._handle(event)
        except (ProtocolError, DestinationError) as exc:
            self.world.log(f"server: dropped: {exc}")
            self.close(str(exc))

    def _handle(self, event: object) -> None:
        now = self.world.now
        if isinstance(event, Hello):
            self.hello = event
            server = self.server
            old = server.active
            if old is not None and old is not self:
                self.world.log("server: takeover of an older connection")
                old.close("taken over")
            server.active = self
            try:
                self.dest = Destination.open(self.world.dest_path, self.world.server_state)
            except DestinationError as exc:
                self.send(self.session.refuse(str(exc), True, now))
                self.close(str(exc))
                return
            record, offset = self.dest.answer()
            igen = self.dest.igen if record is not None else None
            self.send(self.session.ready(record, offset, now, igen=igen))
            self.core = PipeServer(self.session, self.dest, PipeStats("sim", "sim", "sim"))
            self.world.log(f"server READY offset={offset}")
            self.world.at(now + HEARTBEAT_S, self._heartbeat)
            return
        core = self.core
        assert core is not None
        if isinstance(event, Data | Generation | Progress):
            try:
                self.send(core.apply(event, now))
            except Inadmissible as exc:
                self.world.admission_refusals.append(str(exc))
                raise
            self.world.dest_dirty = self.world.dest_dirty or isinstance(event, Data)
        if not self.ack_timer:
            self.ack_timer = True
            self.world.at(now + ACK_DELAY_S, self._ack_timer)

    def _ack_timer(self) -> None:
        self.ack_timer = False
        self._ack()

    def _ack(self, heartbeat: bool = False) -> None:
        if not self.open or self.core is None:
            return
        self.send(self.core.ack(self.world.now, heartbeat))

    def _heartbeat(self) -> None:
        if not self.open:
            return
        now = self.world.now
        if self.session.peer_dead(now):
            self.close(f"no word from the client for {self.session.silence(now):.1f} s")
            return
        self._ack(heartbeat=True)
        self.world.at(now + HEARTBEAT_S, self._heartbeat)

    def lost(self, why: str) -> None:
        if self.open:
            self.world.log(f"server: connection lost ({why})")
            self.open = False
            self._release()

    def close(self, why: str) -> None:
        if not self.open:
            return
        self.world.log(f"server: closing connection ({why})")
        self.open = False
        self._release()
        self.conn.close_from("server")

    def _release(self, fsync: bool = True) -> None:
        if self.server.active is self:
            self.server.active = None
        if self in self.server.conns:
            self.server.conns.remove(self)
        if self.dest is not None:
            if fsync:
                self.dest.close()
            elif self.dest.fd >= 0:
                os.close(self.dest.fd)
                self.dest.fd = -1


class ServerProc:
    def __init__(self, world: World) -> None:
        self.world = world
        self.alive = True
        self.conns: list[ServerConn] = []
        self.active: ServerConn | None = None

    def kill(self) -> None:
        self.alive = False
        for sc in list(self.conns):
            sc.open = False
            sc._release(fsync=False)
            sc.conn.reset_from("server", self.world.rng.uniform(0.0005, 0.01))

    def hup(self) -> None:
        active = self.active
        if active is not None and active.dest is not None and active.open and active.dest.reopen():
            self.world.log("server: reopened destination")


# -- the world ----------------------------------------------------------------------------------


class World:
    def __init__(self, seed: int, opts: dict[str, Any] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed * 7919 + 1)
        self.opts = opts or {}
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.root = tempfile.mkdtemp(prefix="tcppipe-sim-", dir=base)
        # On a disk file system a deleted inode is reused at once (tmpfs never reuses one).
        origin_base = tempfile.gettempdir() if self.opts.get("disk_origin") else self.root
        self.origin_root = tempfile.mkdtemp(prefix="tcppipe-sim-origin-", dir=origin_base)
        self.origin = os.path.join(self.origin_root, "origin")
        self.file = os.path.join(self.origin, "app.log")
        self.dest_dir = os.path.join(self.root, "dest")
        self.dest_path = os.path.join(self.dest_dir, "app.log")
        self.server_state = os.path.join(self.root, "server-state")
        self.status_path = os.path.join(self.root, "client-state", "status.json")
        for d in (self.origin, self.dest_dir, self.server_state, os.path.dirname(self.status_path)):
            os.makedirs(d)
        self.keep = int(self.opts.get("backups", 3))
        # How rotation names the generations it moves aside (``NAMINGS``): numbered
        # (app.log.1 ..) or dateext (app.log-0000000001 ..), beside FILE or in old/ (olddir).
        self.naming = str(self.opts.get("naming", "numbered"))
        self.rotated_prefix = "old/" if self.naming.endswith("olddir") else ""
        if self.rotated_prefix:
            os.makedirs(os.path.join(self.origin, "old"))
        self.stamps = 0
        self.gens: list[Gen] = []
        self.names: dict[str, int] = {}  # origin file name -> generation index (-1: not a stream file)
        self.ever_held: set[int] = set()  # generations some running tcppipe held open
        self.checker = Checker(self.gens)
        self.dest_rotations = 0
        self.dest_fed: dict[int, int] = {}  # destination inode -> bytes fed to the checker
        self.dest_dirty = False
        self.seq = 0
        self.stall_until = 0.0
        self.refuse_until = 0.0
        self.blackhole_until = 0.0
        self.blackholed: list[Conn] = []
        self.healthy = False
        self.admission_refusals: list[str] = []
        self.trace: list[str] = []
        self.client: ClientProc | None = None
        self.server: ServerProc | None = ServerProc(self)
        self._create_file()

    # -- scheduling

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(t, self.now), self._seq, fn))

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            when, _, fn = heapq.heappop(self._heap)
            self.now = when
            fn()
            if self.dest_dirty:
                self.dest_dirty = False
                self.check_destination()
        self.now = max(self.now, t)

    def log(self, line: str) -> None:
        self.trace.append(f"{self.now:9.4f} {line}")
        if len(self.trace) > 4000:
            del self.trace[:2000]

    def notes(self, notes: list[str]) -> None:
        for n in notes:
            self.log(f"client note: {n}")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None and self.client.alive:
                self.client.kill()
        with contextlib.suppress(Exception):
            if self.server is not None:
                self.server.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.origin_root, ignore_errors=True)

    # -- the origin

    def _path(self, name: str) -> str:
        return os.path.join(self.origin, name)

    def _create_file(self) -> None:
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        self.gens.append(Gen(len(self.gens)))
        self.names["app.log"] = len(self.gens) - 1

    def _origin_event(self) -> None:
        """inotify: a live client's file side runs soon after."""
        c = self.client
        if c is not None and c.alive:
            self.at(self.now + FOLLOW_DELAY_S, c.file_side)

    def write(self, size: int, split: float | None = None) -> None:
        self.seq += 1
        if "app.log" not in self.names:
            self._create_file()
        gen = self.names["app.log"]
        head = f"<{gen}:{self.seq}:".encode()
        body = (b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[: max(0, size - len(head) - 2)]
        record = head + body + b">\n"
        if split is not None and len(record) > 1:
            cut = self.rng.randint(1, len(record) - 1)
            self._append(record[:cut])
            rest = record[cut:]
            self.at(self.now + split, lambda: self._append(rest))
        else:
            self._append(record)

    def _append(self, data: bytes) -> None:
        if "app.log" not in self.names:
            self._create_file()
        fd = os.open(self.file, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.gens[self.names["app.log"]].content += data
        self._origin_event()

    def _client_alive(self) -> bool:
        return self.client is not None and self.client.alive

    def mark_held(self, core: PipeClient) -> None:
        """Note each generation a running tcppipe holds open as itself (ground truth for the
        model: tcppipe may skip only generations no tcppipe ever held, which its status
        file cannot have recorded)."""
        gens = [g for g in core.tailer.gens if not g.closed]
        for name, index in self.names.items():
            if index < 0 or index in self.ever_held:
                continue
            try:
                fd = os.open(self._path(name), os.O_RDONLY)
            except OSError:
                continue
            try:
                ident = identify(fd)
                if any(g.matches(ident) for g in gens):
                    self.ever_held.add(index)
            finally:
                os.close(fd)

    def _held(self, name: str) -> bool:
        """Does a running tcppipe hold the file now at ``name`` open?"""
        c = self.client
        if c is None or not c.alive:
            return False
        st = os.stat(self._path(name))
        return any(not g.closed and (g.dev, g.ino) == (st.st_dev, st.st_ino) for g in c.core.tailer.gens)

    def _unlink(self, name: str, why: str) -> None:
        index = self.names[name]
        held = index >= 0 and self._held(name)
        del self.names[name]
        os.unlink(self._path(name))
        if index >= 0:
            g = self.gens[index]
            g.sealed = True
            if not held and g.tail_ok is None:
                g.tail_ok = f"{why} while no tcppipe held it"

    def _rename(self, a: str, b: str) -> None:
        if b in self.names:
            self._unlink(b, "replaced")
        if a == "app.log":
            index = self.names[a]
            g = self.gens[index]
            g.sealed = True
            if g.tail_ok is None and not self._held(a) and index not in self.ever_held:
                g.tail_ok = ROTATED_UNSEEN
        os.rename(self._path(a), self._path(b))
        self.names[b] = self.names.pop(a)

    def _rotated_name(self, n: int) -> str:
        """Numbered naming's n-th rotated name."""
        return f"{self.rotated_prefix}app.log.{n}"

    def _shift_backups(self) -> None:
        """Make room for one more rotated generation: numbered, the last is deleted and the
        others shift up; dateext, the oldest stamps beyond the backups kept are deleted."""
        if self.naming.startswith("dateext"):
            stamped = sorted(name for name in self.names if name.startswith(f"{self.rotated_prefix}app.log-"))
            for name in stamped[: max(0, len(stamped) - self.keep + 1)]:
                self._unlink(name, "deleted beyond the backups")
            return
        last = self._rotated_name(self.keep)
        if last in self.names:
            self._unlink(last, "deleted beyond the backups")
        for n in range(self.keep - 1, 0, -1):
            if self._rotated_name(n) in self.names:
                self._rename(self._rotated_name(n), self._rotated_name(n + 1))

    def _newest_rotated_name(self) -> str:
        """The name rotation gives FILE now (after ``_shift_backups``)."""
        if self.naming.startswith("dateext"):
            self.stamps += 1
            return f"{self.rotated_prefix}app.log-{self.stamps:010d}"
        return self._rotated_name(1)

    def rotate(self, hup: float | None, create: bool = True) -> None:
        """logrotate (or RotatingFileHandler): shift backups, FILE -> its rotated name, a new FILE."""
        self._shift_backups()
        if "app.log" in self.names:
            self._rename("app.log", self._newest_rotated_name())
        if create:
            self._create_file()
        self._origin_event()
        self._hup_later(hup)

    def rotate_burst(self, count: int, size: int) -> None:
        """``count`` numbered rotations, each after a write, with no file side run between (a
        loaded host, a stopped tcppipe). A running tcppipe finds the generations in between at
        FILE.1 .. FILE.(count-1) when it looks: those still on disk must all arrive."""
        alive = self._client_alive()
        held = self.names.get("app.log")
        made: list[Gen] = []
        for _ in range(count):
            self.write(size)
            self.rotate(None)
            made.append(self.gens[self.names["app.log"]])
        named = set(self.names.values())
        if not alive or held is None:
            return
        if held not in named and not self.naming.startswith("dateext"):
            # The one it held went past the last numbered backup: only files written strictly
            # after it are taken, and these were written within one tick of a coarse clock.
            # (Deleted under a stamped name, the name it had last still leads to the later ones.)
            return
        for g in made[:-1]:
            if g.index in named and g.tail_ok == ROTATED_UNSEEN:
                g.tail_ok = None

    def _hup_later(self, hup: float | None) -> None:
        if hup is not None:
            self.at(self.now + hup, self.client_hup)

    def copytruncate(self, hup: float | None) -> None:
        if "app.log" not in self.names:
            return
        self._shift_backups()
        copy = self._newest_rotated_name()
        shutil.copyfile(self.file, self._path(copy))
        self.names[copy] = -1
        old = self.gens[self.names["app.log"]]
        old.sealed = True
        old.tail_ok = old.tail_ok or "copytruncate"
        os.truncate(self.file, 0)
        self.gens.append(Gen(len(self.gens)))
        self.names["app.log"] = len(self.gens) - 1
        self._origin_event()
        self._hup_later(hup)

    def delete(self, recreate: bool) -> None:
        if "app.log" in self.names:
            self._unlink("app.log", "deleted")
        if recreate:
            self._create_file()
        self._origin_event()

    def client_hup(self) -> None:
        c = self.client
        if c is not None and c.alive:
            c.hup_pending = True
            self.at(self.now + FOLLOW_DELAY_S, c.file_side)

    # -- the processes

    def start_client(self) -> None:
        if self._client_alive():
            return
        try:
            self.client = ClientProc(self)
        except OriginError:
            self.log("client cannot start: FILE missing; retrying")
            self.client = None
            self.at(self.now + 1.0, self.start_client)

    def client_exit(self, proc: ClientProc, restart_in: float) -> None:
        proc.exit_cleanly()
        self._release_unlinked("tcppipe exited")
        if self.client is proc:
            self.client = None
            self.at(self.now + restart_in, self.start_client)

    def _release_unlinked(self, why: str) -> None:
        """The process that held deleted generations open is gone: their unsent tails with it."""
        named = set(self.names.values())
        for g in self.gens:
            if g.index not in named and g.tail_ok is None:
                g.sealed = True
                g.tail_ok = f"deleted while held, then {why}"

    def kill_client(self, restart_in: float) -> None:
        if self._client_alive():
            assert self.client is not None
            self.log("kill -9 tcppipe")
            self.client.kill()
            self._release_unlinked("tcppipe was killed")
            self.client = None
            self.at(self.now + restart_in, self.start_client)

    def kill_server(self, restart_in: float) -> None:
        if self.server is not None:
            self.log("kill -9 tcppiped")
            self.server.kill()
            self.server = None
            self.at(self.now + restart_in, self.start_server)

    def start_server(self) -> None:
        if self.server is None:
            self.server = ServerProc(self)

    def rotate_destination(self, hup: float | None) -> None:
        if not os.path.exists(self.dest_path):
            return
        self.dest_rotations += 1
        os.rename(self.dest_path, f"{self.dest_path}.{self.dest_rotations:04d}")
        if hup is not None:
            self.at(self.now + hup, self.server_hup)

    def server_hup(self) -> None:
        if self.server is not None:
            self.server.hup()
            self.dest_dirty = True

    # -- the network

    def net_connect(self, client: ClientProc) -> None:
        delay = self.rng.uniform(0.0005, 0.01)
        if self.now < self.refuse_until or self.server is None:
            self.at(self.now + delay, lambda: client.connect_failed("connection refused"))
            return
        if self.now < self.blackhole_until:
            conn = Conn(self, client, blackhole=True)
            self.blackholed.append(conn)
            self.at(self.now + delay, lambda: client.connected(conn))
            return
        conn = Conn(self, client, blackhole=False)
        server = self.server

        def accept() -> None:
            if self.server is server and server.alive:
                conn.server = ServerConn(server, conn)
                client.connected(conn)
            else:
                client.connect_failed("connection refused")

        self.at(self.now + delay, accept)

    def blackhole(self, duration: float) -> None:
        self.blackhole_until = max(self.blackhole_until, self.now + duration)
        self.at(self.blackhole_until, self._end_blackhole)

    def _end_blackhole(self) -> None:
        if self.now < self.blackhole_until:
            return
        for conn in self.blackholed:
            client = conn.client
            if client is not None:
                self.at(
                    self.now + self.rng.uniform(0.0005, 0.01),
                    functools.partial(client.lost, conn, "reset by a middlebox"),
                )
        self.blackholed = []

    def live_conns(self) -> list[Conn]:
        if self.server is None:
            return []
        return [sc.conn for sc in self.server.conns if not sc.conn.broken]

    def cut(self, args: dict[str, Any]) -> None:
        conns = self.live_conns()
        if not conns:
            return
        conn = conns[-1]
        keep_up = int(len(conn.up.buf) * args["at"])
        keep_down = int(len(conn.down.buf) * args["at_down"])
        conn.cut(keep_up, keep_down, args.get("client_learns"), args.get("server_learns"))

    # -- the invariant

    def _dest_files(self) -> list[str]:
        rotated = sorted(f for f in os.listdir(self.dest_dir) if f.startswith("app.log."))
        files = [os.path.join(self.dest_dir, f) for f in rotated]
        if os.path.exists(self.dest_path):
            files.append(self.dest_path)
        return files

    def check_destination(self) -> None:
        """Feed the checker what is new in the destination files (they only grow, in order)."""
        files = self._dest_files()
        stats = [os.stat(p) for p in files]
        for index, (path, st) in enumerate(zip(files, stats, strict=True)):
            done = self.dest_fed.get(st.st_ino, 0)
            if st.st_size < done:
                raise SimFailure(f"destination {path} shrank from {done} to {st.st_size}")
            if st.st_size == done:
                continue
            later = [
                p for p, s in zip(files[index + 1 :], stats[index + 1 :], strict=True) if self.dest_fed.get(s.st_ino)
            ]
            if later:
                raise SimFailure(f"destination {path} grew after a later file ({later[0]}) had bytes")
            with open(path, "rb") as f:
                f.seek(done)
                data = f.read(st.st_size - done)
            self.checker.feed(data)
            self.dest_fed[st.st_ino] = done + len(data)

    def check_journal(self) -> None:
        """The record's account of the destination file (``destination`` Rule 3b), as verify
        reads it: spans that tile the file from its first byte to its last, each the bytes
        of one origin generation at the offsets it names, under a fingerprint of that head."""
        dest = Destination.inspect(self.dest_path, self.server_state)
        if dest is None:
            return
        try:
            spans, size = dest.spans(), dest.size()
            with open(self.dest_path, "rb") as f:
                data = f.read()
        finally:
            dest.close()
        at = 0
        for index, span in enumerate(spans):
            lo, hi = span.base + span.first, span.base + span.end
            if lo != at:
                raise SimFailure(f"journal span {index} ({span}) starts at byte {lo} of the destination, not {at}")
            held = data[lo:hi]
            if not any(bytes(g.content[span.first : span.end]) == held for g in self.gens):
                raise SimFailure(f"journal span {index} ({span}) holds bytes no origin generation has there")
            if span.base >= 0:
                head = data[span.base : span.base + span.record.fp_len]
                if hashlib.sha256(head).hexdigest() != span.record.fp_sha256:
                    raise SimFailure(f"journal span {index} ({span}) names a head its bytes do not have")
            at = hi
        if at != size and (spans or size):
            raise SimFailure(f"the journal accounts for {at} of the destination's {size} bytes")
