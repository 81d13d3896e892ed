"""Both programs reap their tasks one way: a task's death is one escaped "internal error" line."""

from __future__ import annotations

import sys

from tests.integration.conftest import Pipes

# tcppipe with a file side that dies of a bug whose text would forge a second syslog line.
BROKEN_CLIENT = """
import sys
from tcppipe import client, cli

async def broken(self):
    raise RuntimeError("boom\\nForged: tcppipe: all is well")

client.Client._file_side = broken
sys.exit(cli.client_main(sys.argv[1:]))
"""


def test_a_client_task_death_is_one_escaped_internal_error_line(pipes: Pipes) -> None:
    """A client task that raises is logged as tcppiped's are: "internal error", naming the task, text escaped."""
    origin, _dest = pipes.pipe("app.log")
    pipes.start_server()
    args = pipes.client_args(origin)
    pipes.spawn([sys.executable, "-c", BROKEN_CLIENT, *args[1:]])
    # The datagram carries the traceback after the message; the message is its first line.
    message = pipes.syslog.wait_for("RuntimeError").split("\n")[0]
    assert "internal error" in message
    assert "file side" in message
    assert "Forged" in message  # on the first line: the newline is escaped
