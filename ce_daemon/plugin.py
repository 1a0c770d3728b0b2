"""The plugin contract: what a plugin of each kind implements, and what the core hands it.

A plugin is a thin adapter to one external system. It owns a pydantic options model
(``Options``, ``extra="forbid"``) and implements the kind's small async contract: ``open``,
``health``, the kind's operations, ``close``. Module logic (batching, retries of whole
batches, dead-lettering, offsets) lives in the core.

A plugin class says which version of this contract it was written for (``api_version``); the
registry checks it against :data:`API_VERSION` when it loads the plugin (see ``docs/plugins.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import structlog
from pydantic import BaseModel, ConfigDict

from ce_daemon.config.model import Duration, SecretOrText, Size, Timeout

__all__ = [
    "API_VERSION",
    "OLDEST_API_VERSION",
    "Duration",
    "Health",
    "LogSink",
    "OutRecord",
    "Plugin",
    "PluginContext",
    "PluginOptions",
    "SecretOrText",
    "SendResult",
    "Size",
    "Timeout",
]


API_VERSION: Final = 1
"""The version of the plugin contract this core provides.

Bumped by one whenever what a plugin sees changes: a new hook or operation, a new field in what
the core hands a plugin, a changed meaning of a return value or an exception. A change that
plugins written for earlier versions cannot survive also raises :data:`OLDEST_API_VERSION` to the
new value.
"""

OLDEST_API_VERSION: Final = 1
"""The oldest ``api_version`` this core still loads (plugins older than that need updating)."""


class PluginOptions(BaseModel):
    """Base of every plugin's options model: unknown keys are errors, floats are finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


@dataclass(frozen=True)
class PluginContext:
    """What the core gives a plugin instance.

    ``base_dir`` is the folder of the pipeline file (relative paths in options resolve from
    there); ``data_dir`` is a folder the plugin may keep files in (beside the state database).
    """

    name: str
    base_dir: Path
    data_dir: Path
    log: Any = field(default_factory=structlog.get_logger)

    def resolve(self, path: Path) -> Path:
        """``path`` made absolute against the pipeline file's folder."""
        return path if path.is_absolute() else self.base_dir / path


@dataclass(frozen=True, slots=True)
class Health:
    """A plugin's answer to a health check."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One formatted record on its way to a log sink.

    ``data`` is the formatted line (CEF, LEEF or JSON, UTF-8, no trailing newline);
    ``id`` is the Netskope ``_id`` (an idempotency key where the target has one).
    """

    id: str
    timestamp: int
    data: bytes
    kind: str
    subtype: str
    format: str


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a sink did with a batch: ``rejected`` lists (index, reason) of records refused for good.

    Raise :class:`~ce_daemon.errors.TransientError` instead when the whole batch should be
    retried, and :class:`~ce_daemon.errors.AuthError` when credentials were refused.
    """

    rejected: Sequence[tuple[int, str]] = ()


class Plugin(ABC):
    """What every plugin kind shares.

    The core calls, on one instance: ``open`` once, then ``health``, then the kind's operations
    one at a time, then ``close`` exactly once — also when ``open`` raised. A start attempt that
    failed is retried with a new instance.
    """

    Options: ClassVar[type[PluginOptions]]
    kind: ClassVar[str]
    api_version: ClassVar[int]
    """The :data:`API_VERSION` the plugin was written for: set it as a number, never as ``API_VERSION``.

    Declared by each plugin class, not here, so that the registry can tell a plugin that declares none.
    """

    def __init__(self, options: PluginOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context

    async def open(self) -> None:  # noqa: B027 - optional hook, empty by default on purpose
        """Acquire connections and sessions; anything it raises is a start failure of the component."""

    async def health(self) -> Health:
        """Check the target is reachable and accepts our credentials (used at start and reload).

        Answer ``Health(ok=False, detail=why)`` for a target that is down or refuses the credentials
        rather than raising.
        """
        return Health(ok=True)

    async def close(self) -> None:  # noqa: B027 - optional hook, empty by default on purpose
        """Release everything ``open`` acquired; called once, also after a failed ``open``.

        It must not raise when ``open`` stopped half-way or never ran, and a second call does nothing.
        """


class LogSink(Plugin):
    """Ships formatted log records to a SIEM, a store or a socket."""

    kind: ClassVar[str] = "log_sink"
    max_batch_bytes: ClassVar[int | None] = None
    """The most a target accepts in one request; the core never builds a larger batch."""

    @abstractmethod
    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        """Deliver ``batch``; return only once the target acknowledged it."""
