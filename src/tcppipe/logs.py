"""Logging to syslog (facility LOCAL5) and, in the foreground, to stderr.

Rule: the only module that configures handlers. A missing syslog socket is a
warning on stderr, never a crash.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from tcppipe.errors import describe_os_error


def parse_syslog_address(text: str) -> str | tuple[str, int]:
    """A unix socket path, or HOST:PORT for UDP."""
    if text.startswith("/") or ":" not in text:
        return text
    host, _, port = text.rpartition(":")
    try:
        return (host.strip("[]"), int(port))
    except ValueError:
        return text


class QuietSysLogHandler(logging.handlers.SysLogHandler):
    """A SysLogHandler that never blocks and never prints tracebacks.

    A full /dev/log queue (syslogd stuck) must not stall the pipes: messages
    are sent with MSG_DONTWAIT and dropped (counted) when syslog cannot take
    them. An unreachable syslog is reported once, in one line.
    """

    warned = False
    dropped = 0
    # Set by SysLogHandler.__init__; typeshed does not declare them.
    socket: Any
    _connect_unixsocket: Callable[[Any], None]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.ident + self.format(record) + ("\000" if self.append_nul else "")
            priority = self.encodePriority(self.facility, self.mapPriority(record.levelname))
            # A lone surrogate (bytes from a peer, surrogateescape'd) must not drop the line.
            data = f"<{priority}>{message}".encode("utf-8", "backslashreplace")
            if not self.unixsocket:
                self.socket.sendto(data, self.address)
                return
            try:
                self.socket.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                QuietSysLogHandler.dropped += 1
            except OSError:
                self.socket.close()
                self._connect_unixsocket(self.address)
                self.socket.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            QuietSysLogHandler.dropped += 1
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not QuietSysLogHandler.warned:
            QuietSysLogHandler.warned = True
            exc = sys.exc_info()[1]
            reason = getattr(exc, "strerror", None) or exc
            with contextlib.suppress(Exception):
                print(f"{self.ident.split('[')[0]}: warning: cannot send to syslog: {reason}", file=sys.stderr)


def setup_logging(tag: str, syslog_address: str, foreground: bool) -> logging.Logger:
    """The program's logger, sending to syslog and (in the foreground) stderr."""
    logger = logging.getLogger("tcppipe")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    address = parse_syslog_address(syslog_address)
    if isinstance(address, str) and not os.path.exists(address):
        print(f"{tag}: warning: syslog socket {address} does not exist; not logging to syslog", file=sys.stderr)
        QuietSysLogHandler.warned = True
    try:
        handler = QuietSysLogHandler(
            address=address,
            facility=logging.handlers.SysLogHandler.LOG_LOCAL5,
            socktype=socket.SOCK_DGRAM,
        )
    except OSError as exc:
        print(f"{tag}: warning: syslog at {syslog_address} unavailable ({describe_os_error(exc)})", file=sys.stderr)
    else:
        handler.ident = f"{tag}[{os.getpid()}]: "
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if foreground:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(f"{tag}: %(message)s"))
        logger.addHandler(stream)
    return logger


def refresh_ident(tag: str) -> None:
    """Put the current pid in the syslog ident (after a fork)."""
    for handler in logging.getLogger("tcppipe").handlers:
        if isinstance(handler, logging.handlers.SysLogHandler):
            handler.ident = f"{tag}[{os.getpid()}]: "


def drop_stderr_handlers() -> None:
    """After detaching, stderr is /dev/null: keep syslog only."""
    logger = logging.getLogger("tcppipe")
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)


class RateLimitedLog:
    """Warnings that a flood could multiply (dropped connections): at most
    ``per_s`` lines a second; the rest are counted and summarised in one line
    once the second is over ("suppressed K"), so syslog sees the flood's size
    without its volume."""

    def __init__(
        self,
        log: logging.Logger,
        per_s: int,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], object],
    ) -> None:
        self.log, self.per_s, self.clock, self.call_later = log, per_s, clock, call_later
        self._window_at = -1.0
        self._lines = 0
        self.suppressed = 0
        self._flush_due = False

    def warning(self, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._window_at >= 1.0:
            self.flush()
            self._window_at, self._lines = now, 0
        if self._lines < self.per_s:
            self._lines += 1
            self.log.warning(message, *args)
            return
        self.suppressed += 1
        if not self._flush_due:
            self._flush_due = True
            self.call_later(max(0.0, self._window_at + 1.0 - now), self.flush)

    def flush(self) -> None:
        """Say how many lines were left out, if any."""
        self._flush_due = False
        if self.suppressed:
            self.log.warning("suppressed %d more lines about dropped connections", self.suppressed)
            self.suppressed = 0
