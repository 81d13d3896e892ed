"""Catch-up into JetStream R1 and R3 beside the file destination, and publish latency, in one run.

A 3-node cluster on loopback (``tests/integration/nats_cluster.py``); for each
destination a fresh tcppiped and ``tcppipe -n`` over the same access-log file,
timed from the client's start until the destination holds every byte (a
file's size; a subject's last message's end offset). CPU is tcppiped's
utime + stime over that time. Latency: one small append at a time through a
``JetStreamStore`` into R3, from publish to JetStream's acknowledgement
(what an ACK to the client waits for), p50 and p99.

Run: .venv/bin/python bench/jetstream.py [--mb 64] [--latency-samples 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import BIN, cpu_seconds, file_size, free_port, make_data, wait_for
from tests.integration.nats_cluster import NatsCluster

from tcppipe import config
from tcppipe.config import JetStreamTarget
from tcppipe.jetstream import JetStreamHub, NatsOptions
from tcppipe.protocol import GenerationId
from tcppipe.stats import PipeStats

CATCH_UP_LIMIT_S = 300.0


def subject_end(hub: JetStreamHub, loop: asyncio.AbstractEventLoop, target: JetStreamTarget) -> int:
    _seq, record = loop.run_until_complete(hub.last_message(target))
    return 0 if record is None else record.end


def catch_up(work: Path, origin: Path, total: int, cluster: NatsCluster, mode: str) -> tuple[float, float]:
    """(MB/s, CPU s/GB of tcppiped) for one destination: "file", "R1" or "R3"."""
    run = work / mode
    run.mkdir()
    port = free_port()
    if mode == "file":
        local = str(run / "dest")
        extra: list[str] = []
    else:
        local = f"jetstream:BENCH_{mode}/bench.{mode}"
        extra = ["--nats", cluster.urls, "--nats-replicas", mode[1:]]
    (run / "tcppipe.conf").write_text(f"127.0.0.1:{origin} | {local}\n")
    common = ["--syslog-address", str(run / "no-syslog"), "--state-dir", str(run / "state")]
    server = subprocess.Popen(
        [
            *(str(BIN / "tcppiped"), "-f", str(run / "tcppipe.conf"), "-p", str(port), "--bind", "127.0.0.1"),
            *("--pid-file", str(run / "pid"), "--foreground", *common, *extra),
        ],
        stderr=open(run / "server.err", "wb"),  # noqa: SIM115 - the child holds it
    )
    hub = JetStreamHub(NatsOptions(tuple(cluster.urls.split(","))), logging.getLogger("bench"))
    loop = asyncio.new_event_loop()
    client = None
    try:
        loop.run_until_complete(hub.connect())
        from tests.integration.conftest import can_connect

        if not wait_for(lambda: can_connect(port), 30, 0.01):
            raise SystemExit(f"tcppiped ({mode}) did not listen: {(run / 'server.err').read_text()[-500:]}")
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        client = subprocess.Popen(
            [
                str(BIN / "tcppipe"),
                "-f",
                str(origin),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-n",
                "--foreground",
                *common,
            ],
            stderr=subprocess.DEVNULL,
        )
        if mode == "file":
            landed = wait_for(lambda: file_size(Path(local)) >= total, CATCH_UP_LIMIT_S, 0.002)
        else:
            target = config.parse_jetstream(local)
            assert isinstance(target, JetStreamTarget)
            landed = wait_for(lambda: subject_end(hub, loop, target) >= total, CATCH_UP_LIMIT_S, 0.005)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(server.pid) - cpu0
        if not landed:
            raise SystemExit(f"{mode}: not every byte landed in {CATCH_UP_LIMIT_S:.0f} s")
        return total / elapsed / 1e6, cpu / (total / 1e9)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
        loop.run_until_complete(hub.close())
        loop.close()


async def publish_latency(cluster: NatsCluster, samples: int) -> tuple[float, float]:
    """(p50, p99) in ms of one compare-and-append publish of a 120-byte line into R3."""
    target = JetStreamTarget("BENCH_LATENCY", "bench.latency")
    entries, _ = config.parse(f"127.0.0.1:/var/log/latency | {target}", "bench")
    hub = JetStreamHub(NatsOptions(tuple(cluster.urls.split(",")), replicas=3), logging.getLogger("bench"))
    await hub.connect()
    try:
        assert await hub.ensure_streams(entries) == []
        store = await hub.open_store(target, PipeStats("127.0.0.1", "/var/log/latency", str(target)))
        store.begin_generation(GenerationId(1, 1, 0, "0" * 64), 0)
        times = []
        for _ in range(samples):
            store.write(b"x" * 119 + b"\n")
            started = time.perf_counter()
            await store.publish_next()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return statistics.median(times), times[int(len(times) * 0.99) - 1]
    finally:
        await hub.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="size of the origin file (64)")
    parser.add_argument("--latency-samples", type=int, default=2000)
    parser.add_argument("--max-payload", type=int, default=None, help="the servers' max_payload (NATS: 1 MiB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tcppipe-bench-js-") as tmp:
        work = Path(tmp)
        origin = work / "access.log"
        total = make_data(origin, args.mb * 1_000_000)
        cluster = NatsCluster(work / "nats", max_payload=args.max_payload)
        cluster.start()
        try:
            print(f"catch-up of {total / 1e6:.0f} MB, tcppipe -n, loopback, 3-node cluster")
            print(f"{'destination':<12} {'MB/s':>8} {'CPU s/GB':>9}")
            for mode in ("file", "R1", "R3"):
                rate, cpu = catch_up(work, origin, total, cluster, mode)
                print(f"{mode:<12} {rate:8.1f} {cpu:9.2f}", flush=True)
            p50, p99 = asyncio.run(publish_latency(cluster, args.latency_samples))
            print(f"R3 append->acknowledged (one 120-byte publish at a time): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
