"""1,000 pipes on one tcppiped, each origin getting a line a second.

Three processes besides tcppiped: this driver runs every pipe's client as a
``tcppipe.client.Client`` in one asyncio loop (a thousand client processes do
not fit a 2-core machine), each bound to its own source address
127.0.X.Y so every pipe is a different "host" in the config; a writer appends
one line to each origin every second, spread over the second; a checker
watches the destination directory with inotify and records when each
destination grew. Latency = when a line's last byte was in the destination
minus when it was written (CLOCK_MONOTONIC is shared by the processes).

Run: .venv/bin/python bench/many_pipes.py [--pipes 1000] [--seconds 30]
(as root it raises fs.inotify.max_user_instances for the run and restores it).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, cpu_seconds, free_port, wait_for

from tcppipe.client import Client, ClientOptions
from tcppipe.state import PipeKey

INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def writer(work: Path, pipes: int, seconds: float) -> None:
    """One line a second to each origin, spread evenly over the second."""
    files = [open(work / "origin" / f"{i}.log", "ab", buffering=0) for i in range(pipes)]  # noqa: SIM115
    sizes = [0] * pipes
    log: list[tuple[int, int, float]] = []
    start = time.monotonic()
    step = 1.0 / pipes
    for n in range(int(seconds * pipes)):
        due = start + n * step
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        i = n % pipes
        line = b"%.6f pipe %d line %d of the many-pipes bench\n" % (time.time(), i, n // pipes)
        files[i].write(line)
        sizes[i] += len(line)
        log.append((i, sizes[i], time.monotonic()))
    (work / "writes.json").write_text(json.dumps(log))


def checker(work: Path, seconds: float) -> None:
    """Record (time, size) of every destination each time inotify says it grew."""
    import inotify_simple

    dest = work / "dest"
    inotify = inotify_simple.INotify()
    inotify.add_watch(str(dest), inotify_simple.flags.MODIFY | inotify_simple.flags.CREATE)
    grown: dict[str, list[tuple[float, int]]] = {}
    deadline = time.monotonic() + seconds
    (work / "checker.ready").write_text("")
    while time.monotonic() < deadline:
        for event in inotify.read(timeout=200):
            now = time.monotonic()
            with contextlib.suppress(OSError):
                grown.setdefault(event.name, []).append((now, os.stat(dest / event.name).st_size))
    (work / "grown.json").write_text(json.dumps(grown))


async def drive(work: Path, port: int, pipes: int, seconds: float) -> tuple[int, float]:
    """Run every client until ``seconds`` have passed; (pipes that got READY, driver CPU s)."""
    logger = logging.getLogger("many")
    logger.addHandler(logging.FileHandler(work / "driver.log"))
    logger.setLevel(logging.WARNING)
    ready = 0

    def on_ready() -> None:
        nonlocal ready
        ready += 1

    clients = []
    for i in range(pipes):
        key = PipeKey(str(work / "origin" / f"{i}.log"), "127.0.0.1", port)
        opts = ClientOptions(key, 1.0, False, address(i), str(work / "cstate"), 5.0)
        clients.append(Client(opts, logger, on_ready))
    tasks = []
    for start in range(0, pipes, 100):
        tasks += [asyncio.create_task(c.run()) for c in clients[start : start + 100]]
        await asyncio.sleep(0.2)
    await asyncio.sleep(seconds)
    for c in clients:
        c.request_stop()
    await asyncio.wait(tasks, timeout=30)
    return ready, time.process_time()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the writer writes (30)")
    parser.add_argument("--role", choices=["driver", "writer", "checker"], default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "writer":
        writer(Path(args.work), args.pipes, args.seconds)
        return 0
    if args.role == "checker":
        checker(Path(args.work), args.seconds)
        return 0

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="tcppipe-many."))
    for sub in ("origin", "dest", "cstate"):
        (work / sub).mkdir()
    with open(work / "tcppipe.conf", "w") as conf:
        for i in range(args.pipes):
            (work / "origin" / f"{i}.log").write_bytes(b"")
            (work / "dest" / f"{i}.log").write_bytes(b"")
            conf.write(f"{address(i)}:{work}/origin/{i}.log | {work}/dest/{i}.log\n")
    old_instances = None
    if os.geteuid() == 0 and INOTIFY_INSTANCES.exists():
        old_instances = INOTIFY_INSTANCES.read_text()
        INOTIFY_INSTANCES.write_text(str(max(int(old_instances), args.pipes + 128)))
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "tcppiped"),
            "-f",
            str(work / "tcppipe.conf"),
            "-p",
            str(port),
            "--bind",
            "127.0.0.1",
            "--pid-file",
            str(work / "tcppiped.pid"),
            "--state-dir",
            str(work / "sstate"),
            "--syslog-address",
            str(work / "nosyslog"),
            "--foreground",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "tcppiped.log", "wb"),  # noqa: SIM115
    )
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: (work / "tcppiped.pid").exists(), 20, 0.01)
        warmup = 5.0 + args.pipes / 500
        me = [sys.executable, __file__, "--pipes", str(args.pipes), "--work", str(work)]
        helpers.append(subprocess.Popen([*me, "--role", "checker", "--seconds", str(warmup + args.seconds + 5)]))
        wait_for(lambda: (work / "checker.ready").exists(), 20, 0.01)
        loop_task = asyncio.new_event_loop()

        async def run_all() -> tuple[int, float, float, float, float]:
            driving = asyncio.create_task(drive(work, port, args.pipes, warmup + args.seconds + 2))
            await asyncio.sleep(warmup)
            helpers.append(subprocess.Popen([*me, "--role", "writer", "--seconds", str(args.seconds)]))
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            rss_now, rss_peak = rss_mb(server.pid), rss_mb(server.pid, "VmHWM:")
            ready, driver_cpu = await driving
            return ready, (cpu1 - cpu0) / (t1 - t0), rss_now, rss_peak, driver_cpu

        ready, server_cores, rss_now, rss_peak, driver_cpu = loop_task.run_until_complete(run_all())
        loop_task.close()
        for helper in helpers:
            helper.wait(timeout=60)
        writes = json.loads((work / "writes.json").read_text())
        grown = {name: sorted(v) for name, v in json.loads((work / "grown.json").read_text()).items()}
        delays = []
        missing = 0
        for i, end, written_at in writes:
            series = grown.get(f"{i}.log", [])
            sizes = [s for _, s in series]
            # The first record at or after the write whose size covers the line.
            j = bisect.bisect_left(sizes, end)
            if j == len(series):
                missing += 1
                continue
            delays.append(max(0.0, series[j][0] - written_at))
        delays.sort()
        exact = sum(
            (work / "origin" / f"{i}.log").read_bytes() == (work / "dest" / f"{i}.log").read_bytes()
            for i in range(args.pipes)
        )
        within = sum(d <= 1.0 for d in delays)
        print(
            f"{args.pipes} pipes on one tcppiped, a line a second each, for {args.seconds:.0f} s; "
            f"{os.cpu_count()} CPUs; {ready} pipes got READY"
        )
        print(
            f"lines written {len(writes)}, seen arriving {len(delays)}, not seen {missing}; "
            f"byte-exact destinations {exact} of {args.pipes}"
        )
        if delays:
            print(
                f"append -> destination: p50 {statistics.median(delays) * 1000:.1f} ms, "
                f"p99 {delays[int(len(delays) * 0.99)] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms; "
                f"within 1 s: {within} of {len(writes)} ({100 * within / max(len(writes), 1):.2f}%)"
            )
        print(
            f"tcppiped: RSS {rss_now:.1f} MB (peak {rss_peak:.1f} MB), CPU {server_cores:.3f} cores "
            f"while writing; driver ({args.pipes} clients in one process) CPU {driver_cpu:.1f} s"
        )
        ok = within == len(writes) and exact == args.pipes and rss_peak < 300 and server_cores <= 1.0
        return 0 if ok else 1
    finally:
        for helper in helpers:
            if helper.poll() is None:
                helper.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if old_instances is not None:
            INOTIFY_INSTANCES.write_text(old_instances)
        if not os.environ.get("KEEP_BENCH"):
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
