"""Status, lock and pid files.

Rule 1: only this module writes them. Every write is atomic: a temporary file
in the same directory, ``os.replace``. A reader sees the old content or the
new, never a torn one. A durable write also fsyncs the file before and the
directory after the rename, so it survives a power loss too; a routine one
(the client's once-a-second progress, which the server's record overrides)
skips the two fsyncs: a kill -9 cannot lose it either way.

Rule 2: liveness is a held ``flock``, never a bare pid. A process killed with
-9 releases its lock, so ``tcppipe -I`` cannot report a dead pid.

Rule 3: no path is followed through a symbolic link at its last component
(``O_NOFOLLOW`` on every open; temporary files are ``mkstemp``'s, never a
guessable name), and a directory that holds these files must be owned by
root or by the effective user and writable by no ordinary user (not "other",
not a group other than ours or a system group, gid 999 or below), unless it is
sticky. Anything else is
refused with ``UnsafeDirectory``, one line naming the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

from tcppipe.errors import UsageError
from tcppipe.receivers import pipe_host

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# Groups up to this id are system groups (login.defs SYS_GID_MAX), whose members are
# daemons, not people: Ubuntu's /var/log is root:syslog 0775 and must stay usable.
SYSTEM_GID_MAX = 999


class UnsafeDirectory(UsageError, OSError):
    """A state directory that someone other than root or this user could write in.

    Also an OSError, so that every caller that maps a failed open to its own
    one-line error (cli, the client's status writes, the server's records) maps
    this one too, with this message as the reason."""


def owned_by_us(st: os.stat_result) -> bool:
    """Owned by root or by the effective user."""
    return st.st_uid in (0, os.geteuid())


def unsafe_directory_reason(st: os.stat_result) -> str | None:
    """Why a directory with this stat must not be trusted (Rule 3), or None."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not owned_by_us(st):
        return f"is owned by uid {st.st_uid}, not by root or uid {os.geteuid()}"
    if st.st_mode & stat.S_ISVTX:
        return None  # like /tmp: others may create, but not replace or remove what is ours
    if st.st_mode & stat.S_IWOTH:
        return "is writable by every user"
    if st.st_mode & stat.S_IWGRP and st.st_gid > SYSTEM_GID_MAX and st.st_gid != os.getegid():
        return f"is writable by group {st.st_gid}"
    return None


def open_checked_directory(directory: str) -> int:
    """An fd on ``directory`` after Rule 3's check (UnsafeDirectory if it fails)."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        reason = unsafe_directory_reason(os.fstat(fd))
    except OSError:
        os.close(fd)
        raise
    if reason is not None:
        os.close(fd)
        raise UnsafeDirectory(f"refusing state directory {directory}: it {reason}")
    return fd


def _open_own_file(path: str, flags: int, mode: int = 0o644) -> int:
    """Open ``path`` (not through a symlink) in a checked directory; a regular file only."""
    dir_fd = open_checked_directory(os.path.dirname(path))
    try:
        fd = os.open(os.path.basename(path), flags | _NOFOLLOW, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not owned_by_us(st):
        os.close(fd)
        raise UnsafeDirectory(f"refusing {path}: not a regular file of root or uid {os.geteuid()}")
    return fd


def write_atomically(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new content."""
    directory = os.path.dirname(path) or "."
    dir_fd = open_checked_directory(directory)
    try:
        # mkstemp: O_EXCL|O_NOFOLLOW under a random name, so nothing planted is written through.
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            try:
                if mode != 0o600:
                    os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if durable:
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomically(path: str, value: dict[str, Any], durable: bool = True) -> None:
    write_atomically(path, json.dumps(value, sort_keys=True, indent=1).encode() + b"\n", durable=durable)


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if it is missing or unreadable."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class PipeKey:
    """The normalised (-f, -h, -p) that names one tcppipe instance."""

    path: str
    host: str
    port: int

    @classmethod
    def from_options(cls, file: str, host: str, port: int, cwd: str | None = None) -> PipeKey:
        """Absolute path against ``cwd`` (symlinks not resolved), host lowercased; a list of
        receivers (``-h a,b,c``) as the sorted set ``receivers.pipe_host`` makes of it."""
        base = cwd if cwd is not None else os.getcwd()
        return cls(posixpath.normpath(posixpath.join(base, file)), pipe_host(host, port), port)

    @property
    def slug(self) -> str:
        """A file-name-safe, collision-resistant name for this key."""
        digest = hashlib.sha256(f"{self.path}\0{self.host}\0{self.port}".encode()).hexdigest()[:16]
        base = posixpath.basename(self.path) or "root"
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{base}.{self.host}.{self.port}")
        return f"{safe[:80]}.{digest}"

    def lock_path(self, state_dir: str) -> str:
        return os.path.join(state_dir, f"tcppipe.{self.slug}.lock")

    def status_path(self, state_dir: str) -> str:
        return os.path.join(state_dir, f"tcppipe.{self.slug}.status")

    def keepalive_lock_path(self, state_dir: str) -> str:
        return os.path.join(state_dir, f"tcppipe.{self.slug}.keepalive-lock")


class HeldLock:
    """An exclusive flock on a file that also records the holder's pid."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str) -> HeldLock | None:
        """Take the lock without waiting; None if another process holds it."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = _open_own_file(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        lock = cls(path, fd)
        lock.record_pid()
        return lock

    def record_pid(self) -> None:
        """Write the current pid (again after a fork: flock survives it)."""
        if self._fd is None:
            return
        text = f"{os.getpid()}\n".encode()
        # Write before truncating so a concurrent reader never sees an empty file.
        os.pwrite(self._fd, text, 0)
        os.ftruncate(self._fd, len(text))

    def release(self, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def holder_pid(path: str) -> int | None:
    """The pid recorded in a lock file whose flock is held by a live process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            lines = os.pread(fd, 64, 0).decode(errors="replace").splitlines()
            return int(lines[0]) if lines and lines[0].isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: str) -> Any:
    """Hold a blocking exclusive flock on ``path`` for the ``with`` body."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = _open_own_file(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
