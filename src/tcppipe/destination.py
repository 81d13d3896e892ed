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

Rule 3b (the journal): the sidecar also lists, oldest first, the spans of
earlier generations this destination file holds (``Span``: the generation,
its base, and the destination offset where it stopped), so that ``tcppipe
verify`` can check every byte the file holds, not only the current
generation's. A span is added when a generation gives way to the next; a new
destination file (rotated here) starts an empty journal. At most
``MAX_JOURNAL_SPANS`` are kept; ``earlier`` counts those dropped. A span this
file lists (journal or current) names its generation by a head it holds: the
first min(span bytes, FINGERPRINT_BYTES) of the span where they are in this
file, never the client's longer fingerprint of bytes that did not land.

Rule 4 (where bytes may go): tcppiped runs as root, and a destination path
must never lead it elsewhere. The path is walked from ``/`` one component at a
time, each opened relative to the one above with ``O_NOFOLLOW``: no symbolic
link is followed anywhere on it, not in a directory and not at the file.
Every directory on the way must be owned by root or by tcppiped's own user and
writable by no ordinary user: not by "other" and not by a group other than
tcppiped's own or a system group (gid 999 or below: Ubuntu's ``/var/log`` is
root:syslog 0775), unless the directory is sticky (as ``/tmp`` is). Missing
directories are created one level at a time, mode 0755 whatever the umask.
The destination must be a regular file (a FIFO, device, socket or directory
is refused at once; it is opened ``O_NONBLOCK`` so that a FIFO cannot hang the
open). In a sticky directory that others may write, an existing destination
must also be owned by root or tcppiped's user and have a single link. Every
refusal is one line naming the path and the reason.

Rule 5 (one writer at a time, fenced): receivers a client fails over
between may share the state directory, and a receiver that stalled (stopped,
swapped out) can wake up with bytes of a connection its client has long
left. So every append and every record written is fenced: under an
exclusive ``flock`` held only for that write, the destination must still
have the size this object last left it at, and the sidecar record must
still be the one it last wrote (or read). If another tcppiped appended or
recorded since, the write is refused (DestinationError) and the connection
ends; its client resumes from the record as it now stands. A lock never
outlives a write, so a stalled receiver cannot hold a pipe hostage.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeGuard

from tcppipe import state
from tcppipe.errors import describe_os_error
from tcppipe.protocol import FINGERPRINT_BYTES, GenerationId, ProtocolError

DEST_MODE = 0o640
MAX_SCAN_ENTRIES = 10_000
# A record file is a few KiB (a journal of MAX_JOURNAL_SPANS spans); read at most this of one.
MAX_SIDECAR_BYTES = 1024 * 1024
DIR_MODE = 0o755


class DestinationError(Exception):
    """The destination cannot be opened or written."""


class _Unsafe(OSError):
    """Rule 4 refuses the path; the message is the reason, mapped to DestinationError by the caller."""


def record_path(state_dir: str, local: str) -> str:
    """Where the sidecar record of destination ``local`` lives."""
    digest = hashlib.sha256(local.encode()).hexdigest()[:24]
    return os.path.join(state_dir, "tcppiped", f"{digest}.json")


# Spans of earlier generations kept per destination file (a daily rotation for three
# months); a READY listing them all stays far below the control-frame limit.
MAX_JOURNAL_SPANS = 100
MAX_RECORD_OFFSET = 2**62  # far beyond any file: a record past it is corrupt or forged
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_ATTEMPTS = 3  # create/open races with a concurrent unlink: retried this often, no more


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _lkind(dir_fd: int, name: str) -> str | None:
    """What ``name`` in ``dir_fd`` is, if it is not what was wanted (None if it cannot be seen)."""
    try:
        return _kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return None


def _components(path: str) -> list[str]:
    if not path.startswith("/"):
        raise _Unsafe("it is not an absolute path")
    # No symlink is ever followed on the way, so ".." means what it says.
    return [c for c in posixpath.normpath(path).split("/") if c]


def _check_directory(fd: int, where: str) -> None:
    reason = state.unsafe_directory_reason(os.fstat(fd))
    if reason is not None:
        raise _Unsafe(f"directory {where} {reason}")


def _open_directory(path: str, create: bool) -> int | None:
    """An O_PATH fd on directory ``path``, reached without following any symlink and each
    level checked (Rule 4); missing levels created 0755 when ``create``, else None."""
    fd = os.open("/", _DIR_FLAGS)
    where = "/"
    try:
        _check_directory(fd, where)
        for name in _components(path):
            where = posixpath.join(where, name)
            made = False
            if create:
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
            # A level made here is opened readable, for the fchmod O_PATH cannot do.
            flags = _DIR_FLAGS & ~os.O_PATH | os.O_RDONLY if made else _DIR_FLAGS
            try:
                child = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                if create:
                    raise
                os.close(fd)
                return None
            except OSError as exc:
                kind = _lkind(fd, name)
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and kind == "a symbolic link":
                    raise _Unsafe(f"{where} is a symbolic link (not followed)") from None
                if exc.errno == errno.ENOTDIR and kind is not None:
                    raise _Unsafe(f"Not a directory: {where} is {kind}") from None
                raise
            os.close(fd)
            fd = child
            if made:
                # The umask must not decide who may write into the archive tree.
                os.fchmod(fd, DIR_MODE)
            _check_directory(fd, where)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_file(fd: int, dir_fd: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _Unsafe(f"it is {_kind(st.st_mode)}")
    if os.fstat(dir_fd).st_mode & 0o022 == 0:
        return
    # Only a sticky directory passes Rule 4 while others may write in it: there a file
    # someone else planted (or a hard link to one) is not ours to append to.
    if not state.owned_by_us(st) or st.st_nlink != 1:
        raise _Unsafe("it is not tcppiped's own file, in a directory others may write")


def _open_file(path: str, flags: int, create: bool) -> int:
    """``path`` opened with ``flags`` under Rule 4; FileNotFoundError if it (or a level) is missing."""
    dir_fd = _open_directory(posixpath.dirname(posixpath.normpath(path)), create)
    if dir_fd is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    name = posixpath.basename(posixpath.normpath(path))
    try:
        for _ in range(_OPEN_ATTEMPTS):
            try:
                if create:
                    try:
                        fd = os.open(name, flags | _FILE_FLAGS | os.O_CREAT | os.O_EXCL, DEST_MODE, dir_fd=dir_fd)
                    except FileExistsError:
                        pass
                    else:
                        try:
                            os.fchmod(fd, DEST_MODE)
                        except BaseException:
                            os.close(fd)
                            raise
                        return fd
                # Not even opened if it is plainly no regular file (opening some devices acts);
                # the fstat after the open decides, whatever was swapped in between.
                kind = _lkind(dir_fd, name)
                if kind is not None and kind != "a regular file":
                    raise _Unsafe(f"it is {kind}")
                fd = os.open(name, flags | _FILE_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                if create:
                    continue  # unlinked between the two opens: create it again
                raise
            except OSError as exc:
                kind = _lkind(dir_fd, name)
                if kind is not None and exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EWOULDBLOCK):
                    raise _Unsafe(f"it is {kind}") from None
                raise
            try:
                _check_file(fd, dir_fd)
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise _Unsafe("it keeps disappearing while it is opened")
    finally:
        os.close(dir_fd)


def open_for_append(path: str) -> int:
    """Open ``path`` for appending (and reading back), creating it and its parent
    directories, under Rule 4."""
    try:
        return _open_file(path, os.O_RDWR | os.O_APPEND, create=True)
    except OSError as exc:
        raise DestinationError(f"destination {path} cannot be opened: {describe_os_error(exc)}") from None


def _landed_in_renamed(path: str, dev: object, ino: object, base: int) -> int | None:
    """Bytes of the recorded generation in the renamed-away destination, if it is found."""
    try:
        dir_fd = _open_directory(posixpath.dirname(posixpath.normpath(path)), create=False)
        if dir_fd is None:
            return None
        try:
            list_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            return _find_inode(list_fd, dev, ino, base)
        finally:
            os.close(list_fd)
    except OSError:
        return None


def _find_inode(list_fd: int, dev: object, ino: object, base: int) -> int | None:
    with os.scandir(list_fd) as entries:  # scandir reads a duplicate of list_fd
        for count, entry in enumerate(entries):
            if count >= MAX_SCAN_ENTRIES:
                return None
            st = entry.stat(follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (dev, ino):
                if not stat.S_ISREG(st.st_mode) or st.st_size < base:
                    return None
                return st.st_size - base
    return None


def _plausible_base(base: object) -> TypeGuard[int]:
    """A recorded base no real file could have (a forged or corrupt record) is no record."""
    return isinstance(base, int) and not isinstance(base, bool) and -MAX_RECORD_OFFSET < base < MAX_RECORD_OFFSET


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes of one origin generation in the destination file: origin byte ``o`` of
    ``record`` is destination byte ``base + o``, for ``o`` in [``first``, ``end``);
    ``igen`` is the inode generation the client named when the span began."""

    record: GenerationId
    base: int
    first: int
    end: int
    igen: int | None = None

    def to_json(self) -> dict[str, object]:
        return {"record": self.record.to_json(), "base": self.base, "stop": self.base + self.end, "igen": self.igen}


def _load_journal(raw: object, size: int) -> list[Span] | None:
    """The journal as recorded, or None if it is not one this file could hold (Rule 3b)."""
    if not isinstance(raw, list) or len(raw) > MAX_JOURNAL_SPANS:
        return None
    spans: list[Span] = []
    at = 0
    for item in raw:
        if not isinstance(item, dict):
            return None
        base, stop, igen = item.get("base"), item.get("stop"), item.get("igen")
        try:
            record = GenerationId.from_json(item.get("record"))
        except ProtocolError:
            return None
        if not _plausible_base(base) or not _plausible_base(stop) or not at <= max(base, 0) < stop <= size:
            return None
        spans.append(Span(record, base, max(0, -base), stop - base, igen if _plausible_base(igen) else None))
        at = stop
    return spans


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
    journal: list[Span] = field(default_factory=list)
    earlier: int = 0
    igen: int | None = None
    # Rule 5: the size this object last left the file at, and the sidecar it last wrote or read.
    expected_size: int = -1
    # The record's bytes as this writer last left them (its content, not its inode number:
    # each save makes a new inode and frees the old number, which ext4 hands out again).
    sidecar_seen: bytes | None = None

    @classmethod
    def open(cls, path: str, state_dir: str) -> Destination:
        fd = open_for_append(path)
        try:
            st = os.fstat(fd)
            dest = cls(path, record_path(state_dir, path), fd, st.st_dev, st.st_ino)
            dest._expect()
            dest._load_record()  # may save a record carried over (fenced: may be refused)
        except BaseException:
            os.close(fd)
            raise
        return dest

    @classmethod
    def inspect(cls, path: str, state_dir: str) -> Destination | None:
        """Open read-only, to read what is held (``tcppipe verify``); never creates or
        records. None if there is no destination file yet."""
        try:
            fd = _open_file(path, os.O_RDONLY, create=False)
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
        return self._named_by_held_head(self.record, landed), max(0, -self.base), landed

    def spans(self) -> list[Span]:
        """Every generation's bytes this file holds that the record can account for, in
        file order: the journal's spans, then the current generation's (Rule 3b)."""
        held = self.held()
        if held is None:
            return list(self.journal)
        record, first, end = held
        current = [Span(record, self.base, first, end, self.igen)] if end > first else []
        return [*self.journal, *current]

    def _load_record(self) -> None:
        raw = state.read_json(self.sidecar)
        if raw is None or raw.get("local") != self.path:
            return
        base = raw.get("base")
        try:
            record = GenerationId.from_json(raw.get("record"))
        except ProtocolError:
            return
        if not _plausible_base(base):
            return
        if raw.get("dest_dev") != self.dev or raw.get("dest_ino") != self.ino:
            # Renamed away (rotated) while we were not looking: if the recorded
            # file is still beside this one, carry its count over; else no record.
            landed = _landed_in_renamed(self.path, raw.get("dest_dev"), raw.get("dest_ino"), base)
            if landed is not None and self.writable and _plausible_base(self.size() - landed):
                igen = raw.get("igen")
                self.igen = igen if _plausible_base(igen) else None
                self._save(record, self.size() - landed)
            return
        if self.size() < base:
            return
        self.record, self.base = record, base
        igen = raw.get("igen")
        self.igen = igen if _plausible_base(igen) else None
        journal = _load_journal(raw.get("journal", []), max(base, 0))
        earlier = raw.get("earlier", 0)
        if journal is not None and isinstance(earlier, int) and 0 <= earlier < MAX_RECORD_OFFSET:
            self.journal, self.earlier = journal, earlier

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
        # Only ever lengthened here: READY names the generation the client is to find, and
        # the client's own longer head (bytes not landed yet) tells it apart better.
        if min(offset, FINGERPRINT_BYTES) > record.fp_len:
            record = self._named_by_held_head(record, offset)
        return record, offset

    def _named_by_held_head(self, record: GenerationId, end: int) -> GenerationId:
        """``record`` named by the first min(``end``, FINGERPRINT_BYTES) bytes of the span
        at ``base`` in this file, where they are here (Rule 3b); else as it is."""
        want = min(end, FINGERPRINT_BYTES)
        if self.base < 0 or want == record.fp_len:
            return record
        head = self._read_at(self.base, want)
        if len(head) != want:
            return record
        return GenerationId(record.dev, record.ino, want, hashlib.sha256(head).hexdigest())

    def _read_at(self, offset: int, length: int) -> bytes:
        # The fd is open for reading too (O_APPEND governs writes only): no path, no reopen.
        try:
            return os.pread(self.fd, length, offset)
        except OSError:
            return b""

    def begin_generation(self, ident: GenerationId, start: int, igen: int | None = None) -> None:
        """The next byte written is byte ``start`` of generation ``ident``; ``igen`` (its inode's
        generation, as the client says) is taken only where a new span begins."""
        size = self.size()
        base = size - start
        if ident == self.record and base == self.base:
            return
        record = self.record
        continued = record is not None and (record.dev, record.ino) == (ident.dev, ident.ino) and base == self.base
        if record is not None and not continued and size > max(self.base, 0):
            # The record names the generation by the client's fingerprint: its head as the
            # client last saw it, up to FINGERPRINT_BYTES, bytes that had not all landed (a
            # GENERATION at byte 0, or a resume after the file grew: 3817 bytes named, 1156
            # landed). A span closes short of it when the generation's tail is lost (deleted
            # while both ends were down), so it is named here by the head it holds (Rule 3b).
            head = self._named_by_held_head(record, size - self.base)
            self.journal.append(Span(head, self.base, max(0, -self.base), size - self.base, self.igen))
            dropped = len(self.journal) - MAX_JOURNAL_SPANS
            if dropped > 0:
                del self.journal[:dropped]
                self.earlier += dropped
        if not continued:
            self.igen = igen
        self._save(ident, base)

    def _sidecar_content(self) -> bytes | None:
        """The record file's bytes now (None if it cannot be read; bounded)."""
        try:
            fd = os.open(self.sidecar, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            # As long as the file is (and one byte more, to see it grew): a MAX_SIDECAR_BYTES
            # read would allocate, fault in and free a megabyte at every fenced write.
            return os.read(fd, min(os.fstat(fd).st_size + 1, MAX_SIDECAR_BYTES))
        except OSError:
            return None
        finally:
            os.close(fd)

    def _expect(self) -> None:
        """Take the file and its record as they are now as this writer's own (Rule 5)."""
        self.expected_size, self.sidecar_seen = self.size(), self._sidecar_content()

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """Rule 5: hold the write lock for one write, and only if nobody else wrote since ours."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise DestinationError(f"destination {self.path} is being written by another tcppiped") from None
            raise DestinationError(f"destination {self.path} cannot be locked: {describe_os_error(exc)}") from None
        try:
            if self.size() != self.expected_size or self._sidecar_content() != self.sidecar_seen:
                raise DestinationError(
                    f"destination {self.path} was written by another tcppiped since this connection began;"
                    " the client resumes from its record"
                )
            try:
                yield
            finally:
                self.expected_size = self.size()  # what reached the file, even if the write failed midway
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _save(self, record: GenerationId | None, base: int) -> None:
        with self._fenced():
            self._save_unfenced(record, base)
            self.sidecar_seen = self._sidecar_content()

    def _save_unfenced(self, record: GenerationId | None, base: int) -> None:
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
                    "igen": self.igen,
                    "journal": [span.to_json() for span in self.journal],
                    "earlier": self.earlier,
                },
            )
        except OSError as exc:
            raise DestinationError(f"cannot record the state of {self.path}: {describe_os_error(exc)}") from None
        self.record, self.base = record, base

    def write(self, data: bytes | memoryview) -> None:
        """Append all of ``data``; on failure what was written stays counted by the size."""
        view = memoryview(data)
        with self._fenced():
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                raise DestinationError(f"cannot write {self.path}: {describe_os_error(exc)}") from None

    def reopen(self) -> bool:
        """Reopen by name (after rotation on this host); True if it was a new file."""
        # Opened by name under Rule 4 (a link planted in place of the rotated file is
        # refused, never followed), then compared with the file held.
        new_fd = open_for_append(self.path)
        st = os.fstat(new_fd)
        if (st.st_dev, st.st_ino) == (self.dev, self.ino):
            os.close(new_fd)
            return False
        landed = self.landed()
        old_head = self.answer()[0]
        os.close(self.fd)
        self.fd, self.dev, self.ino = new_fd, st.st_dev, st.st_ino
        self._expect()
        # The earlier spans are in the file rotated away; this one holds none of them.
        self.journal, self.earlier = [], 0
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
