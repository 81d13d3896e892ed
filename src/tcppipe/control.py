"""tcppiped's local control socket: ``tcppiped status`` asks, the server answers.

Rule 1: a unix socket in the server's state directory, mode 0600 in a 0700
directory: only root (or tcppiped's own user) may ask, and nothing of it is
reachable from the data port.

Rule 2: one request line, one JSON answer, then the server closes.

Rule 3: a path longer than AF_UNIX allows (108 bytes with its NUL; a deep
state directory is enough) is bound and connected through the directory's own
descriptor, ``/proc/self/fd/N/NAME``: the same socket file at the same path,
without changing the working directory of a threaded process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from typing import Any, Final

from tcppipe import state
from tcppipe.errors import Unreachable, describe_os_error

REQUEST_TIMEOUT_S: Final = 5.0
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
STATUS_REQUEST: Final = b"status\n"
MAX_UNIX_PATH_BYTES: Final = 107  # sun_path is 108 bytes, NUL included


class ControlError(Unreachable):
    """The control socket cannot be reached or answered nonsense."""


def control_path(state_dir: str, port: int) -> str:
    return os.path.join(state_dir, "tcppiped", f"control-{port}.sock")


@contextlib.contextmanager
def _short_path(path: str) -> Iterator[str]:
    """``path``, or one that reaches the same file through its directory's fd (Rule 3)."""
    if len(os.fsencode(path)) <= MAX_UNIX_PATH_BYTES:
        yield path
        return
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
    finally:
        os.close(dir_fd)


def _bind(path: str) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 (a stale socket is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(path) as where:
            old = os.umask(0o177)
            try:
                sock.bind(where)
            finally:
                os.umask(old)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(path: str, answer: Callable[[], dict[str, Any]]) -> asyncio.AbstractServer:
    """Listen on ``path`` (a stale socket from a killed server is replaced)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readline()
            if request == STATUS_REQUEST:
                writer.write(json.dumps(answer(), sort_keys=True).encode() + b"\n")
                await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.close(state.open_checked_directory(os.path.dirname(path)))  # no one else may plant a socket here
    sock = _bind(path)
    try:
        return await asyncio.start_unix_server(handle, sock=sock)
    except BaseException:
        sock.close()
        raise


def ask_status(path: str) -> dict[str, Any]:
    """The running server's status (blocking, bounded by REQUEST_TIMEOUT_S)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(REQUEST_TIMEOUT_S)
            with _short_path(path) as where:
                s.connect(where)
            s.sendall(STATUS_REQUEST)
            chunks: list[bytes] = []
            received = 0
            while received <= MAX_ANSWER_BYTES:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no tcppiped answers at {path} (is it running with this -p and --state-dir?)") from None
    except OSError as exc:
        raise ControlError(f"cannot ask tcppiped at {path}: {describe_os_error(exc)}") from None
    try:
        value = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"tcppiped at {path} gave no status (it may be stopping)") from None
    if not isinstance(value, dict):
        raise ControlError(f"tcppiped at {path} gave no status")
    return value
