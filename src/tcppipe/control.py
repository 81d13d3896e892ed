"""tcppiped's local control socket: ``tcppiped status`` asks, the server answers.

Rule 1: a unix socket in the server's state directory, mode 0600 in a 0700
directory: only root (or tcppiped's own user) may ask, and nothing of it is
reachable from the data port.

Rule 2: one request line, one JSON answer, then the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any, Final

from tcppipe.errors import Unreachable, describe_os_error

REQUEST_TIMEOUT_S: Final = 5.0
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
STATUS_REQUEST: Final = b"status\n"


class ControlError(Unreachable):
    """The control socket cannot be reached or answered nonsense."""


def control_path(state_dir: str, port: int) -> str:
    return os.path.join(state_dir, "tcppiped", f"control-{port}.sock")


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
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(handle, path)
    finally:
        os.umask(old)


def ask_status(path: str) -> dict[str, Any]:
    """The running server's status (blocking, bounded by REQUEST_TIMEOUT_S)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(REQUEST_TIMEOUT_S)
            s.connect(path)
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
