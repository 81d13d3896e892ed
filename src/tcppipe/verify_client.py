"""``tcppipe verify``'s client: every generation the destination file holds, against the origin.

Rule 1: READY names the current generation and the earlier ones the
destination file still holds (the journal, ``destination`` Rule 3b); each is
found on the origin host and searched with ``verify.Bisector``, one VERIFY and
one DIGEST a round, so no file byte crosses the network.

Rule 2 (which files are read): FILE itself, or a file beside it that is the
named generation by inode and head; beside FILE, the server's record must
cover the file's first 4 KiB (or all of it), so a hostile server that names
another file's inode with a short fingerprint learns nothing of that file.
FILE, when its head is not the record's, is still compared if its inode and
inode generation are those tcppipe named for the generation (the file it
sent): the destination then holds bytes that are not the origin's (forged, or
edited), and the search shows where. Beside FILE the head must match: an
inode generation can be guessed on some file systems (btrfs).

Rule 3 (the verdict): exit 0 when every generation that could be found is
exact, the current one was found, and at least one was checked; an earlier
generation no longer on the origin host (deleted or compressed by logrotate)
is listed as not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from typing import Final

from tcppipe.client import HANDSHAKE_TIMEOUT_S, _read, connect, describe
from tcppipe.errors import ConnectionLost, Refused, TcppipeError, Unreachable
from tcppipe.origin import file_identity_number, find_generation, matches, open_origin
from tcppipe.protocol import (
    FINGERPRINT_BYTES,
    PURPOSE_VERIFY,
    Digest,
    GenerationId,
    HeldSpan,
    Hello,
    NeedData,
    ProtocolError,
    Ready,
    Refuse,
    Verify,
    split_range,
)
from tcppipe.receivers import Receiver, Target
from tcppipe.session import Acked, ClientSession
from tcppipe.sockets import close_writer, tune
from tcppipe.state import PipeKey
from tcppipe.verify import Bisector, ChangedWhileVerifying, digest_ranges

# The server hashes up to the whole destination for one answer.
DIGEST_TIMEOUT_S: Final = 600.0
MAX_VERIFY_ROUNDS: Final = 32


class _Conversation:
    """One verifying connection: READY, then a VERIFY and its DIGEST at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        self.reader, self.writer = reader, writer
        self.session: ClientSession[None] = ClientSession(Hello(path, purpose=PURPOSE_VERIFY), time.monotonic())

    async def answer(self, timeout_s: float) -> Ready | Refuse | Digest:
        async with asyncio.timeout(timeout_s):
            while True:
                event = self.session.next_event()
                if event is None:
                    raise ConnectionLost("server closed the connection")
                if not isinstance(event, NeedData):
                    assert not isinstance(event, Acked)  # a verifying session announces nothing
                    return event
                self.session.receive(await _read(self.reader), time.monotonic())

    async def ready(self) -> Ready:
        self.writer.write(self.session.start(time.monotonic()))
        ready = await self.answer(HANDSHAKE_TIMEOUT_S)
        if isinstance(ready, Refuse):
            raise Refused(f"server refused: {ready.reason}")
        if not isinstance(ready, Ready):
            raise ProtocolError(f"expected READY or REFUSE, got {type(ready).__name__}")
        return ready

    async def digests(self, request: Verify) -> tuple[str, ...]:
        self.writer.write(self.session.send_verify(request, time.monotonic()))
        reply = await self.answer(DIGEST_TIMEOUT_S)
        if not isinstance(reply, Digest):
            raise ProtocolError(f"expected DIGEST, got {type(reply).__name__}")
        return reply.digests


async def verify_pipe(key: PipeKey, bind: str | None, tls: ssl.SSLContext | None) -> tuple[bool, str]:
    """Compare every generation the destination file holds with the origin's bytes:
    (exact, what to print, a line per generation when there are several)."""
    try:
        reader, writer = await connect(Target(Receiver(key.host, key.port), None), bind, tls)
    except OSError as exc:
        raise Unreachable(f"cannot connect to {key.host} port {key.port}: {describe(exc)}") from None
    talk = _Conversation(reader, writer, key.path)
    try:
        tune(writer)
        ready = await talk.ready()
        current = None
        if ready.record is not None and ready.offset is not None:
            current = HeldSpan(ready.record, ready.first or 0, ready.offset)
        if current is None and not ready.history:
            return False, "nothing to verify: tcppiped has no record of this pipe yet"
        lines = []
        if ready.dropped:
            lines.append(f"{ready.dropped} older generations of the destination file are no longer listed: not checked")
        total = len(ready.history) + (current is not None)
        verdicts = []
        for index, span in enumerate(ready.history):
            verdict, text = await _check(talk, key.path, span, index)
            verdicts.append(verdict)
            lines.append(f"generation {index + 1} of {total}: {text}")
        if current is not None:
            verdict, text = await _check(talk, key.path, current, None)
            verdicts.append(verdict is True)  # the current one must be there
            lines.append(text if total == 1 else f"generation {total} of {total} (current): {text}")
        elif ready.history:
            lines.append("the destination file holds no bytes of a current generation yet")
        ok = False not in verdicts and True in verdicts
        return ok, "\n".join(lines)
    except (ConnectionLost, OSError, TimeoutError) as exc:
        raise Unreachable(f"verify with {key.host} failed: {describe(exc)}") from None
    finally:
        await close_writer(writer)


async def _check(talk: _Conversation, path: str, span: HeldSpan, index: int | None) -> tuple[bool | None, str]:
    """One generation: True exact, False differs, None not found on this host (Rule 3)."""
    found = _find_origin(path, span.record, span.igen)
    if isinstance(found, str):
        return None, found
    origin, fd = found
    try:
        size = os.fstat(fd).st_size
        bisector = Bisector(span.first, min(span.end, size))
        for _ in range(MAX_VERIFY_ROUNDS):
            request = bisector.request()
            if request is None:
                break
            theirs = await talk.digests(Verify(*request, span=index))
            ours = await asyncio.to_thread(digest_ranges, fd, split_range(*request))
            bisector.answer(theirs, ours)
    except ChangedWhileVerifying as exc:
        return False, f"cannot tell: {exc}"
    finally:
        os.close(fd)
    first, end = span.first, span.end
    if bisector.differs_at is not None:
        return False, f"differs at byte {bisector.differs_at} of {origin} (the destination holds bytes {first}..{end})"
    if size < end:
        return False, f"differs at byte {size}: the destination holds {end - size} bytes more than {origin} has"
    where = f"bytes {first}..{end} of {origin}" + ("" if origin == path else f", rotated from {path}")
    pending = f"; {size - end} bytes of the origin not landed yet" if size > end else ""
    return True, f"exact: {end - first} bytes ({where}){pending}"


def _find_origin(path: str, record: GenerationId, igen: int | None) -> tuple[str, int] | str:
    """FILE if it is the generation, else the file beside it that is (Rule 2); or why neither."""
    in_file = False
    with contextlib.suppress(OSError, TcppipeError):
        fd = open_origin(path)
        st = os.fstat(fd)
        in_file = (st.st_dev, st.st_ino) == (record.dev, record.ino)
        if matches(record, fd) or (in_file and igen is not None and file_identity_number(fd) == igen):
            return path, fd
        os.close(fd)
    found = None if in_file else find_generation(os.path.dirname(path) or "/", record)
    if in_file:
        return (
            f"not checked: inode {record.ino} is {path} now, but its first {record.fp_len} bytes are not "
            "the destination's (the inode was reused, or the destination's bytes are not the origin's)"
        )
    if found is None:
        return f"not checked: inode {record.ino} is neither {path} nor beside it any more (rotated away?)"
    beside, fd = found
    if record.fp_len < min(os.fstat(fd).st_size, FINGERPRINT_BYTES):
        os.close(fd)
        return f"not checked: the record names {beside} by only its first {record.fp_len} bytes"
    return found
