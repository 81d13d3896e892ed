"""A host agent without inotify: it still finds new files, appends and rotations by polling every -t.

inotify is made unavailable the way a host without it (or without the
inotify_simple package) is: the agent's ``import inotify_simple`` fails. A
directory on PYTHONPATH holds an ``inotify_simple`` module that raises
ImportError, so only the process started with it is affected (a sysctl such
as fs.inotify.max_user_instances would be the whole machine's, and other
tests run beside this one). No hook in the package is needed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import Pipes, same_bytes, sha256, stop, wait_until
from tests.integration.test_many_files import exact, inotify_instances
from tests.integration.test_restart import numbered_lines

POLL_S = 1.0  # the agent's -t
# An append is noticed at the next -t tick at the latest; the rest is a loaded 2-core machine's slack.
ARRIVE_WITHIN_S = POLL_S + 4.0
ROTATE_GRACE_S = "1"


def start_agent_without_inotify(pipes: Pipes, pattern: Path) -> subprocess.Popen[bytes]:
    """tcppipe -f GLOB -t 1 whose ``import inotify_simple`` fails."""
    shadow = pipes.tmp / "no-inotify"
    shadow.mkdir()
    (shadow / "inotify_simple.py").write_text('raise ImportError("inotify disabled for this test")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}
    args = pipes.client_args(pattern, "-t", str(POLL_S), "--rotate-grace", ROTATE_GRACE_S)
    return pipes.spawn(args, env=env)


def arrives(pairs: list[tuple[Path, Path]], what: str) -> float:
    """Wait (bounded by ARRIVE_WITHIN_S) until every destination equals its origin; the seconds it took."""
    began = time.monotonic()
    wait_until(lambda: exact(pairs), timeout=ARRIVE_WITHIN_S, what=what)
    return time.monotonic() - began


def test_without_inotify_the_agent_polls_appends_new_files_and_rotations(pipes: Pipes) -> None:
    """With inotify unavailable and -t 1: appends to 3 files, a new file (from byte 0) and a mv+create
    rotation (no SIGHUP) all reach their destinations within the bound, sha256-exact."""
    pairs = [pipes.pipe(f"p{i}.log") for i in range(3)]
    new, dest_new = pipes.pipe("p-new.log")
    new.unlink()  # defined on the server, not there yet on the origin
    for i, (origin, _dest) in enumerate(pairs):
        origin.write_bytes(numbered_lines(i * 1000, 200))
    pipes.start_server()
    agent = start_agent_without_inotify(pipes, pipes.tmp / "origin" / "p*.log")
    pipes.syslog.wait_for("no file-change events")
    pipes.syslog.wait_for("polling every -t seconds")
    arrives(pairs, "the first copies")
    assert inotify_instances(agent.pid) == 0

    for i, (origin, _dest) in enumerate(pairs):
        with open(origin, "ab") as f:
            f.write(numbered_lines(10_000 + i * 100, 30))
    arrives(pairs, "appends to all three, by polling")

    content = numbered_lines(50_000, 100)
    new.write_bytes(content)
    arrives([(new, dest_new)], "the new file, by the scan")
    assert dest_new.read_bytes() == content  # from its first byte
    pairs.append((new, dest_new))

    origin, dest = pairs[0]
    rotated = origin.with_name("p0.log.1")  # not matched by p*.log
    origin.rename(rotated)
    with open(rotated, "ab") as f:
        f.write(numbered_lines(60_000, 20))  # a writer that has not reopened yet
    origin.write_bytes(numbered_lines(70_000, 40))
    wait_until(
        lambda: dest.read_bytes() == rotated.read_bytes() + origin.read_bytes(),
        timeout=ARRIVE_WITHIN_S + float(ROTATE_GRACE_S),
        what="the rotated file's tail, then the new file, without a SIGHUP",
    )
    with open(origin, "ab") as f:
        f.write(numbered_lines(80_000, 10))
    wait_until(lambda: dest.read_bytes() == rotated.read_bytes() + origin.read_bytes(), what="an append after it")
    for other, other_dest in pairs[1:]:
        assert same_bytes(other, other_dest)
        assert sha256(other) == sha256(other_dest)
    assert sha256(dest) == hashlib.sha256(rotated.read_bytes() + origin.read_bytes()).hexdigest()
    assert stop(agent) == 0
