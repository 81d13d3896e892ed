"""Which bytes of which origin generation go out next: the client's core.

Rule 1: synchronous, no sockets; time is passed in. ``client.py`` calls
``poll_rotation`` and ``next_chunk`` on every wake-up and sends what it gets.

Rule 2 (exactly once): the tailer never decides on its own where to resume.
After each (re)connect, ``resume`` takes the server's record (the generation
the destination holds and how many of its bytes landed) and positions the
queue there; the client's status file is consulted only when the server has
no record.

Rule 3 (order through rotation): ``queue`` holds the open generations oldest
first; bytes go out only from ``queue[0]``. A generation that has been
replaced at FILE is read until it has been quiet for ``grace_s`` (or a SIGHUP
asks to move on, or it was truncated), and only then does the next one start.
Finished generations stay open in ``retired`` until the server acknowledges
a later GENERATION, so a connection lost at the switch loses nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from tcppipe.errors import OriginError, describe_os_error
from tcppipe.origin import OriginGeneration, find_generation, matches
from tcppipe.protocol import GenerationId


@dataclass(frozen=True, slots=True)
class Resumed:
    """Where ``resume`` put the stream, for the log."""

    path: str
    position: int
    how: str


class Tailer:
    def __init__(self, path: str, grace_s: float) -> None:
        self.path = path
        self.grace_s = grace_s
        self.queue: list[OriginGeneration] = []
        self.retired: list[OriginGeneration] = []
        self.hup_requested = False
        self.notices: list[str] = []
        self._missing_reported = False
        self._reopen_error: str | None = None

    # -- opening and resuming ---------------------------------------------

    def open(self, now: float) -> None:
        """Open FILE by name (raises OriginError if it cannot be read)."""
        self.queue = [OriginGeneration.open(self.path, now)]

    @property
    def current(self) -> OriginGeneration:
        return self.queue[-1]

    @property
    def sending(self) -> OriginGeneration:
        return self.queue[0]

    def resume(
        self,
        record: GenerationId | None,
        offset: int | None,
        fallback: tuple[GenerationId, int] | None,
        now: float,
        first: bool,
        full: bool = False,
        queued: Sequence[GenerationId] = (),
    ) -> Resumed:
        """Position the queue where the destination stands (see Rule 2)."""
        held = [g for g in self.retired + self.queue if not g.closed]
        self.retired = []
        if full:
            for g in held[:-1]:
                g.close()
            self.queue = held[-1:]
            self.sending.position = 0
            return Resumed(self.sending.path, 0, "from the first byte (-n)")
        if record is not None and offset is not None:
            target, how = (record, offset), "where the destination stands"
        elif fallback is not None:
            target, how = fallback, "from the status file (the server has no record)"
        else:
            target, how = None, "from the first byte (new pipe)"
        if target is not None:
            ident, position = target
            for index, gen in enumerate(held):
                if matches(ident, gen.fd):
                    return self._resume_at(held, index, position, now, how)
            if first:
                rotated = self._find_rotated(ident, queued, held, now)
                if rotated:
                    how += f" (rotated to {rotated[0].path})"
                    return self._resume_at([*rotated, *held], 0, position, now, how)
            how = "from the first byte (the destination holds another generation)"
        live = [g for g in held if not g.finished]
        for g in held:
            if g.finished:
                g.close()
        if not live:
            live = [OriginGeneration.open(self.path, now)]
        self.queue = live
        self.sending.position = 0
        return Resumed(self.sending.path, 0, how)

    def _find_rotated(
        self, ident: GenerationId, queued: Sequence[GenerationId], held: list[OriginGeneration], now: float
    ) -> list[OriginGeneration]:
        """After a restart: the recorded generation, found by identity beside FILE, then
        the generations the status file says were queued after it, in order."""
        directory = os.path.dirname(self.path) or "/"
        found = find_generation(directory, ident)
        if found is None:
            return []
        gens = [OriginGeneration.adopt(found[0], found[1], now)]
        keys = [(q.dev, q.ino) for q in queued]
        after = queued[keys.index((ident.dev, ident.ino)) + 1 :] if (ident.dev, ident.ino) in keys else ()
        for later in after:
            if any(matches(later, g.fd) for g in gens + held):
                continue
            more = find_generation(directory, later)
            if more is not None:
                gens.append(OriginGeneration.adopt(more[0], more[1], now))
        return gens

    def _resume_at(self, held: list[OriginGeneration], index: int, position: int, now: float, how: str) -> Resumed:
        for g in held[:index]:
            g.close()
        self.queue = held[index:]
        gen = self.sending
        size = gen.size()
        if position > size:
            # The generation shrank below what landed: truncated; its new
            # content is a new generation, sent from its first byte.
            gen.finished = True
            self.notices.append(f"{gen.path} is shorter than what landed ({size} < {position}): truncated")
            if len(self.queue) == 1:
                self.queue.append(OriginGeneration.open(self.path, now))
            position = size
        gen.position = gen.acked = position
        gen.high_water = max(gen.high_water, position)
        gen.last_growth = now
        return Resumed(gen.path, position, how)

    # -- rotation -----------------------------------------------------------

    def poll_rotation(self, now: float) -> None:
        """Notice FILE replaced by a new inode or truncated, and queue the new generation."""
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
            self._open_next(now, "replaced")
            return
        size = st.st_size
        if size < last.high_water:
            last.finished = True
            self._open_next(now, f"truncated ({size} < {last.high_water} bytes)")
            return
        last.high_water = max(last.high_water, size)

    def _open_next(self, now: float, why: str) -> None:
        try:
            gen = OriginGeneration.open(self.path, now)
        except OriginError as exc:
            if self._reopen_error != exc.message:
                self._reopen_error = exc.message
                self.notices.append(exc.message)
            return
        self._reopen_error = None
        self.current.last_growth = now
        self.queue.append(gen)
        self.notices.append(f"{self.path} {why}: new generation (inode {gen.ino})")

    # -- reading --------------------------------------------------------------

    def next_chunk(self, now: float, limit: int) -> tuple[OriginGeneration, bytes] | None:
        """The next bytes to send and their generation, or None when caught up."""
        while self.queue:
            gen = self.sending
            if not gen.finished:
                data = gen.read(limit)
                if data:
                    gen.last_growth = now
                    return gen, data
            if len(self.queue) == 1:
                self.hup_requested = False
                return None
            quiet = now - gen.last_growth >= self.grace_s
            if not (gen.finished or self.hup_requested or quiet):
                return None
            self.retired.append(self.queue.pop(0))
            self.notices.append(f"finished {gen.path} (inode {gen.ino}) at {gen.position} bytes")
        return None

    def advance(self, gen: OriginGeneration, count: int) -> None:
        """Record that ``count`` bytes of ``gen`` were handed to the connection."""
        gen.position += count
        gen.high_water = max(gen.high_water, gen.position)

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until a draining generation's grace ends, if one is waiting."""
        if len(self.queue) > 1 and not self.sending.finished:
            return max(0.0, self.sending.last_growth + self.grace_s - now)
        return None

    def acknowledged(self, gen: OriginGeneration, offset: int) -> None:
        """The server confirmed ``offset`` bytes of ``gen``; older generations are done."""
        gen.acked = offset
        # ``retired`` is oldest first and older than every queued generation.
        if gen in self.queue:
            done = len(self.retired)
        elif gen in self.retired:
            done = self.retired.index(gen)
        else:
            return
        for old in self.retired[:done]:
            old.close()
        del self.retired[:done]

    def take_notices(self) -> list[str]:
        notes, self.notices = self.notices, []
        return notes

    def close(self) -> None:
        for gen in self.retired + self.queue:
            gen.close()
        self.retired, self.queue = [], []
