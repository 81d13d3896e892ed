"""``tcppipe status``: one row per pipe, read from the status files tcppipe keeps.

Rule 1: read-only. The running tcppipe writes its status file (at most once a
second, and at once when its state changes); this module reads it, asks the
lock whether that tcppipe still runs, and looks at the origin for how far
it is ahead.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any

from tcppipe import state
from tcppipe.receivers import describe_pipe_host, is_plain_host
from tcppipe.state import PipeKey
from tcppipe.status import RECONNECTING, STOPPED, PipeRow


def status_files(state_dir: str, key: PipeKey | None) -> list[str]:
    if key is not None:
        return [key.status_path(state_dir)]
    return sorted(glob.glob(os.path.join(glob.escape(state_dir), "tcppipe.*.status")))


def row_from_status(path: str, now: float) -> PipeRow | None:
    raw = state.read_json(path)
    if raw is None or not isinstance(raw.get("file"), str):
        return None
    origin: str = raw["file"]
    host, port = raw.get("host"), raw.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    # The key the status file names gives its lock, as it gave its own path.
    lock = PipeKey(origin, host, port).lock_path(os.path.dirname(path))
    running = state.holder_pid(lock) is not None
    offset = _int(raw, "offset")
    behind = _behind(raw, origin, offset)
    last = raw.get("last_byte_at")
    idle = max(0.0, now - last) if isinstance(last, int | float) else None
    # Which receiver of -h's list it streams to now (only while its lock says it runs).
    receiver = raw.get("receiver")
    where = describe_pipe_host(host, port)
    if isinstance(receiver, str) and running and receiver != where and not is_plain_host(host):
        where = f"{receiver} (of {where})"  # one plain -h keeps the row it always had
    return PipeRow(
        host=where,
        origin=origin,
        destination="-",
        state=str(raw.get("state", RECONNECTING)) if running else STOPPED,
        generation_bytes=offset,
        behind_bytes=behind,
        idle_s=idle,
        generations=_int(raw, "generations") or 0,
    )


def _int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _behind(raw: dict[str, Any], origin: str, offset: int | None) -> int | None:
    """Bytes of the origin not yet acknowledged: the rest of the generation being
    sent, plus FILE itself when it is a newer generation waiting behind it."""
    if offset is None:
        return None
    generation = raw.get("generation")
    end = _int(raw, "origin_end")
    waiting = 0
    try:
        st = os.stat(origin)
        if isinstance(generation, dict) and (st.st_dev, st.st_ino) == (generation.get("dev"), generation.get("ino")):
            end = st.st_size
        else:
            waiting = st.st_size
    except OSError:
        pass
    return None if end is None else max(0, end - offset) + waiting


def client_rows(state_dir: str, key: PipeKey | None) -> list[PipeRow]:
    now = time.time()
    rows = [row_from_status(path, now) for path in status_files(state_dir, key)]
    return [r for r in rows if r is not None]
