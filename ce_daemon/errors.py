"""The error taxonomy every component and plugin shares.

Errors are classified so that the supervisor knows what to do without reading messages:
transient ones are retried with backoff, auth/config ones stop the component and mark it
degraded (no retry storm), and permanent per-record ones go to the dead-letter table.
"""

from __future__ import annotations

from dataclasses import dataclass


class CeDaemonError(Exception):
    """Base of every error ce-daemon raises on purpose."""


class TransientError(CeDaemonError):
    """Worth retrying: connection trouble, 408/429/5xx, truncated bodies.

    ``retry_after`` is the delay in seconds the peer asked for (``Retry-After``,
    ``ratelimit-reset``), when it asked for one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(CeDaemonError):
    """Credentials refused or access forbidden (401/403): retrying will not help."""


class ComponentConfigError(CeDaemonError):
    """A component's settings are wrong in a way only the running system could tell."""


class PermanentError(CeDaemonError):
    """A request the target refused for good (a 4xx other than auth and throttling)."""


def describe(exc: BaseException) -> str:
    """An exception for an operator: our own errors by their message, others by type and message."""
    if isinstance(exc, CeDaemonError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration problem, with its place in the file when known.

    ``line`` and ``column`` are 1-based; ``path`` is the dotted path into the document
    (``logs.routes[2].sink.url``).
    """

    file: str
    path: str
    message: str
    line: int | None = None
    column: int | None = None
    hint: str | None = None

    def render(self, *, label: str = "") -> str:
        """The compiler-style line: ``file:line:col: path: message`` plus an indented hint.

        ``label`` goes before the message: ``warning`` gives ``file:line:col: path: warning: message``.
        """
        place = self.file
        if self.line is not None:
            place += f":{self.line}:{self.column or 1}"
        message = f"{label}: {self.message}" if label else self.message
        text = f"{place}: {self.path}: {message}" if self.path else f"{place}: {message}"
        if self.hint:
            text += f"\n    Hint: {self.hint}"
        return text


class ConfigError(CeDaemonError):
    """The pipeline file is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = len(problems)
        super().__init__(f"{count} configuration problem{'s' if count != 1 else ''}")

    def render(self) -> str:
        """All problems, one per line (hints indented below their problem)."""
        return "\n".join(p.render() for p in self.problems)
