"""One row per pipe, as ``tcppiped status`` and ``tcppipe status`` print it.

Rule 1: pure; both sides build ``PipeRow``s from what they know and share the
rendering, so the two tables read the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Final

# Pipe states, as an operator reads them.
STREAMING: Final = "streaming"
DRAINING: Final = "rotated-draining"
RECONNECTING: Final = "reconnecting"
REFUSED: Final = "refused"
WAITING: Final = "waiting"
STOPPED: Final = "stopped"

COLUMNS: Final = ("HOST", "ORIGIN", "DESTINATION", "STATE", "GEN BYTES", "BEHIND", "IDLE", "GENS")


@dataclass(frozen=True)
class PipeRow:
    host: str
    origin: str
    destination: str
    state: str
    generation_bytes: int | None
    behind_bytes: int | None
    idle_s: float | None
    generations: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_table(rows: list[PipeRow]) -> str:
    """A plain table, one line per pipe, columns padded to their widest cell."""
    cells = [list(COLUMNS)]
    for r in rows:
        cells.append(
            [
                r.host,
                r.origin,
                r.destination,
                r.state,
                human_bytes(r.generation_bytes),
                human_bytes(r.behind_bytes),
                human_seconds(r.idle_s),
                str(r.generations),
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def render_json(rows: list[PipeRow], **extra: Any) -> str:
    return json.dumps({**extra, "pipes": [r.to_json() for r in rows]}, indent=2, sort_keys=True)
