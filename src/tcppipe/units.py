"""The systemd units shipped in the package, printed or installed by ``tcppiped units``."""

from __future__ import annotations

import os
import shutil
from importlib import resources
from typing import Final

UNITS: Final = ("tcppiped.service", "tcppiped.socket", "tcppipe.service", "tcppipe@.service")
SHIPPED_BIN: Final = "/usr/local/bin/"


def unit_text(name: str) -> str:
    """The unit, its commands pointed at where tcppiped is installed on this host."""
    text = resources.files("tcppipe").joinpath("packaging", "systemd", name).read_text(encoding="utf-8")
    found = shutil.which("tcppiped")
    if found:
        text = text.replace(SHIPPED_BIN, os.path.dirname(os.path.abspath(found)) + "/")
    return text


def install_units(directory: str) -> list[str]:
    """Write the units into ``directory``; the paths written."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for name in UNITS:
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(unit_text(name))
        os.chmod(path, 0o644)
        written.append(path)
    return written
