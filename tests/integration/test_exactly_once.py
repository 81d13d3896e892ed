"""Exactly once against the four failures of issue 10, with real processes on loopback.

Every origin line is numbered (``numbered_lines``), so a failure says how many
lines were lost, duplicated or damaged, and which.
"""

from __future__ import annotations

import itertools
import logging
import logging.handlers
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, kill9, same_bytes, size, wait_until
from tests.integration.proxy import Proxy
from tests.integration.test_network import client_via
from tests.integration.test_restart import numbered_lines

LINE = re.compile(rb"line (\d{8}) ")


def line_numbers(data: bytes) -> list[int]:
    """The number of each line in ``data`` (-1 for a line that is not a whole numbered line)."""
    numbers = []
    for line in data.split(b"\n")[:-1]:
        m = LINE.match(line)
        ok = m is not None and line + b"\n" == numbered_lines(int(m.group(1)), 1)
        numbers.append(int(m.group(1)) if ok and m is not None else -1)
    return numbers


def ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``1..3, 7`` (at most 8 ranges)."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("..")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('..')[0]}..{n}"
        else:
            out.append(str(n))
    return ", ".join(out[:8]) + (f", ... ({len(out)} ranges)" if len(out) > 8 else "")


def compare(expected: bytes, got: bytes) -> str:
    """What differs between the expected and the landed lines, in numbers."""
    want, have = line_numbers(expected), line_numbers(got)
    lost = sorted(set(want) - set(have))
    twice = {n: c for n, c in Counter(have).items() if c > 1 and n >= 0}
    backwards = sum(1 for a, b in itertools.pairwise(have) if b < a and a >= 0 and b >= 0)
    return (
        f"destination holds {len(got)} of {len(expected)} bytes, {len(have)} lines of {len(want)}: "
        f"{len(lost)} lines lost ({ranges(lost)}), {sum(twice.values()) - len(twice)} duplicated "
        f"({ranges(list(twice))}), {have.count(-1)} damaged, {backwards} out of order"
        + ("" if got.endswith(b"\n") or not got else ", ends in a partial line")
    )


def settle(dest: Path, expected: Callable[[], bytes], timeout: float, what: str) -> None:
    """Wait (bounded) for ``dest`` to hold exactly ``expected()``; fail saying which lines differ."""
    deadline = time.monotonic() + timeout
    while True:
        want = expected()
        got = dest.read_bytes() if dest.exists() else b""
        if got == want:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}, {timeout} s on: {compare(want, got)}")
        time.sleep(0.05)


def write_lines(path: Path, start: int, count: int, over_s: float = 0.0, parts: int = 10) -> None:
    """Append lines ``start..start+count-1`` in ``parts`` writes spread over ``over_s`` (a paced writer)."""
    step = -(-count // parts)
    with open(path, "ab") as f:
        for first in range(start, start + count, step):
            f.write(numbered_lines(first, min(step, start + count - first)))
            f.flush()
            if over_s:
                time.sleep(over_s / parts)


def concat(*paths: Path) -> bytes:
    return b"".join(p.read_bytes() for p in paths)


def kernel_queued(port_a: int, port_b: int) -> int:
    """Bytes the kernel holds (sent and not acknowledged, or received and not read) on both
    ends of the loopback TCP connection between two ports."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ends = {int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)}
        if ends == {port_a, port_b}:
            total += sum(int(x, 16) for x in fields[4].split(":"))
    return total


class RotatingWriter(threading.Thread):
    """Python's own RotatingFileHandler writing numbered lines as fast as a busy service.

    It renames FILE to FILE.1 (FILE.1 to FILE.2 ...) when the next line would
    pass ``max_bytes`` and deletes what falls off the end: nobody here wrote it.
    """

    def __init__(self, path: Path, max_bytes: int = 64 * 1024, backups: int = 5, lines_per_tick: int = 100) -> None:
        super().__init__(daemon=True)
        self.handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="ascii"
        )
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.logger = logging.Logger(f"writer:{path}", logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        self.lines_per_tick = lines_per_tick
        self.halt = threading.Event()
        self.written = 0
        self.rollovers = 0
        self.path = path

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                ino = self.path.stat().st_ino
                for line in numbered_lines(self.written, self.lines_per_tick).decode().splitlines():
                    self.logger.info(line)
                    self.written += 1
                self.rollovers += self.path.stat().st_ino != ino
                time.sleep(0.01)
        finally:
            self.handler.close()

    def finish(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        assert not self.is_alive()


def test_generation_that_lives_only_during_a_connection_attempt_arrives(proxied: tuple[Pipes, Proxy]) -> None:
    """Two rotations while a reconnect hangs in a black hole: all three generations arrive, in order."""
    pipes, proxy = proxied
    origin, dest = pipes.pipe("hole.log")
    origin.write_bytes(numbered_lines(0, 100))
    pipes.start_server()
    client = pipes.spawn(client_via(pipes, proxy, origin, "--rotate-grace", "1"))
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    proxy.black_hole.set()
    proxy.cut_all()
    wait_until(proxy.swallowing, what="the reconnect accepted into the black hole")
    attempt = proxy.swallowing()[0]
    first, middle = origin.with_name("hole.log.1"), origin.with_name("hole.log.2")
    origin.rename(first)
    origin.write_bytes(b"")
    client.send_signal(signal.SIGHUP)
    write_lines(origin, 100, 70, over_s=1.5)  # the generation that lives only during the attempt
    origin.rename(middle)
    origin.write_bytes(b"")
    client.send_signal(signal.SIGHUP)
    write_lines(origin, 170, 50, over_s=0.5)
    assert proxy.swallowing() == [attempt], "both rotations must happen inside one connection attempt"
    proxy.black_hole.clear()
    proxy.cut_all()  # the swallowed attempt ends; the next one reaches the server
    settle(dest, lambda: concat(first, middle, origin), 10, "log.1 + log.2 + log after the black hole")


def test_queued_generation_starts_at_its_first_byte_after_a_reset(proxied: tuple[Pipes, Proxy]) -> None:
    """A reset with the old generation's tail and the new one's head in flight: the new one restarts at byte 0."""
    pipes, proxy = proxied
    origin, dest = pipes.pipe("reset.log")
    origin.write_bytes(numbered_lines(0, 1000))
    pipes.start_server()
    client = pipes.spawn(client_via(pipes, proxy, origin, "--rotate-grace", "1"))
    wait_until(lambda: same_bytes(origin, dest), what="first copy")
    proxy.shaping.chunk_bytes, proxy.shaping.rate_bytes_s = 4096, 20_000  # a slow link: bytes stay in flight
    (link,) = proxy.live_links()
    client_port = link.sockets[0].getpeername()[1]
    forwarded = proxy.shaping.bytes_up

    def written() -> int:  # by tcppipe to its connection: relayed, in the relay's hands, in the kernel
        return proxy.shaping.bytes_up - forwarded + proxy.shaping.chunk_bytes + kernel_queued(proxy.port, client_port)

    tail = numbered_lines(1000, 1500)  # about 90 KB: 4 s of the slow link
    write_lines(origin, 1000, 1500)
    rotated = origin.with_name("reset.log.1")
    origin.rename(rotated)
    origin.write_bytes(numbered_lines(2500, 4000))  # about 250 KB
    client.send_signal(signal.SIGHUP)
    wait_until(
        lambda: written() > len(tail) + 100_000,  # the old tail and 100 KB of the new file
        timeout=10,
        what="tcppipe writing the new generation to the connection",
    )
    landed = size(dest)
    assert landed < size(rotated), f"the old generation's tail must still be in flight ({landed} landed)"
    proxy.cut_all()
    proxy.shaping.rate_bytes_s = 0
    write_lines(origin, 6500, 500, over_s=0.5)  # the writer goes on
    settle(dest, lambda: concat(rotated, origin), 10, "reset.log.1 + reset.log after the reset")


def test_quick_rotations_cost_one_grace_period_not_one_each(pipes: Pipes) -> None:
    """RotatingFileHandler rolling over several times a second (no SIGHUP): every line lands within a bound."""
    origin, dest = pipes.pipe("rfh.log")
    pipes.start_server()
    writer = RotatingWriter(origin)
    pipes.start_client(origin, "--rotate-grace", "1")
    wait_until(lambda: pipes.syslog.count("READY: sending") > 0, what="tcppipe ready")
    writer.start()
    try:
        wait_until(lambda: writer.rollovers >= 40, timeout=15, what="40 rollovers")
    finally:
        writer.finish()
    settle(
        dest,
        lambda: numbered_lines(0, writer.written),
        15,
        f"every line after {writer.rollovers} rollovers with --rotate-grace 1",
    )


def test_restart_sends_every_rotated_generation_still_on_disk(proxied: tuple[Pipes, Proxy]) -> None:
    """kill -9 of a tcppipe far behind a RotatingFileHandler: the restart sends every generation still on disk."""
    pipes, proxy = proxied
    origin, dest = pipes.pipe("behind.log")
    pipes.start_server()
    writer = RotatingWriter(origin, lines_per_tick=50)
    args = client_via(pipes, proxy, origin, "--rotate-grace", "1")
    client = pipes.spawn(args)
    wait_until(lambda: pipes.syslog.count("READY: sending") > 0, what="tcppipe ready")
    proxy.shaping.chunk_bytes, proxy.shaping.rate_bytes_s = 4096, 50_000  # tcppipe falls behind
    writer.start()
    try:
        wait_until(lambda: writer.rollovers >= 15, timeout=15, what="15 rollovers")
        behind = writer.written * 62 - size(dest)
    finally:
        writer.finish()  # first: no rotation happens while tcppipe is down
        kill9(client)
    proxy.cut_all()  # what was in flight is lost with the connection
    proxy.shaping.rate_bytes_s = 0
    backups = [origin.with_name(f"behind.log.{n}") for n in range(5, 0, -1)]
    on_disk = concat(*backups, origin)
    oldest = line_numbers(backups[0].read_bytes())[0]
    assert behind > 6 * 64 * 1024, f"tcppipe must be more than the backups behind (about {behind} bytes)"
    messages = len(pipes.syslog.drain())
    pipes.spawn(args)

    def expected() -> bytes:
        # What landed before the kill is a prefix of the lines; the generations between it and
        # the oldest backup were deleted while no tcppipe could read them; the rest is on disk.
        landed = line_numbers(dest.read_bytes()) if dest.exists() else []
        held = next((i for i, n in enumerate(landed) if n != i), len(landed))
        return numbered_lines(0, min(held, oldest)) + on_disk

    settle(dest, expected, 15, f"every line from the oldest backup on (line {oldest}) after the restart")
    if not dest.read_bytes().startswith(numbered_lines(0, oldest)):
        said = [m for m in pipes.syslog.drain()[messages:] if re.search("lost|gone|deleted|missing", m)]
        assert [m for m in said if "connection lost" not in m], "a generation deleted unsent must be reported"
