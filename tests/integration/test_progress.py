"""A long catch-up in the foreground shows progress on a terminal, and only there."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from tests.integration.conftest import Pipes, same_bytes, wait_until
from tests.integration.proxy import Proxy


def read_terminal(master: int, until: bytes, timeout: float) -> bytes:
    """What the process wrote to its terminal, up to ``until`` (bounded in time)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    return seen


def test_catch_up_progress_on_a_terminal_only(pipes: Pipes) -> None:
    """48 MB through a 24 MB/s link: the terminal shows rate and time left, then 'caught up'; a file gets none."""
    origin, dest = pipes.pipe("big.log")
    origin.write_bytes(b"a log line of some length, numbered and dull\n" * 1_100_000)
    pipes.start_server()
    proxy = Proxy(pipes.port)
    proxy.shaping.rate_bytes_s = 24 * 1024 * 1024
    master, slave = pty.openpty()
    try:
        args = pipes.client_args(origin)
        args[args.index("-p") + 1] = str(proxy.port)
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        pipes.procs.append(proc)
        os.close(slave)
        shown = read_terminal(master, b"caught up:", timeout=60)
        wait_until(lambda: same_bytes(origin, dest), what="the copy")
    finally:
        os.close(master)
        proxy.close()
    assert b"\rcatching up: " in shown
    assert b" s left" in shown
    assert b"\rcaught up: 47.2 MiB in " in shown

    # Not a terminal: no progress line at all.
    origin2, dest2 = pipes.pipe("big2.log")
    origin2.write_bytes(origin.read_bytes())
    client = pipes.start_client(origin2)
    wait_until(lambda: same_bytes(origin2, dest2), what="the second copy")
    client.terminate()
    client.wait(timeout=20)
    assert "catching up" not in pipes.stderr_of(client)
    assert "caught up" not in pipes.stderr_of(client)
