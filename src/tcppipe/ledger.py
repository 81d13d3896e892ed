"""The exactly-once ledger: one rule, two stores (a destination file, a JetStream subject).

Rule 1: pure. No I/O, no asyncio; the stores (``destination.py`` for files,
``jetstream.py`` for NATS JetStream) hold the bytes, this module says what
may be appended and how a JetStream message names its bytes.

Rule 2 (the record): a store knows the origin generation it is appending
(``record``) and how many of its bytes have landed (``landed()``); READY
tells the client both (``answer()``), and every GENERATION passes
``admit_generation`` against them before a byte of it is taken.

Rule 3 (the JetStream record): each message on a pipe's subject carries one
run of one generation's bytes, and its headers name the generation
(``TCPPIPE_GENERATION``: dev, inode, fingerprint length and sha256), its
inode generation, and the run's offsets ``[start, end)`` within it. The
subject's last message is therefore the whole record: no other state exists.
A message is published only with ``Nats-Expected-Last-Subject-Sequence`` set
to the last sequence this receiver read or wrote, so an append after anyone
else's is rejected by the stream itself (compare-and-append).

Rule 4 (what a store must offer): ``Store`` below; the session layer
(``pipe_server.py``) and the server speak to a store only through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from tcppipe.protocol import FINGERPRINT_BYTES, GenerationId

TCPPIPE_GENERATION: Final = "Tcppipe-Generation"
TCPPIPE_IGEN: Final = "Tcppipe-Igen"
TCPPIPE_START: Final = "Tcppipe-Start"
TCPPIPE_END: Final = "Tcppipe-End"
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
# Room left under the server's max_payload for our headers and NATS's own (a few hundred bytes).
HEADER_ALLOWANCE_BYTES: Final = 4096
# Messages never carry more than this, whatever the server allows: one publish is in flight per
# pipe, so large messages keep a catch-up's rate up, but servers with an 8 MiB max_payload measured
# slower with 8 MiB messages than with NATS's default 1 MiB (bench/jetstream.py --max-payload).
MAX_MESSAGE_BYTES: Final = 1024 * 1024
MAX_OFFSET: Final = 2**62  # beyond any file: a header past it is forged or corrupt


class Contended(Exception):
    """Another receiver appended to this pipe's ledger, or an append's outcome is unknown:
    the client is refused (retryable) and resumes from the ledger as it now stands."""


class LedgerError(Exception):
    """A message on a pipe's subject that is not a tcppipe record (the reason names it)."""


class Store(Protocol):
    """What the session layer and the server need of a destination (Rule 4)."""

    @property
    def record(self) -> GenerationId | None: ...

    @property
    def igen(self) -> int | None:
        """The inode generation the recorded generation's GENERATION named (None: not known)."""

    def landed(self) -> int | None:
        """Bytes of the recorded generation that have landed (durably), or None without a record."""

    def answer(self) -> tuple[GenerationId | None, int | None]:
        """The record and offset for READY."""

    def begin_generation(self, ident: GenerationId, start: int, igen: int | None = None) -> None:
        """The next byte written is byte ``start`` of generation ``ident`` (admitted already)."""

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` to the current generation (a file: now; a stream: queued, in order)."""

    def reopen(self) -> bool:
        """Reopen after rotation on this host; True if it was a new destination."""

    def close(self) -> None:
        """Release what the store holds; idempotent."""


def admit_generation(record: GenerationId | None, landed: int | None, ident: GenerationId, start: int) -> str | None:
    """Why the destination must not take GENERATION(``ident``, ``start``), or None.

    The ledger's rule: bytes of the recorded generation continue exactly where
    they landed (never a gap, never an overlap); any other generation starts
    at its first byte. A destination without a record (a new pipe, or a lost
    state directory) takes the client's word: the client resumes from its own
    status file then.

    One overlap is admitted: byte 0 of the recorded inode. A copytruncated
    file starts again at byte 0 in the same inode, possibly with the same
    head (a CSV header), and ``tcppipe -n`` resends from byte 0 on purpose.
    Refusing it would stop the pipe for good; it cannot open a gap.
    """
    if record is None or landed is None:
        return None
    if start == 0:
        return None
    if (ident.dev, ident.ino) != (record.dev, record.ino):
        return f"a new generation must start at byte 0, not {start}"
    if start == landed:
        return None
    what = "a gap" if start > landed else "an overlap"
    return f"GENERATION at byte {start} of the recorded generation, which has {landed} bytes landed ({what})"


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """What one JetStream message holds: bytes ``[start, end)`` of generation ``ident``."""

    ident: GenerationId
    igen: int | None
    start: int
    end: int

    def headers(self, expected_last_sequence: int) -> dict[str, str]:
        """The headers of this message, published after subject sequence ``expected_last_sequence``."""
        g = self.ident
        return {
            TCPPIPE_GENERATION: f"{g.dev}:{g.ino}:{g.fp_len}:{g.fp_sha256}",
            TCPPIPE_IGEN: "-" if self.igen is None else str(self.igen),
            TCPPIPE_START: str(self.start),
            TCPPIPE_END: str(self.end),
            EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected_last_sequence),
        }


def _offset(text: str | None, what: str) -> int:
    if text is None or not text.isdigit() or len(text) > 19:
        raise LedgerError(f"header {what} is not an offset")
    value = int(text)
    if value >= MAX_OFFSET:
        raise LedgerError(f"header {what} is out of range")
    return value


def parse_headers(headers: Mapping[str, str] | None, payload_bytes: int) -> MessageRecord:
    """The record a message's headers state, checked against its payload's length (LedgerError if not one)."""
    if not headers:
        raise LedgerError("no tcppipe headers")
    parts = (headers.get(TCPPIPE_GENERATION) or "").split(":")
    if len(parts) != 4:
        raise LedgerError(f"header {TCPPIPE_GENERATION} is not dev:ino:fp_len:sha256")
    dev, ino, fp_len = (_offset(p, TCPPIPE_GENERATION) for p in parts[:3])
    fp = parts[3]
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp) or fp_len > FINGERPRINT_BYTES:
        raise LedgerError(f"header {TCPPIPE_GENERATION} has no valid fingerprint")
    raw_igen = headers.get(TCPPIPE_IGEN, "-")
    igen = None if raw_igen == "-" else _offset(raw_igen, TCPPIPE_IGEN)
    start, end = _offset(headers.get(TCPPIPE_START), TCPPIPE_START), _offset(headers.get(TCPPIPE_END), TCPPIPE_END)
    if end - start != payload_bytes:
        raise LedgerError(f"offsets {start}..{end} do not match its {payload_bytes} bytes")
    return MessageRecord(GenerationId(dev, ino, fp_len, fp), igen, start, end)


def message_limit(max_payload: int) -> int:
    """The most bytes of a pipe one message carries, under a server's ``max_payload``."""
    return max(1, min(MAX_MESSAGE_BYTES, max_payload - HEADER_ALLOWANCE_BYTES))


@dataclass
class Continuity:
    """Reading a subject back: each message must continue its generation exactly, or begin a new one at 0
    (``tcppiped export``'s check; ``check`` returns why a message breaks it, or None)."""

    last: MessageRecord | None = None

    def check(self, record: MessageRecord) -> str | None:
        last, self.last = self.last, record
        if last is not None and (last.ident == record.ident or _same_inode(last, record)) and record.start != 0:
            if record.start == last.end:
                return None
            what = "a gap" if record.start > last.end else "a duplicate offset"
            return f"{what}: bytes {record.start}..{record.end} after {last.end}"
        if record.start != 0:
            return f"a generation that starts at byte {record.start}, not 0 (earlier messages discarded?)"
        return None


def _same_inode(a: MessageRecord, b: MessageRecord) -> bool:
    return (a.ident.dev, a.ident.ino) == (b.ident.dev, b.ident.ino)
