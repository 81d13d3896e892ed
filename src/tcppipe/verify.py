"""``tcppipe verify``: is the destination the origin's bytes, exactly?

Rule 1: the search is pure. ``Bisector`` asks for the digest of the whole held
range first; when it differs, it asks for the range cut in ``PARTS`` parts and
descends into the first part that differs, down to one byte. Both sides cut
ranges with ``protocol.split_range`` and hash them with ``digest_ranges``, so
neither ever sends the file's bytes and memory stays bounded.

Rule 2: the server hashes the destination file itself, so a destination edited
by hand is caught even though its record still looks right.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tcppipe.protocol import ProtocolError, split_range

PARTS: Final = 64
READ_BYTES: Final = 1024 * 1024


def digest_ranges(fd: int, ranges: Sequence[tuple[int, int]], shift: int = 0) -> list[str]:
    """sha256 of bytes [a + shift, b + shift) of ``fd`` for each range; a range
    that runs past the end of the file hashes what there is plus a marker, so
    it can never equal the digest of the full range."""
    digests = []
    for a, b in ranges:
        h = hashlib.sha256()
        position, end = a + shift, b + shift
        for _ in range((end - position) // READ_BYTES + 2):
            if position >= end:
                break
            chunk = os.pread(fd, min(READ_BYTES, end - position), position)
            if not chunk:
                h.update(b"\0short")
                break
            h.update(chunk)
            position += len(chunk)
        digests.append(h.hexdigest())
    return digests


@dataclass
class Bisector:
    """Finds the first byte of [start, end) where two files differ, by digests of parts."""

    lo: int
    hi: int
    parts: int = PARTS
    whole: bool = True
    done: bool = False
    differs_at: int | None = None

    def __post_init__(self) -> None:
        self.done = self.lo >= self.hi

    def request(self) -> tuple[int, int, int] | None:
        """The next (start, end, parts) to compare, or None when done."""
        if self.done:
            return None
        return self.lo, self.hi, 1 if self.whole else self.parts

    def answer(self, theirs: Sequence[str], ours: Sequence[str]) -> None:
        start, end, parts = self.request() or (self.lo, self.hi, 1)
        ranges = split_range(start, end, parts)
        if len(theirs) != len(ranges) or len(ours) != len(ranges):
            raise ProtocolError(f"expected {len(ranges)} digests, got {len(theirs)}")
        for (a, b), t, o in zip(ranges, theirs, ours, strict=True):
            if t == o:
                continue
            if b - a == 1:
                self.done, self.differs_at = True, a
            else:
                self.lo, self.hi, self.whole = a, b, False
            return
        if not self.whole:
            # The parts agree where the whole did not: a file changed under us.
            raise ChangedWhileVerifying(f"bytes {start}..{end} changed while being verified")
        self.done = True


class ChangedWhileVerifying(Exception):
    pass
