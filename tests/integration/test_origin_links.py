"""A hostile neighbour on the origin host: symbolic links planted where root's tcppipe reads.

The origin directory belongs to uid 65534 (as an application's own log
directory does): its owner can put a link named like a log file to a file
only root may read. tcppipe must never send that file: in such a directory a
link at FILE, at a rotated FILE, or at a glob's match is not followed. In a
directory only root can write, a link is the operator's and is followed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, stop, wait_until
from tests.integration.test_many_files import start_agent

NOBODY = 65534
SECRET = b"root:$6$TOPSECRET$hash:19000:0:99999:7:::\n"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="gives the origin directory to uid 65534")


def neighbours_directory(pipes: Pipes) -> tuple[Path, Path]:
    """tmp/origin owned by uid 65534, and a root-only secret outside it."""
    origin_dir = pipes.tmp / "origin"
    origin_dir.mkdir(exist_ok=True)
    os.chown(origin_dir, NOBODY, NOBODY)
    secret = pipes.tmp / "shadow"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return origin_dir, secret


def assert_link_refused(pipes: Pipes, origin: Path, dest: Path, secret: Path) -> None:
    """FILE made a link to ``secret``: tcppipe exits 7 naming the link, and nothing is sent."""
    origin.unlink()
    origin.symlink_to(secret)
    pipes.start_server()
    out = pipes.run(pipes.client_args(origin))
    assert out.returncode == 7, out.stderr
    assert "is a symbolic link in a directory others may write (not followed)" in out.stderr
    assert not dest.exists()


def test_a_link_at_file_in_a_directory_others_may_write_is_refused(pipes: Pipes) -> None:
    """tcppipe -f app.log, app.log a link to a root-only file: exit 7 naming the link, nothing sent."""
    origin, dest = pipes.pipe("app.log")
    _, secret = neighbours_directory(pipes)
    assert_link_refused(pipes, origin, dest, secret)


def test_a_link_planted_at_a_rotation_is_not_followed(pipes: Pipes) -> None:
    """The neighbour rotates app.log and links the new app.log to the secret: the old generation
    is sent to its end, the link is reported and never read."""
    origin, dest = pipes.pipe("app.log")
    _, secret = neighbours_directory(pipes)
    origin.write_bytes(b"one\n")
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: dest.exists() and dest.read_bytes() == b"one\n", what="the first line")
    rotated = origin.with_name("app.log.1")
    origin.rename(rotated)
    origin.symlink_to(secret)
    client.send_signal(signal.SIGHUP)
    with open(rotated, "ab") as f:
        f.write(b"two\n")
    wait_until(lambda: dest.read_bytes() == b"one\ntwo\n", what="the rotated generation's last line")
    pipes.syslog.wait_for("is a symbolic link in a directory others may write (not followed)")
    assert b"TOPSECRET" not in dest.read_bytes()
    assert stop(client) == 0


def test_a_glob_does_not_follow_a_link_planted_among_its_matches(pipes: Pipes) -> None:
    """One tcppipe for ORIGIN/*.log sends good.log; evil.log, a link to the secret, is reported, never sent."""
    origin_dir, secret = neighbours_directory(pipes)
    dest_dir = pipes.tmp / "dest"
    pipes.define(f"127.0.0.1:{origin_dir}/*.log | {dest_dir}/{{name}}")
    good = origin_dir / "good.log"
    good.write_bytes(b"a real line\n")
    (origin_dir / "evil.log").symlink_to(secret)
    pipes.start_server()
    client = start_agent(pipes, f"{origin_dir}/*.log")
    wait_until(lambda: (dest_dir / "good.log").exists() and (dest_dir / "good.log").read_bytes() == b"a real line\n")
    pipes.syslog.wait_for("evil.log is a symbolic link in a directory others may write: not followed")
    assert not (dest_dir / "evil.log").exists()
    assert stop(client) == 0


def test_a_link_in_a_directory_only_root_may_write_is_the_operators(pipes: Pipes) -> None:
    """/var/log/current -> app-2026.log, in a root-owned directory: followed, as before."""
    origin, dest = pipes.pipe("current.log")
    real = origin.with_name("app-2026.log")
    real.write_bytes(b"through the operator's link\n")
    origin.unlink()
    origin.symlink_to(real.name)
    pipes.start_server()
    client = pipes.start_client(origin)
    wait_until(lambda: dest.exists() and dest.read_bytes() == real.read_bytes(), what="the linked file")
    assert stop(client) == 0


def test_a_link_in_a_sticky_directory_everyone_may_write_is_refused(pipes: Pipes) -> None:
    """Root's own sticky, world-writable directory (as /tmp): a name tcppipe does not own yet is
    anyone's there, so a link at FILE is not followed either."""
    origin, dest = pipes.pipe("app.log")
    _, secret = neighbours_directory(pipes)
    os.chown(origin.parent, 0, 0)
    origin.parent.chmod(0o1777)
    assert_link_refused(pipes, origin, dest, secret)
