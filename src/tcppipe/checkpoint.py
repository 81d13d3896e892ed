"""The client's status file: what a restart needs, and what ``tcppipe status`` shows.

Rule 1: a cache, never the authority: the server's record says where to
resume. The file lists every generation tcppipe holds (oldest first, with
the size each had), so a restart can find each of them again; that list is
written durably (fsync) the moment it changes. Routine progress is written at
most once every ``interval_s`` and without fsync; a skipped write is owed,
not dropped (``due_in`` says when to come back).

Rule 2: synchronous, time passed in; only ``state.py`` writes files.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tcppipe import state
from tcppipe.protocol import GenerationId, ProtocolError
from tcppipe.tailer import MAX_FINISHED, MAX_ROTATED_INTO, Finished, History, Recorded

STATUS_INTERVAL_S = 1.0


def load_history(path: str) -> History:
    """What the previous run's status file says (empty if it is missing or damaged)."""
    raw = state.read_json(path) or {}
    held: list[Recorded] = []
    sizes, igens = raw.get("sizes"), raw.get("igens")
    for index, item in enumerate(raw.get("queue", [])):
        with contextlib.suppress(ProtocolError):
            size, igen = _nth_int(sizes, index), _nth_int(igens, index)
            held.append(Recorded(GenerationId.from_json(item), size, igen))
    finished = finished_of(raw.get("finished"))
    rotated_into = directories_of(raw.get("rotated_into"))
    offset = raw.get("offset")
    try:
        ident = GenerationId.from_json(raw.get("generation"))
    except ProtocolError:
        return History(None, tuple(held), finished, rotated_into)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**62:
        return History(None, tuple(held), finished, rotated_into)
    return History((ident, offset), tuple(held), finished, rotated_into)


def directories_of(raw: object) -> tuple[str, ...]:
    """The status file's ``rotated_into``: absolute directory paths, at most MAX_ROTATED_INTO
    (anything else in the list is dropped)."""
    if not isinstance(raw, list):
        return ()
    found = [d for d in raw if isinstance(d, str) and d.startswith("/") and "\0" not in d and len(d) < 4096]
    return tuple(found[:MAX_ROTATED_INTO])


def finished_of(raw: object) -> tuple[Finished, ...]:
    """The status file's finished generations (a damaged list is none): each
    [dev, ino, igen, size, mtime_ns, fp_len, fp_sha256] with unknowns null, or an older
    version's [dev, ino, igen]."""
    if not isinstance(raw, list):
        return ()
    out: list[Finished] = []
    for item in raw[-MAX_FINISHED:]:
        if not isinstance(item, list) or len(item) not in (3, 7):
            return ()
        dev, ino, igen = _nth_int(item, 0), _nth_int(item, 1), _nth_int(item, 2)
        if dev is None or ino is None:
            return ()
        size, mtime_ns, fp_len = _nth_int(item, 3), _nth_int(item, 4), _nth_int(item, 5)
        ident: GenerationId | None = None
        if fp_len is not None:
            try:
                ident = GenerationId.from_json({"dev": dev, "ino": ino, "fp_len": fp_len, "fp_sha256": item[6]})
            except ProtocolError:
                return ()
        out.append(Finished(dev, ino, igen, ident, size, mtime_ns))
    return tuple(out)


def _nth_int(values: object, index: int) -> int | None:
    value = values[index] if isinstance(values, list) and index < len(values) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class StatusFile:
    """Writes the status file by the rule above; the caller asks ``due`` before it builds a snapshot."""

    def __init__(self, path: str, interval_s: float = STATUS_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._saved_at = float("-inf")
        self._last: dict[str, Any] | None = None
        self._shape: list[tuple[int, int]] | None = None
        self.owed = False

    def due(self, shape: list[tuple[int, int]], now: float, force: bool = False) -> bool:
        """Should a snapshot be written now? ``shape`` is the (dev, ino) of each generation held.
        A write that is not due yet is owed (see ``due_in``)."""
        if force or shape != self._shape or now - self._saved_at >= self.interval_s:
            return True
        self.owed = True
        return False

    def save(self, snapshot: dict[str, Any], shape: list[tuple[int, int]], now: float, force: bool = False) -> None:
        """Write ``snapshot`` (durably if the generations held changed or it is forced). OSError is the caller's."""
        durable = force or shape != self._shape
        self.owed = False
        self._saved_at = now
        if snapshot == self._last:
            return
        state.write_json_atomically(self.path, snapshot, durable=durable)
        self._last, self._shape = snapshot, shape

    def due_in(self, now: float) -> float | None:
        """Seconds until an owed write may be made, or None if nothing is owed."""
        if not self.owed:
            return None
        return max(0.0, self._saved_at + self.interval_s - now)
