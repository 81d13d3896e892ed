"""Which pipes an inotify event wakes, for one inotify instance shared by many pipes.

No I/O in this file: watch descriptors, masks and names in, subscribers out.

Rule 1 (directory events go by name): a directory watch is shared by every
pipe whose FILE is in that directory, but an entry event (CREATE, MOVED_TO,
MOVED_FROM, DELETE) wakes only the pipes whose FILE has that entry's name.
Waking every pipe of the directory would make a logrotate run over 2,000
files in one directory 2,000 x 2,000 wake-ups.

Rule 2 (file events go by inode): the kernel gives one watch descriptor per
inode per instance, so two pipes watching one inode share it; an event on it
wakes every pipe subscribed to it. The agent's scan subscribes to its
directories the same way (every entry event wakes it), beside the pipes'
names.

Rule 3 (watches are counted): a watch serves every subscriber it has, and is
removed only when its last subscriber leaves (``unsubscribe`` says when).

Rule 4: an overflowed queue (IN_Q_OVERFLOW) lost events nobody can name, so
it wakes everyone; IN_IGNORED means the kernel dropped the watch (its inode is
gone, or we removed it): the descriptor is forgotten, and whoever still had it
is woken and told.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

# inotify.h's values, so this file needs no inotify binding.
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000

K = TypeVar("K", bound=Hashable)


@dataclass
class Routed(Generic[K]):
    """What a batch of events asks for."""

    # The subscribers to wake (each once, however many of its events the batch held).
    wake: set[K] = field(default_factory=set)
    # The queue overflowed: wake every pipe, subscribed or not.
    everyone: bool = False
    # Watch descriptors the kernel dropped, with the subscribers that still had them.
    lost: dict[int, set[K]] = field(default_factory=dict)


class Routes(Generic[K]):
    """The subscribers of each watch descriptor: by entry name for directories, whole for files."""

    def __init__(self) -> None:
        self._names: dict[int, dict[str, set[K]]] = {}  # directory wd -> entry name -> subscribers
        self._all: dict[int, set[K]] = {}  # wd -> subscribers to all its events

    def subscribe_name(self, wd: int, name: str, key: K) -> None:
        """``key`` wants the events of entry ``name`` in the directory watched as ``wd``."""
        self._names.setdefault(wd, {}).setdefault(name, set()).add(key)

    def subscribe_all(self, wd: int, key: K) -> None:
        """``key`` wants every event of ``wd`` (a file's, or a directory's whatever the name)."""
        self._all.setdefault(wd, set()).add(key)

    def unsubscribe(self, wd: int, key: K) -> bool:
        """``key`` no longer wants ``wd``; True when nobody does (the caller removes the watch)."""
        names = self._names.get(wd)
        if names is not None:
            for name, keys in list(names.items()):
                keys.discard(key)
                if not keys:
                    del names[name]
            if not names:
                del self._names[wd]
        everything = self._all.get(wd)
        if everything is not None:
            everything.discard(key)
            if not everything:
                del self._all[wd]
        return not self.in_use(wd)

    def in_use(self, wd: int) -> bool:
        return wd in self._names or wd in self._all

    def subscribers(self, wd: int) -> set[K]:
        """Everyone subscribed to ``wd``, by any name."""
        keys = set(self._all.get(wd, ()))
        for named in self._names.get(wd, {}).values():
            keys |= named
        return keys

    def route(self, events: Iterable[tuple[int, int, str]]) -> Routed[K]:
        """The wake-ups a batch of (wd, mask, name) events asks for; forgets dropped watches."""
        routed: Routed[K] = Routed()
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                routed.everyone = True
                continue
            if mask & IN_IGNORED:
                had = self.subscribers(wd)
                self._names.pop(wd, None)
                self._all.pop(wd, None)
                if had:
                    routed.lost[wd] = had
                    routed.wake |= had
                continue
            everything = self._all.get(wd)
            if everything:
                routed.wake |= everything
            names = self._names.get(wd)
            if names and name:
                routed.wake |= names.get(name, set())
        return routed
