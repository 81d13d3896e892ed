"""Reconnect back-off: grows, is capped, resets."""

from __future__ import annotations

import random

from tcppipe.client import Backoff


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    """Delays grow geometrically, never exceed the cap, and start over after reset."""
    backoff = Backoff(first_s=0.5, cap_s=4.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    assert all(0.4 <= d <= 4.0 for d in delays)
    assert delays[0] <= 0.5 < delays[2]
    assert all(d >= 3.2 for d in delays[4:])
    backoff.reset()
    assert backoff.next_delay() <= 0.5
