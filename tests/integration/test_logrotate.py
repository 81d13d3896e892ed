"""Debian's logrotate, for real, while a writer appends."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, command, size, wait_until
from tests.integration.test_restart import numbered_lines

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"

pytestmark = pytest.mark.skipif(
    not os.path.exists(LOGROTATE) and not os.environ.get("CI"), reason="logrotate not installed (.ci/run installs it)"
)


class ReopeningWriter(threading.Thread):
    """Opens the log by name for each write, as a writer that reopens on rotation does.

    Each write holds an flock on ``lock`` so a postrotate script (or the test)
    can wait until no write to the old file is in flight.
    """

    def __init__(self, path: Path, lock: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.lock = path, lock
        self.halt = threading.Event()
        self.written = 0

    def run(self) -> None:
        with open(self.lock, "a") as lock:
            for _ in range(100_000):
                if self.halt.is_set():
                    return
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
                except FileNotFoundError:
                    fd = -1  # between logrotate's rename and create: try again next tick
                if fd >= 0:
                    os.write(fd, numbered_lines(self.written, 10))
                    os.close(fd)
                    self.written += 10
                fcntl.flock(lock, fcntl.LOCK_UN)
                time.sleep(0.003)

    def finish(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def logrotate(pipes: Pipes, conf: Path) -> None:
    result = subprocess.run(
        [LOGROTATE, "-f", "-s", str(pipes.tmp / "logrotate.state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def generations(origin: Path, count: int) -> list[Path]:
    return [origin.with_name(f"{origin.name}.{n}") for n in range(count, 0, -1)] + [origin]


def test_logrotate_create_mode_with_postrotate_hup(pipes: Pipes) -> None:
    """Three create-mode rotations with `kill -HUP $(tcppipe -I ...)`: destination = all generations in order."""
    origin, dest = pipes.pipe("lr.log")
    lock = pipes.tmp / "writer.lock"
    lock.touch()
    pipes.start_server()
    pipes.start_client(origin, "--rotate-grace", "600")
    show_pid = f"{command('tcppipe')} -I -f {origin} -h 127.0.0.1 -p {pipes.port} --state-dir {pipes.client_state}"
    conf = pipes.tmp / "logrotate.conf"
    conf.write_text(f"""{origin} {{
    rotate 10
    create 0644
    nocompress
    missingok
    postrotate
        flock {lock} true
        kill -HUP $({show_pid})
    endscript
}}
""")
    writer = ReopeningWriter(origin, lock)
    writer.start()
    try:
        for _ in range(3):
            wait_until(lambda: size(dest) > 0 and pipes.client_pid(origin) is not None, what="pipe running")
            wait_until(lambda: size(origin) > 5000, what="lines in this generation")
            logrotate(pipes, conf)
    finally:
        writer.finish()
    files = generations(origin, 3)
    wait_until(
        lambda: dest.read_bytes() == b"".join(f.read_bytes() for f in files),
        what="destination equals the concatenation of all generations",
    )
    assert writer.written > 100


def test_logrotate_copytruncate_mode(pipes: Pipes) -> None:
    """Two copytruncate rotations after the pipe caught up: destination = all generations, nothing twice."""
    origin, dest = pipes.pipe("ct.log")
    lock = pipes.tmp / "writer.lock"
    lock.touch()
    pipes.start_server()
    pipes.start_client(origin)
    conf = pipes.tmp / "logrotate.conf"
    conf.write_text(f"{origin} {{\n    rotate 10\n    copytruncate\n    nocompress\n}}\n")
    writer = ReopeningWriter(origin, lock)
    writer.start()
    try:
        for _ in range(2):
            wait_until(lambda: size(origin) > 5000, what="lines in this generation")
            with open(lock, "a") as held:
                # copytruncate loses what the tailer has not read when the file is cut
                # (see README); pausing the writer until the pipe caught up makes it exact.
                fcntl.flock(held, fcntl.LOCK_EX)
                wait_until(
                    lambda: size(dest) == sum(size(f) for f in generations(origin, 2) if f.exists()),
                    what="caught up before the cut",
                )
                logrotate(pipes, conf)
    finally:
        writer.finish()
    files = generations(origin, 2)
    wait_until(
        lambda: dest.read_bytes() == b"".join(f.read_bytes() for f in files),
        what="destination equals the concatenation of all generations",
    )
    assert writer.written > 50
    assert all(f.stat().st_size > 0 for f in files[:-1]), "each rotated generation holds lines"


@pytest.mark.parametrize("naming", ["numbered", "dateext"])
def test_logrotate_olddir_rotations_while_tcppipe_cannot_look(pipes: Pipes, naming: str) -> None:
    """``olddir``: logrotate moves each generation into another directory. Three rotations while
    tcppipe is stopped (SIGSTOP: a loaded host); when it runs again, the one it held is found
    where logrotate put it and the two after it follow, then FILE: all generations, in order."""
    origin, dest = pipes.pipe("od.log")
    old = origin.parent / "old"
    old.mkdir()
    lock = pipes.tmp / "writer.lock"
    lock.touch()
    pipes.start_server()
    client = pipes.start_client(origin, "--rotate-grace", "1")
    stamps = "dateext\n    dateformat -%s\n" if naming == "dateext" else ""
    conf = pipes.tmp / "logrotate.conf"
    conf.write_text(f"{origin} {{\n    rotate 10\n    olddir {old}\n    {stamps}create 0644\n    nocompress\n}}\n")
    writer = ReopeningWriter(origin, lock)
    writer.start()
    try:
        wait_until(lambda: size(dest) > 5000, what="first lines sent")
        client.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                start = int(time.time())
                wait_until(lambda: size(origin) > 2000, what="lines in this generation")
                # dateext's stamp is the second: one rotation a second, as logrotate requires.
                wait_until(lambda: int(time.time()) > start, what="the next second")  # noqa: B023
                with open(lock, "a") as held:
                    fcntl.flock(held, fcntl.LOCK_EX)  # no write in flight to the old name
                    logrotate(pipes, conf)
        finally:
            client.send_signal(signal.SIGCONT)
    finally:
        writer.finish()
    if naming == "dateext":
        rotated = sorted(old.iterdir(), key=lambda p: p.name)
    else:
        rotated = sorted(old.iterdir(), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) == 3
    assert not list(origin.parent.glob("od.log?*")), "every generation went into olddir"
    wait_until(
        lambda: dest.read_bytes() == b"".join(f.read_bytes() for f in [*rotated, origin]),
        what="destination equals the concatenation of all generations",
    )
