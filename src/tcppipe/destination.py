"""The destination file on the server, and its exactly-once record.

Rule 1: synchronous; no asyncio, no sockets. Only this module writes
destination files and their sidecar records.

Rule 2 (the record): for each destination, a sidecar JSON file in the state
directory names the origin generation being appended and ``base``, the
destination size at which that generation's byte 0 sits. The bytes of the
generation that have landed are then ``size - base``: the destination's own
size is the counter, so it can never drift from what is in the file, and a
kill -9 at any moment (even mid-write) leaves a true count. The sidecar is
written only when a generation starts or the destination is reopened, each
time after an fsync of the destination, atomically.

Rule 3: after ``mv dest dest.1`` and a reopen, ``base`` goes negative (the
generation's first bytes are in dest.1); the sidecar also names the
destination's inode, so a destination replaced behind our back invalidates the
record instead of silently shifting it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

from tcppipe import state
from tcppipe.errors import describe_os_error
from tcppipe.protocol import FINGERPRINT_BYTES, GenerationId, ProtocolError

DEST_MODE = 0o640
MAX_SCAN_ENTRIES = 10_000
DIR_MODE = 0o755


class DestinationError(Exception):
    """The destination cannot be opened or written."""


def record_path(state_dir: str, local: str) -> str:
    """Where the sidecar record of destination ``local`` lives."""
    digest = hashlib.sha256(local.encode()).hexdigest()[:24]
    return os.path.join(state_dir, "tcppiped", f"{digest}.json")


def open_for_append(path: str) -> int:
    """Open ``path`` for appending, creating it and its parent directories."""
    try:
        os.makedirs(os.path.dirname(path), mode=DIR_MODE, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, DEST_MODE)
    except OSError as exc:
        raise DestinationError(f"destination {path} cannot be opened: {describe_os_error(exc)}") from None


def _landed_in_renamed(path: str, dev: object, ino: object, base: int) -> int | None:
    """Bytes of the recorded generation in the renamed-away destination, if it is found."""
    directory = os.path.dirname(path)
    try:
        with os.scandir(directory) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_SCAN_ENTRIES:
                    return None
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    return st.st_size - base if st.st_size >= base else None
    except OSError:
        return None
    return None


@dataclass
class Destination:
    path: str
    sidecar: str
    fd: int
    dev: int
    ino: int
    record: GenerationId | None = None
    base: int = 0
    writable: bool = True

    @classmethod
    def open(cls, path: str, state_dir: str) -> Destination:
        fd = open_for_append(path)
        st = os.fstat(fd)
        dest = cls(path, record_path(state_dir, path), fd, st.st_dev, st.st_ino)
        dest._load_record()
        return dest

    @classmethod
    def inspect(cls, path: str, state_dir: str) -> Destination | None:
        """Open read-only, to read what is held (``tcppipe verify``); never creates or
        records. None if there is no destination file yet."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DestinationError(f"destination {path} cannot be read: {describe_os_error(exc)}") from None
        st = os.fstat(fd)
        dest = cls(path, record_path(state_dir, path), fd, st.st_dev, st.st_ino, writable=False)
        dest._load_record()
        return dest

    def held(self) -> tuple[GenerationId, int, int] | None:
        """The recorded generation, the first and the end offset of its bytes still in this file."""
        landed = self.landed()
        if self.record is None or landed is None:
            return None
        return self.record, max(0, -self.base), landed

    def _load_record(self) -> None:
        raw = state.read_json(self.sidecar)
        if raw is None or raw.get("local") != self.path:
            return
        base = raw.get("base")
        try:
            record = GenerationId.from_json(raw.get("record"))
        except ProtocolError:
            return
        if not isinstance(base, int):
            return
        if raw.get("dest_dev") != self.dev or raw.get("dest_ino") != self.ino:
            # Renamed away (rotated) while we were not looking: if the recorded
            # file is still beside this one, carry its count over; else no record.
            landed = _landed_in_renamed(self.path, raw.get("dest_dev"), raw.get("dest_ino"), base)
            if landed is not None and self.writable:
                self._save(record, self.size() - landed)
            return
        if self.size() < base:
            return
        self.record, self.base = record, base

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def landed(self) -> int | None:
        """Bytes of the recorded generation in the destination, or None."""
        return None if self.record is None else self.size() - self.base

    def answer(self) -> tuple[GenerationId | None, int | None]:
        """The record and offset for READY, its fingerprint refreshed from
        the destination's own bytes where they are at hand."""
        record, offset = self.record, self.landed()
        if record is None or offset is None:
            return None, None
        want = min(offset, FINGERPRINT_BYTES)
        if self.base >= 0 and want > record.fp_len:
            head = self._read_at(self.base, want)
            if len(head) == want:
                record = GenerationId(record.dev, record.ino, want, hashlib.sha256(head).hexdigest())
        return record, offset

    def _read_at(self, offset: int, length: int) -> bytes:
        # The fd is write-only; /proc reopens the very inode it holds for reading.
        try:
            with open(f"/proc/self/fd/{self.fd}", "rb") as f:
                return os.pread(f.fileno(), length, offset)
        except OSError:
            return b""

    def begin_generation(self, ident: GenerationId, start: int) -> None:
        """The next byte written is byte ``start`` of generation ``ident``."""
        size = self.size()
        base = size - start
        if ident == self.record and base == self.base:
            return
        self._save(ident, base)

    def _save(self, record: GenerationId | None, base: int) -> None:
        try:
            os.fsync(self.fd)
            os.makedirs(os.path.dirname(self.sidecar), mode=0o700, exist_ok=True)
            state.write_json_atomically(
                self.sidecar,
                {
                    "local": self.path,
                    "dest_dev": self.dev,
                    "dest_ino": self.ino,
                    "base": base,
                    "record": None if record is None else record.to_json(),
                },
            )
        except OSError as exc:
            raise DestinationError(f"cannot record the state of {self.path}: {describe_os_error(exc)}") from None
        self.record, self.base = record, base

    def write(self, data: bytes | memoryview) -> None:
        """Append all of ``data``; on failure what was written stays counted by the size."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise DestinationError(f"cannot write {self.path}: {describe_os_error(exc)}") from None

    def reopen(self) -> bool:
        """Reopen by name (after rotation on this host); True if it was a new file."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == (self.dev, self.ino):
                return False
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DestinationError(f"cannot stat {self.path}: {describe_os_error(exc)}") from None
        landed = self.landed()
        old_head = self.answer()[0]
        new_fd = open_for_append(self.path)
        os.close(self.fd)
        st = os.fstat(new_fd)
        self.fd, self.dev, self.ino = new_fd, st.st_dev, st.st_ino
        if landed is None:
            self.record = None
        else:
            self._save(old_head, st.st_size - landed)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
