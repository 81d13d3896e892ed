"""Issue 11 #6: a name that does not resolve is a retryable refusal, never "no pipe is defined";
names are resolved at config load, from a cache a connection never waits on."""

from __future__ import annotations

import signal

from tests.integration.conftest import Pipes, kill9, same_bytes, wait_until

UNRESOLVABLE = "origin.tcppipe-test.invalid"  # RFC 6761: never resolves


def test_unresolvable_name_is_a_retryable_refusal(pipes: Pipes) -> None:
    """A running client whose entry now names an unresolvable host is told why and keeps retrying."""
    origin, dest = pipes.pipe("app.log")
    origin.write_bytes(b"before\n" * 20)
    local_origin, local_dest = pipes.pipe("local.log", host="localhost")
    local_origin.write_bytes(b"via localhost\n" * 20)
    server = pipes.start_server()
    running = pipes.start_client(origin)
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    # The entry now names a host that does not resolve; the pipe's connection breaks with a restart.
    text = pipes.config.read_text().replace(f"127.0.0.1:{origin}", f"{UNRESOLVABLE}:{origin}")
    pipes.config.write_text(text)
    kill9(server)
    pipes.start_server()
    line = pipes.syslog.wait_for(f"cannot resolve {UNRESOLVABLE}")
    refusal = pipes.syslog.wait_for("REFUSE: cannot resolve")
    assert "retry later" in refusal
    assert "no pipe is defined" not in refusal
    wait_until(lambda: pipes.syslog.count("REFUSE: cannot resolve") >= 2, what="the client retrying")
    assert running.poll() is None, f"{line}\n{pipes.stderr_of(running)}"
    local = pipes.start_client(local_origin)
    wait_until(lambda: same_bytes(local_origin, local_dest), what="the localhost entry's copy")
    assert local.poll() is None
    running.send_signal(signal.SIGTERM)
