"""A drain-only pipe's file side: the generations its status file lists, never FILE.

Rule 1: synchronous, no sockets; time is passed in. ``pipe_client.py`` calls
this instead of ``Tailer.open`` and ``Tailer.resume`` for a drain-only pipe (a
host agent's pipe whose FILE is gone or another pipe's file, but whose status
file still lists generations it held: ``discovery.py`` Rule 6).

Rule 2 (only what was ours): at the start each listed generation is looked for
beside FILE, or where rotation was seen to put one, by its own record
(``origin.find_generation_near``: the inode, the head, the inode generation
where known), the way ``Tailer._adopt_recorded``
looks for it, and ``admit`` (the agent's discovery) is asked about each; FILE
is never opened, so a drain-only pipe cannot send another pipe's file.

Rule 3 (exactly once, as ``tailer.py`` Rule 2): at each READY the server's
record positions the held generations: the one it names at its offset, those
listed before it (they landed) let go, those after from byte 0. At the first
READY without a record the status file's position stands in for it. A record
that names a listed generation found nowhere: its unsent tail is lost, those
listed after it go from byte 0. A record of none of them: all from byte 0.

Rule 4 (the end): once every held generation has landed to its end the pipe
ends as a retiring pipe does (``PipeClient.end_drained``): every generation
is let go (``let_go_all``, at the size that landed: what is written to it
later is a new pipe's if it was empty, else what a host agent warns of), and
its status file says "drained", so nothing is owed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from tcppipe.origin import OriginGeneration, find_generation_near
from tcppipe.protocol import GenerationId
from tcppipe.tailer import MAX_FINISHED, RESUMED_AT_ACKED, Finished, History, Recorded, Resumed, Tailer, same_generation


def open_listed(
    tailer: Tailer, history: History, admit: Callable[[OriginGeneration], bool] | None, now: float
) -> list[Recorded]:
    """Hold every listed generation still beside FILE (or where rotation put it) that ``admit``
    allows, oldest first (Rule 2); the entries found nowhere are returned (not those left to
    another pipe)."""
    tailer.note_rotated_into(history.rotated_into)
    missing: list[Recorded] = []
    for entry in history.held:
        if any(entry.names(gen) for gen in tailer.gens):
            continue  # listed twice (an older version's status file)
        found = find_generation_near(tailer.path, entry.ident, entry.igen, tailer.rotated_into)
        if found is None:
            missing.append(entry)
            continue
        try:
            gen = OriginGeneration.adopt(found[0], found[1], now)
        except OSError:
            os.close(found[1])
            missing.append(entry)
            continue
        if admit is not None and not admit(gen):
            gen.close()
            tailer.notices.append(f"{gen.path} (inode {gen.ino}) is another pipe's file: left to it")
            continue
        tailer.gens.append(gen)
    for entry in missing:
        tailer.notices.append(f"generation inode {entry.ident.ino} is not beside {tailer.path}: not sent")
    return missing


def _listed_index(history: History, ident: GenerationId, igen: int | None) -> int | None:
    """The listed entry ``ident`` names: an exact identity first, then one in the same inode
    with a head of another length (``Tailer._adopt_recorded``'s rule)."""

    def may_be(r: Recorded) -> bool:
        return igen is None or r.igen is None or r.igen == igen

    listed = history.held
    exact = next((i for i, r in enumerate(listed) if r.ident == ident and may_be(r)), None)
    if exact is not None:
        return exact
    return next((i for i, r in enumerate(listed) if same_generation(r.ident, ident) and may_be(r)), None)


def resume_draining(
    tailer: Tailer,
    history: History,
    record: GenerationId | None,
    offset: int | None,
    first: bool,
    igen: int | None = None,
) -> Resumed:
    """Position the held generations where the destination stands (Rule 3)."""
    gens = tailer.gens
    if record is None or offset is None:
        if not first and gens:
            # As the tailer on a reconnect without a record: the oldest held, at what it acknowledged.
            return _resume_at(tailer, 0, gens[0].acked, RESUMED_AT_ACKED)
        target = history.position
        how = "from the status file (the server has no record)"
    else:
        target = record, offset
        how = "where the destination stands"
    if target is None:
        return _from_start(tailer, "from the first byte (no record)")
    ident, at = target
    for index in range(len(gens) - 1, -1, -1):
        gen = gens[index]
        if igen is not None and gen.igen is not None and gen.igen != igen:
            continue
        if gen.matches(ident):
            return _resume_at(tailer, index, at, how)
    start = _listed_index(history, ident, igen)
    if start is None:
        return _from_start(tailer, "from the first byte (the destination holds a generation this pipe does not list)")
    later = history.held[start + 1 :]
    _let_go(tailer, [gen for gen in gens if not any(entry.names(gen) for entry in later)])
    tailer.gone_record = history.held[start]
    tailer.notices.append(
        f"generation inode {ident.ino} (the recorded one) is not held: what was not sent of it is lost"
    )
    return _from_start(tailer, "from the first byte of the next generation (the recorded one is gone)")


def _from_start(tailer: Tailer, how: str) -> Resumed:
    for gen in tailer.gens:
        _position(gen, 0)
    return Resumed(tailer.gens[0].path if tailer.gens else tailer.path, 0, how)


def _resume_at(tailer: Tailer, index: int, position: int, how: str) -> Resumed:
    _let_go(tailer, tailer.gens[:index])
    gen = tailer.gens[0]
    for later in tailer.gens[1:]:
        _position(later, 0)
    try:
        size = gen.size()
    except OSError:
        size = position
    if position > size:
        # Shorter than what landed: truncated. A drain-only pipe has no FILE to go on with.
        tailer.notices.append(f"{gen.path} is shorter than what landed ({size} < {position}): truncated")
        _position(gen, size)
        gen.finished = True
        return Resumed(gen.path, size, how + " (truncated)")
    _position(gen, position)
    return Resumed(gen.path, position, how)


def _position(gen: OriginGeneration, position: int) -> None:
    gen.position = gen.acked = position
    gen.done = False
    gen.high_water = max(gen.high_water, position)


def _let_go(tailer: Tailer, gens: list[OriginGeneration], at_acked: bool = False) -> None:
    """``gens`` landed: let go, as ``Tailer.acknowledged`` does (at their size now: the server's
    record is past them), or at the size acknowledged (``at_acked``: growth after it is what a
    host agent warns of)."""
    for gen in gens:
        finished = Finished.of(gen)
        tailer.finished.append(dataclasses.replace(finished, size=gen.acked) if at_acked else finished)
        gen.close()
        tailer.gens.remove(gen)
    del tailer.finished[:-MAX_FINISHED]


def let_go_all(tailer: Tailer) -> None:
    """Everything held landed and the pipe ends: every generation let go (Rule 4)."""
    _let_go(tailer, [gen for gen in tailer.gens if not gen.closed], at_acked=True)
    tailer.gens = []
