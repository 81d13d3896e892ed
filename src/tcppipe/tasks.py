"""Tasks that say when they die: the one reaping mechanism of tcppipe and tcppiped.

Rule 1: every background task of a program is started through a
``TaskReaper`` (asyncssh's ``create_task`` + ``_reap_task``): it keeps a
reference (so the task is never collected mid-flight), and if the task ends
with an exception other than a cancellation (or one its awaiter expects),
one error line goes to the program's logger (syslog), with the traceback.
Nothing reaches only stderr, and no exception is left unretrieved.

Rule 2: the line names what the task was for: the owner's prefix and the
task's label, which may change while it runs (a server connection is its
peer, then its pipe once the handshake names one: ``relabel``). The
exception text is escaped (``errors.escape``): it may carry a peer's words.

Rule 3: what the event loop cannot hand to anyone (a callback that raised,
an exception never retrieved) goes the same way (``log_loop_errors``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from tcppipe.errors import escape

T = TypeVar("T")


class TaskReaper:
    """A tracked set of tasks whose unexpected deaths are logged with their labels."""

    def __init__(self, log: logging.Logger, prefix: str = "", on_error: Callable[[], None] | None = None) -> None:
        self.log = log
        self.prefix = prefix
        self.on_error = on_error
        self.tasks: set[asyncio.Task[Any]] = set()
        self._labels: dict[asyncio.Task[Any], str] = {}

    def spawn(
        self, coro: Coroutine[Any, Any, T], what: str, expected: tuple[type[BaseException], ...] = ()
    ) -> asyncio.Task[T]:
        """Run ``coro`` as a task; exceptions of the ``expected`` types are its awaiter's to handle."""
        task = asyncio.get_running_loop().create_task(coro, name=self._full(what))
        self.tasks.add(task)
        self._labels[task] = what
        task.add_done_callback(lambda done: self._reap(done, expected))
        return task

    def relabel(self, task: asyncio.Task[Any], what: str) -> None:
        """Say what ``task`` is for from now on (its death line names this)."""
        if task in self.tasks:
            self._labels[task] = what

    def report(self, what: str, exc: BaseException) -> None:
        """Log one internal error of ``what`` (a task, or a callback that belongs to one)."""
        if self.on_error is not None:
            self.on_error()
        self.log.error("%s: internal error: %s", self._full(what), escape(repr(exc)), exc_info=exc)

    def cancel_all(self) -> list[asyncio.Task[Any]]:
        """Cancel every task still running; the ones cancelled, to wait for."""
        running = [t for t in self.tasks if not t.done()]
        for task in running:
            task.cancel()
        return running

    def _full(self, what: str) -> str:
        return f"{self.prefix} {what}".strip()

    def _reap(self, task: asyncio.Task[Any], expected: tuple[type[BaseException], ...]) -> None:
        self.tasks.discard(task)
        what = self._labels.pop(task, task.get_name())
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, expected):
            self.report(what, exc)


def log_loop_errors(
    loop: asyncio.AbstractEventLoop, log: logging.Logger, on_error: Callable[[], None] | None = None
) -> None:
    """Send what asyncio would print on stderr to our logger instead: after detaching,
    stderr is /dev/null."""

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if on_error is not None:
            on_error()
        exc = context.get("exception")
        message = escape(str(context.get("message", "unhandled error")))
        if isinstance(exc, BaseException):
            log.error("event loop: internal error: %s: %s", message, escape(repr(exc)), exc_info=exc)
        else:
            log.error("event loop: internal error: %s", message)

    loop.set_exception_handler(handle)
