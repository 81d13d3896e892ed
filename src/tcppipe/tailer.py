"""Which bytes of which origin generation go out next: the client's file side.

Rule 1: synchronous, no sockets; time is passed in. The file side
(``follow``, ``request_hup``) runs on every file event and every -t tick,
whatever the connection is doing (connecting, handshaking, backing off,
streaming): each new generation at FILE is opened the moment it is seen, and
its descriptor held until the server has acknowledged a later generation.
The connection side (``resume``, ``next_chunk``, ``advance``,
``acknowledged``) only decides what to send.

Rule 2 (exactly once: one rule, applied on every READY): the server's record
(the generation the destination holds and how many of its bytes landed)
positions every generation the client holds: the one it names at its offset,
those before it retired, every one after it from byte 0. What was written to
a socket counts for nothing until an ACK says it landed. Only when the server
has no record does the previous run's status file say where to stand.

Rule 3 (order through rotation): ``gens`` holds the open generations oldest
first; bytes go out only from the oldest one not yet finished. A generation
replaced at FILE is read until it has been quiet (no growth seen) for
``grace_s``, or a SIGHUP released it, or it was truncated; only then does the
next one start. The quiet clock of every replaced generation runs from the
writer's last growth the file side saw (at the earliest from the moment it
was replaced), all at once: a writer that rotates ten times in a second costs
one grace period, not ten.

Rule 4 (restart): after a restart the previous status file lists the
generations that run held. If the server's record names one of them that is
no longer FILE, it is looked for beside FILE by its identity, and so is every
one listed after it; each is sent in order. A generation found nowhere is
reported with the bytes lost with it. A generation the status file did not
record is never adopted: a server cannot make tcppipe send any file but FILE
or one it opened itself as FILE.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tcppipe.errors import OriginError, describe_os_error
from tcppipe.origin import (
    OriginGeneration,
    current_name,
    file_identity_number,
    find_generation_near,
    matches,
    rotated_after,
)
from tcppipe.protocol import GenerationId

# Resumed.how when the server had no record on a reconnect: at what the last connection acknowledged.
RESUMED_AT_ACKED = "where the server last acknowledged"
# Finished generations a status file lists (a rotation a day for a month, and then some).
MAX_FINISHED = 32
# Directories other than FILE's remembered as where rotation puts its generations (olddir).
MAX_ROTATED_INTO = 4


@dataclass(frozen=True, slots=True)
class Finished:
    """A generation sent to its end and let go: how a host agent knows it again (after a
    restart too) and tells it from a later file that reused its inode number."""

    dev: int
    ino: int
    igen: int | None = None
    # Its head (None in a status file of an older version), size and mtime when let go.
    ident: GenerationId | None = None
    size: int | None = None
    mtime_ns: int | None = None

    @classmethod
    def of(cls, gen: OriginGeneration) -> Finished:
        """``gen`` as it is when let go (its size and mtime unknown if it cannot be stat'ed)."""
        try:
            st = os.fstat(gen.fd)
            return cls(gen.dev, gen.ino, gen.igen, gen.ident(), st.st_size, st.st_mtime_ns)
        except OSError:
            return cls(gen.dev, gen.ino, gen.igen)

    def to_json(self) -> list[object]:
        """[dev, ino, igen, size, mtime_ns, fp_len, fp_sha256] (unknowns null)."""
        fp = self.ident
        head: list[object] = [None, None] if fp is None else [fp.fp_len, fp.fp_sha256]
        return [self.dev, self.ino, self.igen, self.size, self.mtime_ns, *head]


@dataclass(frozen=True, slots=True)
class Recorded:
    """A generation as the status file remembers it, and its size when last seen."""

    ident: GenerationId
    size: int | None = None
    igen: int | None = None

    def names(self, gen: OriginGeneration) -> bool:
        """Is ``gen`` the generation recorded here (its head, and its inode's generation
        number where both are known: a reused inode number is another file)?"""
        if self.igen is not None and gen.igen is not None and self.igen != gen.igen:
            return False
        return gen.matches(self.ident)


@dataclass(frozen=True, slots=True)
class History:
    """What the previous run's status file says: where it stood, what it held (oldest first),
    the generations it had sent to their end and let go, and the directories other than FILE's
    its generations were seen rotated into (``Tailer.rotated_into``)."""

    position: tuple[GenerationId, int] | None = None
    held: tuple[Recorded, ...] = ()
    finished: tuple[Finished, ...] = ()
    rotated_into: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Resumed:
    """Where ``resume`` put the stream, for the log."""

    path: str
    position: int
    how: str


def same_generation(a: GenerationId, b: GenerationId) -> bool:
    """Could ``a`` and ``b`` name one file? Same inode, and the same head where both
    fingerprints cover the same bytes."""
    if (a.dev, a.ino) != (b.dev, b.ino):
        return False
    return a.fp_len != b.fp_len or a.fp_sha256 == b.fp_sha256


class Tailer:
    """The open generations of one origin FILE and how far each has been sent and acknowledged."""

    def __init__(self, path: str, grace_s: float) -> None:
        self.path = path
        self.grace_s = grace_s
        self.gens: list[OriginGeneration] = []
        self.notices: list[str] = []
        self._missing_reported = False
        self._reopen_error: str | None = None
        # After a restart: the recorded generation, listed by the last run but found nowhere.
        self.gone_record: Recorded | None = None
        # (dev, ino, inode generation) of the generations sent to their end and let go, newest
        # last: a host agent must not take one of them for a new file after a restart.
        self.finished: list[Finished] = []
        # A host agent's say on each generation found between two looks: one another of its
        # pipes holds is left to that pipe (None: every one is this pipe's).
        self.admit: Callable[[OriginGeneration], bool] | None = None
        # The directories other than FILE's that rotation was seen to put its generations in
        # (logrotate's olddir), newest first: after a restart, a listed generation is looked
        # for there too.
        self.rotated_into: list[str] = []

    # -- what is held ------------------------------------------------------------

    def open(self, now: float) -> None:
        """Open FILE by name (raises OriginError if it cannot be read)."""
        self.gens = [OriginGeneration.open(self.path, now)]

    @property
    def current(self) -> OriginGeneration:
        """The generation at FILE (the newest)."""
        return self.gens[-1]

    @property
    def sending(self) -> OriginGeneration:
        """The oldest generation not yet finished: bytes go out only from it."""
        for gen in self.gens:
            if not gen.done:
                return gen
        return self.gens[-1]

    @property
    def queued(self) -> int:
        """Generations waiting behind the one being sent."""
        return len(self.gens) - 1 - self.gens.index(self.sending)

    # -- the file side -----------------------------------------------------------

    def unchanged(self) -> bool:
        """Would ``follow`` find nothing new? Every held generation at the size last seen and
        FILE still the newest one, not shrunk: an idle tick's cheap test (fstats and a stat)."""
        try:
            for gen in self.gens:
                if not gen.closed and os.fstat(gen.fd).st_size != gen.seen_size:
                    return False
            st = os.stat(self.path)
        except OSError:
            return False
        last = self.current
        return (st.st_dev, st.st_ino) == (last.dev, last.ino) and st.st_size >= last.high_water

    def follow(self, now: float) -> None:
        """Notice growth of every held generation, and FILE replaced or truncated."""
        for gen in self.gens:
            gen.observe(now)
        last = self.current
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if not self._missing_reported:
                self._missing_reported = True
                self.notices.append(f"{self.path}: {describe_os_error(exc)}; still reading the open file")
            return
        self._missing_reported = False
        if (st.st_dev, st.st_ino) != (last.dev, last.ino):
            self._open_next(now, "replaced", replaced=True)
            return
        if st.st_size < last.high_water:
            last.finished = True
            self._open_next(now, f"truncated ({st.st_size} < {last.high_water} bytes)")

    def request_hup(self, now: float) -> None:
        """SIGHUP: follow FILE by name now, and let every older generation go once read to its end."""
        self.follow(now)
        for gen in self.gens[:-1]:
            gen.released = True

    def _open_next(self, now: float, why: str, replaced: bool = False) -> None:
        try:
            gen = OriginGeneration.open(self.path, now)
        except OriginError as exc:
            if self._reopen_error != exc.message:
                self._reopen_error = exc.message
                self.notices.append(exc.message)
            return
        self._reopen_error = None
        if replaced:
            self._note_where(self.current)
            # After FILE is open: a rotation between our look and our open has put the
            # generation we looked at among those in between, and it is found there.
            self._adopt_unseen(now, gen)
        # The replaced generation's quiet clock starts now at the earliest: its
        # writer may not have reopened FILE yet.
        self.current.last_growth = max(self.current.last_growth, now)
        self.gens.append(gen)
        self.notices.append(f"{self.path} {why}: new generation (inode {gen.ino})")

    def _note_where(self, gen: OriginGeneration) -> None:
        """Note the directory rotation has put ``gen`` in, if it is not FILE's own."""
        where = current_name(gen.fd, (gen.dev, gen.ino))
        if where is not None:
            self.note_rotated_into([os.path.dirname(where)])

    def note_rotated_into(self, directories: Sequence[str]) -> None:
        """Add ``directories`` (newest first) to ``rotated_into``, but FILE's own."""
        own = os.path.dirname(self.path) or "/"
        for directory in reversed(directories):
            with contextlib.suppress(OSError):
                if directory in self.rotated_into or os.path.samefile(directory, own):
                    continue
                self.rotated_into.insert(0, directory)
        del self.rotated_into[MAX_ROTATED_INTO:]

    def _adopt_unseen(self, now: float, newest: OriginGeneration) -> None:
        """FILE was replaced more than once since the last look: the generations in between,
        rotated away already, are held after the one it replaced and before ``newest`` (FILE,
        just opened)."""
        self.gens.extend(self._between(self.current, newest, now))

    def _between(
        self, last: OriginGeneration, newest: OriginGeneration, now: float, listed: tuple[Recorded, ...] = ()
    ) -> list[OriginGeneration]:
        """The generations that were FILE after ``last`` and before ``newest`` and were rotated
        away unseen (``origin.rotated_after``), opened, oldest first: not one held, let go,
        ``listed`` by the last run's status file (sent, or sent in its turn), or refused by
        ``admit`` (a host agent's other pipe holds it)."""
        try:
            last_st, newest_st = os.fstat(last.fd), os.fstat(newest.fd)
        except OSError:
            return []
        held = {(g.dev, g.ino) for g in self.gens if not g.closed} | {(newest.dev, newest.ino)}

        def known(fd: int, st: os.stat_result) -> bool:
            """Held (an open inode cannot be reused), or a generation let go or listed: its
            inode number may have been reused since, so the same identity number and head say
            it is (unreadable: taken for it, so nothing is sent twice)."""
            if (st.st_dev, st.st_ino) in held:
                return True
            igen = file_identity_number(fd)
            for r in listed:
                if (r.ident.dev, r.ident.ino) == (st.st_dev, st.st_ino) and (
                    r.igen is None or igen is None or r.igen == igen
                ):
                    try:
                        if not r.ident.fp_len or r.ident.heads(os.pread(fd, r.ident.fp_len, 0)):
                            return True
                    except OSError:
                        return True
            for f in self.finished:
                if (f.dev, f.ino) != (st.st_dev, st.st_ino):
                    continue
                if f.igen is not None and igen is not None and f.igen != igen:
                    continue
                try:
                    if f.ident is not None and f.ident.fp_len and not f.ident.heads(os.pread(fd, f.ident.fp_len, 0)):
                        continue
                except OSError:
                    pass  # unreadable: taken for the one let go (nothing is sent twice)
                return True
            return False

        owners = frozenset({last_st.st_uid, newest_st.st_uid})
        found = rotated_after(
            self.path, (last.dev, last.ino), last.fd, last_st.st_mtime_ns, known, owners, (newest.dev, newest.ino)
        )
        between: list[OriginGeneration] = []
        for index, (name, fd) in enumerate(found):
            try:
                gen = OriginGeneration.adopt(name, fd, now)
            except OSError:
                for _name, unused in found[index:]:
                    os.close(unused)
                break
            if self.admit is not None and not self.admit(gen):
                gen.close()
                self.notices.append(f"{name} (inode {gen.ino}) came between, but is another pipe's file: left to it")
                continue
            last.last_growth = max(last.last_growth, now)
            between.append(gen)
            self.notices.append(
                f"{self.path} was replaced more than once since the last look: {name} (inode {gen.ino})"
                " came between, sent in its turn"
            )
        return between

    # -- resuming ----------------------------------------------------------------

    def resume(
        self,
        record: GenerationId | None,
        offset: int | None,
        now: float,
        first: bool,
        full: bool = False,
        history: History | None = None,
        igen: int | None = None,
    ) -> Resumed:
        """Position every held generation where the destination stands (Rule 2); ``igen``, the
        recorded generation's inode generation as the server knows it, tells a later file in
        its reused inode number from it (a short head proves little)."""
        if history is not None:
            self.note_rotated_into(history.rotated_into)
        held = self.gens
        if full:
            for gen in held[:-1]:
                gen.close()
            self.gens = held[-1:]
            self._position(self.current, 0)
            return Resumed(self.current.path, 0, "from the first byte (-n)")
        target: tuple[GenerationId, int] | None = None
        how = "where the destination stands"
        if record is not None and offset is not None:
            target = record, offset
        else:
            if not first:
                # No record on a reconnect: no GENERATION of ours has landed since the server
                # lost or never had one. Start again at the oldest generation held (older
                # ones were closed only once a later one was acknowledged), at what it
                # acknowledged of it.
                gen = self.gens[0]
                return self._resume_at(0, gen.acked, now, RESUMED_AT_ACKED)
            target = None if history is None else history.position
            how = "from the status file (the server has no record)"
        if target is not None:
            ident, at = target
            # Newest first: after copytruncate two held generations share an inode, and
            # the record names the newer one unless its head says otherwise.
            for index in range(len(held) - 1, -1, -1):
                gen = held[index]
                if igen is not None and gen.igen is not None and gen.igen != igen:
                    continue  # the recorded inode number, reused by a later file
                if gen.matches(ident) and (not first or self._not_a_reused_inode(gen, ident, history)):
                    return self._resume_at(index, at, now, how)
            if first and history is not None:
                adopted = self._adopt_recorded(ident, at, history, now, igen)
                if adopted is not None:
                    return adopted
            how = "from the first byte (the destination holds a generation this tcppipe does not hold)"
        else:
            how = "from the first byte (new pipe)"
        for gen in held:
            self._position(gen, 0)
        return Resumed(self.sending.path, 0, how)

    @staticmethod
    def _not_a_reused_inode(gen: OriginGeneration, ident: GenerationId, history: History | None) -> bool:
        """After a restart FILE may reuse the inode number of a deleted generation whose
        head (an empty file's) proves nothing: the status file's inode generation says."""
        if history is None:
            return True
        listed = [r for r in history.held if r.ident == ident] or [
            r for r in history.held if same_generation(r.ident, ident)
        ]
        known = [r for r in listed if r.igen is not None]
        if not known or gen.igen is None:
            return True
        return any(r.igen == gen.igen for r in known)

    def _adopt_recorded(
        self, record: GenerationId, offset: int, history: History, now: float, igen: int | None = None
    ) -> Resumed | None:
        """After a restart: the recorded generation and those listed after it, found beside FILE (Rule 4)."""
        listed = history.held

        def may_be(r: Recorded | Finished) -> bool:
            """A listed (or let-go) generation of another inode generation than the server's record is not it."""
            return igen is None or r.igen is None or r.igen == igen

        # An exact identity first; a digest of another length cannot be compared, so a
        # listed generation in the same inode is taken for it only when none is exact.
        start = next((i for i, r in enumerate(listed) if r.ident == record and may_be(r)), None)
        if start is None:
            start = next((i for i, r in enumerate(listed) if same_generation(r.ident, record) and may_be(r)), None)
        if start is None and listed:
            # The record names a generation this pipe let go: every one listed came after it.
            let_go = [f for f in history.finished if f.ident is not None and same_generation(f.ident, record)]
            start = 0 if any(may_be(f) for f in let_go) else None
        if start is None:
            return None
        directory = os.path.dirname(self.path) or "/"
        adopted: list[OriginGeneration] = []
        recorded_found = False
        later = listed[start:]
        for i, entry in enumerate(later):
            if any(entry.names(gen) for gen in self.gens):
                break  # held already (FILE itself): the held ones follow
            inode = (entry.ident.dev, entry.ident.ino)
            if any((e.ident.dev, e.ident.ino) == inode for e in later[i + 1 :]):
                # A later generation lives in the same inode (copytruncate): this one's
                # bytes are gone from it, whatever its (perhaps empty) head says.
                self.notices.append(
                    f"generation inode {entry.ident.ino} was truncated: what was not sent of it is lost"
                )
                if i == 0:
                    self.gone_record = entry
                continue
            # Searched by our own record of it, never by what the server says; the recorded
            # generation must also match the server's record, whose head may be longer.
            found = find_generation_near(self.path, entry.ident, entry.igen, self.rotated_into)
            if found is not None and i == 0 and not matches(record, found[1]):
                # Our record of it (a head shorter than the server's) names a file that is not
                # what landed: the recorded bytes are gone (copytruncate put new ones in the
                # inode), and the file there is the next generation, ours, from byte 0.
                self.gone_record = entry
                self.notices.append(
                    f"generation inode {entry.ident.ino} holds other bytes than those that landed:"
                    " the rest of the recorded generation is lost; its successor in the inode goes next"
                )
                adopted.append(OriginGeneration.adopt(found[0], found[1], now))
                continue
            if found is None:
                if i == 0:
                    self.gone_record = entry
                    what, size = "its unsent tail", None if entry.size is None else max(0, entry.size - offset)
                else:
                    what, size = "all of it", entry.size
                amount = "an unknown number of bytes" if size is None else f"{size} bytes"
                self.notices.append(
                    f"generation inode {entry.ident.ino} is gone from {directory}: {what} is lost ({amount})"
                )
                continue
            gen = OriginGeneration.adopt(found[0], found[1], now)
            if self.admit is not None and not self.admit(gen):
                # Held by another pipe of a host agent (a drain-only pipe's, say): it is that
                # pipe's to send, never this one's too.
                gen.close()
                self.notices.append(f"{found[0]} (inode {gen.ino}) is another pipe's file: left to it")
                continue
            adopted.append(gen)
            recorded_found = recorded_found or i == 0
        first_held = self.gens[0]
        self.gens = [*adopted, *self.gens]
        if not any(entry.names(first_held) for entry in listed):
            # FILE is new to this tcppipe: it was rotated while tcppipe was not running, maybe
            # more than once; the generations in between follow the last one listed and found.
            if adopted:
                between = self._between(adopted[-1], first_held, now, listed)
                self.gens[len(adopted) : len(adopted)] = between
            else:
                self.notices.append(
                    f"{self.path} (inode {first_held.ino}) is new to this tcppipe and no generation it listed"
                    " is left beside it: a generation that was FILE only while tcppipe was not running"
                    " cannot be found"
                )
        if recorded_found:
            return self._resume_at(0, offset, now, f"where the destination stands (rotated to {adopted[0].path})")
        for gen in self.gens:
            self._position(gen, 0)
        return Resumed(self.sending.path, 0, "from the first byte of the next generation (the recorded one is gone)")

    def _resume_at(self, index: int, position: int, now: float, how: str) -> Resumed:
        for gen in self.gens[:index]:
            gen.close()
        self.gens = self.gens[index:]
        for gen in self.gens[1:]:
            self._position(gen, 0)
        gen = self.gens[0]
        size = gen.size()
        if position > size:
            # The generation shrank below what landed: truncated; its new
            # content is a new generation, sent from its first byte.
            self.notices.append(f"{gen.path} is shorter than what landed ({size} < {position}): truncated")
            self._position(gen, size)
            gen.finished = True
            if len(self.gens) == 1:
                self.gens.append(OriginGeneration.open(self.path, now))
            return Resumed(self.gens[1].path, 0, how + " (truncated: the new content from its first byte)")
        self._position(gen, position)
        return Resumed(gen.path, position, how)

    @staticmethod
    def _position(gen: OriginGeneration, position: int) -> None:
        gen.position = gen.acked = position
        gen.done = False
        gen.high_water = max(gen.high_water, position)

    # -- reading -----------------------------------------------------------------

    def next_chunk(
        self, now: float, limit: int, into: memoryview | None = None
    ) -> tuple[OriginGeneration, bytes | memoryview] | None:
        """The next bytes to send and their generation, or None when caught up (read into
        ``into`` when given, see ``OriginGeneration.read``)."""
        for gen in self.gens:
            if gen.done:
                continue
            if not gen.finished:
                data = gen.read(limit, into)
                if data:
                    return gen, data
            if gen is self.current:
                return None
            quiet = now - gen.last_growth >= self.grace_s
            if not (gen.finished or gen.released or quiet):
                return None
            gen.done = True
            self.notices.append(f"finished {gen.path} (inode {gen.ino}) at {gen.position} bytes")
        return None

    def advance(self, gen: OriginGeneration, count: int) -> None:
        """Record that ``count`` bytes of ``gen`` were handed to the connection."""
        gen.position += count
        gen.high_water = max(gen.high_water, gen.position)

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until a draining generation's grace ends, if one is waiting."""
        gen = self.sending
        if gen is self.current or gen.finished or gen.released:
            return None
        return max(0.0, gen.last_growth + self.grace_s - now)

    def acknowledged(self, gen: OriginGeneration, offset: int) -> None:
        """The server confirmed ``offset`` bytes of ``gen``; the generations before it are done with."""
        if gen.closed or gen not in self.gens:
            return
        gen.acked = offset
        index = self.gens.index(gen)
        for old in self.gens[:index]:
            self.finished.append(Finished.of(old))
            old.close()
        del self.finished[:-MAX_FINISHED]
        del self.gens[:index]

    def take_notices(self) -> list[str]:
        notes, self.notices = self.notices, []
        return notes

    def close(self) -> None:
        for gen in self.gens:
            gen.close()
        self.gens = []
