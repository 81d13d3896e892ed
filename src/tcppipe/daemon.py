"""Detach into the background only once the work has really started.

Rule: fork before any event loop exists. The parent waits on a pipe for the
child's verdict (READY for tcppipe, listening for tcppiped) and exits with the
status and message the child reports; the shell sees the real outcome, not a
guess. If the child dies before reporting, the parent says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio  # only for the annotation: this module loads before the slow imports


class Detacher:
    """Parent/child hand-off around ``fork``."""

    def __init__(self) -> None:
        self._write_fd: int | None = None

    def fork(self) -> int | None:
        """In the parent: wait and return the exit status. In the child: None."""
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(write_fd)
            return self._wait_for_child(read_fd, pid)
        os.close(read_fd)
        os.setsid()
        self._write_fd = write_fd
        return None

    @staticmethod
    def _wait_for_child(read_fd: int, pid: int) -> int:
        chunks = []
        with os.fdopen(read_fd, "rb") as report:
            # Bounded: the child reports or exits; either ends this read.
            chunks.append(report.read(64 * 1024))
        text = b"".join(chunks).decode(errors="replace")
        if not text:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            print("background process ended before it was ready", file=sys.stderr)
            return 1
        code_text, _, message = text.partition("\n")
        if message:
            print(message.rstrip("\n"), file=sys.stderr)
        return int(code_text) if code_text.isdigit() else 1

    @property
    def pending(self) -> bool:
        """True in a child that has not yet reported."""
        return self._write_fd is not None

    def report(self, code: int, message: str = "") -> None:
        """Tell the waiting parent how to exit; on success, let go of the terminal."""
        if self._write_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._write_fd, f"{code}\n{message}".encode())
        os.close(self._write_fd)
        self._write_fd = None
        if code == 0:
            _detach_stdio()


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


# Signals that came before the event loop could handle them, in order (replayed by the client).
early_signals: list[int] = []


def catch_early_signals() -> None:
    """Record SIGHUP, SIGTERM and SIGINT that arrive before the event loop handles signals.

    Their default action would end the process mid-start (a supervisor's SIGTERM, or
    logrotate's HUP as soon as ``tcppipe -I`` finds the new pid); ``Client.run``
    replays them: a HUP follows FILE, a TERM or INT stops cleanly with status 0.
    """
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: early_signals.append(number))


def handle_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None], hup: Callable[[], None]) -> None:
    """From now on SIGTERM and SIGINT call ``stop`` and SIGHUP ``hup`` on ``loop``; those
    that came before (``early_signals``) are replayed, in order."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, hup)
    for signum in early_signals:
        (hup if signum == signal.SIGHUP else stop)()
    early_signals.clear()
