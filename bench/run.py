"""Benchmark: tcppipe against the peers an operator would otherwise pick.

Each contestant moves a file to a file over TCP on loopback. Figures:
catch-up MB/s (a pre-written file), CPU seconds per GB (client + server, from
/proc), peak RSS, append-to-destination latency percentiles (lines at 10 ms
spacing), and byte-exactness. Run with `bench/run` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import glob
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
# A peer that polls its file once a second takes ~0.5 s a probe: stop after this long.
PROBE_BUDGET_S = 40.0
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
    """CPU time of a process (every thread's, from the scheduler's own clock: schedstat) and of
    its reaped children (cutime + cstime). utime + stime alone are sampled at each clock tick
    (4 ms here), which charges a process woken in step with a writer's 10 ms sleeps by whether
    it happened to run at the tick, not by what it ran."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    children = sum(int(v) for v in fields[13:15]) / CLOCK_TICKS
    running_ns = 0
    for schedstat in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError), open(schedstat) as f:
            running_ns += int(f.read().split()[0])
    if not running_ns:  # no schedstat (a kernel without CONFIG_SCHEDSTATS): the ticks
        return sum(int(v) for v in fields[11:13]) / CLOCK_TICKS + children
    return running_ns / 1e9 + children


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
    cpu_ms_per_line: float = 0.0
    rss_mb: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    exact: bool = False
    sustained_mb_s: float = 0.0
    lag_p50_s: float = 0.0
    lag_max_s: float = 0.0
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
    client_extra: tuple[str, ...] = ()

    def start(self, origin: Path, dest: Path) -> None:
        port = free_port()
        conf = self.work / "tcppipe.conf"
        conf.write_text(f"127.0.0.1:{origin} | {dest}\n")
        common = ["--foreground", "--syslog-address", str(self.work / "nosyslog")]
        self.server_args = [
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
        self.popen(self.server_args)
        wait_for(lambda: (self.work / "tcppiped.pid").exists(), 20, 0.01)
        self.client_args = [
            str(BIN / "tcppipe"),
            "-f",
            str(origin),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--state-dir",
            str(self.work / "cstate"),
            *self.client_extra,
            *common,
        ]
        self.popen(self.client_args)

    def kill9_and_restart(self, side: str) -> None:
        """kill -9 the server (procs[0]) or the client (procs[1]) and start it again at once."""
        index = 0 if side == "server" else 1
        self.procs[index].kill()
        self.procs[index].wait(timeout=10)
        args = self.server_args if index == 0 else self.client_args
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        self.procs[index] = proc
        if index == 0:
            port = int(args[args.index("-p") + 1])
            wait_for(lambda: _listening(port), 20, 0.01)

    def wire_ratio(self) -> float | None:
        """Origin bytes per wire byte, from the client's status file."""
        import json

        for path in (self.work / "cstate").glob("tcppipe.*.status"):
            raw = json.loads(path.read_text())
            if raw.get("wire_bytes"):
                return float(raw["bytes_sent"]) / float(raw["wire_bytes"])
        return None


class TcppipeZ(Tcppipe):
    name = "tcppipe -z"
    client_extra = ("-z",)


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


SYSLOG_NG_ROOT = Path(__file__).resolve().parent / "work" / "syslog-ng"


class SyslogNg(Contestant):
    """syslog-ng 3.38 file() -> network() (TCP) -> network() -> file(), no-parse, raw ${MSG} templates.

    Run from the Debian package unpacked by bench/run into bench/work/syslog-ng
    (it conflicts with rsyslog as a package), two private foreground instances
    with their own configs, pid files, persist files and control sockets.
    """

    name = "syslog-ng"

    def start(self, origin: Path, dest: Path) -> None:
        port = free_port()
        head = "@version: 3.38\noptions { log-msg-size(262144); stats-freq(0); use-dns(no); dns-cache(no); };\n"
        (self.work / "server.conf").write_text(
            head + f'source s_net {{ network(ip("127.0.0.1") port({port}) transport("tcp") flags(no-parse)'
            f" log-msg-size(262144)); }};\n"
            f'destination d_file {{ file("{dest}" template("${{MSG}}\\n")); }};\n'
            "log { source(s_net); destination(d_file); };\n"
        )
        (self.work / "client.conf").write_text(
            head + f'source s_file {{ file("{origin}" flags(no-parse) log-msg-size(262144)); }};\n'
            f'destination d_net {{ network("127.0.0.1" port({port}) transport("tcp") template("${{MSG}}\\n")); }};\n'
            "log { source(s_file); destination(d_net); };\n"
        )
        env = {**os.environ, "LD_LIBRARY_PATH": str(SYSLOG_NG_ROOT / "usr/lib/syslog-ng")}
        for role in ("server", "client"):
            self.popen(
                [
                    str(SYSLOG_NG_ROOT / "usr/sbin/syslog-ng"),
                    "--no-caps",
                    "-F",
                    "-f",
                    str(self.work / f"{role}.conf"),
                    "--module-path",
                    str(SYSLOG_NG_ROOT / "usr/lib/syslog-ng/3.38"),
                    "-p",
                    str(self.work / f"{role}.pid"),
                    "-R",
                    str(self.work / f"{role}.persist"),
                    "-c",
                    str(self.work / f"{role}.ctl"),
                ],
                env=env,
            )
            if role == "server":
                wait_for(lambda: _listening(port), 20, 0.05)


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


def measure(
    kind: type[Contestant], root: Path, total_bytes: int, latency_lines: int, probe_budget_s: float = PROBE_BUDGET_S
) -> Result:
    work, origin, dest = new_pipe(root, kind.name.replace(" ", ""))
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
        cpu_before_probes = sum(cpu_seconds(p) for p in pids)
        budget = time.monotonic() + probe_budget_s
        with open(origin, "ab") as f:
            for i in range(latency_lines):
                if time.monotonic() > budget:
                    result.notes.append(f"{i} latency probes in {probe_budget_s:.0f} s")
                    break
                f.write(b"latency probe %06d\n" % i)
                f.flush()
                want = file_size(origin)
                t0 = time.perf_counter()
                wait_for(lambda w=want: file_size(dest) >= w, 5, 0.0001)  # type: ignore[misc]
                delays.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.01)
        # Both ends' CPU per probe line (the cost of one small append, issue 12's per-event figure).
        result.cpu_ms_per_line = (sum(cpu_seconds(p) for p in pids) - cpu_before_probes) / max(len(delays), 1) * 1000
        delays.sort()
        result.p50_ms = statistics.median(delays)
        result.p99_ms = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        result.rss_mb = max((peak_rss_mb(p) for p in contestant.pids()), default=0.0)
        wait_for(lambda: file_size(dest) >= file_size(origin), 10, 0.01)
        result.exact = digest(origin) == digest(dest)
        if isinstance(contestant, Tcppipe):
            ratio = contestant.wire_ratio()
            if ratio is not None and ratio > 1.01:
                result.notes.append(f"wire bytes 1:{ratio:.1f}")
    finally:
        contestant.stop()
    return result


class PacedWriter:
    """Appends numbered lines at ``rate`` bytes/s (0: as fast as it can), recording
    (time, size) after each write so a destination size can be turned into a lag."""

    def __init__(self, path: Path, rate: float, seconds: float) -> None:
        self.path, self.rate, self.seconds = path, rate, seconds
        self.log: list[tuple[float, int]] = [(time.monotonic(), file_size(path))]
        self.lines = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        start = time.monotonic()
        written = file_size(self.path)
        base = written
        with open(self.path, "ab") as f:
            while time.monotonic() - start < self.seconds:
                block = b"".join(
                    b"%09d %s\n" % (self.lines + i, b"x" * (40 + (self.lines + i) * 7919 % 150)) for i in range(2000)
                )
                self.lines += 2000
                f.write(block)
                f.flush()
                written += len(block)
                self.log.append((time.monotonic(), written))
                if self.rate:
                    ahead = (written - base) / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)

    def time_of(self, size: int) -> float:
        """When the origin first held ``size`` bytes."""
        index = bisect.bisect_left(self.log, size, key=lambda entry: entry[1])
        return self.log[min(index, len(self.log) - 1)][0]


def new_pipe(root: Path, name: str) -> tuple[Path, Path, Path]:
    """A work directory with an empty origin and the destination's directory."""
    work = root / name
    work.mkdir()
    origin, dest = work / "origin.log", work / "dest" / "origin.log"
    dest.parent.mkdir()
    origin.write_bytes(b"")
    return work, origin, dest


def sustained(kind: type[Contestant], root: Path, seconds: float, rate: float) -> tuple[float, float, float]:
    """A writer appending at ``rate`` for ``seconds``: (MB/s delivered while it wrote,
    lag p50 and max in seconds, sampled every 20 ms)."""
    work, origin, dest = new_pipe(root, kind.name.replace(" ", "") + "-sustained")
    contestant = kind(work)
    try:
        contestant.start(origin, dest)
        writer = PacedWriter(origin, rate, seconds)
        writer.thread.start()
        lags = []
        started = time.monotonic()
        for _ in range(int(seconds / 0.02) + 1):
            time.sleep(0.02)
            now, landed = time.monotonic(), file_size(dest)
            lags.append(now - writer.time_of(landed) if landed < file_size(origin) else 0.0)
        delivered = file_size(dest)
        elapsed = time.monotonic() - started
        writer.thread.join(timeout=30)
        # No wait for a slow peer to drain its backlog: the figures are those of the window.
    finally:
        contestant.stop()
    lags.sort()
    return delivered / elapsed / 1e6, statistics.median(lags), lags[-1]


def kill9_run(root: Path, rate: float, seconds: float = 12.0) -> tuple[int, int, int, bool]:
    """tcppipe with a writer at ``rate`` B/s, kill -9 of the client, the server, the
    client and the server at 1/5 .. 4/5 of the run, each restarted at once:
    (lines written, lost, duplicated, byte-exact)."""
    work, origin, dest = new_pipe(root, f"kill9-{int(rate)}")
    contestant = Tcppipe(work)
    try:
        contestant.start(origin, dest)
        writer = PacedWriter(origin, rate, seconds)
        writer.thread.start()
        for side in ("client", "server", "client", "server"):
            time.sleep(seconds / 5)
            contestant.kill9_and_restart(side)
        writer.thread.join(timeout=seconds + 30)
        wait_for(lambda: file_size(dest) >= file_size(origin), 120, 0.01)
        time.sleep(0.5)  # anything extra (a duplicate) would arrive now
    finally:
        contestant.stop()
    counts: dict[bytes, int] = {}
    with open(dest, "rb") as f:
        for line in f:
            key = line[:9]
            counts[key] = counts.get(key, 0) + 1
    lost = writer.lines - len(counts)
    duplicated = sum(c - 1 for c in counts.values())
    return writer.lines, lost, duplicated, digest(origin) == digest(dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="64 MB, 200 latency probes (at most 10 s), 3 s writer, no kill -9 runs"
    )
    parser.add_argument("--mb", type=int, default=256, help="catch-up size in MB (256)")
    parser.add_argument("--writer-mb-s", type=float, default=160, help="sustained writer's rate, 0 = flat out (160)")
    parser.add_argument("--only", default="", help="comma-separated contestants (tcppipe,tcppipe -z,socat,...)")
    args = parser.parse_args()
    total = (64 if args.quick else args.mb) * 1_000_000
    probes = 200 if args.quick else 1000
    writer_s = 3.0 if args.quick else 10.0
    probe_budget_s = 10.0 if args.quick else PROBE_BUDGET_S
    kinds: list[type[Contestant]] = [Tcppipe, TcppipeZ]
    if shutil.which("socat") and shutil.which("tail"):
        kinds.append(SocatFloor)
    if shutil.which("rsyslogd"):
        kinds.append(Rsyslog)
    if (SYSLOG_NG_ROOT / "usr/sbin/syslog-ng").exists():
        kinds.append(SyslogNg)
    if args.only:
        wanted = set(args.only.split(","))
        kinds = [k for k in kinds if k.name.split()[0] in wanted or k.name in wanted]
        if "tcppipe" in wanted and "tcppipe -z" not in wanted:
            kinds = [k for k in kinds if k is not TcppipeZ]
    root = Path(tempfile.mkdtemp(prefix="tcppipe-bench."))
    print(
        f"file -> TCP (loopback) -> file, {total / 1e6:.0f} MB of access-log lines, {probes} latency probes,"
        f" a {args.writer_mb_s:.0f} MB/s writer for {writer_s:.0f} s; {os.cpu_count()} CPUs",
        flush=True,
    )
    results = []
    kill_rows = []
    try:
        for kind in kinds:
            result = measure(kind, root, total, probes, probe_budget_s)
            result.sustained_mb_s, result.lag_p50_s, result.lag_max_s = sustained(
                kind, root, writer_s, args.writer_mb_s * 1e6
            )
            results.append(result)
            print(f"  {kind.name}: done", flush=True)
        if not args.quick and Tcppipe in kinds:
            for rate in (2e6, 10e6):
                kill_rows.append((rate, *kill9_run(root, rate)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours = results[0]
    header = (
        f"{'contestant':<16}{'catch-up MB/s':>14}{'CPU s/GB':>10}{'RSS MB':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CPU ms/line':>12}{'writer MB/s':>12}{'lag p50 s':>10}{'lag max s':>10}  exact"
    )
    print(header)
    for r in results:
        print(
            f"{r.name:<16}{r.catchup_mb_s:>14.1f}{r.cpu_s_per_gb:>10.2f}{r.rss_mb:>8.1f}{r.p50_ms:>8.2f}"
            f"{r.p99_ms:>8.2f}{r.cpu_ms_per_line:>12.3f}{r.sustained_mb_s:>12.1f}{r.lag_p50_s:>10.3f}{r.lag_max_s:>10.3f}"
            f"  {'yes' if r.exact else 'NO'}  {'; '.join(r.notes)}"
        )
    for r in results[1:]:
        print(
            f"tcppipe vs {r.name}: catch-up x{ours.catchup_mb_s / max(r.catchup_mb_s, 1e-9):.2f}, "
            f"CPU/GB x{ours.cpu_s_per_gb / max(r.cpu_s_per_gb, 1e-9):.2f}, "
            f"p50 x{ours.p50_ms / max(r.p50_ms, 1e-9):.2f}, "
            f"CPU/line x{ours.cpu_ms_per_line / max(r.cpu_ms_per_line, 1e-9):.2f}, "
            f"writer rate x{ours.sustained_mb_s / max(r.sustained_mb_s, 1e-9):.2f}"
        )
    for rate, lines, lost, duplicated, exact in kill_rows:
        print(
            f"tcppipe, kill -9 client/server/client/server in 12 s at {rate / 1e6:.0f} MB/s: "
            f"{lines} lines, lost {lost}, duplicated {duplicated}, byte-exact {'yes' if exact else 'NO'}"
        )
    return 0 if ours.exact and all(row[2] == row[3] == 0 and row[4] for row in kill_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
