"""-z: zstd on the wire, agreed in the handshake, byte-exact, and faster on a slow link."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, kill9, same_bytes, size, wait_until
from tests.integration.proxy import Proxy

SLOW_LINK_BYTES_S = 4 * 1024 * 1024


@pytest.fixture
def slow_link(pipes: Pipes) -> Iterator[tuple[Pipes, Proxy]]:
    proxy = Proxy(pipes.port)
    proxy.shaping.rate_bytes_s = SLOW_LINK_BYTES_S
    try:
        yield pipes, proxy
    finally:
        proxy.close()


def access_log(lines: int) -> bytes:
    return b"".join(
        b'10.0.%d.%d - - [25/Nov/2026:10:%02d:%02d +0000] "GET /api/v1/items/%d HTTP/1.1" 200 %d "-" "curl/8.5"\n'
        % (i % 200, i * 7 % 250, i // 60 % 60, i % 60, i, i * 37 % 9000)
        for i in range(lines)
    )


def send_through(pipes: Pipes, proxy: Proxy, origin: Path, dest: Path, *extra: str) -> tuple[float, int]:
    """Seconds from start until the destination is exact, and bytes that crossed the link."""
    before = proxy.shaping.bytes_up
    args = pipes.client_args(origin, *extra)
    args[args.index("-p") + 1] = str(proxy.port)
    started = time.monotonic()
    client = pipes.spawn(args)
    wait_until(lambda: same_bytes(origin, dest), timeout=120, what="the copy through the slow link")
    elapsed = time.monotonic() - started
    kill9(client)
    return elapsed, proxy.shaping.bytes_up - before


def test_compressed_pipe_is_exact_and_faster_on_a_slow_link(slow_link: tuple[Pipes, Proxy]) -> None:
    """Same 16 MB of access log through a 4 MB/s link: -z sends under a third of the bytes, in less time."""
    pipes, proxy = slow_link
    data = access_log(160_000)
    plain_origin, plain_dest = pipes.pipe("plain.log")
    packed_origin, packed_dest = pipes.pipe("packed.log")
    plain_origin.write_bytes(data)
    packed_origin.write_bytes(data)
    pipes.start_server()

    plain_s, plain_wire = send_through(pipes, proxy, plain_origin, plain_dest)
    packed_s, packed_wire = send_through(pipes, proxy, packed_origin, packed_dest, "-z")

    assert plain_wire >= len(data)
    assert packed_wire < len(data) / 3, f"{packed_wire} bytes on the wire for {len(data)}"
    assert packed_s < plain_s, f"-z took {packed_s:.1f} s, plain {plain_s:.1f} s"
    assert pipes.syslog.count("with progress zstd") == 1


def test_compressed_pipe_resumes_exactly_after_kill9(pipes: Pipes) -> None:
    """Offsets count origin bytes, not wire bytes: a kill -9 mid-stream with -z resumes exactly."""
    origin, dest = pipes.pipe("z.log")
    origin.write_bytes(access_log(200_000))
    pipes.start_server()
    client = pipes.start_client(origin, "-z")
    wait_until(lambda: size(dest) > 0, what="the first compressed bytes")
    kill9(client)
    with open(origin, "ab") as f:
        f.write(b"\x00binary\xfftail without newline")
    pipes.start_client(origin, "-z")
    wait_until(lambda: same_bytes(origin, dest), what="exact after the restart")
