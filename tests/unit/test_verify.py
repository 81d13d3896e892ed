"""The verify search: exact files agree in one round; otherwise the first differing byte is found."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcppipe.protocol import split_range
from tcppipe.verify import Bisector, ChangedWhileVerifying, digest_ranges


def search(a: bytes, b: bytes, start: int = 0) -> tuple[int | None, int]:
    """Run the bisector between two in-memory files; (first differing byte, rounds)."""
    with tempfile.TemporaryFile() as fa, tempfile.TemporaryFile() as fb:
        fa.write(a)
        fb.write(b)
        fa.flush()
        fb.flush()
        bisector = Bisector(start, min(len(a), len(b)))
        rounds = 0
        while rounds < 100:
            request = bisector.request()
            if request is None:
                break
            ranges = split_range(*request)
            bisector.answer(digest_ranges(fb.fileno(), ranges), digest_ranges(fa.fileno(), ranges))
            rounds += 1
        return bisector.differs_at, rounds


@given(st.binary(min_size=1, max_size=20_000), st.data())
def test_finds_the_first_differing_byte(data: bytes, draw: st.DataObject) -> None:
    """With any set of changed bytes, the answer is the first of them."""
    changed = sorted(set(draw.draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=5))))
    other = bytearray(data)
    for i in changed:
        other[i] ^= 0xFF
    assert search(data, bytes(other))[0] == changed[0]


def test_equal_files_take_one_round_and_big_ones_few() -> None:
    """Exact: one digest each. A difference in 1 MB is found in a handful of rounds."""
    data = os.urandom(1_000_000)
    assert search(data, data) == (None, 1)
    other = bytearray(data)
    other[777_777] ^= 1
    found, rounds = search(data, bytes(other))
    assert found == 777_777
    assert rounds <= 6


def test_digest_of_a_range_past_the_end_never_matches_the_full_one() -> None:
    """A destination shorter than asked hashes differently from the full range."""
    with tempfile.TemporaryFile() as f:
        f.write(b"abc")
        f.flush()
        [short] = digest_ranges(f.fileno(), [(0, 4)])
        [whole] = digest_ranges(f.fileno(), [(0, 3)])
    assert short != whole


def test_parts_agreeing_where_the_whole_did_not_is_reported() -> None:
    """A file changed between two rounds cannot be judged: say so instead of guessing."""
    bisector = Bisector(0, 10)
    bisector.answer(["a" * 64], ["b" * 64])
    ranges = split_range(*(bisector.request() or (0, 0, 1)))
    same = ["c" * 64] * len(ranges)
    with pytest.raises(ChangedWhileVerifying):
        bisector.answer(same, same)
