"""Receivers a client fails over between (``-h A,B``): killed, down at start, refusing (stalled: test_fencing.py).

Two tcppipeds, A on 127.0.0.2 and B on 127.0.0.3, with one config, one state
directory and one destination directory (shared storage standing in for
replicated storage); each has a pid file of its own (one pid file is one
tcppiped's lock) and a port of its own (the state directory holds a control
socket per port). The client connects from 127.0.0.1, which the config names.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.conftest import Pipes, command, free_port, kill9, same_bytes, sha256, size, stop, wait_until
from tests.integration.test_pipe import acked_offset
from tests.integration.test_restart import Writer

# The client's heartbeat: a peer silent for 3 of them is dead.
HEARTBEAT_S = "0.3"
# From a receiver's death (or stall) to READY from the other; the dead-peer rule takes 0.9 s of it.
MOVE_WITHIN_S = 10.0


class Receivers:
    """Receiver A and B of one test: the addresses, ports and how to start each."""

    def __init__(self, pipes: Pipes) -> None:
        self.pipes = pipes
        self.ports = {"A": pipes.port, "B": free_port()}
        self.addresses = {"A": "127.0.0.2", "B": "127.0.0.3"}

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.pipes.start_server(
            *extra,
            "--bind",
            self.addresses[name],
            "-p",
            str(self.ports[name]),
            "--pid-file",
            str(self.pipes.tmp / f"tcppiped-{name}.pid"),
        )

    def label(self, name: str) -> str:
        return f"{self.addresses[name]}:{self.ports[name]}"

    @property
    def host_list(self) -> str:
        return f"{self.label('A')},{self.label('B')}"

    def client_args(self, origin: Path, foreground: bool = True) -> list[str]:
        return self.pipes.client_args(
            origin, "-b", "127.0.0.1", "--heartbeat", HEARTBEAT_S, host=self.host_list, foreground=foreground
        )


def status_host(pipes: Pipes, origin: Path, host_list: str) -> str:
    """The HOST column ``tcppipe status --json`` shows for the pipe of ``origin``."""
    state = ["-p", str(pipes.port), "--state-dir", str(pipes.client_state)]
    out = pipes.run([command("tcppipe"), "status", "-f", str(origin), "-h", host_list, *state, "--json"])
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["pipes"][0]["host"])


def test_a_killed_receiver_is_replaced_by_the_next_and_nothing_is_lost_or_doubled(pipes: Pipes) -> None:
    """kill -9 of the receiver in use mid-stream: the client moves to B within the bound and the
    destination ends byte-exact; status names the receiver in use."""
    origin, dest = pipes.pipe("killed.log")
    receivers = Receivers(pipes)
    server_a = receivers.start("A")
    receivers.start("B")
    writer = Writer(origin)
    writer.start()
    try:
        client = pipes.spawn(receivers.client_args(origin))
        pipes.syslog.wait_for(f"receiver is {receivers.label('A')}")
        wait_until(lambda: size(dest) > 20_000, what="streaming to A")
        wait_until(
            lambda: status_host(pipes, origin, receivers.host_list).startswith(receivers.label("A")),
            what="status naming A",
        )
        kill9(server_a)
        pipes.syslog.wait_for(f"receiver is now {receivers.label('B')}", timeout=MOVE_WITHIN_S)
        landed = size(dest)
        wait_until(lambda: size(dest) > landed + 20_000, what="streaming to B")
    finally:
        writer.finish()
    wait_until(lambda: same_bytes(origin, dest), what="exact after the failover")
    assert sha256(origin) == sha256(dest)
    wait_until(
        lambda: status_host(pipes, origin, receivers.host_list).startswith(receivers.label("B")),
        what="status naming B",
    )
    # -I finds the pipe by the list in any order: the list is a set of interchangeable receivers.
    reordered = f"{receivers.label('B')},{receivers.label('A')}"
    assert pipes.client_pid(origin, host=reordered) == client.pid
    second = pipes.run(pipes.client_args(origin, "-b", "127.0.0.1", host=reordered), timeout=30)
    assert second.returncode == 6, second.stderr  # already running: the reordered list is the same pipe
    assert stop(client) == 0


def test_a_receiver_down_at_start_is_skipped_and_none_up_is_unreachable(pipes: Pipes) -> None:
    """With A down the client starts against B; with neither up it exits 4 as with one host."""
    origin, dest = pipes.pipe("down.log")
    origin.write_bytes(b"before any receiver\n" * 100)
    receivers = Receivers(pipes)
    nobody = pipes.run(receivers.client_args(origin, foreground=False), timeout=30)
    assert nobody.returncode == 4, nobody.stderr
    assert "no receiver answered" in nobody.stderr
    assert nobody.stderr.count("\n") == 1  # one line
    receivers.start("B")
    pipes.spawn(receivers.client_args(origin))
    pipes.syslog.wait_for(f"receiver is {receivers.label('B')}")
    assert pipes.syslog.count(f"cannot connect to {receivers.label('A')}") >= 1
    with open(origin, "ab") as f:
        f.write(b"after the start\n")
    wait_until(lambda: same_bytes(origin, dest), what="exact through B")


def test_a_receiver_that_refuses_for_now_is_skipped_and_alone_it_is_exit_75(pipes: Pipes) -> None:
    """A receiver whose storage is broken refuses the pipe for now: the client starts on the next;
    when no receiver takes it, the start ends with 75 (refused for now), not 4."""
    origin, dest = pipes.pipe("storage.log")
    origin.write_bytes(b"a line\n" * 1000)
    blocker = pipes.tmp / "broken-storage"
    blocker.write_bytes(b"")  # a file where A's destination directory should be: it cannot be opened
    broken = pipes.tmp / "broken.conf"
    broken.write_text(f"127.0.0.1:{origin} | {blocker}/storage.log\n")
    receivers = Receivers(pipes)
    server_a = receivers.start("A", "-f", str(broken))
    alone = pipes.run(receivers.client_args(origin, foreground=False), timeout=30)
    assert alone.returncode == 75, alone.stderr
    assert "no receiver took the pipe now" in alone.stderr
    receivers.start("B")
    pipes.spawn(receivers.client_args(origin))
    pipes.syslog.wait_for(f"receiver is {receivers.label('B')}")
    assert pipes.syslog.count(f"{receivers.label('A')} refused the pipe for now") >= 1
    wait_until(lambda: same_bytes(origin, dest), what="exact through B")
    assert server_a.poll() is None


def test_a_host_agent_moves_each_pipe_to_the_next_receiver(pipes: Pipes) -> None:
    """tcppipe -f GLOB -h A,B: kill -9 of A moves every pipe to B (each by itself); each ends byte-exact."""
    pairs = [pipes.pipe(f"agent{i}.log") for i in range(3)]
    receivers = Receivers(pipes)
    server_a = receivers.start("A")
    receivers.start("B")
    writers = [Writer(origin, lines_per_tick=5) for origin, _dest in pairs]
    for writer in writers:
        writer.start()
    try:
        agent = pipes.spawn(receivers.client_args(pipes.tmp / "origin" / "agent*.log"))
        wait_until(lambda: pipes.syslog.count(f"receiver is {receivers.label('A')}") >= 3, what="3 pipes on A")
        wait_until(lambda: all(size(dest) > 5000 for _origin, dest in pairs), what="streaming to A")
        kill9(server_a)
        wait_until(
            lambda: pipes.syslog.count(f"receiver is now {receivers.label('B')}") >= 3,
            timeout=MOVE_WITHIN_S,
            what="3 pipes on B",
        )
    finally:
        for writer in writers:
            writer.finish()
    for origin, dest in pairs:
        wait_until(lambda: same_bytes(origin, dest), what=f"{origin.name} exact")  # noqa: B023
    assert stop(agent) == 0


def test_keep_tcppipe_alive_with_a_list_starts_one_tcppipe_whatever_the_order(pipes: Pipes) -> None:
    """keep_tcppipe_alive -h A,B starts one detached tcppipe; run again with B,A it starts none."""
    origin, dest = pipes.pipe("kept.log")
    origin.write_bytes(b"kept alive\n" * 100)
    receivers = Receivers(pipes)
    receivers.start("B")  # A is down: the detached tcppipe starts on B
    pipes.client_state.mkdir(exist_ok=True)
    (pipes.client_state / "tcppipe.keepalive").touch()
    reordered = f"{receivers.label('B')},{receivers.label('A')}"

    def keepalive(host_list: str) -> int:
        args = receivers.client_args(origin, foreground=False)
        args[0] = command("keep_tcppipe_alive")
        args[args.index("-h") + 1] = host_list
        return pipes.run(args).returncode

    assert keepalive(receivers.host_list) == 0
    pid = pipes.client_pid(origin, host=receivers.host_list)
    assert pid is not None
    pipes.adopt(pid)
    wait_until(lambda: same_bytes(origin, dest), what="exact through B")
    assert keepalive(reordered) == 0
    assert pipes.client_pid(origin, host=reordered) == pid
    assert pipes.syslog.count("receiver is ") == 1  # one tcppipe, one first READY


class DropAfterReady:
    """A relay to the real tcppiped that closes both ends 50 ms after the server's first bytes
    (its READY): a receiver whose storage fails right after the handshake."""

    def __init__(self, upstream: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self.upstream = upstream
        self.accepted = 0
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            self.accepted += 1
            link = threading.Thread(target=self._link, args=(client,), daemon=True)
            self.threads.append(link)
            link.start()

    def _link(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream), timeout=5) as server:
            client.settimeout(0.02)
            server.settimeout(0.02)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and not self.stopped.is_set():
                for src, dst, from_server in ((client, server, False), (server, client, True)):
                    try:
                        data = src.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    dst.sendall(data)
                    if from_server:
                        deadline = min(deadline, time.monotonic() + 0.05)

    def close(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.listener.close()


@contextmanager
def dropping_receivers(pipes: Pipes, count: int) -> Iterator[list[DropAfterReady]]:
    relays = [DropAfterReady(pipes.port) for _ in range(count)]
    try:
        yield relays
    finally:
        for relay in relays:
            relay.close()


def test_receivers_that_answer_ready_and_drop_are_backed_off_not_stormed(pipes: Pipes) -> None:
    """Two receivers that each answer READY and then drop: a failed round like any other, so the
    client backs off (0.2, 0.4, 0.8 ... s a round) instead of reconnecting as fast as it can
    (before: READY forgot the round's failures, 57 connections in 6 s)."""
    origin, _dest = pipes.pipe("dropped.log")
    origin.write_bytes(b"a line\n" * 10)
    pipes.start_server()
    with dropping_receivers(pipes, 2) as (a, b):
        hosts = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
        client = pipes.spawn(pipes.client_args(origin, host=hosts, foreground=True))
        wait_until(lambda: a.accepted + b.accepted >= 4, what="two rounds of READY and drop")
        started, before = time.monotonic(), a.accepted + b.accepted
        wait_until(lambda: time.monotonic() - started >= 4.0, what="four seconds of retries")
        during = a.accepted + b.accepted - before
        assert stop(client) == 0
    # Backed off: rounds of two connections 0.8, 1.6, 3.2 s apart; storming: dozens.
    assert during <= 8, f"{during} connections in 4 s"


def test_a_receiver_without_the_pipes_record_gets_what_the_last_one_did_not_and_says_so(pipes: Pipes) -> None:
    """B's storage is not A's (no record of the pipe there): after A's death the client resumes
    at what A acknowledged, so across the two receivers each byte is there once, and the client
    warns that B's destination starts there."""
    origin, dest = pipes.pipe("split.log")
    first = b"first part, landed at A\n" * 200
    origin.write_bytes(first)
    elsewhere = pipes.tmp / "b-storage"
    conf_b = pipes.tmp / "b.conf"
    conf_b.write_text(f"127.0.0.1:{origin} | {elsewhere}/split.log\n")
    receivers = Receivers(pipes)
    server_a = receivers.start("A")
    receivers.start("B", "-f", str(conf_b))
    client = pipes.spawn(receivers.client_args(origin))
    wait_until(lambda: size(dest) == len(first) and acked_offset(pipes) == len(first), what="acknowledged by A")
    kill9(server_a)
    pipes.syslog.wait_for(f"receiver is now {receivers.label('B')}", timeout=MOVE_WITHIN_S)
    second = b"second part\n" * 10
    with open(origin, "ab") as f:
        f.write(second)
    at_b = elsewhere / "split.log"
    wait_until(lambda: at_b.exists() and size(at_b) == len(second), what="B's destination")
    assert stop(client) == 0
    assert at_b.read_bytes() == second
    assert dest.read_bytes() == first
    warning = pipes.syslog.wait_for("has no record of this pipe")
    assert f"starts at byte {len(first)}" in warning
