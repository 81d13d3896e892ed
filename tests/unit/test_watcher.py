"""The client's inotify watcher: woken by its own file and by rotations, not by its neighbours."""

from __future__ import annotations

import asyncio
import logging
import os
import select
from pathlib import Path

from tcppipe.client import Watcher
from tcppipe.origin import OriginGeneration


def append(path: Path) -> None:
    with open(path, "ab") as f:
        for i in range(50):
            f.write(b"line %d\n" % i)
            f.flush()


def test_appends_to_neighbours_do_not_wake_but_own_appends_and_rotations_do(tmp_path: Path) -> None:
    """1,000 pipes in one directory must not wake each other: only FILE's own appends and
    changes of directory entries (rotation) queue an event. The kernel queues inotify events
    inside the write, so the fd's readability right after it is the answer, with no waiting."""
    log = logging.getLogger("test")
    own, neighbour = tmp_path / "own.log", tmp_path / "neighbour.log"
    own.write_bytes(b"")
    neighbour.write_bytes(b"")

    def pending(fd: int) -> bool:
        readable = bool(select.select([fd], [], [], 0)[0])
        while select.select([fd], [], [], 0)[0]:
            os.read(fd, 65536)
        return readable

    async def scenario() -> tuple[bool, bool, bool]:
        watcher = Watcher(str(own), lambda: None, log)
        gen = OriginGeneration.open(str(own), 0.0)
        try:
            watcher.watch_file(gen)
            fd = watcher.fileno()
            assert fd >= 0
            pending(fd)
            append(neighbour)
            after_neighbour = pending(fd)
            append(own)
            after_own = pending(fd)
            own.rename(tmp_path / "own.log.1")
            after_rotation = pending(fd)
        finally:
            gen.close()
            watcher.close()
        return after_neighbour, after_own, after_rotation

    assert asyncio.run(scenario()) == (False, True, True)
