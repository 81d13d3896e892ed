"""The host agent's one inotify instance: each pipe woken by its own file's events, watches shared and counted."""

from __future__ import annotations

import asyncio
import logging
import os
import select
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tcppipe.origin import OriginGeneration
from tcppipe.watch import READ_BYTES, InotifyHandle, SharedInotify

LOG = logging.getLogger("test")


def watches(shared: SharedInotify) -> int:
    """The watches the kernel holds on the instance (one ``inotify wd:`` line each in fdinfo)."""
    with open(f"/proc/self/fdinfo/{shared.fileno()}") as f:
        return sum(line.startswith("inotify wd:") for line in f)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def drain(shared: SharedInotify) -> None:
    """Run the readable callback until the queue is empty (the kernel queues events inside each syscall)."""
    while readable(shared.fileno()):
        shared._on_readable()


class World:
    """Files in one directory, each followed by a handle of one shared instance that counts its wake-ups."""

    def __init__(self, tmp: Path, names: list[str]) -> None:
        self.shared = SharedInotify(LOG)
        self.woken: Counter[str] = Counter()
        self.handles: dict[str, InotifyHandle] = {}
        self.gens: list[OriginGeneration] = []
        for name in names:
            path = tmp / name
            path.write_bytes(b"")
            self.handles[name] = self.shared.watcher_for(str(path), self._waker(name), LOG)
            self.follow(name, path)
        drain(self.shared)
        self.woken.clear()

    def _waker(self, name: str) -> Callable[[], None]:
        return lambda: self.woken.update([name])

    def follow(self, name: str, path: Path) -> OriginGeneration:
        gen = OriginGeneration.open(str(path), 0.0)
        self.gens.append(gen)
        self.handles[name].watch_file(gen)
        return gen

    def woken_by(self, action: Callable[[], object]) -> set[str]:
        self.woken.clear()
        action()
        drain(self.shared)
        return set(self.woken)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        for gen in self.gens:
            gen.close()
        self.shared.close()


def append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"line\n")


def test_appends_and_rotations_wake_only_their_own_pipe(tmp_path: Path) -> None:
    """Of three pipes in one directory, an append, a rename away and a re-create each wake that file's pipe only."""

    async def scenario() -> list[set[str]]:
        world = World(tmp_path, ["a.log", "b.log", "c.log"])
        try:
            return [
                world.woken_by(lambda: append(tmp_path / "b.log")),
                world.woken_by(lambda: (tmp_path / "a.log").rename(tmp_path / "a.log.1")),
                world.woken_by(lambda: append(tmp_path / "a.log.1")),  # the old generation still grows
                world.woken_by(lambda: (tmp_path / "a.log").write_bytes(b"new\n")),
                world.woken_by(lambda: (tmp_path / "unrelated.txt").write_bytes(b"x")),
            ]
        finally:
            world.close()

    assert asyncio.run(scenario()) == [{"b.log"}, {"a.log"}, {"a.log"}, {"a.log"}, set()]


def test_many_pipes_share_one_instance_and_one_directory_watch(tmp_path: Path) -> None:
    """200 pipes in one directory: one inotify fd, one directory watch plus one per open generation."""

    async def scenario() -> tuple[set[int], int]:
        world = World(tmp_path, [f"f{i}.log" for i in range(200)])
        try:
            return {h.fileno() for h in world.handles.values()}, watches(world.shared)
        finally:
            world.close()

    fds, count = asyncio.run(scenario())
    assert len(fds) == 1
    assert count == 1 + 200


def test_closing_a_handle_keeps_the_watches_others_need(tmp_path: Path) -> None:
    """Closing a.log's pipe keeps the directory watch b.log's pipe shares; closing the last removes it."""

    async def scenario() -> tuple[int, set[str], set[str], int]:
        world = World(tmp_path, ["a.log", "b.log"])
        try:
            world.handles["a.log"].close()
            after_one = watches(world.shared)
            renamed = world.woken_by(lambda: (tmp_path / "b.log").rename(tmp_path / "b.log.1"))
            recreated = world.woken_by(lambda: (tmp_path / "b.log").write_bytes(b""))
            world.handles["b.log"].close()
            return after_one, renamed, recreated, watches(world.shared)
        finally:
            world.close()

    assert asyncio.run(scenario()) == (2, {"b.log"}, {"b.log"}, 0)


def test_two_pipes_holding_one_inode_share_its_watch(tmp_path: Path) -> None:
    """Two handles watching one inode get one watch; the first to close leaves it to the other."""

    async def scenario() -> tuple[int, set[str]]:
        shared = SharedInotify(LOG)
        path = tmp_path / "x.log"
        path.write_bytes(b"")
        woken: list[str] = []
        gens = [OriginGeneration.open(str(path), 0.0) for _ in range(2)]
        first = shared.watcher_for(str(path), lambda: woken.append("first"), LOG)
        second = shared.watcher_for(str(path), lambda: woken.append("second"), LOG)
        try:
            first.watch_file(gens[0])
            second.watch_file(gens[1])
            count = watches(shared)  # one directory watch, one file watch
            first.close()
            drain(shared)
            woken.clear()
            append(path)
            drain(shared)
            return count, set(woken)
        finally:
            second.close()
            for gen in gens:
                gen.close()
            shared.close()

    assert asyncio.run(scenario()) == (2, {"second"})


def test_a_closed_generation_loses_its_watch_at_the_next_watch_file(tmp_path: Path) -> None:
    """A rotated generation the pipe let go (closed) is no longer watched, though its file stays on disk."""

    async def scenario() -> tuple[int, int, set[str]]:
        world = World(tmp_path, ["a.log"])
        try:
            old = world.gens[0]
            (tmp_path / "a.log").rename(tmp_path / "a.log.1")
            (tmp_path / "a.log").write_bytes(b"")
            world.follow("a.log", tmp_path / "a.log")
            before = watches(world.shared)
            old.close()
            world.handles["a.log"].watch_file(world.gens[1])
            after = watches(world.shared)
            drain(world.shared)
            woken = world.woken_by(lambda: append(tmp_path / "a.log.1"))
            return before, after, woken
        finally:
            world.close()

    assert asyncio.run(scenario()) == (3, 2, set())


def alternate_appends(paths: list[Path], count: int) -> None:
    """``count`` one-byte appends taking turns between ``paths``: one MODIFY event each (the kernel
    merges an event only with an identical one just before it)."""
    fds = [os.open(path, os.O_WRONLY | os.O_APPEND) for path in paths]
    try:
        for i in range(count):
            os.write(fds[i % len(fds)], b"x")
    finally:
        for fd in fds:
            os.close(fd)


def test_one_callback_reads_a_bounded_batch(tmp_path: Path) -> None:
    """After 3,000 file events, one readable callback reads at most READ_BYTES and leaves the rest queued."""

    async def scenario() -> tuple[bool, int, set[str]]:
        world = World(tmp_path, ["a.log", "b.log"])
        try:
            alternate_appends([tmp_path / "a.log", tmp_path / "b.log"], 3000)  # 16 bytes of event each
            world.shared._on_readable()
            still = readable(world.shared.fileno())
            calls = 1
            while readable(world.shared.fileno()):
                world.shared._on_readable()
                calls += 1
            return still, calls, set(world.woken)
        finally:
            world.close()

    still, calls, woken = asyncio.run(scenario())
    assert still
    assert calls >= 3000 * 16 // READ_BYTES
    assert woken == {"a.log", "b.log"}


def test_an_overflowed_queue_wakes_every_pipe(tmp_path: Path) -> None:
    """More events than the kernel queues (IN_Q_OVERFLOW): every pipe is woken, named or not."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 1_000_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to make")

    async def scenario() -> set[str]:
        world = World(tmp_path, ["a.log", "b.log", "quiet.log"])
        try:
            alternate_appends([tmp_path / "a.log", tmp_path / "b.log"], limit + 10)
            world.woken.clear()
            drain(world.shared)
            return set(world.woken)
        finally:
            world.close()

    assert asyncio.run(scenario()) == {"a.log", "b.log", "quiet.log"}


def test_the_scan_shares_the_instance_and_the_directory_watch_with_the_pipes(tmp_path: Path) -> None:
    """The agent's scan is woken by any new entry, on the pipes' directory watch; leaving, it keeps theirs."""

    async def scenario() -> tuple[int, set[str], bool, int, set[str]]:
        world = World(tmp_path, ["a.log"])
        scanned: list[bool] = []
        scan = world.shared.directory_watch(lambda: scanned.append(True))
        try:
            scan.watch({str(tmp_path)})
            count = watches(world.shared)  # the directory once, and a.log's generation
            woken = world.woken_by(lambda: (tmp_path / "new.log").write_bytes(b""))
            scan.close()
            after_close = watches(world.shared)
            renamed = world.woken_by(lambda: (tmp_path / "a.log").rename(tmp_path / "a.log.1"))
            return count, woken, bool(scanned), after_close, renamed
        finally:
            scan.close()
            world.close()

    assert asyncio.run(scenario()) == (2, set(), True, 2, {"a.log"})


def test_a_pipe_and_the_scan_are_told_everything_only_while_every_watch_is_up(tmp_path: Path) -> None:
    """``sees_all``: true with FILE's directory and every open generation watched on a local file
    system; false for a generation not watched, a directory not watched, or a closed instance
    (then the -t tick polls them)."""

    async def scenario() -> list[bool]:
        world = World(tmp_path, ["a.log"])
        scan = world.shared.directory_watch(lambda: None)
        try:
            handle, held = world.handles["a.log"], list(world.gens)
            (tmp_path / "a.log.1").write_bytes(b"")
            unwatched = OriginGeneration.open(str(tmp_path / "a.log.1"), 0.0)
            scan.watch({str(tmp_path)})
            told = [handle.sees_all(held), handle.sees_all([*held, unwatched])]
            told += [scan.sees_all({str(tmp_path)}), scan.sees_all({str(tmp_path), str(tmp_path / "none")})]
            world.shared.close()
            told += [handle.sees_all(held), scan.sees_all({str(tmp_path)})]
            unwatched.close()
            return told
        finally:
            scan.close()
            world.close()

    assert asyncio.run(scenario()) == [True, False, True, False, False, False]


def test_a_directory_renamed_and_replaced_is_watched_again_where_it_is_now(tmp_path: Path) -> None:
    """Found by review: a watch stays on the directory inode it was made on. Renamed away and
    replaced (a deploy's switched release directory), ``recheck`` drops it: a pipe's handle watches
    the one there now at once, the scan's at its next ``watch`` (until then it scans every -t)."""
    logs = tmp_path / "logs"
    logs.mkdir()

    async def scenario() -> list[bool]:
        world = World(logs, ["a.log"])
        scan = world.shared.directory_watch(lambda: None)
        try:
            handle = world.handles["a.log"]
            scan.watch({str(logs)})
            told = [handle.sees_all(world.gens), scan.sees_all({str(logs)})]
            logs.rename(tmp_path / "old")
            logs.mkdir()
            (logs / "a.log").write_bytes(b"")
            handle.recheck()
            scan.recheck()
            st = os.stat(logs)
            told += [handle.dir_identity == (st.st_dev, st.st_ino), scan.sees_all({str(logs)})]
            world.follow("a.log", logs / "a.log")
            scan.watch({str(logs)})
            told += [handle.sees_all(world.gens[-1:]), scan.sees_all({str(logs)})]
            return told
        finally:
            scan.close()
            world.close()

    assert asyncio.run(scenario()) == [True, True, True, False, True, True]


def test_a_generation_on_a_file_system_inotify_cannot_see_whole_makes_its_pipe_polled(tmp_path: Path) -> None:
    """FILE a link to a file elsewhere (here a procfs file standing for NFS or FUSE): its directory
    is local, the file is not, so the pipe is not ``sees_all`` and its -t tick polls it."""

    async def scenario() -> tuple[bool, bool]:
        world = World(tmp_path, ["a.log"])
        try:
            handle = world.handles["a.log"]
            before = handle.sees_all(world.gens)
            elsewhere = OriginGeneration.open("/proc/self/status", 0.0)
            world.gens.append(elsewhere)
            handle.watch_file(elsewhere)
            return before, handle.sees_all(world.gens)
        finally:
            world.close()

    assert asyncio.run(scenario()) == (True, False)


def test_a_symlinked_file_is_woken_by_its_target_s_rotation(tmp_path: Path) -> None:
    """FILE a symlink to app.log beside it: the re-created app.log (another name) wakes its pipe."""

    async def scenario() -> tuple[set[str], set[str]]:
        (tmp_path / "app.log").write_bytes(b"")
        (tmp_path / "current").symlink_to("app.log")
        world = World(tmp_path, ["other.log"])
        woken: list[str] = []
        handle = world.shared.watcher_for(str(tmp_path / "current"), lambda: woken.append("current"), LOG)
        try:
            (tmp_path / "app.log").rename(tmp_path / "app.log.1")
            drain(world.shared)
            woken.clear()
            recreated = world.woken_by(lambda: (tmp_path / "app.log").write_bytes(b""))
            return set(woken), recreated
        finally:
            handle.close()
            world.close()

    assert asyncio.run(scenario()) == ({"current"}, set())
