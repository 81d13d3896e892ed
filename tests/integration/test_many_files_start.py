"""A host agent starting with many files at once: its pipes must not evict each other."""

from __future__ import annotations

import time

from tests.integration.conftest import Pipes, stop, wait_until
from tests.integration.test_many_files import start_agent

FILES = 400  # above tcppiped's 128 strangers per source


def test_four_hundred_files_start_together_without_evicting_each_other(pipes: Pipes) -> None:
    """400 pipes connect at once from one address: at most 8 are between connect and READY at a
    time, so none is closed as the oldest of too many strangers (before, most were, and each
    waited 30 s to try again: 500 files took 98 s), and every file arrives within seconds."""
    origin_dir, dest_dir = pipes.tmp / "origin", pipes.tmp / "dest"
    origin_dir.mkdir()
    pipes.define(f"127.0.0.1:{origin_dir}/*.log | {dest_dir}/{{name}}")
    origins = [origin_dir / f"vhost{i:04d}.log" for i in range(FILES)]
    for i, origin in enumerate(origins):
        origin.write_bytes(b"first line of vhost %d\n" % i)
    pipes.start_server()
    started = time.monotonic()
    agent = start_agent(pipes, origin_dir / "*.log")

    def all_arrived() -> bool:
        return all((dest_dir / o.name).exists() and (dest_dir / o.name).stat().st_size > 0 for o in origins)

    wait_until(all_arrived, timeout=25, what=f"{FILES} files")
    assert time.monotonic() - started < 25
    assert all((dest_dir / o.name).read_bytes() == o.read_bytes() for o in origins)
    messages = pipes.syslog.drain()
    assert not [m for m in messages if "server closed the connection" in m or "trying it again" in m]
    assert stop(agent) == 0
