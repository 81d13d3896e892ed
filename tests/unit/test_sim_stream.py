"""The simulated JetStream subject (tests/sim/stream.py): receivers racing, acknowledgements lost, publishes late."""

from __future__ import annotations

import functools

import pytest

from tests.sim.stream import StreamWorld

SEEDS = range(24)
STEPS = 300


@functools.cache
def finished(seed: int) -> StreamWorld:
    world = StreamWorld(seed)
    world.run(STEPS)
    return world


@pytest.mark.parametrize("seed", SEEDS)
def test_racing_receivers_and_lost_acknowledgements_never_double_or_lose_a_byte(seed: int) -> None:
    """Up to three receivers append one pipe at once through compare-and-append, with lost and late
    publishes: the subject never holds a gap or a duplicate offset, and at quiescence equals the origin."""
    world = finished(seed)
    assert world.check() == world.gens


def test_the_simulation_exercises_what_it_claims() -> None:
    """Over the seeds, appends are rejected, acknowledgements lost, late publishes land, and spurious
    rejections (the ledger unmoved) happen."""
    worlds = [finished(seed) for seed in SEEDS]
    assert sum(w.stream.rejected for w in worlds) > 0
    assert sum(w.stream.lost_acks for w in worlds) > 0
    assert sum(w.stream.late_landed for w in worlds) > 0
    assert sum(w.stream.spurious_rejections for w in worlds) > 0
