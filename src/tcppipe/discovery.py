"""Which files a host agent pipes: globs expanded, new matches started, rotated names skipped.

Rule 1: pure. No asyncio, no sockets, no file system: the agent
(``host_agent.py``) globs and stats, and hands this module what it found as
``{path: (st_dev, st_ino)}`` with the time; this module answers which paths
get a pipe, which are skipped and why, and which pipes are finished.

Rule 2 (one inode, one name): a file is identified by (st_dev, st_ino). Every
inode that a pipe of this process holds (FILE, the rotated generations it is
still draining or has queued, and what its status file listed from the last
run) is *claimed* by that pipe's path. A matching path whose inode another
pipe claims is a rotated name of that pipe's file (``access.log.1`` under
``*.log*``): it never becomes a pipe, so the same bytes are never sent twice
under two names. A running pipe whose own FILE turns into another pipe's
inode asks ``admits`` and is refused (the adapter then retires it).

Rule 3 (claims end with the inode): a claim is dropped once no pipe holds the
inode and no matching path has it, so a new file that reuses a deleted file's
inode number is a new pipe, not a ghost of the old one.

Rule 4 (gone for good): a running pipe whose path has matched nothing for
``grace_s`` is finished once it has nothing left to send (the adapter asks its
pipe); if the path comes back later it is a new pipe, which resumes where the
destination stands like any restart.

Rule 5 (failures stay local): a pipe that ended with an error is retried
after ``retry_s`` (at once after a SIGHUP: ``retry_now``); the others go on.
"""

from __future__ import annotations

import glob
import hashlib
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Inode = tuple[int, int]

# A pipe that ended with an error (refused, unreachable, unreadable) is tried again after this long.
RETRY_FAILED_S = 30.0


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
class Decision:
    """What a scan decided."""

    # Paths that get a new pipe now, sorted.
    start: tuple[str, ...] = ()
    # Paths skipped because another pipe's path claims their inode: {path: owner path}.
    rotated: Mapping[str, str] = field(default_factory=dict)
    # Running pipes whose path has matched nothing for the grace period.
    gone: tuple[str, ...] = ()


class Discovery:
    """The claims of one host agent's pipes on inodes, and the decisions of each scan."""

    def __init__(self, grace_s: float, retry_s: float = RETRY_FAILED_S) -> None:
        self.grace_s = grace_s
        self.retry_s = retry_s
        self.claims: dict[Inode, str] = {}
        self._absent_since: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}

    def claim(self, path: str, inodes: Iterable[Inode]) -> None:
        """``path``'s pipe holds (or its status file listed) these inodes; the first claim stands."""
        for inode in inodes:
            self.claims.setdefault(inode, path)

    def admits(self, path: str, inode: Inode) -> bool:
        """May ``path``'s pipe take ``inode`` (a new generation at its FILE)? Claims it if so."""
        owner = self.claims.setdefault(inode, path)
        return owner == path

    def failed(self, path: str, now: float) -> None:
        """``path``'s pipe ended with an error: try it again after ``retry_s``."""
        self._retry_at[path] = now + self.retry_s

    def retry_now(self) -> None:
        """A SIGHUP: every failed pipe is tried again at the next scan."""
        self._retry_at.clear()

    def decide(self, found: Mapping[str, Inode], running: Mapping[str, Iterable[Inode]], now: float) -> Decision:
        """One scan: ``found`` maps each matching regular file to its inode, ``running`` each
        pipe's path to the inodes it holds."""
        held: set[Inode] = set()
        for path, inodes in running.items():
            listed = set(inodes)
            self.claim(path, listed)
            held |= listed
        live = held | set(found.values())
        for inode in [i for i in self.claims if i not in live]:
            del self.claims[inode]  # Rule 3
        for path in [p for p, at in self._retry_at.items() if at <= now]:
            del self._retry_at[path]
        start: list[str] = []
        rotated: dict[str, str] = {}
        for path in sorted(found):
            if path in running or path in self._retry_at:
                continue
            owner = self.claims.get(found[path])
            if owner is not None and owner != path:
                rotated[path] = owner
                continue
            # Claimed now, not at the next scan: the pipe may see a rotation before that.
            self.claims[found[path]] = path
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
        return Decision(tuple(start), rotated, tuple(sorted(gone)))


def agent_lock_name(patterns: Iterable[str], host: str, port: int) -> str:
    """The lock file name of a host agent: its normalised -f set (in any order), -h and -p,
    held while it runs (``tcppipe -I`` and ``keep_tcppipe_alive`` with the same options read it)."""
    text = "\0".join([*sorted(set(patterns)), host, str(port)])
    return f"tcppipe.agent.{hashlib.sha256(text.encode()).hexdigest()[:16]}.lock"
