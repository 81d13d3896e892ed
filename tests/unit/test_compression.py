"""zstd payloads: round trip, only when smaller, and damaged or inflating frames refused."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from tcppipe.compression import Compressor, Decompressor
from tcppipe.protocol import DATA_ZSTD, MAX_DATA_BYTES, ProtocolError


@given(st.binary(max_size=5000) | st.text(max_size=3000).map(lambda t: (t * 5).encode()))
def test_round_trip(data: bytes) -> None:
    """Whatever is encoded decodes to the same bytes, compressed or not."""
    payload, flags = Compressor().encode(data)
    assert bytes(Decompressor().decode(payload, flags)) == data


def test_compresses_only_when_it_pays() -> None:
    """A short line goes as it is; repetitive text goes compressed and smaller."""
    assert Compressor().encode(b"one short line\n") == (b"one short line\n", 0)
    text = b"GET /index.html 200\n" * 1000
    payload, flags = Compressor().encode(text)
    assert flags == DATA_ZSTD
    assert len(payload) < len(text) / 10


def test_a_frame_inflating_past_the_limit_is_refused() -> None:
    """A zstd frame whose header promises more than a DATA frame may hold is refused before inflating."""
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (MAX_DATA_BYTES + 1))
    with pytest.raises(ProtocolError, match="beyond"):
        Decompressor().decode(bomb, DATA_ZSTD)


@pytest.mark.parametrize("damage", ["flip", "garbage"])
def test_damaged_frames_are_protocol_errors(damage: str) -> None:
    """A flipped bit fails zstd's checksum; bytes that are no frame fail the header."""
    payload, _ = Compressor().encode(b"some log line\n" * 100)
    if damage == "flip":
        broken = bytearray(payload)
        broken[len(broken) // 2] ^= 0x04
        payload = bytes(broken)
    else:
        payload = b"not a zstd frame at all"
    with pytest.raises(ProtocolError):
        Decompressor().decode(payload, DATA_ZSTD)


def test_a_frame_that_inflates_too_many_times_is_refused() -> None:
    """Issue 11: 63 wire bytes inflating to 1 MiB are refused; the compressor never sends such a frame."""
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * MAX_DATA_BYTES)
    assert len(bomb) < 200
    with pytest.raises(ProtocolError, match="inflate"):
        Decompressor().decode(bomb, DATA_ZSTD)
    payload, flags = Compressor().encode(b"\0" * MAX_DATA_BYTES)
    assert flags == 0  # too compressible: sent as it is
    assert len(payload) == MAX_DATA_BYTES
    text = b"".join(b"GET /item/%d 200 %d\n" % (n, n * 7 % 5000) for n in range(20_000))
    payload, flags = Compressor().encode(text)
    assert flags == DATA_ZSTD
    assert Decompressor().decode(payload, flags) == text
