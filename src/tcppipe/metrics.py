"""Prometheus metrics for tcppiped (``--metrics ADDR:PORT``, opt-in).

Rule 1: nothing on the hot path. A collector reads ``ServerStats`` when the
endpoint is scraped (prometheus_client's HTTP thread); the event loop only
ever updates plain counters.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

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
        s = self.stats
        yield GaugeMetricFamily("tcppiped_connections_open", "Connections open now", value=s.connections_open)
        for name, doc, value in (
            ("tcppiped_connections", "Connections accepted", s.connections_total),
            ("tcppiped_bad_frames", "Connections dropped for a protocol error", s.bad_frames_total),
            ("tcppiped_errors", "Pipes dropped for a destination error", s.errors_total),
            ("tcppiped_refusals", "Connections answered with REFUSE", s.refusals_total),
        ):
            yield CounterMetricFamily(name, doc, value=value)


def serve_metrics(host: str, port: int, stats: ServerStats) -> None:
    """Start the scrape endpoint in a daemon thread (OSError if the address is taken)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(stats))
    start_http_server(port, addr=host, registry=registry)
