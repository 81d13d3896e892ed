"""The host agent's discovery in a deterministic simulation: a model directory, the real ``Discovery``.

Rule 1: pure Python and seeded. No real files, no asyncio: a model directory
of files (``ModelFs``), each a *lifetime* (an inode number from allocation to
free) with an inode number from an allocator that reuses the lowest free
number first (so reuse is common), an inode generation number in one mode
and none in the other (tmpfs, overlayfs), a content and an mtime on the
simulated clock. Every random choice is made once, by ``generate``, into a
list of ``Action``; ``run_actions`` applies them with no randomness, so a
seed (and the indexes kept by a shrink) replays exactly.

Rule 2 (the real rules, the model's pipes): ``AgentWorld`` drives the real
``Discovery.decide`` / ``admits`` / ``failed`` and the real ``claims_of`` /
``let_go_claims`` / ``let_go_since`` (through ``CurrentRules``) as
``host_agent.py`` does; ``ModelPipe`` is what a Client does with its FILE: it
holds open the inode at FILE and the rotated generations it drains (a held
inode is not freed when its last name goes), asks ``admits`` about each new
generation at FILE (refused: it retires), resumes by the server's record or
the status file's position and adopts listed generations found beside FILE
(``Tailer._adopt_recorded``'s matching), sends its generations in order, lets
an old one go once it is sent and quiet for the grace (a real
``tailer.Finished``), and writes a model status file (a real
``tailer.History``, listing the last run's generations until READY) whenever
what it holds changes or it lets one go, and at ticks (progress may be
stale). A pipe that ends with everything landed (retired, gone, drained)
lets every generation go and its status file says "drained" (it owes
nothing). A path whose status file still lists held generations and has no
pipe (``discovery.owes``, Rule 6 there) gets a pipe again: a *drain-only* one where ``Decision.drain`` says so
(``draining.py``): it holds only the listed generations still on disk
(``find_generation``'s matching, each asked of ``admits``), never FILE,
positions them by the server's record at READY and ends once they have
landed. A crash loses every pipe and the Discovery; the status files stay,
and a restart claims what they list.

Rule 3 (the server's record is per pipe and lifetime): what a pipe path has
landed of a lifetime is never sent again by that path (resume by offset is
the server's job, tested by tests/sim/world.py); the simulation is about
which path sends which lifetime.

Rule 4 (the invariant, ``Checker``): after every step, no lifetime has bytes
sent by two pipe paths (the same inode sent twice under two names), and a
path sends only a lifetime that once had that name. At quiescence (the
agent up, several grace and retry periods of scans and ticks) every byte of
every lifetime still allocated is sent by exactly one path. Allowed: the
bytes appended to a generation after its pipe let it go (at or past the size
it was let go at: the agent warns of them), and the unsent bytes of a
lifetime freed while no pipe held it open (deleted while the agent was down
or its pipe failed, or before any scan or pipe saw it). Not allowed any more
(known gap "orphaned" until drain-only pipes): the generations a retiring
pipe held when it crashed or failed, never sent because its path got no pipe
again. A known gap, allowed unless ``known_gaps`` is False (``--strict``),
counted in ``Result.exempt``: *unknowable*: without inode generations, a
status file's entry, position or the server's record whose head is a prefix
of a later file's in the same inode number (an empty head: any file) names
that file too; and in both modes a position or record
(which carry no inode generation) that ``same_generation`` matches to two
listed entries: the resume may take FILE for the named one and stop there.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from tcppipe.discovery import Claim, Discovery, Identify, Inode, Seen, claims_of, let_go_claims, let_go_since, owes
from tcppipe.protocol import FINGERPRINT_BYTES, GenerationId
from tcppipe.tailer import MAX_FINISHED, Finished, History, Recorded, same_generation

DEV = 7
DIRECTORY = "/var/log/app"
BASES = ("a.log", "b.log", "c.log")
# Rotated names kept by a rotation: FILE.1 .. FILE.BACKUPS (the oldest deleted when it keeps them all).
BACKUPS = 3
GRACE_S = 2.0
RETRY_S = 5.0
NS_PER_S = 1_000_000_000
# At quiescence: rounds of (grace and retry waited, every pipe followed, a scan, ticks).
QUIET_ROUNDS = 5


class SimFailure(Exception):
    """The invariant broke."""


def path_of(name: str) -> str:
    return f"{DIRECTORY}/{name}"


@dataclass(eq=False)
class Lifetime:
    """One file: an inode number from allocation to free, with every byte written to it."""

    index: int
    ino: int
    igen: int | None
    mtime_ns: int
    content: bytearray = field(default_factory=bytearray)
    # Every path it has had (a pipe may send it only under one of them).
    names_ever: set[str] = field(default_factory=set)
    links: int = 0
    opened: int = 0
    freed: bool = False
    # In the inode of another lifetime a status file lists as held and empty, without inode
    # generations: nothing tells the two apart (a known gap, Rule 4).
    unknowable: bool = False

    def ident(self) -> GenerationId:
        fp_len = min(len(self.content), FINGERPRINT_BYTES)
        return GenerationId(DEV, self.ino, fp_len, hashlib.sha256(bytes(self.content[:fp_len])).hexdigest())

    def seen(self) -> Seen:
        return Seen((DEV, self.ino), len(self.content), self.mtime_ns)


class ModelFs:
    """A directory of named lifetimes; an open inode outlives its last name."""

    def __init__(self, with_igen: bool) -> None:
        self.with_igen = with_igen
        self.names: dict[str, Lifetime] = {}
        self.allocated: dict[int, Lifetime] = {}
        self.lifetimes: list[Lifetime] = []
        self._igen = 0

    def create(self, path: str, now_ns: int) -> Lifetime:
        """A new empty file at ``path`` (which must be free), in the lowest free inode number."""
        ino = next(n for n in range(2, 2 + len(self.allocated) + 1) if n not in self.allocated)
        self._igen += 1
        lt = Lifetime(len(self.lifetimes), ino, self._igen if self.with_igen else None, now_ns)
        self.lifetimes.append(lt)
        self.allocated[ino] = lt
        self._link(path, lt)
        return lt

    def _link(self, path: str, lt: Lifetime) -> None:
        self.names[path] = lt
        lt.links += 1
        lt.names_ever.add(path)

    def unlink(self, path: str) -> None:
        lt = self.names.pop(path)
        lt.links -= 1
        self._maybe_free(lt)

    def rename(self, src: str, dst: str) -> None:
        lt = self.names.pop(src)
        lt.links -= 1
        if dst in self.names:
            self.unlink(dst)
        self._link(dst, lt)

    def append(self, path: str, data: bytes, now_ns: int) -> None:
        lt = self.names[path]
        lt.content += data
        lt.mtime_ns = now_ns

    def open(self, lt: Lifetime) -> None:
        lt.opened += 1

    def close(self, lt: Lifetime) -> None:
        lt.opened -= 1
        self._maybe_free(lt)

    def _maybe_free(self, lt: Lifetime) -> None:
        if lt.links == 0 and lt.opened == 0 and not lt.freed:
            lt.freed = True
            del self.allocated[lt.ino]

    def found(self) -> dict[str, Seen]:
        """What the agent's glob and stat see: every name in the directory (all match ``*.log*``)."""
        return {path: lt.seen() for path, lt in self.names.items()}

    def identify(self, path: str, length: int) -> tuple[int | None, bytes] | None:
        """``discovery.Identify`` on the model: the inode generation and the first bytes."""
        lt = self.names.get(path)
        return None if lt is None else (lt.igen, bytes(lt.content[:length]))


class Rules(Protocol):
    """What the agent asks of the discovery (the real one, or an older API behind an adapter)."""

    def restarted(
        self, statuses: Mapping[str, History], drained: AbstractSet[str], found: Mapping[str, Seen], identify: Identify
    ) -> None: ...
    def let_go(self, path: str, finished: Sequence[Finished]) -> None: ...
    def pipe_ended(self, path: str, history: History, drained: bool) -> None: ...
    def decide(
        self, found: Mapping[str, Seen], running: Mapping[str, Iterable[Inode]], now: float, identify: Identify
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]: ...
    def admits(self, path: str, seen: Seen, identify: Identify) -> bool: ...
    def failed(self, path: str, now: float) -> None: ...


class CurrentRules:
    """The real ``Discovery``, fed as ``host_agent.py`` feeds it."""

    def __init__(self) -> None:
        self.discovery = Discovery(GRACE_S, RETRY_S)

    def _claim(self, claims: Iterable[tuple[Inode, Claim]]) -> None:
        for inode, claim in claims:
            self.discovery.claim(inode, claim)

    def _claim_status(self, path: str, history: History, drained: bool) -> None:
        """host_agent._claim_status: its claims, and undrained if it owes."""
        self._claim(claims_of(path, history))
        if owes(history, drained):
            self.discovery.left_undrained(path)
        else:
            self.discovery.drained(path)

    def restarted(
        self, statuses: Mapping[str, History], drained: AbstractSet[str], found: Mapping[str, Seen], identify: Identify
    ) -> None:
        for origin in sorted(statuses):  # _claim_recorded: every status file, sorted
            self._claim_status(origin, statuses[origin], origin in drained)

    def let_go(self, path: str, finished: Sequence[Finished]) -> None:
        self._claim(let_go_claims(path, finished))

    def pipe_ended(self, path: str, history: History, drained: bool) -> None:
        self.discovery.ended(path)
        self._claim_status(path, history, drained)

    def decide(
        self, found: Mapping[str, Seen], running: Mapping[str, Iterable[Inode]], now: float, identify: Identify
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        decision = self.discovery.decide(found, running, now, identify)
        return decision.start, decision.gone, decision.drain

    def admits(self, path: str, seen: Seen, identify: Identify) -> bool:
        return self.discovery.admits(path, seen, identify)

    def failed(self, path: str, now: float) -> None:
        self.discovery.failed(path, now)


@dataclass(eq=False)
class ModelGen:
    """A generation a pipe holds open."""

    lifetime: Lifetime
    seen_size: int
    last_growth: float


class Checker:
    """Which pipe path landed how many bytes of which lifetime (Rule 3, Rule 4)."""

    def __init__(self, known_gaps: bool = True) -> None:
        self.known_gaps = known_gaps
        self.landed: dict[tuple[str, int], int] = {}
        self.senders: dict[int, set[str]] = {}
        # (path, lifetime index) -> the size it was let go at (bytes from there on: an allowed gap).
        self.let_go_at: dict[tuple[str, int], int] = {}
        # The last lifetime each path landed bytes of (the server's record, for a resume).
        # (lifetime index, its identity as its GENERATION frame carried it).
        self.record: dict[str, tuple[int, GenerationId]] = {}

    def send(self, path: str, lt: Lifetime) -> int:
        """``path``'s pipe sends what it has not landed of ``lt``; the byte count."""
        have = self.landed.get((path, lt.index), 0)
        more = len(lt.content) - have
        # Its GENERATION frame lands first, even with no bytes: the server's record names it.
        if self.record.get(path, (None,))[0] != lt.index:
            self.record[path] = (lt.index, lt.ident())
        if more <= 0:
            return 0
        allowed = lt.unknowable and self.known_gaps
        if path not in lt.names_ever and not allowed:
            raise SimFailure(f"{path} sends lifetime {lt.index} (inode {lt.ino}), never named {path}")
        self.landed[(path, lt.index)] = len(lt.content)
        senders = self.senders.setdefault(lt.index, set())
        senders.add(path)
        if len(senders) > 1 and not allowed:
            raise SimFailure(
                f"lifetime {lt.index} (inode {lt.ino}) sent under two names: "
                + ", ".join(f"{p} [0, {self.landed.get((p, lt.index), 0)})" for p in sorted(senders))
            )
        return more

    def quiescent(self, world: AgentWorld) -> None:
        """Every byte of every lifetime still allocated sent by exactly one path (allowed gaps aside)."""
        fs = world.fs
        for lt in fs.lifetimes:
            if lt.freed or not lt.content:
                continue
            if lt.unknowable and world.known_gaps:
                world.exempt.append(f"lifetime {lt.index}: unknowable")
                continue
            senders = sorted(self.senders.get(lt.index, ()))
            names = ", ".join(sorted(p for p, x in fs.names.items() if x is lt)) or "no name"
            if not senders:
                raise SimFailure(f"lifetime {lt.index} (inode {lt.ino}, {names}): {len(lt.content)} bytes never sent")
            (path,) = senders
            landed = self.landed[(path, lt.index)]
            gap_from = self.let_go_at.get((path, lt.index))
            if landed < len(lt.content) and (gap_from is None or landed < gap_from):
                raise SimFailure(
                    f"lifetime {lt.index} (inode {lt.ino}, {names}): {path} landed {landed} of {len(lt.content)} bytes"
                )


class ModelPipe:
    """One pipe of the agent: what a Client does with its FILE (Rule 2)."""

    def __init__(self, world: AgentWorld, path: str, drain_only: bool = False) -> None:
        self.world = world
        self.path = path
        self.drain_only = drain_only
        self.gens: list[ModelGen] = []
        self.finished: list[Finished] = []
        # Drain-only pipes retire from the start: FILE is not theirs to follow.
        self.retiring = drain_only
        self.opened = False
        self.last_let_go: Finished | None = None
        # The last run's status file and the lifetime of each entry it lists (the model's
        # knowledge); until READY (the first tick that sends) the status file keeps listing them.
        self.prior: History | None = None
        self.prior_lifetimes: tuple[int, ...] = ()
        self.prior_position = -1
        self.established = False
        # Ended with everything landed (PipeClient.end_drained): its status file says "drained".
        self.ended = False
        # Drain-only: the listed entries found nowhere at the start (and their lifetimes).
        self.missing: list[tuple[Recorded, int]] = []

    def held_inodes(self) -> frozenset[Inode]:
        """Client.held_inodes: what it holds open (what the last run listed is claimed, checked)."""
        return frozenset((DEV, g.lifetime.ino) for g in self.gens)

    def _kept(self) -> list[tuple[Recorded, int]]:
        """PipeClient._kept: until READY, the last run's listed generations not held now."""
        if self.established or self.prior is None:
            return []
        listed = zip(self.prior.held, self.prior_lifetimes, strict=True)
        return [(r, i) for r, i in listed if not any(_names(r, g.lifetime) for g in self.gens)]

    def _hold(self, lt: Lifetime, now: float) -> None:
        self.world.fs.open(lt)
        self.gens.append(ModelGen(lt, len(lt.content), now))

    def start(self, now: float) -> bool:
        """Open FILE, ask ``admits``, adopt what the status file lists beside it; False: not started
        (FILE gone: a failure; another pipe's file: ended)."""
        fs = self.world.fs
        history = self.world.statuses.get(self.path)
        if history is not None:
            self.prior, self.prior_lifetimes = history, self.world.status_lifetimes[self.path]
            self.prior_position = self.world.status_position[self.path]
            self.finished = list(history.finished)
            self.last_let_go = self.finished[-1] if self.finished else None
        if self.drain_only:
            return self._start_draining(history or History(), now)
        current = fs.names.get(self.path)
        if current is None:
            self.world.end_pipe(self, failed=True)
            return False
        self._hold(current, now)
        self.opened = True
        if not self.world.rules.admits(self.path, current.seen(), fs.identify):
            self.world.trace(f"{self.path}: now another pipe's file: not started")
            self.close()  # closed before any status is written, as Client.run does
            self.world.end_pipe(self, failed=False)
            return False
        if history is not None:
            self._adopt(history, current, now)
        self.save()
        return True

    def _start_draining(self, history: History, now: float) -> bool:
        """draining.open_listed: each listed generation still on disk (find_generation: inode, head,
        inode generation), asked of ``admits`` by its own identity; none: ended at once."""
        fs = self.world.fs
        self.opened = True
        for entry, index in zip(history.held, self.prior_lifetimes, strict=True):
            if any(_names(entry, g.lifetime) for g in self.gens):
                continue
            found = next((lt for _p, lt in sorted(fs.names.items()) if _names(entry, lt)), None)
            if found is None:
                self.missing.append((entry, index))
                continue
            if not self.world.rules.admits(self.path, found.seen(), _identify_of(found)):
                self.world.trace(f"{self.path}: drain-only: inode {found.ino} is another pipe's: left to it")
                continue
            self._hold(found, now)
        if not self.gens:
            self.world.trace(f"{self.path}: drain-only: nothing listed is left: ended")
            self.end_drained()
            self.world.end_pipe(self, failed=False)
            return False
        self.world.trace(f"{self.path}: drain-only: holds {[g.lifetime.index for g in self.gens]}")
        self.save()
        return True

    def _resume_draining(self) -> None:
        """draining.resume_draining at the first READY: the held generation the server's record
        (or the status file's position) names goes on; those listed before it landed: let go."""
        history = self.prior or History()
        record = self.world.checker.record.get(self.path)
        if record is not None:
            ident: GenerationId | None = record[1]
            igen = self.world.fs.lifetimes[record[0]].igen
        else:
            ident, igen = (None, None) if history.position is None else (history.position[0], None)
        if ident is None:
            return
        for index in range(len(self.gens) - 1, -1, -1):
            lt = self.gens[index].lifetime
            if igen is not None and lt.igen is not None and lt.igen != igen:
                continue
            if ident.ino == lt.ino and ident.heads(bytes(lt.content)):
                for g in self.gens[:index]:
                    self._let_go(g)
                return

        def may_be(r: Recorded) -> bool:
            return igen is None or r.igen is None or r.igen == igen

        listed = history.held
        start = next((i for i, r in enumerate(listed) if r.ident == ident and may_be(r)), None)
        if start is None:
            start = next((i for i, r in enumerate(listed) if same_generation(r.ident, ident) and may_be(r)), None)
        if start is None:
            return
        later = listed[start + 1 :]
        for g in [g for g in self.gens if not any(_names(r, g.lifetime) for r in later)]:
            self._let_go(g)

    def end_drained(self) -> None:
        """PipeClient.end_drained: everything landed; every generation let go, the status says
        "drained" (and lists, held, only what a drain-only pipe found nothing of)."""
        self.ended = True
        for g in list(self.gens):
            self._let_go(g)
        self.save()

    def _adopt(self, history: History, current: Lifetime, now: float) -> None:
        """Tailer Rule 4: from the listed generation the server's record names (the status file's
        position without one), each listed one found beside FILE by its identity, oldest first."""
        listed = list(history.held)
        record = self.world.checker.record.get(self.path)
        ident = record[1] if record is not None else None if history.position is None else history.position[0]
        if ident is None:
            return  # a new pipe
        # READY's inode generation (the record's; a position carries none): a file of another is not it.
        igen = None if record is None else self.world.fs.lifetimes[record[0]].igen

        def may_be(other: int | None) -> bool:
            return igen is None or other is None or other == igen

        if ident.ino == current.ino and ident.heads(bytes(current.content)) and may_be(current.igen):
            # The record names FILE: resumed there, unless (Tailer._not_a_reused_inode) the listed
            # entry's inode generation says FILE is a later file in that inode.
            same = [r for r in listed if r.ident == ident] or [r for r in listed if same_generation(r.ident, ident)]
            known = [r.igen for r in same if r.igen is not None]
            if not known or current.igen is None or current.igen in known:
                return
        # An exact identity first, then one in the same inode with a head of another length.
        start = next((i for i, r in enumerate(listed) if r.ident == ident and may_be(r.igen)), None)
        if start is None:
            start = next((i for i, r in enumerate(listed) if same_generation(r.ident, ident) and may_be(r.igen)), None)
        let_go = [f for f in history.finished if f.ident is not None and same_generation(f.ident, ident)]
        if start is None and listed and any(may_be(f.igen) for f in let_go):
            start = 0  # the record names a generation it let go: every one listed came after it
        if start is None:
            return
        adopted: list[Lifetime] = []
        for entry in listed[start:]:
            if _names(entry, current):
                break
            found = next((lt for p, lt in sorted(self.world.fs.names.items()) if _names(entry, lt)), None)
            if found is not None and found is not current and found not in adopted:
                adopted.append(found)
        fresh = self.gens
        self.gens = []
        for lt in adopted:
            self._hold(lt, now)
        self.gens += fresh

    def follow(self, now: float) -> None:
        """Growth noticed; FILE replaced: a new generation, asked of ``admits`` (refused: retire)."""
        for g in self.gens:
            size = len(g.lifetime.content)
            if size > g.seen_size:
                g.seen_size, g.last_growth = size, now
        if self.retiring or not self.gens:
            return
        at_file = self.world.fs.names.get(self.path)
        last = self.gens[-1]
        if at_file is None or at_file is last.lifetime:
            return
        last.last_growth = max(last.last_growth, now)
        if self.world.rules.admits(self.path, at_file.seen(), self.world.fs.identify):
            self._hold(at_file, now)
        else:
            self.retiring = True
            self.world.trace(f"{self.path}: FILE is inode {at_file.ino}, another pipe's: retiring")
        self.save()

    def tick(self, now: float, send: bool) -> None:
        """Send from the oldest generation on; one sent to its end and quiet for the grace is let go."""
        if send:
            if self.drain_only and not self.established:
                self._resume_draining()
            self.established = True  # READY: the connection side has resumed
            while self.gens:
                g = self.gens[0]
                self.world.checker.send(self.path, g.lifetime)
                if len(self.gens) == 1 or now - g.last_growth < GRACE_S:
                    break
                self._let_go(g)
        if send:
            self.save()  # progress: written now and then, stale in between
        if self.retiring and send and self.drained():
            self.world.trace(f"{self.path}: retired, everything sent")
            self.end_drained()
            self.world.end_pipe(self, failed=False)

    def _let_go(self, g: ModelGen) -> None:
        lt = g.lifetime
        self.gens.remove(g)
        finished = Finished(DEV, lt.ino, lt.igen, lt.ident(), len(lt.content), lt.mtime_ns)
        self.world.finished_lifetime[finished] = lt.index
        self.finished.append(finished)
        del self.finished[:-MAX_FINISHED]
        self.world.checker.let_go_at[(self.path, lt.index)] = len(lt.content)
        self.world.fs.close(lt)
        self.save()

    def drained(self) -> bool:
        """Client.drained: connected (READY), and every generation held landed to its end."""
        checker = self.world.checker
        landed = checker.landed
        return self.established and all(
            landed.get((self.path, g.lifetime.index), 0) >= len(g.lifetime.content) for g in self.gens
        )

    def history(self) -> History:
        """PipeClient.snapshot: what the status file says now."""
        held = tuple(Recorded(g.lifetime.ident(), len(g.lifetime.content), g.lifetime.igen) for g in self.gens)
        position = None if not held else (held[0].ident, 0)
        if not self.established and self.prior is not None and self.prior.position is not None:
            position = self.prior.position  # until READY, where the last run stood
        kept = tuple(r for r, _index in self._kept())
        return History(position, kept + held, tuple(self.finished))

    def save(self) -> None:
        world = self.world
        if self.gens:  # save_status writes nothing while nothing is held
            world.statuses[self.path] = self.history()
            kept = tuple(index for _r, index in self._kept())
            world.status_lifetimes[self.path] = kept + tuple(g.lifetime.index for g in self.gens)
            from_prior = not self.established and self.prior is not None and self.prior.position is not None
            world.status_position[self.path] = self.prior_position if from_prior else self.gens[0].lifetime.index
        elif self.ended:  # PipeClient._ended_snapshot: a drain-only pipe that ended holding nothing
            left = [] if self.established else self.missing
            position = None if self.established or self.prior is None else self.prior.position
            world.statuses[self.path] = History(position, tuple(r for r, _i in left), tuple(self.finished))
            world.status_lifetimes[self.path] = tuple(i for _r, i in left)
            world.status_position[self.path] = -1 if position is None else self.prior_position
        else:
            return
        if self.ended:
            world.status_drained.add(self.path)
        else:
            world.status_drained.discard(self.path)

    def close(self) -> None:
        for g in self.gens:
            self.world.fs.close(g.lifetime)
        self.gens = []


def _identify_of(lt: Lifetime) -> Identify:
    """``discovery.Identify`` of one lifetime, as host_agent._admits reads it from its descriptor."""
    return lambda _path, length: (lt.igen, bytes(lt.content[:length]))


def _names(entry: Recorded, lt: Lifetime) -> bool:
    """find_generation's test: the same inode, the same head, the same inode generation where known."""
    if entry.ident.ino != lt.ino or not entry.ident.heads(bytes(lt.content)):
        return False
    return entry.igen is None or lt.igen is None or entry.igen == lt.igen


@dataclass
class Action:
    kind: str
    dt: float
    args: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"+{self.dt:.2f}s {self.kind} {args}".rstrip()


class AgentWorld:
    """The model directory, the model status files, the agent (when up) and the checker."""

    def __init__(self, with_igen: bool, make_rules: Callable[[], Rules], known_gaps: bool = True) -> None:
        self.fs = ModelFs(with_igen)
        # Known gaps of the design (Rule 4) allowed, or reported as failures.
        self.known_gaps = known_gaps
        self.exempt: list[str] = []
        self.make_rules = make_rules
        self.rules: Rules = make_rules()
        self.statuses: dict[str, History] = {}
        # The status files that say "drained" (their pipe ended with everything landed).
        self.status_drained: set[str] = set()
        # The lifetime each status file's held entry was written of (what the model knows, the agent not).
        self.status_lifetimes: dict[str, tuple[int, ...]] = {}
        self.finished_lifetime: dict[Finished, int] = {}
        self.status_position: dict[str, int] = {}
        self.claimed: list[tuple[str, History, tuple[int, ...], int]] = []
        self.checker = Checker(known_gaps)
        self.pipes: dict[str, ModelPipe] = {}
        self.up = True
        self.now = 0.0
        self.log: list[str] = []
        self.seq = 0

    def trace(self, line: str) -> None:
        self.log.append(f"t={self.now:8.2f} {line}")

    @property
    def now_ns(self) -> int:
        return int(self.now * NS_PER_S)

    # -- files -------------------------------------------------------------------

    def append(self, name: str, size: int) -> None:
        path = path_of(name)
        lt = self.fs.names.get(path)
        if lt is None:
            return
        self.seq += 1
        line = f"{lt.index}:{self.seq};".encode()
        self.fs.append(path, (line * (size // len(line) + 1))[:size], self.now_ns)

    def rotate(self, base: str, delete_oldest: bool) -> None:
        """logrotate: delete FILE.N, FILE.k -> FILE.k+1, FILE -> FILE.1, create FILE."""
        file = path_of(base)
        if file not in self.fs.names:
            return
        oldest = f"{file}.{BACKUPS}"
        if oldest in self.fs.names and delete_oldest:
            self.fs.unlink(oldest)
        for k in range(BACKUPS - 1, 0, -1):
            if f"{file}.{k}" in self.fs.names and (f"{file}.{k + 1}" not in self.fs.names or delete_oldest):
                self.fs.rename(f"{file}.{k}", f"{file}.{k + 1}")
        if f"{file}.1" in self.fs.names:
            return  # kept every backup (no delete): this rotation cannot make room
        self.fs.rename(file, f"{file}.1")
        self.fs.create(file, self.now_ns)

    def create(self, name: str) -> None:
        path = path_of(name)
        if path not in self.fs.names:
            self.fs.create(path, self.now_ns)

    def delete(self, name: str) -> None:
        path = path_of(name)
        if path in self.fs.names:
            self.fs.unlink(path)

    # -- the agent ---------------------------------------------------------------

    def follow_all(self) -> None:
        for pipe in list(self.pipes.values()):
            if pipe.opened:
                pipe.follow(self.now)

    def scan(self) -> None:
        """``host_agent._scan``: let-go claims, decide, the gone finished, the new started."""
        if not self.up:
            return
        running = {path: pipe.held_inodes() for path, pipe in self.pipes.items()}
        for path, pipe in self.pipes.items():
            if pipe.finished and pipe.finished[-1] is not pipe.last_let_go:
                fresh = let_go_since(pipe.finished, pipe.last_let_go)
                pipe.last_let_go = pipe.finished[-1]
                self.rules.let_go(path, fresh)
        start, gone, drain = self.rules.decide(self.fs.found(), running, self.now, self.fs.identify)
        for path in gone:
            pipe = self.pipes[path]
            if pipe.opened and pipe.drained():
                self.trace(f"{path}: gone and drained: ended")
                pipe.end_drained()
                self.end_pipe(pipe, failed=False)
        for path in start:
            self.trace(f"start {path} (inode {self.fs.found()[path].inode[1]})")
            self.pipes[path] = ModelPipe(self, path)
        for path in drain:
            self.trace(f"start {path} drain-only")
            self.pipes[path] = ModelPipe(self, path, drain_only=True)

    def open_pending(self) -> None:
        for pipe in [p for p in self.pipes.values() if not p.opened]:
            pipe.start(self.now)

    def tick(self, send: bool) -> None:
        for pipe in list(self.pipes.values()):
            if pipe.opened and pipe.path in self.pipes:
                pipe.follow(self.now)
                pipe.tick(self.now, send)

    def end_pipe(self, pipe: ModelPipe, failed: bool) -> None:
        """``host_agent._run_pipe``'s end: the status saved, what it lists claimed, a failure retried later."""
        pipe.save()
        pipe.close()
        del self.pipes[pipe.path]
        history = self.statuses.get(pipe.path)
        self.rules.pipe_ended(pipe.path, History() if history is None else history, pipe.path in self.status_drained)
        if history is not None:
            self._claimed(pipe.path)
        if failed:
            self.rules.failed(pipe.path, self.now)

    def fail(self, name: str) -> None:
        pipe = self.pipes.get(path_of(name))
        if pipe is not None and pipe.opened:
            self.trace(f"{pipe.path}: failed")
            self.end_pipe(pipe, failed=True)

    def crash(self) -> None:
        if not self.up:
            return
        for pipe in list(self.pipes.values()):
            pipe.close()
        self.pipes = {}
        self.up = False

    def restart(self) -> None:
        if self.up:
            return
        self.up = True
        self.rules = self.make_rules()
        self.rules.restarted(self.statuses, self.status_drained, self.fs.found(), self.fs.identify)
        for path in self.statuses:
            self._claimed(path)
        self.scan()

    def apply(self, a: Action) -> None:
        self.now += a.dt
        kind, args = a.kind, a.args
        if kind == "append":
            self.append(args["name"], args["size"])
        elif kind == "rotate":
            self.rotate(args["base"], args["delete"])
        elif kind == "create":
            self.create(args["name"])
        elif kind == "delete":
            self.delete(args["name"])
        elif kind == "scan":
            self.scan()
        elif kind == "open":
            self.open_pending()
        elif kind == "tick":
            self.tick(args["send"])
        elif kind == "fail":
            self.fail(args["name"])
        elif kind == "crash":
            self.crash()
        elif kind == "restart":
            self.restart()
        if kind in ("append", "rotate", "create", "delete") and args.get("inotify") and self.up:
            self.follow_all()
        self.trace(str(a))
        self.mark_unknowable()

    def _claimed(self, path: str) -> None:
        """Remember a status file as the agent claimed it (for ``mark_unknowable``)."""
        entry = (path, self.statuses[path], self.status_lifetimes[path], self.status_position[path])
        if entry not in self.claimed:
            self.claimed.append(entry)

    def mark_unknowable(self) -> None:
        """Without inode generations a status file's entry names any file in its inode number
        whose head starts with the recorded head (an empty one: every file). When another
        lifetime has that number and such a head, either may be taken for the other: by the
        discovery, and by the resume, which stops at a listed entry it takes for FILE. That
        lifetime and, for a held entry or the server's record, every one the status file lists
        are unknowable. The status files now, and as the agent claimed them (its claims outlive
        a rewrite of the file)."""
        now = [(p, h, self.status_lifetimes[p], self.status_position[p]) for p, h in self.statuses.items()]
        for path, history, listed, position_index in [*now, *self.claimed]:
            entries = [
                *((r.ident, r.igen, index, listed) for r, index in zip(history.held, listed, strict=True)),
                *((f.ident, f.igen, self.finished_lifetime[f], ()) for f in history.finished if f.ident is not None),
            ]
            idents = [r.ident for r in history.held]
            record = self.checker.record.get(path)
            # (identity, lifetime) of the position and of the server's record, as far as the model knows.
            named = [(r[1], r[0]) for r in [record] if r is not None]
            if history.position is not None:
                named.append((history.position[0], position_index))
            entries_of = list(zip(history.held, listed, strict=True))
            if len(set(idents)) < len(idents) or any(
                same_generation(r.ident, ident) and i != index for ident, index in named for r, i in entries_of
            ):
                # Two entries with one identity, or the identity of the position or the server's
                # record (no igen) that could be another lifetime's entry (same_generation: one
                # inode number, and heads of other lengths or the same head): the resume cannot
                # tell which is named, and takes FILE for it if an entry it finds has FILE's igen.
                for other in (self.fs.lifetimes[i] for i in listed):
                    if not other.unknowable:
                        self.trace(f"lifetime {other.index} unknowable: {path} lists one identity twice")
                    other.unknowable = True
            if not self.fs.with_igen:
                entries += [(ident, None, index, listed) for ident, index in named]  # the position and record
            for ident, igen, index, affected in entries:
                lt = self.fs.allocated.get(ident.ino)
                if igen is None and lt is not None and lt.index != index and ident.heads(bytes(lt.content)):
                    for other in [lt, *(self.fs.lifetimes[i] for i in affected)]:
                        if not other.unknowable:
                            self.trace(f"lifetime {other.index} unknowable: {path} lists {index} in inode {lt.ino}")
                        other.unknowable = True

    def quiesce(self) -> None:
        """Up again, then grace and retry periods of scans and ticks, with no file changing."""
        self.restart()
        self.mark_unknowable()
        for _ in range(QUIET_ROUNDS):
            self.now += GRACE_S + RETRY_S + 1.0
            self.follow_all()
            self.scan()
            self.open_pending()
            self.tick(send=True)
            self.tick(send=True)


def _name(rng: random.Random) -> str:
    base = rng.choice(BASES)
    k = rng.choice([0, 0, 0, 1, 1, 2, 3])
    return base if k == 0 else f"{base}.{k}"


def generate(seed: int, steps: int) -> list[Action]:
    """A seeded schedule: file changes, scans, pipe ticks, failures, crashes and restarts."""
    rng = random.Random(seed)
    actions: list[Action] = [Action("create", 0.0, {"name": base}) for base in BASES if rng.random() < 0.8]
    actions.append(Action("scan", 0.0))
    kinds = ["append"] * 30 + ["rotate"] * 8 + ["create"] * 3 + ["delete"] * 3 + ["scan"] * 12
    kinds += ["open"] * 8 + ["tick"] * 16 + ["fail"] * 2 + ["crash"] * 2 + ["restart"] * 3
    for _ in range(steps):
        kind = rng.choice(kinds)
        dt = round(rng.choice([0.0, 0.01, 0.1, 0.5, 1.0, 2.5]), 2)
        args: dict[str, Any] = {}
        if kind == "append":
            args = {"name": rng.choice([*BASES, *BASES, _name(rng)]), "size": rng.choice([1, 20, 300, 5000])}
        elif kind == "rotate":
            args = {"base": rng.choice(BASES), "delete": rng.random() < 0.7}
        elif kind in ("create", "delete", "fail"):
            args = {"name": rng.choice(BASES) if kind != "delete" else _name(rng)}
        elif kind == "tick":
            args = {"send": rng.random() < 0.8}
        if kind in ("append", "rotate", "create", "delete"):
            args["inotify"] = rng.random() < 0.6
        actions.append(Action(kind, dt, args))
    return actions


@dataclass
class Result:
    seed: int
    with_igen: bool
    ok: bool
    message: str = ""
    actions: list[Action] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    # Lifetimes with bytes, and those of them the quiescence check let pass as a known gap.
    lifetimes: int = 0
    exempt: int = 0


def run_actions(
    seed: int,
    actions: Sequence[Action],
    with_igen: bool,
    make_rules: Callable[[], Rules] = CurrentRules,
    known_gaps: bool = True,
) -> Result:
    """Apply ``actions``, checking after each; then quiesce and check that everything was sent."""
    world = AgentWorld(with_igen, make_rules, known_gaps)
    try:
        for a in actions:
            world.apply(a)
        world.quiesce()
        world.checker.quiescent(world)
    except SimFailure as exc:
        return Result(seed, with_igen, False, str(exc), list(actions), world.log)
    written = sum(1 for lt in world.fs.lifetimes if lt.content)
    return Result(seed, with_igen, True, "", list(actions), world.log, written, len(world.exempt))


def run_schedule(
    seed: int,
    with_igen: bool,
    steps: int = 80,
    keep: Sequence[int] | None = None,
    make_rules: Callable[[], Rules] = CurrentRules,
    known_gaps: bool = True,
) -> Result:
    """Schedule ``seed`` (only the actions ``keep`` lists, if given)."""
    actions = generate(seed, steps)
    if keep is not None:
        actions = [actions[i] for i in keep]
    return run_actions(seed, actions, with_igen, make_rules, known_gaps)


def shrink(
    seed: int,
    with_igen: bool,
    steps: int = 80,
    make_rules: Callable[[], Rules] = CurrentRules,
    budget: int = 400,
    known_gaps: bool = True,
) -> tuple[list[int], Result]:
    """Greedy, as schedule.shrink: drop chunks of actions while the run still fails."""
    keep = list(range(len(generate(seed, steps))))
    result = run_schedule(seed, with_igen, steps, keep, make_rules, known_gaps)
    runs = 0
    chunk = max(1, len(keep) // 2)
    while chunk >= 1 and runs < budget:
        i, changed = 0, False
        while i < len(keep) and runs < budget:
            trial = keep[:i] + keep[i + chunk :]
            runs += 1
            r = run_schedule(seed, with_igen, steps, trial, make_rules, known_gaps)
            if not r.ok:
                keep, result, changed = trial, r, True
            else:
                i += chunk
        chunk = min(chunk, max(1, len(keep) // 2)) if changed else chunk // 2
    return keep, result
