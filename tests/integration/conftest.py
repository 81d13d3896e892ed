"""Real tcppiped and tcppipe processes on loopback, with a syslog socket the test reads.

Every wait is bounded (``wait_until``); every process a test starts is killed
by pid at the end, and only those.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.proxy import Proxy

BIN = Path(sys.executable).parent
DEFAULT_WAIT_S = 20.0


def command(name: str) -> str:
    return str(BIN / name)


def wait_until(predicate: Callable[[], object], timeout: float = DEFAULT_WAIT_S, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def same_bytes(a: Path, b: Path) -> bool:
    return size(a) == size(b) and sha256(a) == sha256(b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class SyslogSink:
    """A unix datagram socket standing in for /dev/log, read on a thread so it never fills."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode(errors="replace"))

    def drain(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def count(self, text: str) -> int:
        return sum(text in m for m in self.drain())

    def wait_for(self, text: str, timeout: float = DEFAULT_WAIT_S) -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = [m for m in self.drain() if text in m]
            return bool(found)

        wait_until(seen, timeout, f"syslog message containing {text!r}")
        return found[0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@dataclass
class Pipes:
    """One test's world: a server config, state dirs, syslog, and the processes started."""

    tmp: Path
    syslog: SyslogSink
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_pids: list[int] = field(default_factory=list)
    outputs: dict[int, Path] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.tmp / "tcppipe.conf"

    @property
    def server_state(self) -> Path:
        return self.tmp / "server-state"

    @property
    def client_state(self) -> Path:
        return self.tmp / "client-state"

    @property
    def pid_file(self) -> Path:
        return self.tmp / "tcppiped.pid"

    def define(self, *lines: str) -> None:
        with open(self.config, "a") as f:
            for line in lines:
                f.write(line + "\n")

    def pipe(self, name: str, host: str = "127.0.0.1") -> tuple[Path, Path]:
        """Define a pipe tmp/origin/NAME -> tmp/dest/NAME and return both paths."""
        origin = self.tmp / "origin" / name
        dest = self.tmp / "dest" / name
        origin.parent.mkdir(exist_ok=True)
        if not origin.exists():
            origin.write_bytes(b"")
        self.define(f"{host}:{origin} | {dest}")
        return origin, dest

    def server_args(self, *extra: str, foreground: bool = True) -> list[str]:
        args = [
            command("tcppiped"),
            "-f",
            str(self.config),
            "-p",
            str(self.port),
            "--pid-file",
            str(self.pid_file),
            "--state-dir",
            str(self.server_state),
            "--syslog-address",
            str(self.syslog.path),
            "--bind",
            "127.0.0.1",
            *extra,
        ]
        return [*args, "--foreground"] if foreground else args

    def start_server(self, *extra: str) -> subprocess.Popen[bytes]:
        if not self.config.exists():
            self.config.write_text("")
        before = self.syslog.count("listening on")
        proc = self.spawn(self.server_args(*extra))
        # The server's own "listening" line, not a probe connection that it would have to serve.
        wait_until(
            lambda: self.syslog.count("listening on") > before or proc.poll() is not None, what="tcppiped to listen"
        )
        assert proc.poll() is None, self.stderr_of(proc)
        return proc

    def client_args(self, origin: Path, *extra: str, host: str = "127.0.0.1", foreground: bool = True) -> list[str]:
        args = [
            command("tcppipe"),
            "-f",
            str(origin),
            "-h",
            host,
            "-p",
            str(self.port),
            "--state-dir",
            str(self.client_state),
            "--syslog-address",
            str(self.syslog.path),
            *extra,
        ]
        return [*args, "--foreground"] if foreground else args

    def start_client(self, origin: Path, *extra: str, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
        return self.spawn(self.client_args(origin, *extra, host=host))

    def spawn(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process whose output goes to files (a pipe nobody reads would block it)."""
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        n = len(self.procs)
        with open(logs / f"{n}.out", "wb") as out, open(logs / f"{n}.err", "wb") as err:
            proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                args, stdout=out, stderr=err, **kwargs
            )
        self.procs.append(proc)
        self.outputs[proc.pid] = logs / f"{n}.err"
        return proc

    def stderr_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.outputs[proc.pid].read_text(errors="replace")

    def run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)

    def client_pid(self, origin: Path, host: str = "127.0.0.1", port: int | None = None) -> int | None:
        out = self.run(
            [
                command("tcppipe"),
                "-I",
                "-f",
                str(origin),
                "-h",
                host,
                "-p",
                str(port or self.port),
                "--state-dir",
                str(self.client_state),
            ]
        )
        return int(out.stdout) if out.returncode == 0 else None

    def adopt(self, pid: int) -> None:
        """Remember a detached process this test started, to kill it at the end."""
        self.extra_pids.append(pid)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for pid in self.extra_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.syslog.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = DEFAULT_WAIT_S) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=DEFAULT_WAIT_S)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def reset_peak_rss(pid: int) -> None:
    """Start process ``pid``'s peak resident memory (VmHWM) afresh from its current size."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of process ``pid`` in MiB since it started or ``reset_peak_rss``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def pipes(tmp_path: Path) -> Iterator[Pipes]:
    world = Pipes(tmp_path, SyslogSink(tmp_path / "syslog.sock"))
    try:
        yield world
    finally:
        world.cleanup()


@pytest.fixture
def proxied(pipes: Pipes) -> Iterator[tuple[Pipes, Proxy]]:
    """The test's world and a relay in front of its server."""
    proxy = Proxy(pipes.port)
    try:
        yield pipes, proxy
    finally:
        proxy.close()
