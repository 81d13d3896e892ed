"""The deterministic simulation (tests/sim) inside the normal suite: a few hundred schedules, and proof it can fail."""

from __future__ import annotations

import pytest

from tcppipe.tailer import Tailer
from tests.sim.schedule import generate, run_actions, run_schedule, shrink
from tests.sim.world import Action


def _run_many(first: int, count: int, faults: int) -> None:
    for seed in range(first, first + count):
        result = run_schedule(seed, faults)
        assert result.ok, f"seed {seed} (--faults {faults}): {result.message}"


def test_schedules_with_few_faults_stay_exact() -> None:
    """Two hundred schedules of a few faults each: the destination is always a prefix, and equal at quiescence."""
    _run_many(10_000, 200, 3)


def test_schedules_with_dozens_of_faults_stay_exact() -> None:
    """Forty schedules with about twenty faults each stay exact."""
    _run_many(20_000, 40, 12)


def test_a_schedule_replays_exactly() -> None:
    """The same seed makes the same actions and the same outcome."""
    a, _ = generate(5, 10)
    b, _ = generate(5, 10)
    assert [str(x) for x in a] == [str(x) for x in b]
    assert run_schedule(5, 10).ok == run_schedule(5, 10).ok


def test_a_writer_faster_than_the_grace_drains_within_the_bound() -> None:
    """Fifteen rotations 0.1 s apart without a SIGHUP cost one grace, not fifteen."""
    actions = []
    t = 0.1
    for _ in range(15):
        actions.append(Action(round(t, 3), "write", {"size": 300}))
        actions.append(Action(round(t + 0.05, 3), "rotate", {"hup": None}))
        t += 0.1
    assert run_actions(1, actions, {"backups": 20}).ok


def _burst_schedule() -> list[Action]:
    """Writes, then three numbered rotations with no file side between (a loaded host), then more."""
    actions = [Action(round(0.1 * i, 3), "write", {"size": 400}) for i in range(1, 6)]
    actions.append(Action(0.7, "rotate_burst", {"count": 3, "size": 900}))
    actions += [Action(round(0.8 + 0.1 * i, 3), "write", {"size": 300}) for i in range(5)]
    return actions


def test_generations_between_two_looks_all_arrive() -> None:
    """Three rotations before the file side looks again: the two in between, still on disk as
    app.log.2 and app.log.1, must arrive in order (the model requires them)."""
    assert run_actions(1, _burst_schedule(), {"backups": 5}).ok


def test_generations_rotated_into_another_directory_arrive_after_a_restart() -> None:
    """Seed 6: logrotate's ``olddir`` with dateext names, kill -9 of tcppipe while a dozen
    generations wait in old/: the restart finds them there. Before, each was "gone" and lost."""
    assert generate(6, 15)[1]["naming"] == "dateext olddir"
    result = run_schedule(6, 15)
    assert result.ok, result.message


def test_a_copytruncate_copy_under_a_stamped_name_is_not_a_generation_between() -> None:
    """Seed 5286 with dateext names (CI found it): after a restart, the generations between the
    last one listed and the first one held were taken up to any later stamp, so copytruncate's
    copy of a later generation was sent before the held one. They now end at the held one."""
    assert generate(5286, 15)[1]["naming"] == "dateext"
    result = run_schedule(5286, 15)
    assert result.ok, result.message


def test_the_simulator_catches_generations_skipped_between_two_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the rule that finds them (Tailer._adopt_unseen), the same schedule fails."""
    monkeypatch.setattr(Tailer, "_adopt_unseen", lambda self, now, newest: None)
    result = run_actions(1, _burst_schedule(), {"backups": 5})
    assert not result.ok
    assert "diverges" in result.message


def test_the_simulator_catches_a_skipped_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug (the tailer skips a byte after each large read) fails, and shrinks to a short case."""
    real = Tailer.advance

    def skipping(self: Tailer, gen: object, count: int) -> None:
        real(self, gen, count + (1 if count > 500 else 0))  # type: ignore[arg-type]

    monkeypatch.setattr(Tailer, "advance", skipping)
    result = run_schedule(3, 5)
    assert not result.ok
    assert "diverges" in result.message
    keep, shrunk = shrink(3, 5, budget=60)
    assert not shrunk.ok
    assert len(keep) < len(result.actions)


def test_the_simulator_catches_a_resume_that_forgets_later_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failure 2 planted again (later generations not reset on READY) fails some schedule."""

    def old_resume_at(self: Tailer, index: int, position: int, now: float, how: str) -> object:
        for gen in self.gens[:index]:
            gen.close()
        self.gens = self.gens[index:]
        gen = self.gens[0]
        self._position(gen, min(position, gen.size()))
        from tcppipe.tailer import Resumed

        return Resumed(gen.path, position, how)

    monkeypatch.setattr(Tailer, "_resume_at", old_resume_at)
    assert any(not run_schedule(seed, 20).ok for seed in range(1, 40))


def _actions(rows: list[tuple[float, str, dict[str, object]]]) -> list[Action]:
    return [Action(t, kind, dict(args)) for t, kind, args in rows]


def test_a_recorded_generation_deleted_while_down_is_not_taken_for_a_later_file_in_its_inode() -> None:
    """Found with a changed schedule generator (seed 2988, one backup, origin on disk): the server
    recorded 2 bytes of a copytruncated generation, both ends went down, rotations deleted it and
    a later FILE reused its inode number and starts with the same 2 bytes. The restart resumed
    that later file at byte 2 as if it were the recorded one (its first 2 bytes never sent): a
    failed start before had listed FILE in the status file in that inode number. READY now
    carries the recorded generation's inode generation, and a file of another is not it. (Where
    the file system does not reuse the number, the schedule passes either way.)"""
    actions = _actions(
        [
            (0.164, "write", {"size": 125}),
            (0.328, "write", {"size": 17}),
            (0.497, "copytruncate", {"hup": 0.0}),
            (0.688, "write", {"size": 157, "split": 0.913}),
            (0.718, "kill_server", {"restart": 4.779}),
            (5.734, "rotate", {"hup": 0.0}),
            (5.743, "refuse", {"duration": 1.564}),
            (6.199, "rotate", {"hup": 0.0}),
            (7.616, "kill_client", {"restart": 7.645}),
            (9.373, "rotate", {"hup": 0.0}),
            (9.543, "rotate", {"hup": None}),
            (9.869, "rotate", {"hup": 0.918}),
            (10.165, "rotate", {"hup": 0.0}),
            (10.433, "rotate", {"hup": 0.0}),
            (10.873, "rotate", {"hup": 0.0}),
            (11.573, "rotate", {"hup": 0.0}),
            (11.632, "write", {"size": 115, "split": 0.064}),
            (12.717, "refuse", {"duration": 3.691}),
        ]
    )
    result = run_actions(2988, actions, {"backups": 1, "disk_origin": True})
    assert result.ok, result.message


def test_a_burst_after_a_takeover_and_a_black_hole_keeps_the_journal_true() -> None:
    """Found by random bursts (seed 2348): after a cut, a takeover, a kill -9 and a black hole, a
    burst of rotations deleted a generation 1156 bytes into it, whose record named it by the
    client's 3817-byte head; its span is now named by the head it holds (Destination Rule 3b).
    Heartbeats on a grid since shifted this schedule's timing so that it passes with the old
    record too: ``test_a_span_whose_tail_never_landed_is_named_by_the_head_it_holds`` in
    test_destination.py holds the regression; this one keeps the scenario."""
    actions = _actions(
        [
            (0.092, "write", {"size": 181, "split": 0.06}),
            (0.261, "write", {"size": 196, "split": 0.274}),
            (1.148, "write", {"size": 69, "split": 0.839}),
            (1.202, "write", {"size": 119}),
            (1.379, "write", {"size": 79}),
            (2.297, "write", {"size": 64}),
            (2.723, "write", {"size": 160}),
            (3.141, "write", {"size": 106}),
            (4.118, "rotate_burst", {"count": 3, "size": 674}),
            (4.263, "write", {"size": 469}),
            (5.822, "write", {"size": 113}),
            (6.255, "write", {"size": 456, "split": 0.289}),
            (7.094, "write", {"size": 139, "split": 0.568}),
            (7.197, "cut", {"at": 0.033, "at_down": 0.0, "client_learns": 0.149, "server_learns": None}),
            (7.370, "write", {"size": 2661}),
            (7.555, "takeover", {"restart": 0.471}),
            (7.803, "blackhole", {"duration": 4.442}),
            (7.952, "kill_server", {"restart": 0.924}),
            (13.151, "rotate_burst", {"count": 4, "size": 1187}),
        ]
    )
    result = run_actions(2348, actions, {"backups": 2, "disk_origin": False})
    assert result.ok, result.message
