"""The progress line of a long catch-up, shown only on a terminal.

Rule 1: pure; ``CatchUp.update`` returns the text to print (or None), the
caller decides where it goes. A line starts with a carriage return so each
update overwrites the last, and the last one ends the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tcppipe.status import human_bytes

# A catch-up shorter than this finishes before a progress line would help.
MIN_BEHIND_BYTES: Final = 16 * 1024 * 1024
INTERVAL_S: Final = 0.5


def progress_line(sent: int, behind: int, rate: float) -> str:
    left = f"{behind / rate:.0f} s left" if rate > 0 else "time left unknown"
    return f"catching up: {human_bytes(sent)} sent, {human_bytes(behind)} to go, {rate / 1e6:.1f} MB/s, {left}"


@dataclass
class CatchUp:
    active: bool = False
    started_at: float = 0.0
    shown_at: float = 0.0
    sent_at_start: int = 0

    def update(self, now: float, sent: int, behind: int) -> str | None:
        """``sent``: origin bytes sent so far by this process; ``behind``: bytes still to send."""
        if not self.active:
            if behind < MIN_BEHIND_BYTES:
                return None
            self.active, self.started_at, self.shown_at, self.sent_at_start = True, now, now, sent
            return None
        if behind > 0 and now - self.shown_at < INTERVAL_S:
            return None
        self.shown_at = now
        elapsed = now - self.started_at
        done = sent - self.sent_at_start
        rate = done / elapsed if elapsed > 0 else 0.0
        line = "\r" + progress_line(done, behind, rate)
        if behind == 0:
            self.active = False
            return f"\rcaught up: {human_bytes(done)} in {elapsed:.1f} s, {rate / 1e6:.1f} MB/s".ljust(len(line)) + "\n"
        return line
