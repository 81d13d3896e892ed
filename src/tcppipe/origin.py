"""The origin file, seen by the client: open, identify, read by offset.

Rule 1: synchronous and byte-oriented; no asyncio, no sockets. Reads are
``os.pread`` at an explicit offset, so no hidden file position can drift.

Rule 2: a generation is identified by (st_dev, st_ino) plus a digest of its
first bytes, never by its name: a rotated file keeps its identity wherever it
is moved, and a new file that reuses an inode is told apart by its head, and
by its identity number (``file_identity_number``) where it has no head yet.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import itertools
import os
import re
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from tcppipe import state
from tcppipe.errors import OriginError, describe_os_error
from tcppipe.protocol import FINGERPRINT_BYTES, GenerationId

# How many directory entries a search for a rotated generation may look at.
MAX_SCAN_ENTRIES = 10_000
# _IOR('v', 1, long): the inode's generation number.
FS_IOC_GETVERSION = 0x80087601


def others_may_plant(directory: str) -> bool:
    """Could a user other than root (or us) put a symbolic link in ``directory``? The state
    directory's rule (``state.unsafe_directory_reason``), and a sticky directory others may
    write too: there a name tcppipe does not own yet (a new FILE, a glob's match) is anyone's."""
    try:
        st = os.stat(directory or "/")
    except OSError:
        return True
    sticky_shared = bool(st.st_mode & stat.S_ISVTX and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    return sticky_shared or state.unsafe_directory_reason(st) is not None


def open_origin(path: str) -> int:
    """A read-only fd on ``path``, or OriginError naming the problem. In a directory
    others may write, a symbolic link at ``path`` is not followed: a local user must not
    make root send /etc/shadow by linking it as ``app.log`` (or at a glob's match)."""
    # O_NONBLOCK: a FIFO (or a device) planted at the name must not hang the open; it is
    # refused below as not a regular file. Reads of a regular file do not care.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if others_may_plant(os.path.dirname(path)):
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and flags & os.O_NOFOLLOW:
            raise OriginError(
                f"origin file {path} is a symbolic link in a directory others may write (not followed)"
            ) from None
        raise OriginError(f"cannot open origin file {path}: {describe_os_error(exc)}") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:  # pragma: no cover - fstat on a fresh fd
        os.close(fd)
        raise OriginError(f"cannot stat origin file {path}: {describe_os_error(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OriginError(f"origin file {path} is not a regular file")
    return fd


def fingerprint(fd: int, length: int) -> str:
    """sha256 of the first ``length`` bytes of ``fd`` (fewer if the file is shorter)."""
    data = os.pread(fd, length, 0) if length else b""
    return hashlib.sha256(data).hexdigest()


def identify(fd: int) -> GenerationId:
    """The identity of the file behind ``fd`` as it is now."""
    st = os.fstat(fd)
    fp_len = min(st.st_size, FINGERPRINT_BYTES)
    data = os.pread(fd, fp_len, 0) if fp_len else b""
    return GenerationId(st.st_dev, st.st_ino, len(data), hashlib.sha256(data).hexdigest())


def matches(record: GenerationId, fd: int) -> bool:
    """Is the file behind ``fd`` the generation ``record`` names?"""
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (record.dev, record.ino) or st.st_size < record.fp_len:
            return False
        return fingerprint(fd, record.fp_len) == record.fp_sha256
    except OSError:
        return False


def inode_generation(fd: int) -> int | None:
    """The file system's generation number of the inode (ext4, xfs, btrfs), or None.

    A new file that reuses a freed inode number gets a new one, so it tells a
    rotated generation from a later file in its inode even when neither has a
    head to compare yet (an empty file)."""
    try:
        raw = fcntl.ioctl(fd, FS_IOC_GETVERSION, bytes(8))
    except OSError:
        return None
    value: int = struct.unpack("l", raw)[0]
    return value


# statx(2), fstatfs(2) and name_to_handle_at(2) through the C library (statx: glibc 2.28 and
# later): Python 3.11 has no os.statx.
AT_EMPTY_PATH: Final = 0x1000
AT_HANDLE_FID: Final = 0x200  # a handle only to compare (Linux 6.5): overlayfs gives one without nfs_export
STATX_BTIME: Final = 0x0800
STATX_BUFFER_BYTES: Final = 256  # struct statx, spare fields included
STATX_BTIME_OFFSET: Final = 80  # stx_btime: struct statx_timestamp {s64 tv_sec; u32 tv_nsec; s32 pad}
STATFS_BUFFER_BYTES: Final = 256  # struct statfs is 120 bytes on x86-64; f_type comes first
OVERLAYFS_SUPER_MAGIC: Final = 0x794C7630
TMPFS_MAGIC: Final = 0x01021994
MAX_HANDLE_BYTES: Final = 128
# overlayfs's own handles (fs/overlayfs/overlayfs.h, also its on-disk origin xattr): type 0xf8
# is 3 bytes of padding then struct ovl_fb {version, magic 0xfb, len, flags, type, uuid, fid},
# type 0xfb the same without the padding. Flag 4: encoded from the upper layer's file.
OVL_FILEID_V0: Final = 0xFB
OVL_FILEID_V1: Final = 0xF8
OVL_FH_MAGIC: Final = 0xFB
OVL_FH_FLAG_PATH_UPPER: Final = 4
# An identity number from a birth time is BIRTH_TIME_BASE + the birth time in nanoseconds. An
# inode generation number is 32 bits (the kernel writes an int), so it is always below the
# base: the two kinds are never equal, whichever a record holds. The sum stays below 2**62,
# the largest number a destination's record or a ledger header keeps (until the year 2116).
BIRTH_TIME_BASE: Final = 2**32
MAX_BIRTH_TIME_NS: Final = 2**62 - BIRTH_TIME_BASE

_CFunction = Callable[..., int]


def _libc_function(name: str, *argtypes: type) -> _CFunction | None:
    """The C library's ``name`` with its argument types, or None if it has none (an older one)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    found: _CFunction = function
    return found


_statx = _libc_function("statx", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p)
_fstatfs = _libc_function("fstatfs", ctypes.c_int, ctypes.c_char_p)
_name_to_handle_at = _libc_function(
    "name_to_handle_at", ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int
)


def birth_time_ns(fd: int) -> int | None:
    """When the file behind ``fd`` was created (statx's STATX_BTIME, in nanoseconds since
    the epoch), or None where the C library, the kernel or the file system does not say."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(STATX_BUFFER_BYTES)
    if _statx(fd, b"", AT_EMPTY_PATH, STATX_BTIME, buf) != 0:
        return None
    (mask,) = struct.unpack_from("I", buf.raw, 0)
    sec, nsec = struct.unpack_from("qI", buf.raw, STATX_BTIME_OFFSET)
    if not mask & STATX_BTIME:
        return None
    ns: int = sec * 1_000_000_000 + nsec
    return ns


def _filesystem_type(fd: int) -> int | None:
    """fstatfs's f_type (the file system's magic number) for ``fd``, or None."""
    if _fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(STATFS_BUFFER_BYTES)
    if _fstatfs(fd, buf) != 0:
        return None
    f_type: int = struct.unpack_from("l", buf.raw, 0)[0]
    return f_type


def _overlay_upper_only(fd: int) -> bool:
    """Is the overlayfs file behind ``fd`` known to live in the upper layer alone (created
    there, no lower file behind it)? Its handle says: overlayfs encodes a file that has a
    lower one (copied up or not) by the lower one, a pure upper file by itself."""
    if _name_to_handle_at is None:
        return False
    handle = ctypes.create_string_buffer(8 + MAX_HANDLE_BYTES)
    struct.pack_into("I", handle, 0, MAX_HANDLE_BYTES)
    mount_id = ctypes.c_int()
    if _name_to_handle_at(fd, b"", handle, ctypes.byref(mount_id), AT_EMPTY_PATH | AT_HANDLE_FID) != 0:
        return False  # a kernel before 6.5: not known
    length, kind = struct.unpack_from("Ii", handle.raw, 0)
    raw = handle.raw[8 : 8 + length]
    fb = raw[3:] if kind == OVL_FILEID_V1 else raw if kind == OVL_FILEID_V0 else b""
    return len(fb) >= 4 and fb[1] == OVL_FH_MAGIC and bool(fb[3] & OVL_FH_FLAG_PATH_UPPER)


def file_identity_number(fd: int) -> int | None:
    """What tells this file from a later one in its inode number when neither has a head to
    compare yet (an empty file): its inode generation number, or on a file system without
    one (tmpfs, overlayfs: told by the file system's type) BIRTH_TIME_BASE + its birth
    time; None if neither is known.

    It goes wherever an inode generation went (``igen`` in status files, in the server's
    record, in GENERATION and READY) and is compared for equality, None matching anything:
    a record written before birth times were used (None there) still matches. A file's
    number may go from None to a number, never from one number to another: on ext4, xfs
    and btrfs it is the inode generation it always was; on overlayfs a file with a lower
    layer's file behind it has None, because copying it up (its first write or rename)
    gives it the upper file's birth time while its inode number stays."""
    kind = _filesystem_type(fd)
    if kind == OVERLAYFS_SUPER_MAGIC:
        if not _overlay_upper_only(fd):
            return None
    elif kind != TMPFS_MAGIC:
        # Chosen by the file system, never by a failed ioctl: a number from a birth time where
        # an inode generation was read before would make the file another one to itself.
        return inode_generation(fd)
    born = birth_time_ns(fd)
    if born is None or not 0 <= born < MAX_BIRTH_TIME_NS:
        return None
    return BIRTH_TIME_BASE + born


def read_identity(path: str, length: int, inode: tuple[int, int]) -> tuple[int | None, bytes] | None:
    """The identity number (``file_identity_number``) and first ``length`` bytes of the file at ``path`` (opened
    by ``open_origin``'s link rule, never blocking), or None if it cannot be read or is no
    longer ``inode`` (replaced since it was looked at: looked at again later)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if others_may_plant(os.path.dirname(path)):
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != inode:
            return None
        return file_identity_number(fd), os.pread(fd, length, 0) if length else b""
    except OSError:
        return None
    finally:
        os.close(fd)


# Numbered rotated names looked at for the generation FILE held last (FILE.1 .. FILE.N).
MAX_NUMBERED = 64
# In a rotated name, a run of hex digits holding a decimal digit: a number, a date, a time
# stamp (dateext's -20261202, svlogd's @4000000065...): the part that changes each rotation.
_STAMP = re.compile(r"[0-9A-Fa-f]*[0-9][0-9A-Fa-f]*")


def rotated_after(
    path: str,
    old: tuple[int, int],
    old_fd: int,
    old_mtime_ns: int,
    known: Callable[[int, os.stat_result], bool],
    owners: frozenset[int] = frozenset(),
    until: tuple[int, int] | None = None,
) -> list[tuple[str, int]]:
    """The generations that lived at ``path`` after ``old`` (open as ``old_fd``), and before
    ``until`` (the newest end of the range, itself rotated away after a restart), and were rotated
    away before anyone looked (a loaded host, a stopped or restarted process, rotations many
    times a second): their paths and open fds, oldest first. None is ``known`` (asked with its
    fd and stat: held, or sent and let go), and each was written no earlier than the one before
    it (mtime), starting from ``old``'s last write: an older generation never passes.

    Where ``old`` is now, and the name it had last if it was deleted since, is the kernel's
    account (``current_name``): so rotation into another directory (logrotate's ``olddir``) is
    followed there, and a generation deleted under a stamped name still names its series.
    Numbered rotation (logrotate, RotatingFileHandler) is told by FILE.1, or by STEM.1.EXT
    (logrotate's ``extension``, logback's fixed window: app.log -> app.1.log); any other
    naming (dateext's FILE-20261202, svlogd's @4000....s) by the name ``old`` has now: the
    later names of that name's shape are looked at. In a directory others may write, only a
    file rotation could have moved aside is taken (``_rotated_by_the_same_hand``)."""
    directory, base = os.path.split(path)
    old_name = None
    where = current_name(old_fd, old)
    if where is not None:
        directory, old_name = os.path.split(where)
    directory = directory or "/"
    check = owners if others_may_plant(directory) else None
    numbered_names = _numbered_names(os.path.join(directory, base))
    for numbered in numbered_names:
        k, past_the_last = _numbered_place(numbered, old)
        if k is not None and not past_the_last:
            return _numbered_after(numbered, k, False, old_mtime_ns, known, check)
    if old_name is None or not any(_numbered_index(numbered, old_name) for numbered in numbered_names):
        # A generation deleted under a numbered name is one numbered rotation dropped as the
        # oldest kept: the numbers count down to the newest, which the stamp order would not.
        named = _named_after(directory, base, old, old_name, old_mtime_ns, known, check, until)
        if named is not None:
            return named
    for numbered in numbered_names:
        k, past_the_last = _numbered_place(numbered, old)
        if k is not None:
            return _numbered_after(numbered, k, past_the_last, old_mtime_ns, known, check)
    return []


def current_name(fd: int, inode: tuple[int, int]) -> str | None:
    """The path of the open file ``fd`` (inode ``inode``) now, by the kernel's account
    (/proc/self/fd): wherever a rotation moved it, and the name it had last if it has been
    deleted since. None without /proc, or for a name that is neither this file's nor a
    deleted one's."""
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if not where.startswith("/"):
        return None
    try:
        st = os.lstat(where)
        if (st.st_dev, st.st_ino) == inode:
            return where
    except OSError:
        pass
    # The kernel marks the last name of an unlinked file so (and a file really named so is
    # another file: its inode did not match above).
    return where.removesuffix(_DELETED) if where.endswith(_DELETED) else None


_DELETED = " (deleted)"


def _numbered_index(numbered: Callable[[int], str], name: str) -> int | None:
    """The n for which ``name`` is the n-th numbered name (its base name), or None."""
    return next((n for n in range(1, MAX_NUMBERED + 1) if os.path.basename(numbered(n)) == name), None)


def _numbered_names(path: str) -> list[Callable[[int], str]]:
    """How numbered rotation may name FILE's n-th generation: FILE.n, and STEM.n.EXT."""
    names: list[Callable[[int], str]] = [lambda n: f"{path}.{n}"]
    stem, ext = os.path.splitext(path)
    if ext and os.path.basename(stem):
        names.append(lambda n: f"{stem}.{n}{ext}")
    return names


def _rotated_by_the_same_hand(st: os.stat_result, owners: frozenset[int] | None) -> bool:
    """Could this file be a generation of FILE, moved aside by FILE's rotation? Anywhere only
    root or FILE's writer may write (``owners`` None): yes. Where others may write too: owned
    by the held generation's or FILE's owner (another user's file, planted under the right
    name, is not), and one name only (a hard link a user made to a file they cannot read,
    where the kernel allows it, is not)."""
    return owners is None or (st.st_uid in owners and st.st_nlink == 1)


def _numbered_place(name: Callable[[int], str], old: tuple[int, int]) -> tuple[int | None, bool]:
    """Where numbered rotation has put ``old``: (k, False) at name(k); (k, True) past the last
    number kept (name(1) .. name(k-1) exist and none is ``old``); (None, False) when no name(1)."""
    for n in range(1, MAX_NUMBERED + 1):
        try:
            st = os.lstat(name(n))
        except OSError:
            return (n, True) if n > 1 else (None, False)
        if (st.st_dev, st.st_ino) == old:
            return n, False
    return None, False


def _numbered_after(
    name: Callable[[int], str],
    k: int,
    past_the_last: bool,
    floor: int,
    known: Callable[[int, os.stat_result], bool],
    owners: frozenset[int] | None,
) -> list[tuple[str, int]]:
    """name(k-1) .. name(1), oldest first, up to the first older or known one (a file rotation
    did not move aside, in a directory others may write, is skipped and said nothing of).
    Found at name(k), ``old`` is the proof that numbered rotation happened: a later file may
    share its mtime (a coarse clock). Past the last kept number nothing proves it: only a
    file written strictly after ``old`` (never a copy or an older generation) is taken."""
    found: list[tuple[str, int]] = []
    for n in range(k - 1, 0, -1):
        try:
            fd = open_origin(name(n))
        except OriginError:
            break
        st = os.fstat(fd)
        if not _rotated_by_the_same_hand(st, owners):
            os.close(fd)
            continue
        later = st.st_mtime_ns > floor or (st.st_mtime_ns == floor and not past_the_last)
        if not later or known(fd, st):
            os.close(fd)
            break
        floor = st.st_mtime_ns
        found.append((name(n), fd))
    return found


def name_shape(name: str, base: str) -> tuple[bool, str, str] | None:
    """What stays the same from one rotated name to the next: FILE's base name kept whole, each
    number or stamp in the rest made one mark; None for a name with no number or stamp (a
    single ``.old`` copy is not a series)."""
    at = name.find(base)
    if at < 0:
        shape = (False, _STAMP.sub("#", name), "")
    else:
        shape = (True, _STAMP.sub("#", name[:at]), _STAMP.sub("#", name[at + len(base) :]))
    return shape if "#" in shape[1] + shape[2] else None


def _on_device(entry: os.DirEntry[str], dev: int) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_dev == dev
    except OSError:
        return False  # gone since the scan read it


def stamp_order(name: str) -> tuple[tuple[int, str], ...]:
    """A rotated name's stamps, each as (length, text): a counter that is not zero-padded
    (logback's ``app.2026-12-02.10.log`` after ``.9.``) counts up by length first, a date or
    a fixed-width stamp (TAI64N's hex) by its text."""
    return tuple((len(stamp), stamp.lower()) for stamp in _STAMP.findall(name))


def _named_after(
    directory: str,
    base: str,
    old: tuple[int, int],
    old_name: str | None,
    floor: int,
    known: Callable[[int, os.stat_result], bool],
    owners: frozenset[int] | None,
    until: tuple[int, int] | None = None,
) -> list[tuple[str, int]] | None:
    """The files in ``directory`` named as ``old`` is now, or was last (``old_name``; when not
    known, ``old`` is looked for by its inode), of FILE's base name ``base`` (``name_shape``),
    whose stamps count past its own (``stamp_order``: an older generation, or a copy of one,
    comes before), written no earlier than it (mtime), rotated by the same hand
    (``_rotated_by_the_same_hand``: a planted FILE-20991231 is not); in stamp order, up to
    ``until`` (what sorts past it came later: a copytruncate copy of a later generation is no
    generation between). None when ``old``'s name has no stamp, or it is not found."""
    # Names and inode numbers only (scandir's, no system call each): a host agent's directory
    # of 2,000 logs and their rotated names is scanned at each rotation, so only the names of
    # the held one's shape are stat'ed.
    names: list[tuple[str, int]] = []
    listing = _listing(directory)
    if listing is None:
        return None
    for entry in listing:
        name, ino = entry.name, entry.inode()
        if name in (base, old_name):
            continue
        if old_name is None and ino == old[1] and _on_device(entry, old[0]):
            old_name = name
        else:
            names.append((name, ino))
    shape = None if old_name is None else name_shape(old_name, base)
    if old_name is None or shape is None:
        return None
    after = stamp_order(old_name)
    later: list[tuple[tuple[tuple[int, str], ...], str, int]] = []
    for name, ino in names:
        if (shape[0] and base not in name) or name_shape(name, base) != shape or stamp_order(name) <= after:
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode) and st.st_mtime_ns >= floor and (owners is None or st.st_uid in owners):
                later.append((stamp_order(name), name, ino))
    later.sort()
    found: list[tuple[str, int]] = []
    for _order, name, ino in later:
        try:
            fd = open_origin(os.path.join(directory, name))
        except OriginError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == until:
            os.close(fd)
            break
        if st.st_ino != ino or not _rotated_by_the_same_hand(st, owners) or known(fd, st):
            os.close(fd)  # renamed or replaced since the scan, or held or sent already
            continue
        found.append((os.path.join(directory, name), fd))
    return found


def find_generation(directory: str, record: GenerationId, igen: int | None = None) -> tuple[str, int] | None:
    """Search ``directory`` for the file that is generation ``record`` (a rotated
    origin after a restart), with inode generation ``igen`` if it is known; its
    path and an open fd, or None."""
    for entry in _listing(directory) or []:
        with contextlib.suppress(OSError):
            if entry.inode() != record.ino or not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            if matches(record, fd) and (igen is None or file_identity_number(fd) in (None, igen)):
                return entry.path, fd
            os.close(fd)
    return None


# Subdirectories of FILE's directory looked in for a listed generation found nowhere else.
MAX_SUBDIRECTORIES = 32


def find_generation_near(
    path: str, record: GenerationId, igen: int | None, elsewhere: Sequence[str] = ()
) -> tuple[str, int] | None:
    """``find_generation`` of a generation of FILE (``path``) after a restart: beside FILE, then
    in the directories its rotation was seen to put generations (``elsewhere``: logrotate's
    ``olddir``), then in FILE's directory's own subdirectories (an ``olddir`` not seen yet). Only
    a file of ``record``'s inode, head and inode generation is ever taken, wherever it is."""
    directory = os.path.dirname(path) or "/"
    found = find_generation(directory, record, igen)
    looked = [directory]
    for other in elsewhere:
        if found is None and other not in looked:
            looked.append(other)
            found = find_generation(other, record, igen)
    if found is None:
        subdirectories = sorted(
            entry.path
            for entry in _listing(directory) or []
            if entry.path not in looked and _is_directory_on(entry, record.dev)
        )
        for other in subdirectories[:MAX_SUBDIRECTORIES]:
            found = find_generation(other, record, igen)
            if found is not None:
                break
    return found


def _is_directory_on(entry: os.DirEntry[str], dev: int) -> bool:
    """Is ``entry`` a directory (not a link to one) on device ``dev``? (logrotate moves a
    generation into ``olddir`` by rename, so only there.)"""
    try:
        return entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_dev == dev
    except OSError:
        return False


def _listing(directory: str) -> list[os.DirEntry[str]] | None:
    """The entries of ``directory`` (scandir's: name, inode number and type, no system call
    each), or None if it cannot be read or holds more than MAX_SCAN_ENTRIES (a search for a
    generation stays bounded, whatever is put beside FILE)."""
    try:
        with os.scandir(directory) as scan:
            entries = list(itertools.islice(scan, MAX_SCAN_ENTRIES + 1))
    except OSError:
        return None
    return None if len(entries) > MAX_SCAN_ENTRIES else entries


@dataclass(eq=False)
class OriginGeneration:
    """One open generation of the origin file and how far it has been sent."""

    fd: int
    path: str
    dev: int
    ino: int
    position: int = 0
    acked: int = 0
    high_water: int = 0
    # When the file side last saw it grow (or when it was replaced at FILE): the grace clock.
    last_growth: float = 0.0
    seen_size: int = 0
    # Its first bytes (up to FINGERPRINT_BYTES) as read while it was whole: its identity.
    head: bytes = field(default=b"", repr=False)
    igen: int | None = None
    # The identity last computed, and the head it was computed from (asked on every tick).
    _ident: tuple[bytes, GenerationId] | None = field(default=None, repr=False)
    # Truncated: nothing more is read from it.
    finished: bool = False
    # A SIGHUP came after it was replaced: it goes as soon as it is read to its end.
    released: bool = False
    # Read to its end and left behind; kept open until a later generation is acknowledged.
    done: bool = False
    closed: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, path: str, now: float) -> OriginGeneration:
        fd = open_origin(path)
        return cls.adopt(path, fd, now)

    @classmethod
    def adopt(cls, path: str, fd: int, now: float) -> OriginGeneration:
        st = os.fstat(fd)
        return cls(
            fd=fd,
            path=path,
            dev=st.st_dev,
            ino=st.st_ino,
            high_water=st.st_size,
            last_growth=now,
            seen_size=st.st_size,
            igen=file_identity_number(fd),
        )

    def observe(self, now: float) -> None:
        """Note the writer's growth of the file (the file side, on every event and tick)."""
        if self.closed:
            return
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            return
        if size != self.seen_size:
            self.seen_size = size
            self.last_growth = now
            self.high_water = max(self.high_water, size)

    def ident(self) -> GenerationId:
        """Its identity: inode and a digest of its head, as it was before any truncation.

        The head is kept (up to FINGERPRINT_BYTES), because after copytruncate the
        same inode holds other bytes: the truncated generation must keep the identity
        of what it was, or it would pass for its successor (and the reverse)."""
        if not self.finished and len(self.head) < FINGERPRINT_BYTES:
            st = os.fstat(self.fd)
            if st.st_size >= self.high_water:  # not truncated behind our back
                self.head = os.pread(self.fd, min(st.st_size, FINGERPRINT_BYTES), 0)
        if self._ident is None or self._ident[0] is not self.head:
            ident = GenerationId(self.dev, self.ino, len(self.head), hashlib.sha256(self.head).hexdigest())
            self._ident = (self.head, ident)
        return self._ident[1]

    def matches(self, record: GenerationId) -> bool:
        """Is this generation the one ``record`` names (its inode, and its head as it was)?"""
        if (record.dev, record.ino) != (self.dev, self.ino):
            return False
        if len(self.head) < record.fp_len:
            try:
                self.ident()
            except OSError:
                return False
        return record.heads(self.head)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, limit: int, into: memoryview | None = None) -> bytes | memoryview:
        """Up to ``limit`` bytes from ``position`` (not advancing it); read into ``into``
        (and a view of it returned) when given: a buffer read again and again costs no
        allocation and no page faults (a fresh 1 MiB bytes object faulted in every page)."""
        data: bytes | memoryview
        if into is None:
            data = os.pread(self.fd, limit, self.position)
        else:
            into = into[:limit]
            data = into[: os.preadv(self.fd, [into], self.position)]
        have = len(self.head)
        if have < FINGERPRINT_BYTES and self.position <= have < self.position + len(data):
            # Bytes we send are bytes of the head we know: the head then always covers
            # what the server's record can name (its digest covers what landed).
            self.head += data[have - self.position : FINGERPRINT_BYTES - self.position]
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)
