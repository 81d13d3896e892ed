"""Thousands of hostile connections of each shape: tcppiped stays small and an authorised pipe keeps flowing.

Issue 11 #1 and #8: strangers (connections not yet answered READY) share a
small budget of their own, so what they cost is bounded and they never
starve a real pipe. Under TLS a stranger gets no TLS layer until its first
TLS record is whole, and one source has at most a few handshakes at once.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tcppipe.protocol import MAX_DATA_BYTES, Decoder, FrameType, Hello, NeedData, Refuse, encode
from tcppipe.session import MAX_HELLO_BYTES
from tcppipe.strangers import MAX_TLS_HANDSHAKES_PER_SOURCE
from tests.integration.certs import Authority, Issued
from tests.integration.conftest import Pipes, peak_rss_mb, reset_peak_rss, rss_mb, wait_until

CONNECTIONS = 4000
SOURCES = 20
RSS_LIMIT_MB = 150
# An authorised line must still land this fast while the strangers hold on.
LATENCY_LIMIT_S = 2.0


def client_hello() -> bytes:
    """The first flight of a TLS client: one record holding a whole ClientHello."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLO_RECORD = client_hello()

# What each stranger sends, in passes over all connections (the DATA header's
# byte comes after the server has read the header: that is what made it grow).
SHAPES: dict[str, list[bytes]] = {
    "idle": [],
    "data-header": [struct.pack("!BBII", FrameType.DATA, 0, MAX_DATA_BYTES, 0), b"x"],
    "half-hello": [struct.pack("!BBII", FrameType.HELLO, 0, MAX_HELLO_BYTES, 0) + b"{" * (MAX_HELLO_BYTES // 2)],
    # Under TLS: nothing at all; half a ClientHello record; bytes that are no TLS;
    # a whole TLS record of junk (OpenSSL's to reject); a whole ClientHello, then silence.
    "tls-no-handshake": [],
    "tls-partial-hello": [HELLO_RECORD[: len(HELLO_RECORD) // 2]],
    "tls-garbage": [b"GET / HTTP/1.1\r\nHost: archive\r\n\r\n"],
    "tls-junk-record": [b"\x16\x03\x01\x00\x40" + b"\xff" * 0x40],
    "tls-stalled-hello": [HELLO_RECORD],
}


@contextlib.contextmanager
def hostile(port: int, parts: list[bytes], count: int = CONNECTIONS) -> Iterator[list[socket.socket]]:
    """``count`` connections from SOURCES loopback addresses, each having sent ``parts``, held open."""
    held: list[socket.socket] = []
    try:
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.settimeout(10)
            s.bind((f"127.0.2.{i % SOURCES + 1}", 0))
            with contextlib.suppress(OSError):  # closed by the server already: allowed
                s.connect(("127.0.0.1", port))
        for part in parts:
            for s in held:
                with contextlib.suppress(OSError):
                    s.sendall(part)
        yield held
    finally:
        for s in held:
            s.close()


def line_latency(origin: Path, dest: Path, n: int) -> float:
    """Append one line to the origin; seconds until the destination holds it."""
    line = f"authorised line {n}\n".encode()
    started = time.monotonic()
    with open(origin, "ab") as f:
        f.write(line)
    wait_until(lambda: dest.exists() and dest.read_bytes().endswith(line), timeout=10, what="the line to land")
    return time.monotonic() - started


def tls_options(pipes: Pipes) -> tuple[list[str], list[str], Issued, Authority]:
    """Mutual TLS: the server's options, the client's, and the client's certificate with its CA."""
    ca = Authority(pipes.tmp, "ca")
    server_cert = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"])
    client_cert = ca.issue("client", ips=["127.0.0.1"])
    server = ["--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key), "--tls-ca", str(ca.pem)]
    client = ["--tls-cert", str(client_cert.cert), "--tls-key", str(client_cert.key), "--tls-ca", str(ca.pem)]
    return server, client, client_cert, ca


@pytest.mark.parametrize("shape", list(SHAPES))
def test_hostile_connections_keep_the_server_small_and_pipes_flowing(pipes: Pipes, shape: str) -> None:
    """4,000 strangers of one shape from 20 addresses: peak RSS under 150 MB, a live line lands within 2 s."""
    tls: list[str] = []
    client_tls: list[str] = []
    if shape.startswith("tls"):
        tls, client_tls, _cert, _ca = tls_options(pipes)
    origin, dest = pipes.pipe("live.log")
    server = pipes.start_server(*tls)
    pipes.start_client(origin, *client_tls)
    line_latency(origin, dest, 0)
    before = rss_mb(server.pid)
    reset_peak_rss(server.pid)
    latencies = []
    with hostile(pipes.port, SHAPES[shape]):
        for n in range(1, 6):
            latencies.append(line_latency(origin, dest, n))
        during = rss_mb(server.pid)
    peak = peak_rss_mb(server.pid)
    assert server.poll() is None
    print(
        f"{shape}: tcppiped RSS {before:.1f} MB before, {during:.1f} MB held, {peak:.1f} MB peak;"
        f" latency max {max(latencies):.3f} s"
    )
    assert peak < RSS_LIMIT_MB
    assert max(latencies) < LATENCY_LIMIT_S


FLOOD_HELD = 400  # connections the flood keeps open at once (tcppiped's budget holds 512 strangers)
HANDSHAKES = 5  # from another source, one after another, during the flood
# Flood connections opened while each of those handshakes is in flight: more than the 64 TLS
# handshakes tcppiped holds at once, so a budget that closes the oldest of all would close it.
FLOOD_WHILE_IN_FLIGHT = 120


class Flood:
    """Sources taking turns to open connection after connection, each sending a whole ClientHello and then
    nothing; the oldest are closed past FLOOD_HELD."""

    def __init__(self, port: int, sources: list[str]) -> None:
        self.port, self.sources = port, sources
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def wait_for_more(self) -> None:
        """Return once the flood has opened FLOOD_WHILE_IN_FLIGHT more connections."""
        opened = self.opened
        wait_until(lambda: self.opened >= opened + FLOOD_WHILE_IN_FLIGHT, what="the flood to go on")

    def _run(self) -> None:
        held: deque[socket.socket] = deque()
        try:
            while not self._stop.is_set():
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.settimeout(2)
                with contextlib.suppress(OSError):  # closed by tcppiped already: allowed
                    s.bind((self.sources[self.opened % len(self.sources)], 0))
                    s.connect(("127.0.0.1", self.port))
                    s.sendall(HELLO_RECORD)
                self.opened += 1
                while len(held) > FLOOD_HELD:
                    held.popleft().close()
        finally:
            for s in held:
                s.close()


def answered_handshake(
    port: int, source: str, cert: Issued, ca: Authority, in_flight: Callable[[], None] = lambda: None
) -> bool:
    """A mutual-TLS handshake from ``source``, calling ``in_flight`` between sending the ClientHello
    and reading the server's answer, then a HELLO for an undefined file: True if REFUSE came back."""
    context = ssl.create_default_context(cafile=str(ca.pem))
    context.load_cert_chain(str(cert.cert), str(cert.key))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    decoder = Decoder()

    def receive() -> bool:
        data = sock.recv(65536)
        incoming.write(data)
        return bool(data)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        try:
            sock.connect(("127.0.0.1", port))
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            sock.sendall(outgoing.read())
            in_flight()
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    if not receive():
                        return False
            tls.write(encode(Hello("/nowhere/undefined.log")))
            sock.sendall(outgoing.read())
            while isinstance(event := decoder.next_event(), NeedData):
                try:
                    decoder.feed(tls.read(65536))
                except ssl.SSLWantReadError:
                    if not receive():
                        return False
            return isinstance(event, Refuse)
        except (OSError, ssl.SSLError):
            return False


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read what ``sock`` holds; True if the server has closed it, waiting up to ``timeout`` for that."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed
    return True


def still_open(sock: socket.socket) -> bool:
    """Read what ``sock`` holds without waiting; True unless the server has closed it."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def answered_yet(sock: socket.socket) -> bool:
    """Whether the server has sent ``sock`` anything (or closed it), without waiting or reading."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        pass
    finally:
        sock.settimeout(10)
    return True


def test_a_sources_ninth_tls_handshake_waits_for_one_of_its_eight(pipes: Pipes) -> None:
    """While one address has eight stalled TLS handshakes its ninth gets no answer (another address's
    handshake does, and the eight stay open); when one of the eight ends, the ninth is answered."""
    tls, _client_tls, cert, ca = tls_options(pipes)
    pipes.start_server(*tls)
    held: list[socket.socket] = []
    try:
        for n in range(MAX_TLS_HANDSHAKES_PER_SOURCE + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.settimeout(10)
            s.bind(("127.0.0.5", 0))
            s.connect(("127.0.0.1", pipes.port))
            s.sendall(HELLO_RECORD)
            if n < MAX_TLS_HANDSHAKES_PER_SOURCE:
                assert s.recv(1), "the server answers the ClientHello: this handshake is in progress"
        *eight, ninth = held
        # A whole handshake from elsewhere, begun after the ninth's ClientHello was in.
        assert answered_handshake(pipes.port, "127.0.0.6", cert, ca)
        assert not answered_yet(ninth)
        assert all(still_open(s) for s in eight)
        eight[0].close()
        assert ninth.recv(1), "the ninth's turn came"
    finally:
        for s in held:
            s.close()


def test_a_hosts_many_tls_pipes_connecting_at_once_are_all_served(pipes: Pipes) -> None:
    """40 TLS handshakes begun at once from one address (one tcppipe for many files) are all answered."""
    tls, _client_tls, cert, ca = tls_options(pipes)
    pipes.start_server(*tls)
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _n: answered_handshake(pipes.port, "127.0.0.7", cert, ca), range(40)))
    assert answers.count(True) == 40
    assert pipes.syslog.count("dropped") == 0


# One flooding source, and eight: together these could hold all 64 TLS handshakes at once.
@pytest.mark.parametrize("flooders", [1, 8])
def test_a_handshake_flood_cannot_close_another_sources_handshake(pipes: Pipes, flooders: int) -> None:
    """While 127.0.0.2 (and up to 127.0.0.9) flood stalled TLS handshakes, 5 slow handshakes from
    127.0.0.100 each get their answer and a live line lands within 2 s."""
    tls, client_tls, cert, ca = tls_options(pipes)
    origin, dest = pipes.pipe("live.log")
    server = pipes.start_server(*tls)
    pipes.start_client(origin, *client_tls)
    line_latency(origin, dest, 0)
    answered = 0
    latencies = []
    with Flood(pipes.port, [f"127.0.0.{2 + i}" for i in range(flooders)]) as flood:
        wait_until(lambda: flood.opened > 1000, what="the flood to be under way")
        started = time.monotonic()
        for n in range(HANDSHAKES):
            # In flight while the flood opens more connections than tcppiped holds handshakes.
            answered += answered_handshake(pipes.port, "127.0.0.100", cert, ca, flood.wait_for_more)
            if n % 2 == 0:
                latencies.append(line_latency(origin, dest, n + 1))
        took = time.monotonic() - started
        opened = flood.opened
    assert server.poll() is None
    print(f"{flooders} flooding: {answered}/{HANDSHAKES} answered in {took:.2f} s amid {opened} flood connections;")
    print(f"latency max {max(latencies):.3f} s")
    assert answered == HANDSHAKES
    assert max(latencies) < LATENCY_LIMIT_S
