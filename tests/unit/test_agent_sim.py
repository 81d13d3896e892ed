"""The host agent's discovery simulation (tests/sim/agent.py) in the normal suite: a few hundred
schedules per mode, exact replay, and proof that it fails on claims counted by inode number alone."""

from __future__ import annotations

import pytest

from tcppipe.discovery import Discovery, Identify, Seen
from tests.sim.agent import Action, generate, run_actions, run_schedule, shrink


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


def test_a_retired_pipes_undrained_generation_is_drained_after_a_crash() -> None:
    """Seed 20, igen (issue 12, known gap "orphaned" before): b.log.1's pipe retires (its FILE became
    b.log's old file) holding inode 2, the agent crashes, inode 2 (now b.log.2) grows; after the
    restart a drain-only pipe of b.log.1 sends it, to its last byte, and nothing twice."""
    actions = [generate(20, 80)[i] for i in (0, 11, 18, 35, 39, 75, 77)]
    strict = run_actions(20, actions, True, known_gaps=False)
    assert strict.ok, strict.message
    assert any("start /var/log/app/b.log.1 drain-only" in line for line in strict.trace)
    assert any("b.log.1: retired, everything sent" in line for line in strict.trace)


def test_a_drain_only_pipe_that_finds_nothing_ends_and_is_not_started_again() -> None:
    """A retired pipe's held file deleted while the agent is down: its drain-only pipe finds nothing
    listed, ends at once, and its status says drained, so a later restart starts none."""
    actions = [
        Action("create", 0.0, {"name": "b.log"}),
        Action("rotate", 2.5, {"base": "b.log", "delete": True}),
        Action("scan", 0.01),
        Action("open", 0.5),
        Action("rotate", 0.5, {"base": "b.log", "delete": False, "inotify": True}),
        Action("crash", 0.01),
        Action("delete", 0.5, {"name": "b.log.2"}),
        Action("restart", 0.1),
        Action("open", 0.1),
        Action("crash", 0.1),
        Action("restart", 0.1),
    ]
    result = run_actions(1, actions, True, known_gaps=False)
    assert result.ok, result.message
    drains = [line for line in result.trace if "start /var/log/app/b.log.1 drain-only" in line]
    assert len(drains) == 1
    assert any("b.log.1: drain-only: nothing listed is left: ended" in line for line in result.trace)


def test_the_known_gap_fails_when_not_allowed() -> None:
    """Without inode generations an empty recorded head names a later file in its inode (known gap
    "unknowable"): allowed, the schedule passes; strict, it fails."""
    actions = [generate(11, 80)[i] for i in (1, 2, 3, 9, 31, 74, 81)]
    assert run_actions(11, actions, False).ok
    strict = run_actions(11, actions, False, known_gaps=False)
    assert not strict.ok
    assert "never named" in strict.message


def test_a_record_of_a_generation_let_go_leads_the_resume_to_what_came_after_it() -> None:
    """Seed 900523 (200 steps), igen: a.log's pipe ends drained (everything let go), a new a.log is
    opened and crashes before READY, rotated meanwhile, and FILE is a later file in the inode of
    the generation the server's record names. READY's inode generation says FILE is not it, and
    the record names a generation the pipe let go, so the listed one after it is adopted, not lost."""
    keep = [0, 1, 2, 3, 5, 10, 16, 23, 79, 80, 81, 92, 128, 130, 131, 135, 145, 164, 165, 174, 175, 198, 200, 201]
    actions = [generate(900523, 200)[i] for i in keep]
    result = run_actions(900523, actions, True, known_gaps=False)
    assert result.ok, result.message
