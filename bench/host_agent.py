"""One tcppipe for a whole host (issue 12): many files from one process, side by side.

Measured in one run, each on its own fresh directories and ports:
- RSS and idle CPU of one tcppipe following N files with one glob, of N
  single-file tcppipe processes (their sum), and of rsyslog imfile following
  the same files with one wildcard (when rsyslogd is installed: bench/run
  installs it as root).
- catch-up: N files of ``--catchup-mb`` MB each, present at start, until every
  destination is byte-exact.
- append->destination latency p50/p99 across N live files: a probe line to
  one file at a time (10 ms spacing, round robin) while a writer appends a
  line to every other file each second.
- a new matching file: from its creation (with one line) to that line at
  the destination, median of ``--new-files``.

Run: bench/run's setup first (``scripts/setup``), then
    .venv/bin/python bench/host_agent.py [--files 100] [--big 2000] [--catchup-mb 10]
Every process is started here and stopped by its pid; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, _listening, access_log_lines, cpu_seconds, free_port, wait_for

IDLE_S = 10.0
PROBES = 500


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Setup:
    """A tcppiped with one glob entry, origin and destination directories, and the processes started."""

    def __init__(self, root: Path, name: str) -> None:
        self.work = root / name
        self.origin, self.dest = self.work / "origin", self.work / "dest"
        for d in (self.origin, self.dest):
            d.mkdir(parents=True)
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.common = ["--foreground", "--syslog-address", str(self.work / "nosyslog")]

    def files(self, count: int, content: bytes = b"") -> list[Path]:
        paths = [self.origin / f"vhost{i:05d}.log" for i in range(count)]
        for p in paths:
            p.write_bytes(content)
        return paths

    def dest_of(self, origin: Path) -> Path:
        return self.dest / origin.name

    def popen(self, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def start_server(self) -> subprocess.Popen[bytes]:
        conf = self.work / "tcppipe.conf"
        conf.write_text(f"127.0.0.1:{self.origin}/*.log | {self.dest}/{{name}}\n")
        pid_file = self.work / "tcppiped.pid"
        proc = self.popen(
            [
                *(str(BIN / "tcppiped"), "-f", str(conf), "-p", str(self.port), "--bind", "127.0.0.1"),
                *("--pid-file", str(pid_file), "--state-dir", str(self.work / "sstate"), *self.common),
            ]
        )
        wait_for(pid_file.exists, 20, 0.01)
        return proc

    def start_client(self, *files: str, state: str = "cstate") -> subprocess.Popen[bytes]:
        args = [str(BIN / "tcppipe")]
        for f in files:
            args += ["-f", f]
        args += ["-h", "127.0.0.1", "-p", str(self.port), "--state-dir", str(self.work / state), *self.common]
        return self.popen(args)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def all_landed(setup: Setup, origins: list[Path]) -> Callable[[], bool]:
    def check() -> bool:
        return all(setup.dest_of(o).exists() and setup.dest_of(o).stat().st_size == o.stat().st_size for o in origins)

    return check


def idle(pids: list[int]) -> tuple[float, float]:
    """Summed RSS (MB) and CPU (% of one core) of ``pids`` over IDLE_S seconds of no writes."""
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(IDLE_S)
    cpu = (sum(cpu_seconds(p) for p in pids) - before) / IDLE_S * 100
    return sum(rss_mb(p) for p in pids), cpu


def one_agent(root: Path, count: int) -> tuple[float, float]:
    setup = Setup(root, f"agent{count}")
    try:
        origins = setup.files(count, b"first line\n")
        setup.start_server()
        client = setup.start_client(str(setup.origin / "*.log"))
        if not wait_for(all_landed(setup, origins), 120, 0.05):
            raise SystemExit(f"one tcppipe with {count} files: not every file arrived")
        return idle([client.pid])
    finally:
        setup.stop()


def many_processes(root: Path, count: int) -> tuple[float, float]:
    setup = Setup(root, f"procs{count}")
    try:
        origins = setup.files(count, b"first line\n")
        setup.start_server()
        clients = [setup.start_client(str(o), state=f"cstate{i}") for i, o in enumerate(origins)]
        if not wait_for(all_landed(setup, origins), 180, 0.05):
            raise SystemExit(f"{count} tcppipe processes: not every file arrived")
        return idle([c.pid for c in clients])
    finally:
        setup.stop()


def rsyslog_wildcard(root: Path, count: int) -> tuple[float, float] | None:
    """rsyslog imfile with one wildcard forwarding to a local rsyslog over TCP."""
    if not shutil.which("rsyslogd"):
        return None
    setup = Setup(root, f"rsyslog{count}")
    try:
        setup.files(count, b"first line\n")
        port = free_port()
        server_dir, client_dir = setup.work / "rs-server", setup.work / "rs-client"
        server_dir.mkdir()
        client_dir.mkdir()
        out = setup.dest / "all.log"
        (server_dir / "rsyslog.conf").write_text(
            f'global(workDirectory="{server_dir}")\ntemplate(name="raw" type="string" string="%rawmsg%\\n")\n'
            'module(load="imtcp")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="store")\n'
            f'ruleset(name="store") {{ action(type="omfile" file="{out}" template="raw") }}\n'
        )
        (client_dir / "rsyslog.conf").write_text(
            f'global(workDirectory="{client_dir}")\nmodule(load="imfile" mode="inotify")\n'
            f'input(type="imfile" file="{setup.origin}/*.log" tag="bench" ruleset="fwd" freshStartTail="off")\n'
            'template(name="line" type="string" string="%msg%")\n'
            f'ruleset(name="fwd") {{ action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"'
            ' tcp_framing="octet-counted" template="line") }\n'
        )
        setup.popen(["rsyslogd", "-n", "-f", str(server_dir / "rsyslog.conf"), "-i", str(server_dir / "pid")])
        wait_for(lambda: _listening(port), 20, 0.05)
        client = setup.popen(["rsyslogd", "-n", "-f", str(client_dir / "rsyslog.conf"), "-i", str(client_dir / "pid")])

        def arrived() -> bool:
            return out.exists() and out.read_bytes().count(b"first line") >= count

        if not wait_for(arrived, 60, 0.05):
            return None
        return idle([client.pid])
    finally:
        setup.stop()


def catch_up(root: Path, count: int, mb: int) -> float:
    setup = Setup(root, f"catchup{count}")
    try:
        chunk = access_log_lines(20_000)
        data = (chunk * (mb * 1_000_000 // len(chunk) + 1))[: mb * 1_000_000]
        origins = setup.files(count, data)
        setup.start_server()
        started = time.monotonic()
        setup.start_client(str(setup.origin / "*.log"))
        if not wait_for(all_landed(setup, origins), 600, 0.05):
            raise SystemExit("catch-up: not every file arrived")
        seconds = time.monotonic() - started
        assert all(setup.dest_of(o).read_bytes() == data for o in origins), "catch-up: a destination differs"
        return count * mb / seconds
    finally:
        setup.stop()


def latency_and_new_files(root: Path, count: int, new_files: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) of probe lines across ``count`` live files, and the median ms from a new
    matching file's creation to its first line at the destination."""
    setup = Setup(root, f"live{count}")
    try:
        origins = setup.files(count, b"first line\n")
        setup.start_server()
        setup.start_client(str(setup.origin / "*.log"))
        if not wait_for(all_landed(setup, origins), 120, 0.05):
            raise SystemExit("latency: not every file arrived")
        handles = [open(o, "ab", buffering=0) for o in origins]  # noqa: SIM115 (closed below)
        delays = []
        try:
            last_background = time.monotonic()
            for i in range(PROBES):
                now = time.monotonic()
                if now - last_background >= 1.0:  # every other file gets a line a second
                    for h in handles:
                        h.write(b"background line\n")
                    last_background = now
                target = handles[i % count]
                origin = origins[i % count]
                target.write(b"probe %06d\n" % i)
                want = origin.stat().st_size
                start = time.perf_counter()
                dest = setup.dest_of(origin)
                if not wait_for(lambda d=dest, w=want: d.stat().st_size >= w, 10, 0.0001):
                    raise SystemExit("latency: a probe did not arrive")
                delays.append((time.perf_counter() - start) * 1000)
                time.sleep(0.01)
        finally:
            for h in handles:
                h.close()
        delays.sort()
        new = []
        for k in range(new_files):
            path = setup.origin / f"new{k:03d}.log"
            start = time.perf_counter()
            path.write_bytes(b"a new virtual host's first line\n")
            dest = setup.dest_of(path)
            if not wait_for(lambda d=dest: d.exists() and d.stat().st_size > 0, 30, 0.001):
                raise SystemExit("a new file did not arrive")
            new.append((time.perf_counter() - start) * 1000)
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        return statistics.median(delays), p99, statistics.median(new)
    finally:
        setup.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100, help="files for the side-by-side runs (100)")
    parser.add_argument("--big", type=int, default=2000, help="files for the large one-process run (2000; 0 skips)")
    parser.add_argument("--catchup-mb", type=int, default=10, help="MB per file for the catch-up run (10)")
    parser.add_argument("--new-files", type=int, default=10, help="new files created during the run (10)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tcppipe-agent-bench."))
    n = args.files
    try:
        rows = [(f"one tcppipe, {n} files", *one_agent(root, n))]
        if args.big:
            rows.append((f"one tcppipe, {args.big} files", *one_agent(root, args.big)))
        rows.append((f"{n} tcppipe processes", *many_processes(root, n)))
        rs = rsyslog_wildcard(root, n)
        if rs is not None:
            rows.append((f"rsyslog imfile, {n} files", *rs))
        print(f"{'idle, every file followed':<32}{'RSS MB':>10}{'CPU % of a core':>17}")
        for name, rss, cpu in rows:
            print(f"{name:<32}{rss:>10.1f}{cpu:>17.2f}")
        rate = catch_up(root, n, args.catchup_mb)
        print(f"catch-up of {n} files x {args.catchup_mb} MB at once: {rate:.0f} MB/s")
        p50, p99, new = latency_and_new_files(root, n, args.new_files)
        print(f"append->destination across {n} live files ({PROBES} probes): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        print(f"a new matching file: creation -> first byte at the destination, median {new:.0f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
