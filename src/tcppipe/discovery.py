"""Which files a host agent pipes: globs expanded, new matches started, rotated names skipped.

Rule 1: pure. No asyncio, no sockets, no file system: the agent
(``host_agent.py``) globs and stats, and hands this module what it found as
``{path: (st_dev, st_ino)}`` with the time; this module answers which paths
get a pipe, which are skipped and why, and which pipes are finished.

Rule 2 (one inode, one name): a file is identified by (st_dev, st_ino). Every
inode a running pipe of this process holds open (FILE, the rotated generations
it is still draining) is *held* by that pipe's path: a matching path with that
inode is a rotated name of that pipe's file (``access.log.1`` under
``*.log*``), never a pipe, so the same bytes are never sent twice under two
names. An open inode cannot be freed, so a held claim needs no check. A
running pipe whose own FILE turns into an inode another pipe holds or claims
asks ``admits`` and is refused (the adapter then retires it).

Rule 3 (a claim on a file nobody holds is checked): a generation a pipe sent to
its end and let go, and every generation a status file lists from the last run
(before its pipe has opened it again), is a ``Claim``: the inode, and what the
file was (its head's digest, its inode generation number where the file system
has one, its size and mtime). Its inode number may have been freed and reused
by a later file, on a file system without inode generation numbers (tmpfs,
overlayfs) too, so a matching path with that inode counts as the claimed file
only while its stat is unchanged, or, once it changed, while ``identify`` shows
the same inode generation and the same head. A file let go while empty had
nothing of it sent: changed, it is a new pipe. A claim is dropped once no
matching path has its inode, and as soon as the check fails: the path then
gets a new pipe, sent from its first byte. One inode number may carry claims
of several owners (status files after a restart, one of them for a file that
was freed and its number reused): newest first, each is checked in its turn,
and the first that names the file decides.

Rule 4 (gone for good): a running pipe whose path has matched nothing for
``grace_s`` is finished once it has nothing left to send (the adapter asks its
pipe); if the path comes back later it is a new pipe, which resumes where the
destination stands like any restart.

Rule 5 (failures stay local): a pipe that ended with an error is retried
after ``retry_s``, doubled at each failure in a row up to ``RETRY_MAX_S`` (a
file the server does not define costs a connection every 10 minutes, not every
30 s forever); at once after a SIGHUP (``retry_now``), and from ``retry_s``
again once it got READY (``succeeded``). The others go on.

Rule 6 (nothing held is orphaned): a status file that lists generations its
pipe held names bytes that may not have landed (``owes``), unless it says
"drained": its pipe ended (retired, gone, drained) with everything landed and
let every generation go. A path whose status file owes, with no pipe running
(after a restart; after its pipe failed, was stopped, or found FILE another
pipe's file), is ``undrained``: if its FILE
gets a pipe (Rule 2 admits it), that pipe adopts the listed generations as any
restart does; otherwise (FILE gone, or another pipe's file, as for a pipe that
retired) it gets a *drain-only* pipe (``Decision.drain``), which holds only the
listed generations still on disk, never opens FILE, and ends once they have
landed; a failed one is retried by Rule 5 like any pipe. Without it, a
retiring pipe that crashed or failed before its generations were drained left
their bytes unsent for good: its path never got a pipe again. A drain-only
pipe stops unfinished once FILE is a file an ordinary pipe resumes after the
listed generations (``hands_over``: a new one, or one the status file lists),
never for a generation the path let go, which is older than them.
"""

from __future__ import annotations

import glob
import hashlib
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tcppipe.protocol import GenerationId
from tcppipe.tailer import Finished, History, Recorded

Inode = tuple[int, int]
# ``identify(path, length)``: the inode generation number (None if the file system has none)
# and the first ``length`` bytes of the file at ``path`` now, or None if it cannot be read.
Identify = Callable[[str, int], "tuple[int | None, bytes] | None"]

# Claims kept on one inode number, newest first (a generation claimed again as it grew, by a
# pipe's end and its let-go; a few files that held the number): the oldest beyond are dropped.
MAX_CLAIMS_PER_INODE = 16
# A pipe that ended with an error (refused, unreachable, unreadable) is tried again after this long.
RETRY_FAILED_S = 30.0
# ... doubled at each failure in a row, up to this.
RETRY_MAX_S = 600.0


def is_pattern(path: str) -> bool:
    """Does ``path`` hold glob characters (``*``, ``?``, ``[``)?"""
    return glob.has_magic(path)


def normalise_pattern(pattern: str, cwd: str) -> str:
    """Absolute against ``cwd``, symlinks not resolved: the same rule as a plain -f."""
    return posixpath.normpath(posixpath.join(cwd, pattern))


def watched_directories(patterns: Iterable[str]) -> set[str]:
    """The directories whose entries can change what ``patterns`` match (those without
    glob characters; a pattern with one in a directory part has its fixed prefix)."""
    dirs: set[str] = set()
    for pattern in patterns:
        directory = posixpath.dirname(pattern) or "/"
        while is_pattern(directory):
            directory = posixpath.dirname(directory) or "/"
        dirs.add(directory)
    return dirs


@dataclass(frozen=True, slots=True)
class Seen:
    """What a scan saw of a matching regular file: its inode, size and mtime."""

    inode: Inode
    size: int = 0
    mtime_ns: int = 0


@dataclass(slots=True)
class Claim:
    """A claim on a file no pipe holds open (Rule 3): checked before it counts."""

    owner: str
    # Its head as it was (None: unknown, written by an older version: the inode generation decides).
    ident: GenerationId | None
    igen: int | None = None
    # Its stat when claimed or last checked; while unchanged, no check is needed.
    size: int | None = None
    mtime_ns: int | None = None
    # Sent to its end and let go (not one its owner's resume may adopt again).
    let_go: bool = True

    def unchanged(self, seen: Seen) -> bool:
        return self.size is not None and (self.size, self.mtime_ns) == (seen.size, seen.mtime_ns)

    def may_be(self, other: Claim) -> bool:
        """Could this claim and ``other`` (on one inode number) be on the same file? Not with two
        inode generations, nor with two heads of one length that differ."""
        if self.igen is not None and other.igen is not None and self.igen != other.igen:
            return False
        a, b = self.ident, other.ident
        return a is None or b is None or a.fp_len != b.fp_len or a.fp_sha256 == b.fp_sha256

    def names(self, igen: int | None, head: bytes) -> bool:
        """Is a file with inode generation ``igen`` whose first bytes are ``head`` the claimed file?"""
        if self.igen is not None and igen is not None:
            if igen != self.igen:
                return False
        elif self.ident is None:
            return False  # neither a head nor an inode generation to know it by
        if self.ident is None:
            return True
        if self.let_go and self.ident.fp_len == 0:
            return False  # empty when let go: nothing of it was sent
        return self.ident.heads(head)


def claims_of(origin: str, history: History) -> list[tuple[Inode, Claim]]:
    """What ``origin``'s status file (``history``) claims: the generations it held (its resume
    may adopt them again), then those it sent to their end and let go."""
    held = list(history.held)
    position = history.position
    # The position names a held generation (the oldest): a second claim on its inode would
    # replace the held one's and lose its inode generation and size.
    if position is not None and all((r.ident.dev, r.ident.ino) != (position[0].dev, position[0].ino) for r in held):
        held.append(Recorded(position[0]))
    claims = [((r.ident.dev, r.ident.ino), Claim(origin, r.ident, r.igen, r.size, let_go=False)) for r in held]
    # A let-go generation in the inode number of a held one is the older file (two files held
    # open at once never share a number; the let-go one was closed, its number freed and
    # reused): its claim would say "nothing of it is held" of the held file.
    numbers = {inode for inode, _claim in claims}
    return claims + [(i, c) for i, c in let_go_claims(origin, history.finished) if i not in numbers]


def owes(history: History, drained: bool) -> bool:
    """Does a status file (``history``; ``drained``: it says its pipe ended with everything
    landed) list generations its pipe held that may not all have landed (Rule 6)?"""
    return bool(history.held) and not drained


def let_go_claims(origin: str, finished: Iterable[Finished]) -> list[tuple[Inode, Claim]]:
    """The claims of generations ``origin``'s pipe sent to their end and let go."""
    return [((f.dev, f.ino), Claim(origin, f.ident, f.igen, f.size, f.mtime_ns)) for f in finished]


def let_go_since(finished: Sequence[Finished], last: Finished | None) -> list[Finished]:
    """The generations in ``finished`` (oldest first) let go after ``last`` (all, if it is not
    there). Only these are claimed: claiming an older one again would replace a claim made
    since (its file became another path's pipe, retired, and that pipe's status claims it)."""
    for index in range(len(finished) - 1, -1, -1):
        if finished[index] is last:
            return list(finished[index + 1 :])
    return list(finished)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a scan decided."""

    # Paths that get a new pipe now, sorted.
    start: tuple[str, ...] = ()
    # Paths skipped because another pipe's path claims their inode: {path: owner path}.
    rotated: Mapping[str, str] = field(default_factory=dict)
    # Running pipes whose path has matched nothing for the grace period.
    gone: tuple[str, ...] = ()
    # Rotated names whose file grew after its pipe let it go: {path: (owner, size let go at)}.
    grew: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    # Undrained paths (Rule 6) that get a drain-only pipe now, sorted.
    drain: tuple[str, ...] = ()


class Discovery:
    """The claims of one host agent's pipes on inodes, and the decisions of each scan."""

    def __init__(self, grace_s: float, retry_s: float = RETRY_FAILED_S) -> None:
        self.grace_s = grace_s
        self.retry_s = retry_s
        # Inodes the running pipes hold open (as of the last scan, and since then by admits/start).
        self.held: dict[Inode, str] = {}
        # Inodes claimed with no pipe holding them open (Rule 3), newest claim first: several
        # status files may claim one inode number after a restart, each for another file.
        self.claims: dict[Inode, list[Claim]] = {}
        self._absent_since: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        # Paths whose status file owes (Rule 6) and that have no pipe running.
        self.undrained: set[str] = set()

    def left_undrained(self, path: str) -> None:
        """``path``'s pipe is not running and its status file owes (Rule 6): it gets a pipe again."""
        self.undrained.add(path)

    def ended(self, path: str) -> None:
        """``path``'s pipe ended: what it held open is closed (its inode may be freed and its number
        reused at once), claimed from now on only as its status file lists it, checked (Rule 3)."""
        for inode in [i for i, owner in self.held.items() if owner == path]:
            del self.held[inode]

    def drained(self, path: str) -> None:
        """``path``'s status file owes nothing (its pipe ended with everything landed)."""
        self.undrained.discard(path)

    def claim(self, inode: Inode, claim: Claim) -> None:
        """Record a claim (a status file's generation, or one a pipe let go), first in its inode's
        list unless one says the same (the old keeps what checks learnt); it replaces its owner's
        claims that may be on the same file. The others stay, each checked in its turn: one
        pipe's status file may list a let-go generation and a later one that reused its inode
        number, and two status files may claim one number."""
        claims = self.claims.setdefault(inode, [])
        said = (claim.owner, claim.ident, claim.igen, claim.let_go)
        if any((c.owner, c.ident, c.igen, c.let_go) == said for c in claims):
            return
        claims[:] = [claim, *(c for c in claims if c.owner != claim.owner or not c.may_be(claim))]
        del claims[MAX_CLAIMS_PER_INODE:]

    def owner_of(self, path: str, seen: Seen, identify: Identify) -> str | None:
        """Whose is the file at ``path``: the path of the pipe that holds or claims it, or None."""
        owner = self.held.get(seen.inode)
        if owner is not None:
            return owner
        named = self._claim_naming(path, seen, identify)
        return None if named is None else named[0].owner

    def _claim_naming(self, path: str, seen: Seen, identify: Identify) -> tuple[Claim, int | None] | None:
        """The newest claim on ``seen``'s inode that names the file at ``path``, and the size it
        knew the file at before this look; the claims that do not name it are dropped."""
        claims = self.claims.get(seen.inode, [])
        while claims:
            claim = claims[0]
            size = claim.size
            if claim.unchanged(seen):
                return claim, size
            got = identify(path, claim.ident.fp_len if claim.ident is not None else 0)
            if got is None:
                return claim, size  # unreadable now: neither a pipe nor a release; looked at again
            if claim.names(*got):
                claim.size, claim.mtime_ns = seen.size, seen.mtime_ns
                return claim, size
            del claims[0]
        self.claims.pop(seen.inode, None)
        return None

    def hands_over(self, path: str, seen: Seen, identify: Identify) -> bool:
        """Should ``path``'s drain-only pipe stop so an ordinary pipe takes FILE (``seen``) over
        (Rule 6)? Only for a file the ordinary pipe resumes after what the status file lists:
        one nobody holds or claims (new), or one the list itself claims."""
        if seen.inode in self.held:
            return False  # its own (nothing to take over) or another pipe's
        named = self._claim_naming(path, seen, identify)
        if named is None:
            return True
        claim = named[0]
        # Not a generation ``path`` let go (``mv access.log.1 access.log``): the ordinary pipe's
        # resume takes FILE for the newest of what the path has, and a let-go one is older than
        # what the status file lists. Were the server's record on it (nothing listed landed yet),
        # the resume would stand at FILE and drop the listed generations unsent. The drain-only
        # pipe goes on to its end instead; then FILE gets a pipe as any path's FILE does. (A later
        # file that reuses a let-go inode number and its head only waits for that end.)
        return claim.owner == path and not claim.let_go

    def admits(self, path: str, seen: Seen, identify: Identify) -> bool:
        """May ``path``'s pipe take the file ``seen`` (a new generation at its FILE)? Held if so."""
        owner = self.owner_of(path, seen, identify)
        if owner is not None and owner != path:
            return False
        self.held[seen.inode] = path
        return True

    def failed(self, path: str, now: float) -> float:
        """``path``'s pipe ended with an error: the delay until it is tried again (Rule 5)."""
        count = self._failures.get(path, 0)
        self._failures[path] = count + 1
        delay: float = min(self.retry_s * 2.0 ** min(count, 32), max(self.retry_s, RETRY_MAX_S))
        self._retry_at[path] = now + delay
        return delay

    def succeeded(self, path: str) -> None:
        """``path``'s pipe got READY: its next failure waits ``retry_s`` again."""
        self._failures.pop(path, None)

    def retry_now(self) -> None:
        """A SIGHUP: every failed pipe is tried again at the next scan, its delay from ``retry_s``."""
        self._retry_at.clear()
        self._failures.clear()

    def due(self, now: float) -> bool:
        """Is a decision due by time alone: a failed pipe's retry, or a path absent for the
        grace period? (A scan woken by nothing else may be skipped otherwise.)"""
        if any(at <= now for at in self._retry_at.values()):
            return True
        return any(now - since >= self.grace_s for since in self._absent_since.values())

    def decide(
        self,
        found: Mapping[str, Seen],
        running: Mapping[str, Iterable[Inode]],
        now: float,
        identify: Identify,
    ) -> Decision:
        """One scan: ``found`` maps each matching regular file to what its stat showed,
        ``running`` each pipe's path to the inodes it holds open."""
        self.held = {}
        for path, inodes in running.items():
            for inode in inodes:
                self.held.setdefault(inode, path)
        live = set(self.held) | {seen.inode for seen in found.values()}
        for inode in [i for i in self.claims if i not in live]:
            del self.claims[inode]  # Rule 3: no matching path has it any more
        for path in [p for p, at in self._retry_at.items() if at <= now]:
            del self._retry_at[path]
        for path in [p for p in self._failures if p not in found and p not in self._retry_at]:
            if path not in self.undrained:
                del self._failures[path]  # gone (a date-named file): its count would only grow the map
        start: list[str] = []
        rotated: dict[str, str] = {}
        grew: dict[str, tuple[str, int]] = {}
        for path in sorted(found):
            if path in running or path in self._retry_at:
                continue
            seen = found[path]
            owner = self.held.get(seen.inode)
            let_go_at: int | None = None
            named = None if owner is not None else self._claim_naming(path, seen, identify)
            if named is not None:
                owner = named[0].owner
                let_go_at = named[1] if named[0].let_go else None
            if owner is not None and owner != path:
                rotated[path] = owner
                if let_go_at is not None and seen.size > let_go_at:
                    grew[path] = (owner, let_go_at)
                continue
            # Held now, not at the next scan: the pipe may see a rotation before that.
            self.held[seen.inode] = path
            start.append(path)
        gone: list[str] = []
        for path in running:
            if path in found:
                self._absent_since.pop(path, None)
                continue
            since = self._absent_since.setdefault(path, now)
            if now - since >= self.grace_s:
                gone.append(path)
        for path in [p for p in self._absent_since if p not in running]:
            del self._absent_since[path]
        # Rule 6: an undrained path whose FILE got no pipe above (gone, or another pipe's file).
        drain = sorted(self.undrained - set(running) - set(self._retry_at) - set(start))
        self.undrained -= {*start, *drain}
        return Decision(tuple(start), rotated, tuple(sorted(gone)), grew, tuple(drain))


def agent_lock_name(patterns: Iterable[str], host: str, port: int) -> str:
    """The lock file name of a host agent: its normalised -f set (in any order), -h and -p,
    held while it runs (``tcppipe -I`` and ``keep_tcppipe_alive`` with the same options read it)."""
    text = "\0".join([*sorted(set(patterns)), host, str(port)])
    return f"tcppipe.agent.{hashlib.sha256(text.encode()).hexdigest()[:16]}.lock"
