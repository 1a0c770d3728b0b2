"""Teardown in reverse order that tries every close and reports every failure (aiohttp's runner cleanup).

A close that fails must neither keep the ones after it from running (a leaked socket, an unflushed
file) nor be swallowed: each failure is kept, and all are raised together in an ``ExceptionGroup``
once everything was tried, each with a note naming what failed to close.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol, Self, TypeVar

import structlog

log = structlog.get_logger("ce_daemon.teardown")
T = TypeVar("T")


class Closeable(Protocol):
    """Anything closed with ``await close()`` (a component, a tenant client)."""

    async def close(self) -> None:
        """Release what it holds."""


async def close_all(named: Sequence[tuple[str, Closeable]], what: str) -> None:
    """Close each of ``named`` (name, resource), the last first; every close is tried.

    Raises ``ExceptionGroup`` of the failures (each noted with its name) after the last close.
    """
    errors: list[Exception] = []
    for name, resource in reversed(named):
        try:
            await resource.close()
        except Exception as exc:  # noqa: BLE001 - collected, raised together below
            exc.add_note(f"while closing {name}")
            errors.append(exc)
    if errors:
        raise ExceptionGroup(f"{len(errors)} of {len(named)} {what} failed to close", errors)


def log_failures(group: BaseExceptionGroup[Exception], event: str) -> None:
    """Log each failure of a :func:`close_all` group as ``event``, naming what failed to close."""
    for exc in group.exceptions:
        log.error(event, what="; ".join(getattr(exc, "__notes__", [])), error=f"{type(exc).__name__}: {exc}")


class Teardown:
    """An async exit stack whose callbacks all run, last registered first, and whose failures are all kept.

    On a clean exit the failures are raised as one ``ExceptionGroup``; when the body itself raised,
    that exception goes on and each teardown failure is logged (``teardown.failed``) instead, since
    the body's says why the process stops.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._callbacks: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def push(self, name: str, callback: Callable[[], Awaitable[object]]) -> None:
        """Run ``callback`` at exit, before every callback pushed earlier."""
        self._callbacks.append((name, callback))

    def enter_context(self, name: str, manager: contextlib.AbstractContextManager[T]) -> T:
        """Enter ``manager`` now and exit it at teardown, in its turn."""
        value = manager.__enter__()
        self.push(name, lambda: _exit(manager))
        return value

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        callbacks, self._callbacks = self._callbacks, []
        try:
            await close_all([(name, _Callback(callback)) for name, callback in callbacks], self.what)
        except ExceptionGroup as group:
            if exc is None:
                raise
            log_failures(group, "teardown.failed")


class _Callback:
    """A teardown callback seen as a :class:`Closeable`."""

    def __init__(self, callback: Callable[[], Awaitable[object]]) -> None:
        self._callback = callback

    async def close(self) -> None:
        await self._callback()


async def _exit(manager: contextlib.AbstractContextManager[object]) -> None:
    manager.__exit__(None, None, None)
