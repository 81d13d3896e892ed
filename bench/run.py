"""Benchmark: tcppipe against the peers an operator would otherwise pick.

Each contestant moves a file to a file over TCP on loopback. Figures:
catch-up MB/s (a pre-written file), CPU seconds per GB (client + server, from
/proc), peak RSS, append-to-destination latency percentiles (lines at 10 ms
spacing), and byte-exactness. Run with `bench/run` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.0005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def access_log_lines(count: int, seed: int = 7) -> bytes:
    """Access-log-like lines of varied length (deterministic)."""
    import random

    rng = random.Random(seed)
    paths = [f"/api/v{v}/items/{i}" for v in (1, 2) for i in range(50)]
    agents = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0", "Go-http-client/2.0"]
    out = []
    for i in range(count):
        client = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        when = f"25/Nov/2026:10:{i // 60 % 60:02d}:{i % 60:02d} +0000"
        request = f"GET {rng.choice(paths)}?q={rng.randrange(10**6)} HTTP/1.1"
        status = rng.choice((200, 200, 304, 404))
        out.append(
            f'{client} - - [{when}] "{request}" {status} {rng.randrange(100, 50000)} "-" "{rng.choice(agents)}"\n'
        )
    return "".join(out).encode()


def make_data(path: Path, total_bytes: int) -> int:
    """About ``total_bytes`` of whole lines (line-based peers never send a partial last line)."""
    block = access_log_lines(20_000)
    written = 0
    with open(path, "wb") as f:
        while written + len(block) <= total_bytes:
            f.write(block)
            written += len(block)
        rest = block[: total_bytes - written]
        rest = rest[: rest.rfind(b"\n") + 1]
        f.write(rest)
        written += len(rest)
    return written


def wait_for_growth(path: Path, target: int, quiet_s: float, limit_s: float, died: Callable[[], bool]) -> bool:
    """Until ``path`` holds ``target`` bytes (True), or stops growing for ``quiet_s`` (False)."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        now_size = file_size(path)
        if now_size >= target:
            return True
        if now_size != last:
            last, last_change = now_size, time.monotonic()
        elif time.monotonic() - last_change > quiet_s or died():
            return False
        time.sleep(0.002)
    return False


@dataclass
class Result:
    name: str
    catchup_mb_s: float = 0.0
    cpu_s_per_gb: float = 0.0
    rss_mb: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    exact: bool = False
    notes: list[str] = field(default_factory=list)


class Contestant:
    name = "?"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(work / f"{self.name.split()[0]}.log", "ab")  # noqa: SIM115

    def start(self, origin: Path, dest: Path) -> None:
        raise NotImplementedError

    def popen(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            args, stdout=self.log, stderr=self.log, **kwargs
        )
        self.procs.append(proc)
        return proc

    def died(self) -> bool:
        return any(p.poll() is not None for p in self.procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs = []


class Tcppipe(Contestant):
    name = "tcppipe"

    def start(self, origin: Path, dest: Path) -> None:
        port = free_port()
        conf = self.work / "tcppipe.conf"
        conf.write_text(f"127.0.0.1:{origin} | {dest}\n")
        common = ["--foreground", "--syslog-address", str(self.work / "nosyslog")]
        self.popen(
            [
                str(BIN / "tcppiped"),
                "-f",
                str(conf),
                "-p",
                str(port),
                "--bind",
                "127.0.0.1",
                "--pid-file",
                str(self.work / "tcppiped.pid"),
                "--state-dir",
                str(self.work / "sstate"),
                *common,
            ]
        )
        wait_for(lambda: (self.work / "tcppiped.pid").exists(), 20, 0.01)
        self.popen(
            [
                str(BIN / "tcppipe"),
                "-f",
                str(origin),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--state-dir",
                str(self.work / "cstate"),
                *common,
            ]
        )


class SocatFloor(Contestant):
    """tail -F | socat: the overhead floor, with no resume, no framing, no checks."""

    name = "tail -F | socat"

    def start(self, origin: Path, dest: Path) -> None:
        port = free_port()
        self.popen(["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"OPEN:{dest},creat,append"])
        wait_for(lambda: _listening(port), 20, 0.01)
        tail = self.popen(["tail", "-c", "+1", "-F", str(origin)], stdout=subprocess.PIPE)
        assert tail.stdout is not None
        self.popen(["socat", "-u", "-", f"TCP:127.0.0.1:{port}"], stdin=tail.stdout)

    def popen(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", self.log)
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, stderr=self.log, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc


class Rsyslog(Contestant):
    """rsyslog imfile (inotify) -> omfwd (TCP, octet-counted) -> imtcp -> omfile, raw templates.

    Two instances with their own configs, work directories and pid files, in
    the foreground; neither loads imuxsock or imklog, so the system's syslog is
    not touched.
    """

    name = "rsyslog"

    def start(self, origin: Path, dest: Path) -> None:
        port = free_port()
        server_dir, client_dir = self.work / "rs-server", self.work / "rs-client"
        server_dir.mkdir()
        client_dir.mkdir()
        common = """
global(maxMessageSize="256k" parser.escapeControlCharactersOnReceive="off" workDirectory="{dir}")
template(name="raw" type="string" string="%rawmsg%\\n")
"""
        (server_dir / "rsyslog.conf").write_text(
            common.format(dir=server_dir)
            + f"""
module(load="imtcp" MaxSessions="100")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="store")
ruleset(name="store" queue.type="Direct") {{
    action(type="omfile" file="{dest}" template="raw" asyncWriting="off" flushOnTXEnd="on")
}}
"""
        )
        (client_dir / "rsyslog.conf").write_text(
            common.format(dir=client_dir)
            + f"""
module(load="imfile" mode="inotify")
input(type="imfile" file="{origin}" tag="bench" ruleset="forward" freshStartTail="off")
template(name="line" type="string" string="%msg%")
ruleset(name="forward" queue.type="LinkedList" queue.workerThreads="1") {{
    action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" tcp_framing="octet-counted"
           template="line")
}}
"""
        )
        self.popen(["rsyslogd", "-n", "-f", str(server_dir / "rsyslog.conf"), "-i", str(server_dir / "pid")])
        wait_for(lambda: _listening(port), 20, 0.05)
        self.popen(["rsyslogd", "-n", "-f", str(client_dir / "rsyslog.conf"), "-i", str(client_dir / "pid")])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def measure(kind: type[Contestant], root: Path, total_bytes: int, latency_lines: int) -> Result:
    work = root / kind.name.split()[0]
    work.mkdir()
    origin, dest = work / "origin.log", work / "dest" / "origin.log"
    dest.parent.mkdir()
    total_bytes = make_data(origin, total_bytes)
    contestant = kind(work)
    result = Result(kind.name)
    try:
        started = time.perf_counter()
        contestant.start(origin, dest)
        if not wait_for_growth(dest, total_bytes, 3.0, 600, contestant.died):
            result.notes.append(f"catch-up stopped at {file_size(dest)} of {total_bytes} bytes")
        elapsed = time.perf_counter() - started
        pids = contestant.pids()
        cpu = sum(cpu_seconds(p) for p in pids)
        result.catchup_mb_s = total_bytes / elapsed / 1e6
        result.cpu_s_per_gb = cpu / (total_bytes / 1e9)
        delays = []
        with open(origin, "ab") as f:
            for i in range(latency_lines):
                f.write(b"latency probe %06d\n" % i)
                f.flush()
                want = file_size(origin)
                t0 = time.perf_counter()
                wait_for(lambda w=want: file_size(dest) >= w, 5, 0.0001)  # type: ignore[misc]
                delays.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.01)
        delays.sort()
        result.p50_ms = statistics.median(delays)
        result.p99_ms = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        result.rss_mb = max((peak_rss_mb(p) for p in contestant.pids()), default=0.0)
        wait_for(lambda: file_size(dest) >= file_size(origin), 10, 0.01)
        result.exact = digest(origin) == digest(dest)
    finally:
        contestant.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 MB and 200 latency probes (well under 2 minutes)")
    parser.add_argument("--mb", type=int, default=256, help="catch-up size in MB (256)")
    parser.add_argument("--only", default="", help="comma-separated contestants (tcppipe,socat)")
    args = parser.parse_args()
    total = (64 if args.quick else args.mb) * 1_000_000
    probes = 200 if args.quick else 1000
    kinds: list[type[Contestant]] = [Tcppipe]
    if shutil.which("socat") and shutil.which("tail"):
        kinds.append(SocatFloor)
    if shutil.which("rsyslogd"):
        kinds.append(Rsyslog)
    if args.only:
        wanted = set(args.only.split(","))
        kinds = [k for k in kinds if k.name.split()[0] in wanted or k.name in wanted]
    root = Path(tempfile.mkdtemp(prefix="tcppipe-bench."))
    print(
        f"file -> TCP (loopback) -> file, {total / 1e6:.0f} MB of access-log lines, {probes} latency probes;"
        f" {os.cpu_count()} CPUs"
    )
    results = []
    try:
        for kind in kinds:
            results.append(measure(kind, root, total, probes))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours = results[0]
    header = f"{'contestant':<18}{'catch-up MB/s':>14}{'CPU s/GB':>10}{'RSS MB':>8}{'p50 ms':>8}{'p99 ms':>8}  exact"
    print(header)
    for r in results:
        print(
            f"{r.name:<18}{r.catchup_mb_s:>14.1f}{r.cpu_s_per_gb:>10.2f}{r.rss_mb:>8.1f}{r.p50_ms:>8.2f}"
            f"{r.p99_ms:>8.2f}  {'yes' if r.exact else 'NO'}  {'; '.join(r.notes)}"
        )
    for r in results[1:]:
        print(
            f"tcppipe vs {r.name}: catch-up x{ours.catchup_mb_s / max(r.catchup_mb_s, 1e-9):.2f}, "
            f"CPU/GB x{ours.cpu_s_per_gb / max(r.cpu_s_per_gb, 1e-9):.2f}, p50 x{ours.p50_ms / max(r.p50_ms, 1e-9):.2f}"
        )
    return 0 if ours.exact else 1


if __name__ == "__main__":
    sys.exit(main())
