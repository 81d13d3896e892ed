"""zstd for DATA payloads on the wire (``-z``), agreed in the handshake.

Rule 1: pure functions over bytes; no I/O. Offsets, acknowledgements and the
exactly-once record all count origin bytes, never wire bytes, so compression
changes nothing but what crosses the network.

Rule 2: a payload is compressed only when that makes it smaller (a single
short line is not), so each DATA frame says in its flags how it is encoded.
Every zstd frame carries its content size and a checksum: the receiver
refuses one that would exceed a DATA frame's limit before inflating it.
"""

from __future__ import annotations

from typing import Final

import zstandard

from tcppipe.protocol import DATA_ZSTD, MAX_DATA_BYTES, ProtocolError

# Level 1: on log text it compresses as well as level 3 here, at 1.3x the speed.
LEVEL: Final = 1
# Below this a payload is sent as it is: zstd's frame overhead eats the gain.
MIN_COMPRESS_BYTES: Final = 256
# A DATA payload may inflate at most this many times (log text compresses 5-20x,
# one line repeated a thousand times about 500x; beyond the cap a payload is sent
# as it is). Without a cap 63 wire bytes became 1 MiB on disk: a 16,644x
# amplification of a peer's bytes.
MAX_INFLATION: Final = 1024


class Compressor:
    def __init__(self) -> None:
        self._zstd = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True, write_content_size=True)

    def encode(self, data: bytes) -> tuple[bytes, int]:
        """The wire payload for ``data`` and the DATA flags that say how it is encoded."""
        if len(data) >= MIN_COMPRESS_BYTES:
            packed = self._zstd.compress(data)
            if len(packed) < len(data) and len(data) <= MAX_INFLATION * len(packed):
                return packed, DATA_ZSTD
        return data, 0


class Decompressor:
    def __init__(self) -> None:
        self._zstd = zstandard.ZstdDecompressor()

    def decode(self, payload: bytes | memoryview, flags: int) -> bytes | memoryview:
        """The origin bytes a DATA payload carries (ProtocolError if they are damaged)."""
        if not flags & DATA_ZSTD:
            return payload
        try:
            size = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"compressed DATA has no valid zstd frame header: {exc}") from None
        if not 0 <= size <= MAX_DATA_BYTES:
            raise ProtocolError("compressed DATA would inflate beyond the DATA frame limit")
        if size > MAX_INFLATION * len(payload):
            raise ProtocolError(
                f"compressed DATA would inflate {size // max(len(payload), 1)}x (at most {MAX_INFLATION}x)"
            )
        try:
            data: bytes = self._zstd.decompress(payload, max_output_size=MAX_DATA_BYTES)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"compressed DATA is damaged: {exc}") from None
        if len(data) != size:
            raise ProtocolError("compressed DATA inflated to another size than its header says")
        return data
