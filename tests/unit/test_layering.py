"""Imports run one way: the pure modules never reach for sockets, asyncio or the adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tcppipe"
PURE = [
    "protocol",
    "config",
    "templates",
    "origin",
    "destination",
    "state",
    "tailer",
    "errors",
    "compression",
    "verify",
    "status",
    "stats",
    "progress",
    "session",
    "ledger",
    "pipe_client",
    "draining",
    "pipe_server",
    "checkpoint",
    "strangers",
    "inotify_routes",
    "receivers",
]
FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "tcppipe.client",
    "tcppipe.server",
    "tcppipe.receiver",
    "tcppipe.handshake_turns",
    "tcppipe.cli",
    "tcppipe.control",
    "tcppipe.logs",
    "tcppipe.sockets",
    "tcppipe.tasks",
}


def imported(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_layer(module: str) -> None:
    """A pure module imports neither asyncio, sockets, TLS nor any adapter."""
    assert imported(module) & FORBIDDEN == set()
