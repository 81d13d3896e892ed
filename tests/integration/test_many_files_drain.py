"""A host agent's retired pipe that dies before its generations landed: a drain-only pipe sends them."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import Pipes, kill9, same_bytes, stop, wait_until
from tests.integration.test_many_files import start_agent
from tests.integration.test_restart import numbered_lines

RETIRED = "this pipe ends once what it holds has landed"
DRAIN_STARTED = "drain-only pipe started"


def status_of(pipes: Pipes, origin: Path) -> dict[str, object]:
    """The status file of ``origin``'s pipe ({} if there is none yet)."""
    for path in pipes.client_state.glob("tcppipe.*.status"):
        raw = json.loads(path.read_text())
        if raw.get("file") == str(origin):
            return dict(raw)
    return {}


def agent(pipes: Pipes, origin_dir: Path) -> subprocess.Popen[bytes]:
    return start_agent(pipes, origin_dir / "a.log*", extra=("-t", "0.2", "--rotate-grace", "600"))


def retire_unlanded_and_kill(pipes: Pipes, origin_dir: Path, dest_dir: Path) -> tuple[subprocess.Popen[bytes], bytes]:
    """a.log and a.log.1 are pipes of their own and land. Then, with the server stopped (nothing
    lands), a.log.1 grows and a rotation makes it a.log's old file: a.log.1's pipe retires holding
    its own file (now a.log.2) unacknowledged, and the agent is killed -9; then a.log.2 grows
    again while it is down. The server, and a.log's content before the rotation."""
    a, one, two = origin_dir / "a.log", origin_dir / "a.log.1", origin_dir / "a.log.2"
    a.write_bytes(numbered_lines(0, 300))
    one.write_bytes(numbered_lines(5000, 200))
    server = pipes.start_server()
    agent_proc = agent(pipes, origin_dir)
    wait_until(lambda: same_bytes(a, dest_dir / "a.log") and same_bytes(one, dest_dir / "a.log.1"), what="first copies")
    server.send_signal(signal.SIGSTOP)
    try:
        with open(one, "ab") as f:
            f.write(numbered_lines(6000, 100))  # read and written to the stopped server's socket, never acknowledged
        old_a = a.read_bytes()
        one.rename(two)
        a.rename(one)
        a.write_bytes(numbered_lines(9000, 40))
        pipes.syslog.wait_for(RETIRED)
        assert status_of(pipes, one).get("drained") is None
        kill9(agent_proc)
    finally:
        server.send_signal(signal.SIGCONT)
    with open(two, "ab") as f:
        f.write(numbered_lines(7000, 100))  # written while the agent is down: only a drain can send it
    return server, old_a


def test_a_retired_pipe_killed_before_its_generation_landed_is_drained_after_the_restart(pipes: Pipes) -> None:
    """a.log and a.log.1 are pipes of their own (both there at the start). The server is stopped
    (SIGSTOP: nothing lands), a.log.1 grows, then a rotation makes a.log.1 a.log's old file:
    a.log.1's pipe retires holding its own file (now a.log.2) unacknowledged, and the agent is
    killed -9; a.log.2 grows again while it is down. After the restart a.log.1's path has a file
    that is a.log's, yet a drain-only pipe sends the rest of a.log.2 into a.log.1's destination
    (before, nothing did: issue 12); every destination equals its origin generations exactly,
    a.log.2 is no pipe, and the next restart starts no drain-only pipe again."""
    origin_dir, dest_dir = pipes.tmp / "origin", pipes.tmp / "dest"
    origin_dir.mkdir()
    pipes.define(f"127.0.0.1:{origin_dir}/a.log* | {dest_dir}/{{name}}")
    a, one, two = origin_dir / "a.log", origin_dir / "a.log.1", origin_dir / "a.log.2"
    dest_a, dest_one, dest_two = dest_dir / "a.log", dest_dir / "a.log.1", dest_dir / "a.log.2"
    _server, old_a = retire_unlanded_and_kill(pipes, origin_dir, dest_dir)

    second = agent(pipes, origin_dir)
    pipes.syslog.wait_for(DRAIN_STARTED)
    second.send_signal(signal.SIGHUP)  # a.log's old generation is released (grace 600 s)
    wait_until(lambda: same_bytes(two, dest_one), what="a.log.2 drained into a.log.1's destination")
    wait_until(lambda: dest_a.read_bytes() == old_a + a.read_bytes(), what="a.log: its old generation, then the new")
    wait_until(lambda: status_of(pipes, one).get("drained") is True, what="a.log.1's status to say drained")
    wait_until(lambda: pipes.client_pid(one) is None, what="the drain-only pipe to end")
    assert not dest_two.exists()
    assert stop(second) == 0

    drains = pipes.syslog.count(DRAIN_STARTED)
    said = pipes.syslog.count(f"{two} is a rotated generation of {one}")
    third = agent(pipes, origin_dir)
    # The first scan names a.log.2 as a.log.1's; the drain decision is made in that same scan.
    wait_until(lambda: pipes.syslog.count(f"{two} is a rotated generation of {one}") > said, what="the first scan")
    with open(a, "ab") as f:
        f.write(b"after the third start\n")
    wait_until(lambda: dest_a.read_bytes() == old_a + a.read_bytes(), what="a.log's append")
    assert pipes.syslog.count(DRAIN_STARTED) == drains
    assert same_bytes(two, dest_one)
    assert not dest_two.exists()
    assert stop(third) == 0


def test_a_drain_only_pipe_the_server_refuses_is_retried_and_drains_once_it_is_taken(pipes: Pipes) -> None:
    """As above, but after the restart the server refuses a.log.1 (its entry removed and tcppiped
    reloaded): the drain-only pipe fails, stays owed (its status file still lists a.log.2) and is
    tried again; at the agent's SIGHUP, once the entry is back, it drains a.log.2 exactly."""
    origin_dir, dest_dir = pipes.tmp / "origin", pipes.tmp / "dest"
    origin_dir.mkdir()
    a, one, two = origin_dir / "a.log", origin_dir / "a.log.1", origin_dir / "a.log.2"
    dest_a, dest_one = dest_dir / "a.log", dest_dir / "a.log.1"
    entry_a, entry_one = f"127.0.0.1:{a} | {dest_a}", f"127.0.0.1:{one} | {dest_one}"
    pipes.define(entry_a, entry_one)
    server, old_a = retire_unlanded_and_kill(pipes, origin_dir, dest_dir)

    def reload(*entries: str) -> None:
        loaded = pipes.syslog.count(f"config {pipes.config} loaded")
        pipes.config.write_text("".join(e + "\n" for e in entries))
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: pipes.syslog.count(f"config {pipes.config} loaded") > loaded, what="tcppiped to reload")

    reload(entry_a)
    second = agent(pipes, origin_dir)
    pipes.syslog.wait_for(DRAIN_STARTED)
    pipes.syslog.wait_for(f"no pipe is defined for host 127.0.0.1 and file {one}")
    pipes.syslog.wait_for("pipe ended; trying it again in")
    assert status_of(pipes, one).get("drained") is None
    assert not same_bytes(two, dest_one)
    reload(entry_a, entry_one)
    second.send_signal(signal.SIGHUP)  # failed pipes are tried again at once (and a.log's old generation released)
    wait_until(lambda: same_bytes(two, dest_one), what="a.log.2 drained into a.log.1's destination")
    wait_until(lambda: dest_a.read_bytes() == old_a + a.read_bytes(), what="a.log: its old generation, then the new")
    assert status_of(pipes, one).get("drained") is None, "let go before the grace (600 s) or a SIGHUP"
    # The drain-only pipe started after that SIGHUP: what it holds goes quiet for the grace first,
    # or a SIGHUP says every writer has reopened.
    second.send_signal(signal.SIGHUP)
    wait_until(lambda: status_of(pipes, one).get("drained") is True, what="a.log.1's status to say drained")
    assert pipes.syslog.count(DRAIN_STARTED) == 2
    assert stop(second) == 0


def test_a_drain_only_pipe_started_mid_rotation_waits_for_a_late_writer(pipes: Pipes) -> None:
    """Found by review: the agent restarts between logrotate's rename (a.log -> a.log-20261202,
    a name the glob does not match) and the writer's new a.log. The drain-only pipe that sends
    the renamed generation lets it go only once quiet for the grace, so what the writer still
    appends to it (it has not reopened yet) is sent too. When the new a.log appears, an ordinary
    pipe takes the path over and sends what is still appended to the old one, then a.log from
    its first byte."""
    origin_dir, dest_dir = pipes.tmp / "origin", pipes.tmp / "dest"
    origin_dir.mkdir()
    pipes.define(f"127.0.0.1:{origin_dir}/*.log | {dest_dir}/{{name}}")
    a, rotated, dest_a = origin_dir / "a.log", origin_dir / "a.log-20261202", dest_dir / "a.log"
    a.write_bytes(numbered_lines(0, 200))
    pipes.start_server()
    first = start_agent(pipes, origin_dir / "*.log", extra=("-t", "0.2", "--rotate-grace", "3"))
    wait_until(lambda: same_bytes(a, dest_a), what="first copy")
    kill9(first)
    a.rename(rotated)
    second = start_agent(pipes, origin_dir / "*.log", extra=("-t", "0.2", "--rotate-grace", "3"))
    pipes.syslog.wait_for(DRAIN_STARTED)
    wait_until(lambda: same_bytes(rotated, dest_a), what="the renamed generation drained")
    # Landed, yet held through the grace (3 s): five -t ticks later it is still not let go.
    quiet_until = time.monotonic() + 1.0
    while time.monotonic() < quiet_until:
        assert status_of(pipes, a).get("drained") is None, "let go before the grace"
        time.sleep(0.05)
    with open(rotated, "ab") as f:
        f.write(numbered_lines(200, 50))  # the writer, not reopened yet, within the grace
    wait_until(lambda: same_bytes(rotated, dest_a), what="the late lines, within the grace")
    # The writer reopens: a new a.log, this path's own file. The drain-only pipe hands the path
    # over to an ordinary pipe (it would otherwise hold it while the old generation grows).
    a.write_bytes(numbered_lines(9000, 30))
    pipes.syslog.wait_for("an ordinary pipe takes it over")
    with open(rotated, "ab") as f:
        f.write(numbered_lines(300, 20))  # still within the grace: the ordinary pipe holds it too
    old = rotated.read_bytes()
    wait_until(lambda: dest_a.read_bytes() == old + a.read_bytes(), what="then the new a.log")
    assert stop(second) == 0
