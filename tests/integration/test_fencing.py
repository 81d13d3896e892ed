"""Two tcppipeds sharing a state directory and one destination file: a stalled one that wakes writes nothing.

The client fails over from a stopped receiver A to B (``-h A,B``); then A runs
again with the bytes its socket still held. Whichever comes first on waking,
A's dead-peer rule or its next append (fenced: ``destination.py`` Rule 5,
tested deterministically in tests/unit/test_destination.py), A lands nothing
and the destination stays exactly the origin.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.conftest import Pipes, same_bytes, sha256, size, stop, wait_until
from tests.integration.test_failover import MOVE_WITHIN_S, Receivers
from tests.integration.test_restart import Writer

pytestmark = pytest.mark.integration


def test_a_stalled_receiver_that_runs_again_after_failover_appends_nothing(pipes: Pipes) -> None:
    """SIGSTOP of receiver A mid-stream, the client moves to B, then SIGCONT of A: A lands nothing
    more, and the destination is the origin exactly."""
    origin, dest = pipes.pipe("fenced.log")
    receivers = Receivers(pipes)
    server_a = receivers.start("A")
    receivers.start("B")
    writer = Writer(origin)
    writer.start()
    stopped = False
    try:
        client = pipes.spawn(receivers.client_args(origin))
        pipes.syslog.wait_for(f"receiver is {receivers.label('A')}")
        wait_until(lambda: size(dest) > 20_000, what="streaming to A")
        os.kill(server_a.pid, signal.SIGSTOP)
        stopped = True
        pipes.syslog.wait_for(f"receiver is now {receivers.label('B')}", timeout=MOVE_WITHIN_S)
        landed = size(dest)
        wait_until(lambda: size(dest) > landed + 20_000, what="streaming to B")
        os.kill(server_a.pid, signal.SIGCONT)  # A wakes with what its socket held
        stopped = False
        writer.finish()
        wait_until(lambda: same_bytes(origin, dest), what="exact after A woke")
        assert stop(client) == 0
        assert sha256(dest) == sha256(origin)
    finally:
        writer.finish()
        if stopped and server_a.poll() is None:
            server_a.kill()
