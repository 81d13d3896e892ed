"""The control socket: one status answer per request, at any state-directory depth."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tcppipe import control


def _deep(tmp_path: Path) -> str:
    state_dir = tmp_path / ("d" * 60) / ("e" * 60)
    path = control.control_path(str(state_dir), 6514)
    assert len(os.fsencode(path)) > 108
    return path


async def _serve_and_ask(path: str) -> dict[str, object]:
    server = await control.serve(path, lambda: {"pipes": [], "pid": 1})
    try:
        return await asyncio.to_thread(control.ask_status, path)
    finally:
        server.close()
        await server.wait_closed()


def test_status_answers_on_a_path_past_the_af_unix_limit(tmp_path: Path) -> None:
    """A control socket path longer than 108 bytes is bound and asked at that very path."""
    path = _deep(tmp_path)
    assert asyncio.run(_serve_and_ask(path)) == {"pipes": [], "pid": 1}
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    """A socket left by a killed server is replaced by the next one, short path or long."""
    for path in (str(tmp_path / "tcppiped" / "control-1.sock"), _deep(tmp_path)):
        asyncio.run(_serve_and_ask(path))
        assert asyncio.run(_serve_and_ask(path)) == {"pipes": [], "pid": 1}


def test_a_non_socket_at_the_path_is_not_removed(tmp_path: Path) -> None:
    """A regular file where the socket should be is an error, and the file stays."""
    path = tmp_path / "tcppiped" / "control-1.sock"
    path.parent.mkdir()
    path.write_text("keep")
    with pytest.raises(FileExistsError, match="not a socket"):
        asyncio.run(_serve_and_ask(str(path)))
    assert path.read_text() == "keep"


def test_asking_a_long_path_where_nobody_listens_is_one_line(tmp_path: Path) -> None:
    """ask_status on a missing long path says no tcppiped answers."""
    path = _deep(tmp_path)
    os.makedirs(os.path.dirname(path))
    with pytest.raises(control.ControlError, match="no tcppiped answers"):
        control.ask_status(path)


def test_a_control_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    """A control directory that every user may write is refused before anything is bound there."""
    directory = tmp_path / "tcppiped"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(OSError, match="writable by every user"):
        asyncio.run(_serve_and_ask(str(directory / "control-1.sock")))
    assert list(directory.iterdir()) == []
