"""Detaching, pid files, -I, keep_tcppipe_alive, --check: the commands as cron and init see them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, command, kill9, same_bytes, wait_until


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_detached_client_and_server(pipes: Pipes) -> None:
    """Without --foreground both detach once ready, exit 0, and the background processes do the work."""
    origin, dest = pipes.pipe("bg.log")
    origin.write_bytes(b"background\n")
    pipes.config.touch()
    server = pipes.run(pipes.server_args(foreground=False))
    assert server.returncode == 0, server.stderr
    wait_until(pipes.pid_file.exists, what="pid file")
    server_pid = int(pipes.pid_file.read_text())
    pipes.adopt(server_pid)
    client = pipes.run(pipes.client_args(origin, foreground=False))
    assert client.returncode == 0, client.stderr
    client_pid = pipes.client_pid(origin)
    assert client_pid is not None
    pipes.adopt(client_pid)
    with open(origin, "ab") as f:
        f.write(b"appended after detaching\n")
    wait_until(lambda: same_bytes(origin, dest), what="detached pipe")
    os.kill(client_pid, signal.SIGTERM)
    wait_until(lambda: not alive(client_pid), what="client exit")
    os.kill(server_pid, signal.SIGTERM)
    wait_until(lambda: not alive(server_pid), what="server exit")
    assert not pipes.pid_file.exists()


def test_second_server_with_the_same_pid_file_refuses(pipes: Pipes) -> None:
    """A second tcppiped on the same pid file says who runs and exits non-zero."""
    server = pipes.start_server()
    result = pipes.run(pipes.server_args("-p", "1"))
    assert result.returncode == 6
    assert f"already running with pid {server.pid}" in result.stderr


def test_show_pid_matches_only_the_same_normalised_options(pipes: Pipes, monkeypatch: pytest.MonkeyPatch) -> None:
    """-I finds the pipe for the same file (also given relatively), host and port; another NOC or port is told apart."""
    origin, _ = pipes.pipe("noc.log")
    origin.write_bytes(b"x\n")
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: pipes.client_pid(origin) is not None, what="client lock")
    assert pipes.client_pid(origin) == client.pid
    relative = subprocess.run(
        [
            command("tcppipe"),
            "-I",
            "-f",
            "noc.log",
            "-h",
            "127.0.0.1",
            "-p",
            str(pipes.port),
            "--state-dir",
            str(pipes.client_state),
        ],
        cwd=origin.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (relative.returncode, relative.stdout.strip()) == (0, str(client.pid))
    assert pipes.client_pid(origin, host="127.0.0.2") is None
    assert pipes.client_pid(origin, port=pipes.port + 1) is None
    other = pipes.run(
        [
            command("tcppipe"),
            "-I",
            "-f",
            str(origin),
            "-h",
            "127.0.0.2",
            "-p",
            str(pipes.port),
            "--state-dir",
            str(pipes.client_state),
        ]
    )
    assert (other.returncode, other.stdout) == (1, "")


def test_show_pid_after_kill9_reports_nothing(pipes: Pipes) -> None:
    """A tcppipe killed with -9 leaves no pid that -I would report."""
    origin, _ = pipes.pipe("dead.log")
    origin.write_bytes(b"x\n")
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: pipes.client_pid(origin) == client.pid, what="client lock")
    kill9(client)
    assert pipes.client_pid(origin) is None


def test_second_client_for_the_same_pipe_refuses_to_start(pipes: Pipes) -> None:
    """Two tcppipe with the same -f -h -p: the second says the first's pid and exits 6."""
    origin, _ = pipes.pipe("twice.log")
    origin.write_bytes(b"x\n")
    pipes.start_server()
    first = pipes.start_client(origin)
    wait_until(lambda: pipes.client_pid(origin) == first.pid, what="first client")
    second = pipes.run(pipes.client_args(origin))
    assert second.returncode == 6
    assert f"pid {first.pid}" in second.stderr


def keepalive_args(pipes: Pipes, origin: Path) -> list[str]:
    return [
        command("keep_tcppipe_alive"), "-f", str(origin), "-h", "127.0.0.1", "-p", str(pipes.port),
        "--state-dir", str(pipes.client_state), "--syslog-address", str(pipes.syslog.path),
    ]  # fmt: skip


def keepalive(pipes: Pipes, origin: Path) -> subprocess.CompletedProcess[str]:
    return pipes.run(keepalive_args(pipes, origin))


def test_keepalive_does_nothing_without_the_flag_file(pipes: Pipes) -> None:
    """keep_tcppipe_alive without STATE_DIR/tcppipe.keepalive starts nothing."""
    origin, dest = pipes.pipe("ka-off.log")
    origin.write_bytes(b"x\n")
    pipes.start_server()
    assert keepalive(pipes, origin).returncode == 0
    assert pipes.client_pid(origin) is None
    assert not dest.exists()


def test_keepalive_starts_one_client_and_never_a_second(pipes: Pipes) -> None:
    """With the flag file, keep_tcppipe_alive starts tcppipe once; later and racing runs start none."""
    origin, dest = pipes.pipe("ka-on.log")
    origin.write_bytes(b"kept alive\n")
    pipes.start_server()
    pipes.client_state.mkdir(exist_ok=True)
    (pipes.client_state / "tcppipe.keepalive").touch()
    racers = [pipes.spawn(keepalive_args(pipes, origin)) for _ in range(3)]
    assert [r.wait(timeout=60) for r in racers] == [0, 0, 0]
    pid = pipes.client_pid(origin)
    assert pid is not None
    pipes.adopt(pid)
    wait_until(lambda: same_bytes(origin, dest), what="pipe started by keep_tcppipe_alive")
    assert keepalive(pipes, origin).returncode == 0
    assert pipes.client_pid(origin) == pid
    tcppipes = [p for p in os.listdir("/proc") if p.isdigit() and _is_client_for(int(p), origin)]
    assert tcppipes == [str(pid)]


def _is_client_for(pid: int, origin: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return str(origin).encode() in argv and not any(b"keep_tcppipe_alive" in a for a in argv) and alive(pid)


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    """--check on a clean config prints a summary and exits 0."""
    conf = tmp_path / "good.conf"
    conf.write_text("# pipes\n\nfoo.example:/var/log/a | /srv/a\n[::1]:/var/log/b | /srv/b\n10.1.2.3:/x|/y\n")
    result = subprocess.run(
        [command("tcppiped"), "--check", "-f", str(conf)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "3 pipes, no errors" in result.stdout


def test_check_names_file_and_line_of_each_problem(tmp_path: Path) -> None:
    """--check prints FILE:LINE: reason for every problem and exits non-zero."""
    conf = tmp_path / "bad.conf"
    conf.write_text("ok:/a | /srv/a\nno separator here\nh:relative | /srv/b\nh2:/c | /srv/a\n")
    result = subprocess.run(
        [command("tcppiped"), "--check", "-f", str(conf)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 5
    lines = result.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{conf}:2", f"{conf}:3", f"{conf}:4"]
    assert "already written by line 1" in lines[2]


def test_server_refuses_to_start_on_a_bad_config(pipes: Pipes) -> None:
    """tcppiped with an erroneous config prints FILE:LINE: reason and exits 5 without listening."""
    pipes.config.write_text("127.0.0.1:/a | relative/dest\n")
    result = pipes.run(pipes.server_args())
    assert result.returncode == 5
    assert f"{pipes.config}:1: local path" in result.stderr
    assert not pipes.pid_file.exists()


def test_usage_error_is_one_line(pipes: Pipes) -> None:
    """A missing -h is a one-line usage error with exit status 2."""
    result = pipes.run([command("tcppipe"), "-f", "/etc/hostname"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "-h" in result.stderr
