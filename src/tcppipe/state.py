"""Status, lock and pid files.

Rule 1: only this module writes them. Every write is atomic: a temporary file
in the same directory, ``os.replace``. A reader sees the old content or the
new, never a torn one. A durable write also fsyncs the file before and the
directory after the rename, so it survives a power loss too; a routine one
(the client's once-a-second progress, which the server's record overrides)
skips the two fsyncs: a kill -9 cannot lose it either way.

Rule 2: liveness is a held ``flock``, never a bare pid. A process killed with
-9 releases its lock, so ``tcppipe -I`` cannot report a dead pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any


def write_atomically(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new content."""
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomically(path: str, value: dict[str, Any], durable: bool = True) -> None:
    write_atomically(path, json.dumps(value, sort_keys=True, indent=1).encode() + b"\n", durable=durable)


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
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
        """Absolute path against ``cwd`` (symlinks not resolved), host lowercased."""
        base = cwd if cwd is not None else os.getcwd()
        return cls(posixpath.normpath(posixpath.join(base, file)), host.strip().lower().rstrip("."), port)

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
