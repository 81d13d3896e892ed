"""The tcppipe error family; each error carries the exit status it ends with.

Rule: lower layers raise these (or ProtocolError/OSError, mapped at the
adapter's edge); only ``cli.py`` turns them into an exit status.
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_CONFIG = 5
EXIT_RUNNING = 6
EXIT_ORIGIN = 7
# sysexits.h EX_TEMPFAIL: try again later (tcppiped's port stayed in use); the unit restarts it.
EXIT_TEMPFAIL = 75


# What a peer could use to forge, split or drop a log line: C0 and C1 controls
# (newline, ESC), DEL, the Unicode line separators, lone surrogates (from
# surrogateescape'd bytes; they make a strict encoder drop the whole line),
# and the backslash itself, so an escape in the output is never ambiguous.
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escaped(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str) -> str:
    """A peer-supplied string made safe for one log line: every character in ``_UNSAFE``
    becomes a visible escape (``\\n``, ``\\x1b``, ``\\udcff``)."""
    return _UNSAFE.sub(_escaped, text)


def describe_os_error(exc: OSError) -> str:
    """An OSError as the one-line reason an operator reads ("No such file or directory")."""
    return exc.strerror or str(exc) or type(exc).__name__


class TcppipeError(Exception):
    """An error an operator sees as one line, ending the program with ``exit_code``."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(TcppipeError):
    exit_code = EXIT_USAGE


class Refused(TcppipeError):
    """The server answered REFUSE."""

    exit_code = EXIT_REFUSED


class RefusedForNow(Refused):
    """The server answered REFUSE for a passing reason (its destination cannot be
    opened, a name cannot be resolved): a supervisor should start us again later."""

    exit_code = EXIT_TEMPFAIL


class Unreachable(TcppipeError):
    """No connection to the server at start."""

    exit_code = EXIT_UNREACHABLE


class BadConfig(TcppipeError):
    exit_code = EXIT_CONFIG


class AlreadyRunning(TcppipeError):
    exit_code = EXIT_RUNNING


class OriginError(TcppipeError):
    """The origin file cannot be read."""

    exit_code = EXIT_ORIGIN


class ConnectionLost(Exception):
    """The connection ended; the client reconnects, the server drops it."""
