"""A host agent with many files: starting together, kill -9, rotations, a glob server entry."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcppipe.origin import file_identity_number
from tests.integration.conftest import Pipes, kill9, same_bytes, stop, wait_until
from tests.integration.test_many_files import start_agent
from tests.integration.test_restart import Writer, numbered_lines

FILES = 400  # above tcppiped's 128 strangers per source
TMPFS = "/dev/shm"


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


def test_fifty_files_through_one_glob_entry_survive_kill9_and_rotation(pipes: Pipes) -> None:
    """A glob client and a glob server entry ({name}): 50 files stream, the client is killed -9
    and restarted, ten files are rotated (mv + a new file, no SIGHUP) and new files appear;
    every destination holds each of its origin's generations in order, exactly."""
    origin_dir, dest_dir = pipes.tmp / "origin", pipes.tmp / "dest"
    origin_dir.mkdir()
    pipes.define(f"127.0.0.1:{origin_dir}/*.log | {dest_dir}/{{name}}")
    origins = [origin_dir / f"site{i:02d}.log" for i in range(50)]
    for i, origin in enumerate(origins):
        origin.write_bytes(numbered_lines(i * 10_000, 100 + i))
    pipes.start_server()
    agent = start_agent(pipes, origin_dir / "*.log")
    writers = [Writer(origin, lines_per_tick=2, tick_s=0.02) for origin in origins]
    for writer in writers:
        writer.start()
    try:
        wait_until(lambda: all((dest_dir / o.name).exists() for o in origins), what="all 50 streaming")
        kill9(agent)
        wait_until(lambda: all(w.written > 40 for w in writers), what="appends while tcppipe is dead")
        agent = start_agent(pipes, origin_dir / "*.log")
    finally:
        for writer in writers:
            writer.finish()
    rotated = []
    for origin in origins[:10]:  # the writers are done: a rename and a new file, as logrotate does
        old = origin.with_name(origin.name + ".1")  # not matched by *.log: the old generation only
        origin.rename(old)
        origin.write_bytes(b"after the rotation of " + origin.name.encode() + b"\n")
        rotated.append((old, origin))
    new = [origin_dir / f"new{i}.log" for i in range(3)]
    for path in new:
        path.write_bytes(b"a new site's first line\n")

    def exact() -> bool:
        for old, origin in rotated:
            dest = dest_dir / origin.name
            if not dest.exists() or dest.read_bytes() != old.read_bytes() + origin.read_bytes():
                return False
        rest = [*origins[10:], *new]
        return all(same_bytes(o, dest_dir / o.name) for o in rest)

    wait_until(exact, what="every destination exact")
    assert stop(agent) == 0


@pytest.fixture(params=["disk", "tmpfs"])
def origin_dir(request: pytest.FixtureRequest, pipes: Pipes) -> Iterator[Path]:
    """The origin directory: under pytest's temporary directory (a file system with inode
    generation numbers here), or on tmpfs, which has none but gives birth times."""
    if request.param == "disk":
        yield pipes.tmp / "origin"
        return
    if not os.path.isdir(TMPFS) or not os.access(TMPFS, os.W_OK):
        pytest.skip(f"{TMPFS} (tmpfs) is not writable here")
    parent = Path(tempfile.mkdtemp(dir=TMPFS, prefix="tcppipe-test-"))
    try:
        yield parent / "origin"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_restarted_agent_does_not_send_a_rotated_file_again(pipes: Pipes, origin_dir: Path) -> None:
    """A glob that matches rotated names (``*``) and a {name} entry: app.log is sent, rotated to
    app.log.1 (same inode, sent to its end and let go), and the agent restarts. The status file
    lists the generations the pipe let go (inode, head, size and mtime, and an identity number:
    the inode generation, or on tmpfs, which has none, the birth time), so app.log.1 is still
    app.log's old generation, not a new file to send again (before, the restart sent all of it a
    second time, into app.log.1's destination; on tmpfs, without inode generation numbers, it
    still did, and the let-go record had no number there)."""
    dest_dir = pipes.tmp / "dest"
    origin_dir.mkdir()
    pipes.define(f"127.0.0.1:{origin_dir}/* | {dest_dir}/{{name}}")
    app, rotated = origin_dir / "app.log", origin_dir / "app.log.1"
    first = numbered_lines(0, 300)
    app.write_bytes(first)
    pipes.start_server()
    agent = start_agent(pipes, origin_dir / "*")
    wait_until(lambda: (dest_dir / "app.log").exists() and (dest_dir / "app.log").read_bytes() == first)
    app.rename(rotated)
    app.write_bytes(b"second generation\n")
    wait_until(lambda: (dest_dir / "app.log").read_bytes() == first + b"second generation\n", what="the rotation")

    finished: list[list[object]] = []

    def let_go() -> bool:
        for path in pipes.client_state.glob("tcppipe.*.status"):
            raw = json.loads(path.read_text())
            if raw.get("file") == str(app) and raw.get("finished"):
                finished[:] = raw["finished"]
                return True
        return False

    wait_until(let_go, what="the old generation let go")
    with open(rotated, "rb") as old:
        assert [item[2] for item in finished] == [file_identity_number(old.fileno())] != [None]
    said = "app.log.1 is a rotated generation of"
    before = pipes.syslog.count(said)
    assert stop(agent) == 0
    agent = start_agent(pipes, origin_dir / "*")
    wait_until(lambda: pipes.syslog.count(said) > before, what="app.log.1 known as app.log's after the restart")
    with open(app, "ab") as f:
        f.write(b"third\n")
    wait_until(lambda: (dest_dir / "app.log").read_bytes() == first + b"second generation\nthird\n")
    assert not (dest_dir / "app.log.1").exists()
    assert stop(agent) == 0


def test_a_truncated_file_rotated_while_the_agent_was_down_is_not_sent_again(pipes: Pipes) -> None:
    """app.log is truncated in place and rewritten (its old generation let go, in the same inode
    as the new one), the agent stops, app.log is renamed app.log.1 and a new app.log made. At
    the restart the let-go claim (the old head) must not override the held one (the new head):
    app.log.1 is app.log's generation, not a new pipe that sends its bytes a second time."""
    origin_dir, dest_dir = pipes.tmp / "origin", pipes.tmp / "dest"
    origin_dir.mkdir()
    pipes.define(f"127.0.0.1:{origin_dir}/* | {dest_dir}/{{name}}")
    app, rotated, dest = origin_dir / "app.log", origin_dir / "app.log.1", dest_dir / "app.log"
    before = numbered_lines(0, 300)
    app.write_bytes(before)
    pipes.start_server()
    agent = start_agent(pipes, origin_dir / "*")
    wait_until(lambda: dest.exists() and dest.read_bytes() == before)
    after = b"after truncation 1\n"
    with open(app, "r+b") as f:  # copytruncate's second half
        f.truncate(0)
        f.write(after)
    wait_until(lambda: dest.read_bytes() == before + after, what="the truncation")
    with open(app, "ab") as appending:
        appending.write(b"after truncation 2\n")
    after += b"after truncation 2\n"
    wait_until(lambda: dest.read_bytes() == before + after, what="the append")

    def recorded() -> bool:
        for path in pipes.client_state.glob("tcppipe.*.status"):
            raw = json.loads(path.read_text())
            if raw.get("file") == str(app) and raw.get("finished") and raw.get("offset") == len(after):
                return True
        return False

    wait_until(recorded, what="the truncated generation let go and the new one acknowledged")
    assert stop(agent) == 0
    app.rename(rotated)
    app.write_bytes(b"new file\n")
    agent = start_agent(pipes, origin_dir / "*")
    pipes.syslog.wait_for(f"{rotated} is a rotated generation of {app}")
    wait_until(lambda: dest.read_bytes() == before + after + b"new file\n", what="the new app.log")
    assert stop(agent) == 0
    assert not (dest_dir / "app.log.1").exists()
