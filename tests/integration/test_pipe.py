"""The pipe end to end: initial copy, live appends, refusals, timeliness, many pipes."""

from __future__ import annotations

import functools
import json
import os
import signal
import time

from tests.integration.conftest import Pipes, same_bytes, size, stop, wait_until


def acked_offset(pipes: Pipes) -> int | None:
    """The acknowledged offset in the (only) client's status file."""
    statuses = list(pipes.client_state.glob("*.status"))
    if not statuses:
        return None
    try:
        offset = json.loads(statuses[0].read_text()).get("offset")
    except ValueError:
        return None
    return offset if isinstance(offset, int) else None


BINARY_BLOB = bytes(range(256)) * 64 + b"\xff\xfe\x00 not utf-8 \xc3\x28\n"


def test_initial_copy_then_appends_are_byte_exact(pipes: Pipes) -> None:
    """The whole origin arrives first, then every append, including non-UTF-8 bytes and a partial line."""
    origin, dest = pipes.pipe("app.log")
    origin.write_bytes(b"first line\n" + BINARY_BLOB)
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="initial copy")
    local5_info = 21 * 8 + 6
    assert pipes.syslog.wait_for("READY: sending").startswith(f"<{local5_info}>tcppipe[{client.pid}]: ")
    with open(origin, "ab") as f:
        for i in range(200):
            f.write(f"append {i}\n".encode())
            f.flush()
        f.write(b"a trailing line without newline")
    wait_until(lambda: same_bytes(origin, dest), what="appends")
    with open(origin, "ab") as f:
        f.write(b" ... finished\n")
    wait_until(lambda: same_bytes(origin, dest), what="completed partial line")
    assert stop(client) == 0


def test_append_arrives_long_before_the_poll_interval(pipes: Pipes) -> None:
    """With -t 30 an append still arrives within seconds: file-change events drive the sending."""
    origin, dest = pipes.pipe("fast.log")
    origin.write_bytes(b"start\n")
    pipes.start_server()
    pipes.start_client(origin, "-t", "30")
    wait_until(lambda: same_bytes(origin, dest), what="initial copy")
    # Acknowledged and recorded: the client has gone back to its 30 s wait.
    wait_until(lambda: acked_offset(pipes) == size(origin), what="client idle")
    started = time.monotonic()
    with open(origin, "ab") as f:
        f.write(b"an event-driven line\n")
    wait_until(lambda: same_bytes(origin, dest), timeout=10, what="event-driven append")
    assert time.monotonic() - started < 10


def test_refuse_for_an_undefined_file_creates_nothing_and_logs_local5(pipes: Pipes) -> None:
    """A file with no entry is refused: non-zero exit, the reason on stderr, a LOCAL5 syslog line, no destination."""
    _defined, dest = pipes.pipe("defined.log")
    undefined = pipes.tmp / "origin" / "other.log"
    undefined.write_bytes(b"secret\n")
    pipes.start_server()
    result = pipes.run(pipes.client_args(undefined, foreground=False))
    assert result.returncode == 3
    assert "refused" in result.stderr
    assert str(undefined) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    message = pipes.syslog.wait_for("REFUSE")
    local5_warning = 21 * 8 + 4
    assert message.startswith(f"<{local5_warning}>tcppiped[")
    assert not dest.exists()
    assert not (pipes.tmp / "dest" / "other.log").exists()


def test_refuse_for_a_wrong_source_host(pipes: Pipes) -> None:
    """An entry for 127.0.0.2 does not admit a client connecting from 127.0.0.1."""
    origin, dest = pipes.pipe("hosted.log", host="127.0.0.2")
    origin.write_bytes(b"x\n")
    pipes.start_server()
    result = pipes.run(pipes.client_args(origin, "-b", "127.0.0.1"))
    assert result.returncode == 3
    assert "no pipe is defined for host 127.0.0.1" in result.stderr
    assert not dest.exists()


def test_bind_address_matches_the_entry_host(pipes: Pipes) -> None:
    """-b 127.0.0.2 connects from that address, which the entry for 127.0.0.2 accepts."""
    origin, dest = pipes.pipe("bound.log", host="127.0.0.2")
    origin.write_bytes(b"from 127.0.0.2\n")
    pipes.start_server()
    pipes.start_client(origin, "-b", "127.0.0.2")
    wait_until(lambda: same_bytes(origin, dest), what="pipe from 127.0.0.2")


def test_host_name_entry_matches_by_resolution(pipes: Pipes) -> None:
    """An entry naming 'localhost' admits a client from 127.0.0.1, since the name resolves to it."""
    origin = pipes.tmp / "origin" / "named.log"
    origin.parent.mkdir()
    origin.write_bytes(b"by name\n")
    dest = pipes.tmp / "dest" / "named.log"
    pipes.define(f"localhost:{origin} | {dest}")
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="pipe matched by name")


def test_refuse_when_destination_cannot_be_opened(pipes: Pipes) -> None:
    """A destination below a regular file cannot be created: a retryable REFUSE naming it (exit 75)."""
    origin = pipes.tmp / "origin.log"
    origin.write_bytes(b"x\n")
    blocker = pipes.tmp / "blocker"
    blocker.write_bytes(b"")
    pipes.define(f"127.0.0.1:{origin} | {blocker}/sub/dest.log")
    pipes.start_server()
    result = pipes.run(pipes.client_args(origin))
    assert result.returncode == 75  # retryable: a supervisor starts it again later
    assert "cannot be opened" in result.stderr
    assert "Not a directory" in result.stderr


def test_missing_parent_directories_are_created(pipes: Pipes) -> None:
    """The destination's missing parent directories are made on READY."""
    origin = pipes.tmp / "deep.log"
    origin.write_bytes(b"deep\n")
    dest = pipes.tmp / "a" / "b" / "c" / "deep.log"
    pipes.define(f"127.0.0.1:{origin} | {dest}")
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="copy into new directories")


def test_unreachable_server_at_start_exits_non_zero(pipes: Pipes) -> None:
    """No server listening: a clear one-line message and exit status 4."""
    origin = pipes.tmp / "lonely.log"
    origin.write_bytes(b"x\n")
    result = pipes.run(pipes.client_args(origin, foreground=False))
    assert result.returncode == 4
    assert result.stderr.startswith("tcppipe: cannot connect to 127.0.0.1 port")
    assert "Traceback" not in result.stderr


def test_missing_origin_is_a_clear_error(pipes: Pipes) -> None:
    """A missing -f file is named in one line, exit status 7, no traceback."""
    result = pipes.run(pipes.client_args(pipes.tmp / "nope.log"))
    assert result.returncode == 7
    assert "nope.log" in result.stderr
    assert "No such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_new_config_entries_are_valid_without_a_signal(pipes: Pipes) -> None:
    """An entry appended to the config while tcppiped runs admits its client at once."""
    pipes.start_server()
    origin, dest = pipes.pipe("late.log")
    origin.write_bytes(b"defined later\n")
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="pipe defined after start")


def test_twenty_pipes_at_once_are_all_exact(pipes: Pipes) -> None:
    """Twenty concurrent pipes on one server, each with its own appends, all end byte-exact."""
    pairs = [pipes.pipe(f"p{i}.log") for i in range(20)]
    for i, (origin, _) in enumerate(pairs):
        origin.write_bytes(os.urandom(50_000 + i * 1000))
    pipes.start_server()
    for origin, _ in pairs:
        pipes.start_client(origin)
    for round_ in range(5):
        for i, (origin, _) in enumerate(pairs):
            with open(origin, "ab") as f:
                f.write(f"pipe {i} round {round_}\n".encode() * 50)
    for origin, dest in pairs:
        wait_until(functools.partial(same_bytes, origin, dest), what=f"{origin.name} exact")


def test_garbage_connection_is_dropped_and_other_pipes_go_on(pipes: Pipes) -> None:
    """Bytes that are no protocol get that connection closed with a syslog line; a live pipe is untouched."""
    import socket

    origin, dest = pipes.pipe("steady.log")
    origin.write_bytes(b"before\n")
    pipes.start_server()
    pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="initial copy")
    with socket.create_connection(("127.0.0.1", pipes.port)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        s.settimeout(10)
        assert s.recv(100) == b""  # closed by the server
    pipes.syslog.wait_for("protocol error")
    with open(origin, "ab") as f:
        f.write(b"after\n")
    wait_until(lambda: same_bytes(origin, dest), what="append after garbage")


def test_server_sigterm_exits_zero_and_removes_pid_file(pipes: Pipes) -> None:
    """SIGTERM: tcppiped writes what it received, removes its pid file and exits 0."""
    origin, dest = pipes.pipe("term.log")
    origin.write_bytes(b"data\n" * 1000)
    server = pipes.start_server()
    wait_until(pipes.pid_file.exists, what="pid file")
    assert int(pipes.pid_file.read_text()) == server.pid
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="copy")
    assert stop(server) == 0
    assert not pipes.pid_file.exists()
    assert "Traceback" not in pipes.stderr_of(server)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=20) == 0
    assert size(dest) == size(origin)


def test_missing_syslog_socket_is_a_warning_not_a_crash(pipes: Pipes) -> None:
    """With no socket at --syslog-address both programs warn once on stderr and work."""
    origin, dest = pipes.pipe("nosyslog.log")
    origin.write_bytes(b"still delivered\n")
    pipes.syslog.close()
    pipes.syslog.path.unlink()
    server = pipes.spawn(pipes.server_args())
    wait_until(lambda: "listening on" in pipes.stderr_of(server), what="server up without syslog")
    client = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="copy without syslog")
    for proc in (server, client):
        err = pipes.stderr_of(proc)
        assert "does not exist; not logging to syslog" in err
        assert "Traceback" not in err


def test_origin_deleted_while_running_is_reported_and_its_successor_sent(pipes: Pipes) -> None:
    """An origin deleted under tcppipe: one clear line in syslog and stderr, no traceback; its successor follows."""
    origin, dest = pipes.pipe("deleted.log")
    first = b"before the delete\n" * 10
    origin.write_bytes(first)
    pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "1")
    wait_until(lambda: same_bytes(origin, dest), what="initial copy")
    origin.unlink()
    message = pipes.syslog.wait_for("No such file or directory")
    assert f"{origin}: No such file or directory; still reading the open file" in message
    assert client.poll() is None
    origin.write_bytes(b"the recreated file\n")
    wait_until(lambda: dest.read_bytes() == first + b"the recreated file\n", what="successor delivered")
    err = pipes.stderr_of(client)
    assert "still reading the open file" in err
    assert "Traceback" not in err
