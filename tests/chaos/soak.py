"""Chaos soak: real tcppiped and tcppipe processes under faults drawn from a seed.

Writers append numbered, checksummed records of random length (some binary,
some left without their newline for a while). Meanwhile, at random moments:
kill -9 / SIGTERM of either side, origin rotations (with and without SIGHUP,
bursts), destination rotation with SIGHUP, connections cut, stalled (a pulled
cable), slowed and fed in tiny pieces by a proxy, a black hole (new
connections accepted and swallowed) spanning two rotations or a burst of
them, a reset within a second of a rotation with bytes in flight, the
destination filesystem filled (ENOSPC) and made unwritable. At the end every destination must equal
its origin generations byte for byte; the report counts lines written,
delivered, lost and duplicated, faults by kind, and delivery delays.

Needs root (a tmpfs for the destinations; tcppiped runs as nobody so that
permissions bind it). Usage: python -m tests.chaos.soak --minutes 1 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import SyslogSink, free_port
from tests.integration.proxy import Proxy

BIN = Path(sys.executable).parent
NOBODY = 65534
SETTLE_TIMEOUT_S = 180.0
# Longest wait for a reconnect to fall into a black hole: tcppipe's back-off cap (10 s) and a margin.
RECONNECT_WAIT_S = 12.0
# How long each tcppipe may take to open its file at the start before faults begin.
START_WAIT_S = 60.0


def record(seq: int, rng: random.Random) -> bytes:
    """One line: 'SEQ LEN CRC payload\\n', the payload without newlines (binary about a third of the time)."""
    size = min(int(rng.lognormvariate(5, 1.2)) + 1, 20_000)
    if rng.random() < 0.3:
        payload = rng.randbytes(size).replace(b"\n", b"\x0b")
    else:
        payload = rng.randbytes(size // 2 + 1).hex().encode()[:size]
    return b"%d %d %08x " % (seq, len(payload), zlib.crc32(payload)) + payload + b"\n"


def parse_records(data: bytes) -> tuple[list[int], int]:
    """Sequence numbers of the intact records in ``data``, and the count of damaged lines."""
    seqs: list[int] = []
    damaged = 0
    for line in data.split(b"\n")[:-1]:
        try:
            seq, length, crc, payload = line.split(b" ", 3)
            if int(length) == len(payload) and int(crc, 16) == zlib.crc32(payload):
                seqs.append(int(seq))
                continue
        except ValueError:
            pass
        damaged += 1
    return seqs, damaged


@dataclass
class Pipe:
    index: int
    origin: Path
    dest: Path
    proxy: Proxy
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: subprocess.Popen[bytes] | None = None
    held_down: bool = False
    origin_gens: list[Path] = field(default_factory=list)
    dest_gens: list[Path] = field(default_factory=list)
    rotations_while_down: int = 0
    written: int = 0
    written_bytes: int = 0
    pending: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)
    delays: list[float] = field(default_factory=list)

    def client_alive(self) -> bool:
        return self.client is not None and self.client.poll() is None

    def client_holds_origin(self) -> bool:
        """Has the running tcppipe opened FILE yet (a link to it among /proc/PID/fd)?"""
        if self.client is None or not self.client_alive():
            return False
        fds = f"/proc/{self.client.pid}/fd"
        want = os.path.realpath(self.origin)
        with contextlib.suppress(OSError):
            for name in os.listdir(fds):
                with contextlib.suppress(OSError):
                    if os.readlink(os.path.join(fds, name)) == want:
                        return True
        return False

    def origin_files(self) -> list[Path]:
        return [*self.origin_gens, self.origin]

    def dest_files(self) -> list[Path]:
        return [*self.dest_gens, self.dest]

    def dest_bytes(self) -> int:
        total = 0
        for path in self.dest_files():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total


def read_all(paths: list[Path]) -> bytes:
    out = bytearray()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            out += path.read_bytes()
    return bytes(out)


class Writer(threading.Thread):
    """Appends records to one pipe's origin, reopening it by name for each, as a rotating writer does."""

    def __init__(self, pipe: Pipe, seed: int, rate_per_s: float) -> None:
        super().__init__(daemon=True)
        self.pipe, self.rng, self.rate = pipe, random.Random(seed), rate_per_s
        self.halt = threading.Event()

    def run(self) -> None:
        pipe = self.pipe
        for _ in range(10_000_000):
            if self.halt.is_set():
                return
            data = record(pipe.written, self.rng)
            with pipe.lock:
                fd = os.open(pipe.origin, os.O_WRONLY | os.O_APPEND)
                try:
                    if self.rng.random() < 0.03:
                        cut = self.rng.randrange(1, len(data))
                        os.write(fd, data[:cut])
                        self.halt.wait(0.3)  # a line without its newline, for a while
                        os.write(fd, data[cut:])
                    else:
                        os.write(fd, data)
                finally:
                    os.close(fd)
                pipe.written += 1
                pipe.written_bytes += len(data)
                pipe.pending.append((pipe.written_bytes, time.monotonic()))
            self.halt.wait(self.rng.expovariate(self.rate))


class Soak:
    def __init__(self, work: Path, seed: int, pipes: int, rate: float, fs_mb: int) -> None:
        self.work, self.rng = work, random.Random(seed)
        self.seed = seed
        self.destfs = work / "destfs"
        self.destfs.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={fs_mb}m,mode=0755", "tmpfs", str(self.destfs)], check=True
        )
        os.chown(self.destfs, NOBODY, NOBODY)
        self.server_state = work / "server-state"
        self.server_state.mkdir()
        os.chown(self.server_state, NOBODY, NOBODY)
        self.client_state = work / "client-state"
        (work / "origin").mkdir()
        (work / "logs").mkdir()
        self.syslog = SyslogSink(work / "syslog.sock")
        os.chmod(work / "syslog.sock", 0o666)
        os.chmod(work, 0o755)
        self.port = free_port()
        self.pipes: list[Pipe] = []
        lines = []
        for i in range(pipes):
            origin = work / "origin" / f"p{i}.log"
            origin.write_bytes(b"")
            pipe = Pipe(i, origin, self.destfs / f"p{i}.log", Proxy(self.port))
            self.pipes.append(pipe)
            lines.append(f"127.0.0.1:{origin} | {pipe.dest}")
        self.config = work / "tcppipe.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.server: subprocess.Popen[bytes] | None = None
        self.server_held_down = False
        self.faults: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.writers = [Writer(p, seed * 1000 + p.index, rate) for p in self.pipes]
        self.stop_flag = threading.Event()
        self.filler: Path | None = None
        self.spawned = 0
        self.settle_s = SETTLE_TIMEOUT_S

    # -- processes -------------------------------------------------------------------

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        self.spawned += 1
        with open(self.work / "logs" / f"{self.spawned}.err", "wb") as err:
            return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)

    def start_server(self) -> None:
        before = self.syslog.count("listening on")
        self.server = self._spawn(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "--",
                str(BIN / "tcppiped"),
                "-f",
                str(self.config),
                "-p",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--pid-file",
                str(self.server_state / "tcppiped.pid"),
                "--state-dir",
                str(self.server_state),
                "--syslog-address",
                str(self.syslog.path),
                "--foreground",
            ]
        )
        deadline = time.monotonic() + 30
        while self.syslog.count("listening on") <= before and time.monotonic() < deadline:
            if self.server.poll() is not None:
                self.problems.append(f"tcppiped exited with {self.server.returncode} at start")
                return
            time.sleep(0.01)

    def start_client(self, pipe: Pipe) -> None:
        pipe.client = self._spawn(
            [
                str(BIN / "tcppipe"),
                "-f",
                str(pipe.origin),
                "-h",
                "127.0.0.1",
                "-p",
                str(pipe.proxy.port),
                "--state-dir",
                str(self.client_state),
                "--syslog-address",
                str(self.syslog.path),
                "--foreground",
                "--heartbeat",
                "1",
                "--rotate-grace",
                "1",
                "-t",
                "0.5",
            ]
        )
        pipe.rotations_while_down = 0

    def supervise(self) -> None:
        """Restart what ended on its own, as systemd would (bounded by the stop flag)."""
        while not self.stop_flag.wait(0.2):
            if self.server is not None and self.server.poll() is not None and not self.server_held_down:
                self.problems.append(f"tcppiped ended by itself with status {self.server.returncode}")
                self.start_server()
            for pipe in self.pipes:
                if not pipe.held_down and not pipe.client_alive():
                    self.start_client(pipe)

    def monitor(self) -> None:
        """Delivery delay of each record: when the destination's bytes first cover it."""
        while not self.stop_flag.wait(0.01):
            self.measure_delays()

    def measure_delays(self) -> None:
        now = time.monotonic()
        for pipe in self.pipes:
            landed = pipe.dest_bytes()
            while pipe.pending and pipe.pending[0][0] <= landed:
                pipe.delays.append(now - pipe.pending.popleft()[1])

    # -- faults --------------------------------------------------------------------------

    def pause(self, low: float, high: float) -> None:
        self.stop_flag.wait(self.rng.uniform(low, high))

    def kill_client(self, sig: int) -> None:
        pipe = self.rng.choice(self.pipes)
        if not pipe.client_alive():
            self.skipped["client not running"] += 1
            return
        assert pipe.client is not None
        pipe.held_down = True
        pipe.client.send_signal(sig)
        code = pipe.client.wait(timeout=30)
        if sig == signal.SIGTERM and code != 0:
            self.problems.append(f"tcppipe p{pipe.index} exited {code} after SIGTERM")
        self.pause(0, 1.0)
        self.start_client(pipe)
        pipe.held_down = False

    def kill_server(self, sig: int) -> None:
        assert self.server is not None
        self.server_held_down = True
        self.server.send_signal(sig)
        code = self.server.wait(timeout=30)
        if sig == signal.SIGTERM and code != 0:
            self.problems.append(f"tcppiped exited {code} after SIGTERM")
        self.pause(0, 2.0)
        self.start_server()
        self.server_held_down = False

    def rotate_origin(self, pipe: Pipe, hup: bool) -> bool:
        # Documented limit: generations rotated away while tcppipe is down are
        # recovered one deep (the restart searches for the recorded one).
        if not pipe.client_alive() and pipe.rotations_while_down >= 1:
            self.skipped["second rotation while tcppipe is down"] += 1
            return False
        with pipe.lock:
            rotated = pipe.origin.with_name(f"{pipe.origin.name}.{len(pipe.origin_gens) + 1:04d}")
            pipe.origin.rename(rotated)
            pipe.origin.write_bytes(b"")
            pipe.origin_gens.append(rotated)
        if pipe.client_alive() and hup:
            assert pipe.client is not None
            pipe.client.send_signal(signal.SIGHUP)
        if not pipe.client_alive():
            pipe.rotations_while_down += 1
        return True

    def rotate_dest(self) -> None:
        pipe = self.rng.choice(self.pipes)
        if self.server is None or self.server.poll() is not None or not pipe.dest.exists():
            self.skipped["destination rotation with the server down"] += 1
            return
        rotated = pipe.dest.with_name(f"{pipe.dest.name}.{len(pipe.dest_gens) + 1:04d}")
        pipe.dest.rename(rotated)
        pipe.dest_gens.append(rotated)
        self.server.send_signal(signal.SIGHUP)

    def network(self, kind: str) -> None:
        pipe = self.rng.choice(self.pipes)
        proxy = pipe.proxy
        if kind == "cut":
            proxy.cut_all()
        elif kind == "stall":
            for link in proxy.live_links():
                link.stalled.set()
            self.pause(1.0, 4.0)
            for link in proxy.links:
                if link.stalled.is_set():
                    link.cut()
        elif kind == "slow":
            proxy.shaping.delay_s = 0.05
            self.pause(2.0, 4.0)
            proxy.shaping.delay_s = 0.0
        elif kind == "tiny":
            proxy.shaping.chunk_bytes = self.rng.randint(1, 16)
            self.pause(1.0, 3.0)
            proxy.shaping.chunk_bytes = 65536

    def black_hole(self, rotations: int, low: float, high: float) -> None:
        """Swallow a pipe's reconnect and rotate its origin ``rotations`` times (with HUP)
        while tcppipe waits in that one connection attempt, then let it through."""
        pipe = self.rng.choice(self.pipes)
        proxy = pipe.proxy
        if not pipe.client_alive():
            self.skipped["black hole with tcppipe down"] += 1
            return
        proxy.black_hole.set()
        try:
            proxy.cut_all()
            deadline = time.monotonic() + RECONNECT_WAIT_S
            while not proxy.swallowing() and time.monotonic() < deadline and pipe.client_alive():
                self.stop_flag.wait(0.05)
            if not proxy.swallowing():
                self.skipped["black hole: no reconnect came"] += 1
                return
            for i in range(rotations):
                if i:
                    self.pause(low, high)
                self.rotate_origin(pipe, hup=True)
            self.pause(0.2, 1.0)
        finally:
            proxy.black_hole.clear()
        if self.rng.random() < 0.5:
            proxy.cut_all()  # else the swallowed attempt ends at tcppipe's handshake timeout

    def reset_after_rotation(self) -> None:
        """Rotate (HUP now or never), then within a second reset the connection, on a link
        slow enough that the old generation's tail and the new one's head are in flight."""
        pipe = self.rng.choice(self.pipes)
        proxy = pipe.proxy
        slow = self.rng.random() < 0.7
        if slow:
            proxy.shaping.chunk_bytes, proxy.shaping.rate_bytes_s = 4096, 20_000
        try:
            self.pause(0.0, 0.5)
            self.rotate_origin(pipe, hup=self.rng.random() < 0.8)
            self.pause(0.1, 1.0)
            proxy.cut_all()
        finally:
            proxy.shaping.chunk_bytes, proxy.shaping.rate_bytes_s = 65536, 0

    def fill_disk(self) -> None:
        usage = os.statvfs(self.destfs)
        used_mb = (usage.f_blocks - usage.f_bfree) * usage.f_frsize / 1e6
        self.notes.append(f"disk full at {time.monotonic() - self.started:.0f} s: {used_mb:.1f} MB in use before")
        self.filler = self.destfs / "filler"
        try:
            # Unbuffered: a buffered file would raise ENOSPC again when closed, and the
            # filler would stay (a 10-minute soak once kept the disk full for 170 s that way).
            with open(self.filler, "wb", buffering=0) as f:
                block = b"\0" * (1 << 20)
                for _ in range(100_000):
                    try:
                        f.write(block)
                    except OSError:
                        break
            self.pause(1.0, 3.0)
        finally:
            self.filler.unlink(missing_ok=True)
            self.filler = None

    def make_unwritable(self) -> None:
        files = [p for p in self.destfs.iterdir() if p.is_file()]
        os.chmod(self.destfs, 0o555)
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o444)
        for pipe in self.pipes:
            pipe.proxy.cut_all()  # so that reconnects meet the locked destination
        self.pause(1.0, 3.0)
        os.chmod(self.destfs, 0o755)
        for path in self.destfs.iterdir():
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o640)

    def fault_table(self) -> list[tuple[str, int, Callable[[], None]]]:
        def rotate(hup: bool, burst: int) -> Callable[[], None]:
            def act() -> None:
                pipe = self.rng.choice(self.pipes)
                for i in range(burst):
                    if i:
                        self.pause(0.1, 0.3)
                    self.rotate_origin(pipe, hup)

            return act

        return [
            ("kill -9 tcppipe", 3, lambda: self.kill_client(signal.SIGKILL)),
            ("SIGTERM tcppipe", 2, lambda: self.kill_client(signal.SIGTERM)),
            ("kill -9 tcppiped", 2, lambda: self.kill_server(signal.SIGKILL)),
            ("SIGTERM tcppiped", 1, lambda: self.kill_server(signal.SIGTERM)),
            ("rotate origin + HUP", 2, rotate(True, 1)),
            ("rotate origin, no signal", 1, rotate(False, 1)),
            ("rotate origin 3x quickly + HUP", 1, rotate(True, 3)),
            ("rotate destination + HUP", 2, self.rotate_dest),
            ("cut connection", 2, lambda: self.network("cut")),
            ("stall connection (pulled cable)", 1, lambda: self.network("stall")),
            ("slow connection (+50 ms)", 1, lambda: self.network("slow")),
            ("tiny TCP segments", 1, lambda: self.network("tiny")),
            ("black hole spanning two rotations", 1, lambda: self.black_hole(2, 1.0, 2.5)),
            ("reset within a second of a rotation", 2, self.reset_after_rotation),
            ("rotate origin 3x while connecting", 1, lambda: self.black_hole(3, 0.1, 0.3)),
            ("destination disk full", 1, self.fill_disk),
            ("destination unwritable", 1, self.make_unwritable),
        ]

    # -- the run ---------------------------------------------------------------------------

    def run(self, seconds: float) -> bool:
        self.start_server()
        for pipe in self.pipes:
            self.start_client(pipe)
        # A new pipe starts at FILE as it finds it: a rotation before a slow start-up opened FILE
        # would rotate away bytes no tcppipe could know of. Faults begin once each holds FILE.
        deadline = time.monotonic() + START_WAIT_S
        while not all(p.client_holds_origin() for p in self.pipes) and time.monotonic() < deadline:
            self.stop_flag.wait(0.05)
        if not all(p.client_holds_origin() for p in self.pipes):
            self.problems.append(f"a tcppipe had not opened its file {START_WAIT_S:.0f} s after it started")
        for writer in self.writers:
            writer.start()
        helpers = [
            threading.Thread(target=self.supervise, daemon=True),
            threading.Thread(target=self.monitor, daemon=True),
        ]
        for t in helpers:
            t.start()
        table = self.fault_table()
        names, weights = [n for n, _, _ in table], [w for _, w, _ in table]
        actions = {n: a for n, _, a in table}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pause(0.3, 1.5)
            name = self.rng.choices(names, weights)[0]
            try:
                actions[name]()
            except OSError as exc:
                # The driver's own trouble (not tcppipe's): record it, keep going.
                self.problems.append(f"fault {name!r} could not be injected: {exc}")
                self.diagnose()
                continue
            self.faults[name] += 1
        for writer in self.writers:
            writer.halt.set()
        for writer in self.writers:
            writer.join(timeout=10)
        settled = self.settle()
        self.stop_flag.set()
        for t in helpers:
            t.join(timeout=10)
        self.measure_delays()
        return self.report(seconds, settled)

    def diagnose(self) -> None:
        """What fills the destination filesystem (for a failing run's report)."""
        for path in sorted(self.destfs.iterdir()):
            with contextlib.suppress(OSError):
                self.notes.append(f"  {path.name}: {path.stat().st_size} bytes")

    def settle(self) -> bool:
        """Wait (bounded) until every destination holds its origin's bytes."""
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:
            if all(p.dest_bytes() >= sum(f.stat().st_size for f in p.origin_files()) for p in self.pipes):
                time.sleep(0.5)  # nothing more may arrive: a duplicate would show now
                return True
            time.sleep(0.1)
        return False

    def report(self, seconds: float, settled: bool) -> bool:
        written = delivered = lost = duplicated = damaged = 0
        exact_all = settled
        for pipe in self.pipes:
            origin, dest = read_all(pipe.origin_files()), read_all(pipe.dest_files())
            seqs, bad = parse_records(dest)
            counts = collections.Counter(seqs)
            written += pipe.written
            delivered += len(counts)
            lost += sum(1 for s in range(pipe.written) if s not in counts)
            duplicated += sum(c - 1 for c in counts.values())
            damaged += bad
            exact = origin == dest
            exact_all &= exact
            print(
                f"pipe p{pipe.index}: {pipe.written} lines, {len(origin)} bytes in {len(pipe.origin_files())} origin"
                f" generations, {len(pipe.dest_files())} destination files: {'exact' if exact else 'NOT EXACT'}"
            )
        delays = sorted(d for p in self.pipes for d in p.delays)
        print(f"seed {self.seed}, {seconds:.0f} s of faults, {len(self.pipes)} pipes")
        print(
            f"lines written {written}, delivered {delivered}, lost {lost}, duplicated {duplicated}, damaged {damaged}"
        )
        if delays:
            print(
                f"delivery delay: p50 {statistics.median(delays) * 1000:.1f} ms, "
                f"p99 {delays[int(len(delays) * 0.99)] * 1000:.0f} ms, worst {delays[-1]:.2f} s"
            )
        print(f"faults injected ({sum(self.faults.values())}):")
        for name, count in sorted(self.faults.items()):
            print(f"  {count:5d}  {name}")
        for name, count in sorted(self.skipped.items()):
            print(f"  skipped {count}x: {name}")
        for problem in self.problems:
            print(f"problem: {problem}")
        if self.problems:
            for note in self.notes:
                print(note)
        ok = exact_all and lost == 0 and duplicated == 0 and damaged == 0 and not self.problems
        print("RESULT:", "PASS" if ok else "FAIL")
        return ok

    def close(self) -> None:
        self.stop_flag.set()
        procs = [self.server] + [p.client for p in self.pipes]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for pipe in self.pipes:
            pipe.proxy.close()
        self.syslog.close()
        subprocess.run(["umount", "-l", str(self.destfs)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pipes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="records per second per pipe (100)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--settle", type=float, default=SETTLE_TIMEOUT_S, help="seconds to wait for the pipes after the faults (180)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (tmpfs mount, running tcppiped as nobody)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tcppipe-soak."))
    fs_mb = max(128, int(args.minutes * 60 * args.pipes * args.rate * 400 / 1e6 * 3) + 64)
    soak = Soak(work, args.seed, args.pipes, args.rate, fs_mb)
    soak.settle_s = args.settle
    ok = False
    try:
        ok = soak.run(args.minutes * 60)
    finally:
        soak.close()
        if not args.keep and ok:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
