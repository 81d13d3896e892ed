"""Tasks that say when they die.

Rule: every background task of a program is started through a ``TaskReaper``
(asyncssh's ``create_task`` + ``_reap_task``): it keeps a reference (so the
task is never collected mid-flight), and if the task ends with an exception
other than a cancellation, one error line with the owner's prefix goes to
the program's logger (syslog), with the traceback. Nothing reaches only
stderr, and no exception is left unretrieved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TaskReaper:
    def __init__(self, log: logging.Logger, prefix: str = "") -> None:
        self.log = log
        self.prefix = prefix
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, T], what: str, expected: tuple[type[BaseException], ...] = ()
    ) -> asyncio.Task[T]:
        """Run ``coro`` as a task; exceptions of the ``expected`` types are its awaiter's to handle."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.prefix} {what}".strip())
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._reap(done, expected))
        return task

    def _reap(self, task: asyncio.Task[Any], expected: tuple[type[BaseException], ...]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, expected):
            self.log.error(
                "%s task %s died: %s: %s", self.prefix, task.get_name(), type(exc).__name__, exc, exc_info=exc
            )


def log_loop_errors(loop: asyncio.AbstractEventLoop, log: logging.Logger) -> None:
    """Send what asyncio would print on stderr (a callback that raised, an exception never
    retrieved) to our logger instead: after detaching, stderr is /dev/null."""

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", "error in the event loop"))
        if isinstance(exc, BaseException):
            log.error("internal error: %s: %s: %s", message, type(exc).__name__, exc, exc_info=exc)
        else:
            log.error("internal error: %s", message)

    loop.set_exception_handler(handle)
