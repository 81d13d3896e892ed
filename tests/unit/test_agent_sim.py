"""The host agent's discovery simulation (tests/sim/agent.py) in the normal suite: a few hundred
schedules per mode, exact replay, and proof that it fails on claims counted by inode number alone."""

from __future__ import annotations

import pytest

from tcppipe.discovery import Discovery, Identify, Seen
from tests.sim.agent import generate, run_actions, run_schedule, shrink


@pytest.mark.parametrize("with_igen", [True, False], ids=["igen", "no-igen"])
def test_two_hundred_agent_schedules_send_every_file_once(with_igen: bool) -> None:
    """Two hundred schedules per mode: no file sent under two names, and at quiescence all of it sent."""
    for seed in range(30_000, 30_200):
        result = run_schedule(seed, with_igen)
        mode = "igen" if with_igen else "no-igen"
        assert result.ok, f"seed {seed} --mode {mode}: {result.message}"


def test_an_agent_schedule_replays_exactly() -> None:
    """The same seed makes the same actions, the same trace and the same outcome."""
    assert [str(a) for a in generate(7, 80)] == [str(a) for a in generate(7, 80)]
    first, again = run_schedule(7, False), run_schedule(7, False)
    assert (first.ok, first.trace) == (again.ok, again.trace)


def test_the_agent_simulation_catches_claims_by_inode_number_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug fixed in discovery.py planted again (a claim counts by inode number, unchecked):
    a later file in a freed inode number is taken for the claimed one, and some schedule fails."""

    def unchecked(self: Discovery, path: str, seen: Seen, identify: Identify) -> object:
        claims = self.claims.get(seen.inode)
        return (claims[0], claims[0].size) if claims else None

    monkeypatch.setattr(Discovery, "_claim_naming", unchecked)
    failing = next((seed for seed in range(1, 200) if not run_schedule(seed, False).ok), None)
    assert failing is not None
    keep, shrunk = shrink(failing, False, budget=150)
    assert not shrunk.ok
    assert len(keep) < len(generate(failing, 80))


def test_the_known_gaps_fail_when_not_allowed() -> None:
    """A retired pipe's undrained generation after a crash is a known gap: allowed, it passes; strict, it fails."""
    actions = [generate(20, 80)[i] for i in (0, 11, 18, 35, 39, 75, 77)]
    assert run_actions(20, actions, True).ok
    strict = run_actions(20, actions, True, known_gaps=False)
    assert not strict.ok
    assert "never sent" in strict.message
