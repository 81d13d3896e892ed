"""A hostile neighbour on the archive host (``nobody``) against root's tcppiped, and optional parts failing.

The attacker's moves are made as uid 65534 with ``setpriv``, in a sticky,
world-writable directory (as /tmp is): the one kind of shared directory that
tcppiped accepts on a destination path, so what is tested is what tcppiped
does with what a neighbour planted there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, command, free_port, same_bytes, stop, wait_until

NOBODY = 65534
REFUSE_WAIT_S = 15.0
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="plays root's tcppiped against uid 65534")
STAND_IN = b"root:x:0:0:root:/root:/bin/bash\n"


def as_nobody(*argv: str) -> None:
    """Run one command as the unprivileged neighbour; it must succeed."""
    subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        check=True,
        timeout=10,
    )


@pytest.fixture
def arena() -> Iterator[Path]:
    """A root-owned tree under /tmp that uid 65534 can reach, with a sticky world-writable archive."""
    top = Path(tempfile.mkdtemp(prefix="tcppipe-hostile."))
    try:
        top.chmod(0o755)
        (top / "archive").mkdir()
        (top / "archive").chmod(0o1777)
        passwd = top / "passwd"
        passwd.write_bytes(STAND_IN)
        passwd.chmod(0o644)
        (top / "cron.d").mkdir(mode=0o755)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def refused(pipes: Pipes, origin: Path, witness: Path) -> subprocess.CompletedProcess[str]:
    """Run tcppipe, which must be refused (and so exit) within REFUSE_WAIT_S."""
    try:
        return pipes.run(pipes.client_args(origin), timeout=REFUSE_WAIT_S)
    except subprocess.TimeoutExpired:
        seen = sorted(os.listdir(witness)) if witness.is_dir() else witness.read_bytes()
        pytest.fail(f"tcppipe was not refused within {REFUSE_WAIT_S} s; {witness.name} now holds {seen!r}")


@needs_root
def test_symlinked_destination_to_a_root_file_is_refused(pipes: Pipes, arena: Path) -> None:
    """A destination that a neighbour made a symlink to a root-owned file is refused, and the file is unchanged."""
    origin = pipes.tmp / "app.log"
    origin.write_bytes(b"line one\n")
    dest = arena / "archive" / "app.log"
    as_nobody("ln", "-s", str(arena / "passwd"), str(dest))
    pipes.define(f"127.0.0.1:{origin} | {dest}")
    pipes.start_server()
    result = refused(pipes, origin, arena / "passwd")
    assert result.returncode == 75, result.stderr  # refused for now: the destination cannot be opened
    assert f"destination {dest} cannot be opened: it is a symbolic link" in result.stderr
    assert (arena / "passwd").read_bytes() == STAND_IN


@needs_root
def test_symlinked_destination_directory_is_refused(pipes: Pipes, arena: Path) -> None:
    """A destination directory that a neighbour made a symlink to a cron.d stand-in is refused; nothing is created."""
    origin = pipes.tmp / "app.log"
    origin.write_bytes(b"* * * * * root id\n")
    as_nobody("ln", "-s", str(arena / "cron.d"), str(arena / "archive" / "z1"))
    dest = arena / "archive" / "z1" / "job"
    pipes.define(f"127.0.0.1:{origin} | {dest}")
    pipes.start_server()
    result = refused(pipes, origin, arena / "cron.d")
    assert result.returncode == 75, result.stderr  # refused for now: the destination cannot be opened
    assert f"{arena}/archive/z1 is a symbolic link (not followed)" in result.stderr
    assert list((arena / "cron.d").iterdir()) == []


@needs_root
def test_symlink_planted_across_a_destination_rotation_is_not_followed(pipes: Pipes, arena: Path) -> None:
    """mv dest dest.1, a neighbour's ln -s passwd dest, SIGHUP: the pipe stops with a clear line, passwd untouched."""
    origin = pipes.tmp / "app.log"
    origin.write_bytes(b"before rotation\n")
    dest = arena / "archive" / "app.log"
    pipes.define(f"127.0.0.1:{origin} | {dest}")
    server = pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="the first line")
    dest.rename(arena / "archive" / "app.log.1")
    as_nobody("ln", "-s", str(arena / "passwd"), str(dest))
    server.send_signal(signal.SIGHUP)
    pipes.syslog.wait_for("SIGHUP")
    with open(origin, "ab") as f:
        f.write(b"after rotation\n")
    passwd = arena / "passwd"
    wait_until(lambda: pipes.syslog.count("is a symbolic link") or passwd.read_bytes() != STAND_IN, what="the reopen")
    assert passwd.read_bytes() == STAND_IN
    line = pipes.syslog.wait_for("is a symbolic link")
    assert f"destination {dest} cannot be opened" in line
    # The client's reconnects are refused for the same reason (retryable: the operator may fix it).
    wait_until(lambda: pipes.syslog.count("REFUSE: destination") >= 2, what="two refused reconnects")
    assert client.poll() is None
    assert passwd.read_bytes() == STAND_IN
    assert (arena / "archive" / "app.log.1").read_bytes() == b"before rotation\n"
    assert "Traceback" not in pipes.stderr_of(server)


@needs_root
def test_fifo_destination_is_refused_at_once_and_nothing_freezes(pipes: Pipes, arena: Path) -> None:
    """A FIFO planted as a destination is refused at once; another pipe still flows and SIGTERM still stops tcppiped."""
    trap_origin = pipes.tmp / "trap.log"
    trap_origin.write_bytes(b"x\n")
    fifo = arena / "archive" / "trap.log"
    as_nobody("mkfifo", str(fifo))
    pipes.define(f"127.0.0.1:{trap_origin} | {fifo}")
    origin, dest = pipes.pipe("good.log")
    origin.write_bytes(b"still flowing\n")
    server = pipes.start_server()
    started = time.monotonic()
    result = refused(pipes, trap_origin, arena / "archive")
    assert result.returncode == 75, result.stderr  # refused for now: the destination cannot be opened
    assert "it is a FIFO" in result.stderr
    assert time.monotonic() - started < 5
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), timeout=10, what="the other pipe")
    assert stop(server, timeout=10) == 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_parents_created_under_umask_0_are_0755(pipes: Pipes) -> None:
    """tcppiped started under umask 0 creates each missing destination directory 0755 and the file 0640."""
    origin = pipes.tmp / "app.log"
    origin.write_bytes(b"line\n")
    dest = pipes.tmp / "archive" / "z1" / "ctl" / "app.log"
    pipes.define(f"127.0.0.1:{origin} | {dest}")
    proc = pipes.spawn(pipes.server_args(), preexec_fn=lambda: os.umask(0))
    wait_until(lambda: pipes.syslog.count("listening on") or proc.poll() is not None, what="tcppiped to listen")
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="the line")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (dest.parents[2], dest.parents[1], dest.parents[0])}
    assert modes == {"archive": 0o755, "z1": 0o755, "ctl": 0o755}
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640


def test_long_state_directory_still_serves_and_answers_status(pipes: Pipes) -> None:
    """With a state directory whose control socket path passes 108 bytes, tcppiped serves a pipe and status answers."""
    state_dir = pipes.tmp / ("s" * 60) / ("t" * 60)
    assert len(str(state_dir / "tcppiped" / f"control-{pipes.port}.sock")) > 108
    origin, dest = pipes.pipe("app.log")
    origin.write_bytes(b"deep state\n")
    pipes.start_server("--state-dir", str(state_dir))
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="the line")
    out = pipes.run([command("tcppiped"), "status", "-p", str(pipes.port), "--state-dir", str(state_dir)])
    assert out.returncode == 0, out.stderr
    assert str(dest) in out.stdout


def test_metrics_port_taken_is_logged_and_the_pipes_served(pipes: Pipes) -> None:
    """A --metrics port someone else holds is one error line; tcppiped serves the pipes and answers status."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port()))
        squatter.listen()
        port = squatter.getsockname()[1]
        origin, dest = pipes.pipe("app.log")
        origin.write_bytes(b"no metrics\n")
        server = pipes.start_server("--metrics", f"127.0.0.1:{port}")
        assert "cannot serve metrics" in pipes.syslog.wait_for(f"127.0.0.1:{port}")
        pipes.start_client(origin)
        wait_until(lambda: same_bytes(origin, dest), what="the line")
        out = pipes.run([command("tcppiped"), "status", "-p", str(pipes.port), "--state-dir", str(pipes.server_state)])
        assert out.returncode == 0, out.stderr
        assert stop(server) == 0


def test_state_directory_others_may_write_is_refused_in_one_line(pipes: Pipes) -> None:
    """tcppipe with a --state-dir every user may write exits 2 with one line, creating nothing there."""
    origin, _ = pipes.pipe("app.log")
    shared = pipes.tmp / "shared-state"
    shared.mkdir()
    shared.chmod(0o777)
    pipes.start_server()
    result = pipes.run(pipes.client_args(origin, "--state-dir", str(shared)), timeout=REFUSE_WAIT_S)
    assert result.returncode == 2, result.stderr
    assert f"refusing state directory {shared}: it is writable by every user" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(shared.iterdir()) == []
