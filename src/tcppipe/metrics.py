"""Prometheus metrics for tcppiped (``--metrics ADDR:PORT``, opt-in).

Rule 1: nothing on the hot path. A collector reads ``ServerStats`` when the
endpoint is scraped; the event loop only ever updates plain counters.

Rule 2: the endpoint is served from the event loop (``generate_latest`` on a
plain asyncio server), not from prometheus_client's threaded server, where
2,000 half-sent requests held 2,002 threads: each request has
``REQUEST_TIMEOUT_S`` to arrive, at most ``MAX_REQUEST_BYTES``, and at most
``MAX_CONNECTIONS`` are served at once (more are closed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from tcppipe.config import JETSTREAM_PREFIX
from tcppipe.stats import PipeStats, ServerStats
from tcppipe.status import DRAINING, STREAMING

PIPE_LABELS = ["host", "origin", "destination"]


class ServerCollector(Collector):
    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        pipes: list[PipeStats] = list(self.stats.pipes.values())
        counters = [
            ("tcppiped_pipe_bytes", "Origin bytes appended to the destination", "bytes_total"),
            ("tcppiped_pipe_lines", "Newlines among those bytes", "lines_total"),
            ("tcppiped_pipe_wire_bytes", "DATA payload bytes received (after -z)", "wire_bytes_total"),
            ("tcppiped_pipe_reconnects", "Connections after the first", "reconnects"),
            ("tcppiped_pipe_refusals", "Connections refused for this defined pipe", "refusals"),
            ("tcppiped_pipe_rotations", "Origin generations begun after the first", "rotations"),
        ]
        for name, doc, attr in counters:
            metric = CounterMetricFamily(name, doc, labels=PIPE_LABELS)
            for p in pipes:
                metric.add_metric([p.host, p.remote, p.local], getattr(p, attr))
            yield metric
        up = GaugeMetricFamily("tcppiped_pipe_up", "1 while the pipe has a live connection", labels=PIPE_LABELS)
        lag = GaugeMetricFamily("tcppiped_pipe_lag_bytes", "Origin bytes not yet landed", labels=PIPE_LABELS)
        landed = GaugeMetricFamily(
            "tcppiped_pipe_generation_bytes", "Bytes of the current generation landed", labels=PIPE_LABELS
        )
        for p in pipes:
            labels = [p.host, p.remote, p.local]
            up.add_metric(labels, 1 if p.state in (STREAMING, DRAINING) else 0)
            if p.behind is not None:
                lag.add_metric(labels, p.behind)
            if p.generation_bytes is not None:
                landed.add_metric(labels, p.generation_bytes)
        yield from (up, lag, landed)
        # JetStream pipes only (a file destination publishes nothing).
        streamed = [p for p in pipes if p.local.startswith(JETSTREAM_PREFIX)]
        for name, doc, attr in (
            ("tcppiped_pipe_publishes", "Publishes JetStream acknowledged", "publishes"),
            (
                "tcppiped_pipe_rejected_appends",
                "Publishes rejected: another receiver appended first",
                "rejected_appends",
            ),
        ):
            metric = CounterMetricFamily(name, doc, labels=PIPE_LABELS)
            for p in streamed:
                metric.add_metric([p.host, p.remote, p.local], getattr(p, attr))
            yield metric
        latency = GaugeMetricFamily(
            "tcppiped_pipe_publish_latency_seconds", "The last publish's time to acknowledgement", labels=PIPE_LABELS
        )
        for p in streamed:
            if p.publish_latency_s is not None:
                latency.add_metric([p.host, p.remote, p.local], p.publish_latency_s)
        yield latency
        s = self.stats
        yield GaugeMetricFamily("tcppiped_connections_open", "Connections open now", value=s.connections_open)
        for name, doc, value in (
            ("tcppiped_connections", "Connections accepted", s.connections_total),
            ("tcppiped_bad_frames", "Connections dropped for a protocol error", s.bad_frames_total),
            ("tcppiped_errors", "Pipes dropped for a destination error", s.errors_total),
            ("tcppiped_refusals", "Connections answered with REFUSE", s.refusals_total),
        ):
            yield CounterMetricFamily(name, doc, value=value)


REQUEST_TIMEOUT_S: Final = 5.0
MAX_REQUEST_BYTES: Final = 8 * 1024
MAX_CONNECTIONS: Final = 16


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve_metrics(host: str, port: int, stats: ServerStats) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` on the running loop (OSError if the address is taken)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(stats))
    open_now = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            if open_now > MAX_CONNECTIONS:
                return
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readuntil(b"\r\n\r\n")
                method, target, _version = request.split(b"\r\n", 1)[0].split(b" ", 2)
                if method != b"GET":
                    writer.write(_response("405 Method Not Allowed", b"GET only\n"))
                elif target.split(b"?", 1)[0] != b"/metrics":
                    writer.write(_response("404 Not Found", b"see /metrics\n"))
                else:
                    writer.write(_response("200 OK", generate_latest(registry), CONTENT_TYPE_LATEST))
                await writer.drain()
        except (TimeoutError, ValueError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow, broken or oversized request gets nothing
        finally:
            open_now -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
