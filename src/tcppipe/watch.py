"""One inotify instance for a whole host agent, its pipes and its scan: the asyncio adapter over ``inotify_routes``.

Rule 1: one instance per agent, not per pipe. Linux allows 128 inotify
instances per user (``fs.inotify.max_user_instances``); with one per pipe a
host of 2,000 files got events for 128 of them and polled the rest.

Rule 2: each pipe gets a handle (``watcher_for``) with the single-file
``Watcher``'s interface: ``watch_file(gen)``, ``fileno()``, ``close()``, and
its wake callback. The handle watches FILE's directory (shared with every
handle there, woken by FILE's name only) and each open generation through
``/proc/self/fd/N`` (woken by that inode's events). Which handle an event
wakes is ``inotify_routes.Routes``'s decision. The agent's scan subscribes
to the directories its patterns name on the same instance (``directory_watch``).

Rule 3: bounded work. One readable callback reads at most ``READ_BYTES`` of
events, wakes each pipe they name once, and returns; the event loop calls it
again while more wait, so a burst never starves the pipes it wakes.

Rule 4: a handle removes only its own subscriptions; a watch goes when no
handle needs it. Generations a pipe has closed lose their watch at its next
``watch_file`` (a rotated file left on disk would otherwise keep a watch for
as long as the agent runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Callable
from typing import Any, Final

from tcppipe.errors import describe_os_error
from tcppipe.inotify_routes import Routes
from tcppipe.origin import OriginGeneration

# One read per readable callback: about 500 events of a 16-character name (16 bytes of
# header plus the name padded to 16). At least one event of the longest name (272 bytes).
READ_BYTES: Final = 16384

# The masks of the single-file Watcher: no MODIFY on the directory (every append to
# every neighbour would be an event); appends come from the watches on the generations.
DIR_MASK: Final = 0x100 | 0x80 | 0x40 | 0x200  # CREATE | MOVED_TO | MOVED_FROM | DELETE
FILE_MASK: Final = 0x2 | 0x4 | 0x8 | 0x800 | 0x400  # MODIFY | ATTRIB | CLOSE_WRITE | MOVE_SELF | DELETE_SELF

Identity = tuple[int, int]  # (st_dev, st_ino)

# statfs f_type of local file systems, where inotify reports every write to a watched inode
# (every write goes through this kernel and this inode): ext2/3/4, XFS, Btrfs, tmpfs, F2FS,
# ZFS, ReiserFS, JFS. On others (NFS, CIFS, FUSE, 9p, Ceph) another host's or a daemon's
# writes are not seen, and on overlayfs writes made to its layers' directories from outside
# (a host writing into a container's upper directory) are not: their pipes are polled every -t.
LOCAL_FS_TYPES: Final = frozenset(
    {0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0xF2F52010, 0x2FC12FC1, 0x52654973, 0x3153464A}
)
# struct statfs is 120 bytes on 64-bit Linux; f_type, its first member, a long.
_STATFS_BYTES: Final = 256


def _load(name: str) -> Callable[[Any, Any], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function: Callable[[Any, Any], int] = getattr(libc, name)
        return function
    return None


_statfs, _fstatfs = _load("statfs"), _load("fstatfs")


def inotify_sees_every_write(where: str | int) -> bool:
    """Does inotify report every write to a file in directory ``where`` (or to the file open
    as descriptor ``where``): a local file system? If so a pipe whose files are all watched
    needs no -t poll: the events say all a poll would."""
    buffer = ctypes.create_string_buffer(_STATFS_BYTES)
    if isinstance(where, int):
        if _fstatfs is None or _fstatfs(where, buffer) != 0:
            return False
    elif _statfs is None or _statfs(os.fsencode(where), buffer) != 0:
        return False
    return ctypes.c_long.from_buffer(buffer).value in LOCAL_FS_TYPES


def _identity_of(path: str) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def close_inotify(inotify: Any) -> None:
    """Stop the event loop reading ``inotify`` (an ``inotify_simple.INotify``) and close it."""
    with contextlib.suppress(Exception):
        asyncio.get_running_loop().remove_reader(inotify.fileno())
    inotify.close()


class Subscriber:
    """Something the shared instance wakes: a pipe's handle or the agent's scan."""

    def __init__(self, shared: SharedInotify, wake: Callable[[], None]) -> None:
        self.shared = shared
        self.wake = wake
        self.closed = False

    def lost(self, wd: int) -> None:
        """The kernel dropped watch ``wd`` (IN_IGNORED): forget it, to watch again later."""


class InotifyHandle(Subscriber):
    """One pipe's view of the shared instance: FILE's directory entry and its open generations."""

    def __init__(self, shared: SharedInotify, path: str, wake: Callable[[], None]) -> None:
        super().__init__(shared, wake)
        self.directory = os.path.dirname(path) or "/"
        self.name = os.path.basename(path)
        # FILE a symlink: its target's entry changes under another name, so every entry event
        # of the directory wakes this pipe (as the single-file Watcher does for any FILE).
        self.any_name = os.path.islink(path)
        self.dir_wd: int | None = None
        # Each generation watched, by identity: its watch descriptor and the generation.
        self.files: dict[Identity, tuple[int, OriginGeneration]] = {}
        # FILE's directory, and every generation watched, on a local file system (``sees_all``).
        self.local = inotify_sees_every_write(self.directory)
        # The directory watched (dev, ino): renamed or replaced since, the watch says nothing.
        self.dir_identity: Identity | None = None

    def watch_file(self, gen: OriginGeneration) -> None:
        """Follow ``gen``'s inode even after it is renamed out of the directory."""
        self.shared.watch_file(self, gen)

    def fileno(self) -> int:
        """The shared inotify fd (-1 when polling)."""
        return self.shared.fileno()

    def recheck(self) -> None:
        """Is FILE's directory still the one watched? Renamed or replaced (a deploy's switched
        symlink), its watch is dropped and made again on the directory there now."""
        if self.dir_wd is not None and _identity_of(self.directory) != self.dir_identity:
            self.shared.drop_directory(self)
            # The directory there now, perhaps on another file system; its files are watched
            # at the pipe's next look at them.
            self.local = inotify_sees_every_write(self.directory) and all(
                inotify_sees_every_write(gen.fd) for _wd, gen in self.files.values() if not gen.closed
            )
            self.shared.rewatch_directory(self)

    def sees_all(self, gens: list[OriginGeneration]) -> bool:
        """Is every change a -t poll could find reported: inotify up, on a local file system,
        FILE's directory and every open generation in ``gens`` watched?"""
        if not self.local or self.dir_wd is None or self.closed or not self.shared.up:
            return False
        files = self.files
        return all(gen.closed or (gen.dev, gen.ino) in files for gen in gens)

    def close(self) -> None:
        """Give back this pipe's watches (others' stay)."""
        self.shared.release(self)

    def wds(self) -> set[int]:
        found = {wd for wd, _gen in self.files.values()}
        return found if self.dir_wd is None else found | {self.dir_wd}

    def lost(self, wd: int) -> None:
        if self.dir_wd == wd:
            self.dir_wd = None  # watched again at the next watch_file
        for identity, (file_wd, _gen) in list(self.files.items()):
            if file_wd == wd:
                del self.files[identity]


class DirectoryWatch(Subscriber):
    """The agent's scan: woken by any entry created, moved or deleted in its directories."""

    def __init__(self, shared: SharedInotify, wake: Callable[[], None]) -> None:
        super().__init__(shared, wake)
        self.dirs: dict[str, int] = {}
        # The (dev, ino) of each directory as watched.
        self.identities: dict[str, Identity | None] = {}
        # Directories found on a local file system (asked once each).
        self._local: set[str] = set()

    def watch(self, directories: set[str]) -> None:
        """Watch each of ``directories`` not watched yet (one that does not exist yet is tried again)."""
        self.shared.watch_directories(self, directories)

    def forget_local(self, directory: str) -> None:
        """Ask again whether ``directory`` is on a local file system (replaced: perhaps not)."""
        self._local.discard(directory)

    def recheck(self) -> None:
        """Forget the watch of each directory renamed or replaced since it was watched (it is
        watched again, there now, at the next ``watch``)."""
        for directory in [d for d in self.dirs if _identity_of(d) != self.identities.get(d)]:
            self.shared.unwatch_directory(self, directory)

    def sees_all(self, directories: set[str]) -> bool:
        """Is every entry created, moved or deleted in ``directories`` reported (inotify up,
        each watched, each on a local file system)?"""
        if self.closed or not self.shared.up or not directories <= self.dirs.keys():
            return False
        for directory in directories - self._local:
            if not inotify_sees_every_write(directory):
                return False
            self._local.add(directory)
        return True

    def close(self) -> None:
        self.shared.release(self)

    def wds(self) -> set[int]:
        return set(self.dirs.values())

    def lost(self, wd: int) -> None:
        for directory, dir_wd in list(self.dirs.items()):
            if dir_wd == wd:
                del self.dirs[directory]


class SharedInotify:
    """The agent's one inotify instance; ``watcher_for`` makes a Client's watcher."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.routes: Routes[Subscriber] = Routes()
        self.handles: set[Subscriber] = set()
        self._inotify: Any = None
        self._warned_full = False
        self._parse_events: Callable[[bytes], list[Any]] = lambda _data: []
        try:
            import inotify_simple

            self._parse_events = inotify_simple.parse_events
            self._inotify = inotify_simple.INotify(nonblocking=True)
            asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_readable)
        except (ImportError, OSError) as exc:
            log.warning("no file-change events (%s); every pipe is polling every -t seconds", exc)
            self.close()

    def fileno(self) -> int:
        return -1 if self._inotify is None else int(self._inotify.fileno())

    @property
    def up(self) -> bool:
        """Is the instance reading events (not closed, not failed)?"""
        return self._inotify is not None

    def watcher_for(self, path: str, wake: Callable[[], None], log: logging.Logger) -> InotifyHandle:
        """A handle for the pipe of FILE ``path``, woken through ``wake`` (``log`` is the agent's)."""
        handle = InotifyHandle(self, path, wake)
        self.handles.add(handle)
        self._watch_directory(handle)
        return handle

    def directory_watch(self, wake: Callable[[], None]) -> DirectoryWatch:
        """The agent's scan subscription: ``wake`` on any entry event in the directories it watches."""
        watch = DirectoryWatch(self, wake)
        self.handles.add(watch)
        return watch

    # -- for the handles -------------------------------------------------------

    def watch_file(self, handle: InotifyHandle, gen: OriginGeneration) -> None:
        if self._inotify is None or handle.closed:
            return
        self._forget_closed(handle)
        if handle.dir_wd is None:
            self._watch_directory(handle)  # dropped by the kernel (directory gone) or failed before
        identity = (gen.dev, gen.ino)
        known = handle.files.get(identity)
        if known is not None and not known[1].closed:
            return
        wd = self._add_watch(f"/proc/self/fd/{gen.fd}", FILE_MASK)
        if wd is None:
            return
        handle.files[identity] = (wd, gen)
        self.routes.subscribe_all(wd, handle)
        if handle.local and not inotify_sees_every_write(gen.fd):
            handle.local = False  # FILE a link to (or a mount of) a file elsewhere: polled every -t

    def watch_directories(self, watch: DirectoryWatch, directories: set[str]) -> None:
        if self._inotify is None or watch.closed:
            return
        for directory in directories - watch.dirs.keys():
            identity = _identity_of(directory)
            wd = self._add_watch(directory, DIR_MASK)
            if wd is not None:
                watch.dirs[directory] = wd
                watch.identities[directory] = identity
                self.routes.subscribe_all(wd, watch)

    def unwatch_directory(self, watch: DirectoryWatch, directory: str) -> None:
        wd = watch.dirs.pop(directory, None)
        watch.identities.pop(directory, None)
        watch.forget_local(directory)
        if wd is not None:
            self._unsubscribe(wd, watch)

    def rewatch_directory(self, handle: InotifyHandle) -> None:
        """Watch ``handle``'s directory again (the one at its path now)."""
        if self._inotify is not None and not handle.closed:
            self._watch_directory(handle)

    def drop_directory(self, handle: InotifyHandle) -> None:
        """Give up ``handle``'s directory watch (watched again at its next ``watch_file``)."""
        if handle.dir_wd is not None:
            self._unsubscribe(handle.dir_wd, handle)
            handle.dir_wd = None

    def release(self, subscriber: InotifyHandle | DirectoryWatch) -> None:
        if subscriber.closed:
            return
        subscriber.closed = True
        self.handles.discard(subscriber)
        for wd in subscriber.wds():
            self._unsubscribe(wd, subscriber)

    # -- inside ----------------------------------------------------------------

    def _watch_directory(self, handle: InotifyHandle) -> None:
        if self._inotify is None:
            return
        identity = _identity_of(handle.directory)
        wd = self._add_watch(handle.directory, DIR_MASK)
        if wd is None:
            return
        handle.dir_wd, handle.dir_identity = wd, identity
        if handle.any_name:
            self.routes.subscribe_all(wd, handle)
        else:
            self.routes.subscribe_name(wd, handle.name, handle)

    def _forget_closed(self, handle: InotifyHandle) -> None:
        """Drop the watches of generations the pipe has closed (its tailer let them go)."""
        gone = [identity for identity, (_wd, gen) in handle.files.items() if gen.closed]
        for identity in gone:
            wd, _gen = handle.files.pop(identity)
            if all(other != wd for other, _ in handle.files.values()):
                self._unsubscribe(wd, handle)

    def _unsubscribe(self, wd: int, subscriber: Subscriber) -> None:
        if self.routes.unsubscribe(wd, subscriber) and self._inotify is not None:
            with contextlib.suppress(OSError):  # EINVAL: the kernel dropped it already
                self._inotify.rm_watch(wd)

    def _add_watch(self, path: str, mask: int) -> int | None:
        try:
            return int(self._inotify.add_watch(path, mask))
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._warned_full:
                self._warned_full = True
                self.log.warning(
                    "inotify watch limit reached (fs.inotify.max_user_watches): %s; some files are polled every -t",
                    describe_os_error(exc),
                )
            return None

    def _on_readable(self) -> None:
        try:
            data = os.read(self._inotify.fileno(), READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self.log.warning("inotify read failed (%s); every pipe is polling every -t seconds", exc)
            self.close()
            self._wake_all()
            return
        routed = self.routes.route((e.wd, e.mask, e.name) for e in self._parse_events(data))
        for wd, had in routed.lost.items():
            for subscriber in had:
                subscriber.lost(wd)
        if routed.everyone:
            self._wake_all()
            return
        for subscriber in routed.wake:
            if not subscriber.closed:
                subscriber.wake()

    def _wake_all(self) -> None:
        for handle in list(self.handles):
            handle.wake()

    def close(self) -> None:
        """Close the instance (every watch with it); handles still open fall back to polling."""
        if self._inotify is not None:
            close_inotify(self._inotify)
            self._inotify = None
