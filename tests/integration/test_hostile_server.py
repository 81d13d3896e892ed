"""A hostile server: what it may and may not make a real tcppipe do."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tcppipe.protocol import (
    Data,
    Decoder,
    Digest,
    GenerationId,
    HeldSpan,
    Hello,
    NeedData,
    Ready,
    Refuse,
    Verify,
    encode,
    split_range,
)

from .conftest import Pipes, command, wait_until

pytestmark = pytest.mark.integration


class Impostor:
    """Answers the first HELLO with the READY it is given, keeps every DATA byte it gets,
    and answers every VERIFY (kept too) with digests that match nothing."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.received = bytearray()
        self.hello: Hello | None = None
        self.verifies: list[Verify] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(0.1)
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        decoder = Decoder()
        answered = False
        while not self.stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            decoder.feed(data)
            if not data:
                return
            for _ in range(10_000):
                event = decoder.next_event()
                if event is None or isinstance(event, NeedData):
                    break
                if isinstance(event, Hello) and not answered:
                    self.hello, answered = event, True
                    if self.answer:
                        conn.sendall(self.answer)
                elif isinstance(event, Data):
                    self.received += bytes(event.payload)
                elif isinstance(event, Verify):
                    self.verifies.append(event)
                    parts = len(split_range(event.start, event.end, event.parts))
                    conn.sendall(encode(Digest(("0" * 64,) * parts)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


def empty_fingerprint_of(path: Path) -> GenerationId:
    st = path.stat()
    return GenerationId(st.st_dev, st.st_ino, 0, hashlib.sha256(b"").hexdigest())


def file_beside_a_secret(tmp_path: Path) -> tuple[Path, Path]:
    """FILE (app.log) and, beside it, a root-only secret.key."""
    origin_dir = tmp_path / "origin"
    origin_dir.mkdir()
    secret = origin_dir / "secret.key"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY----- do not send\n" * 50)
    os.chmod(secret, 0o600)
    origin = origin_dir / "app.log"
    origin.write_bytes(b"the only file this pipe may send\n")
    return origin, secret


def test_a_server_cannot_make_tcppipe_send_a_file_beside_file(pipes: Pipes, tmp_path: Path) -> None:
    """READY naming a secret file beside FILE (fingerprint of length 0) gets FILE's bytes, never the secret's."""
    origin, secret = file_beside_a_secret(tmp_path)
    impostor = Impostor(encode(Ready(empty_fingerprint_of(secret), 0)))
    try:
        pipes.port = impostor.port
        pipes.start_client(origin)
        wait_until(lambda: len(impostor.received) >= origin.stat().st_size, what="FILE's bytes at the impostor")
        # Whatever else it sends goes behind FILE's bytes: give it the time a rotation search would take.
        wait_until(lambda: pipes.syslog.count("READY: sending") > 0, what="the client's READY line")
        assert bytes(impostor.received) == origin.read_bytes()
        assert b"PRIVATE KEY" not in impostor.received
    finally:
        impostor.close()


def test_a_server_cannot_make_verify_read_a_file_beside_file(tmp_path: Path) -> None:
    """verify reads a file beside FILE only when the server's record covers its first 4 KiB: an
    impostor naming a secret's inode with an empty fingerprint (as current generation and as an
    earlier one) gets no VERIFY of it (before, the client hashed the secret and sent it VERIFY
    requests whose bisection tells the server where its guess of the secret stops being right)."""
    origin, secret = file_beside_a_secret(tmp_path)
    size = secret.stat().st_size
    named = empty_fingerprint_of(secret)
    impostor = Impostor(encode(Ready(named, size, (), 0, (HeldSpan(named, 0, size),))))
    try:
        out = subprocess.run(
            [command("tcppipe"), "verify", "-f", str(origin), "-h", "127.0.0.1", "-p", str(impostor.port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        impostor.close()
    assert impostor.hello is not None, out.stderr
    assert impostor.verifies == []
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    assert all(f"not checked: the record names {secret} by only its first 0 bytes" in line for line in lines)


def test_a_servers_reason_cannot_forge_log_lines(pipes: Pipes, tmp_path: Path) -> None:
    """A REFUSE reason with a newline and ESC is logged as one escaped line."""
    origin = tmp_path / "app.log"
    origin.write_bytes(b"x\n")
    impostor = Impostor(encode(Refuse("no\ntcppipe[1]: forged line \x1b[2J", False)))
    try:
        pipes.port = impostor.port
        proc = pipes.start_client(origin)
        assert proc.wait(timeout=20) == 3
        messages = pipes.syslog.drain()
        forged = [m for m in messages if "forged" in m]
        assert len(forged) == 1, forged
        assert "refused" in forged[0]
        assert "\n" not in forged[0].rstrip("\n\0")
        assert not any("\x1b" in m for m in messages)
    finally:
        impostor.close()


def test_sigterm_during_the_handshake_stops_at_once(pipes: Pipes, tmp_path: Path) -> None:
    """SIGTERM while a server that never answers holds the handshake: exit 0 at once, not after 15 s."""
    origin = tmp_path / "app.log"
    origin.write_bytes(b"x\n")
    silent = Impostor(b"")
    try:
        pipes.port = silent.port
        proc = pipes.start_client(origin)
        wait_until(lambda: silent.hello is not None, what="the client's HELLO")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0, pipes.stderr_of(proc)
    finally:
        silent.close()


def test_sigterm_at_start_is_a_clean_stop() -> None:
    """A SIGTERM before the event loop handles signals is kept and replayed, not the default death."""
    from tcppipe import daemon

    previous = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.catch_early_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: signal.SIGTERM in daemon.early_signals, what="the early SIGTERM recorded")
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        daemon.early_signals.clear()
