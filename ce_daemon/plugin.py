"""The plugin contract: what a plugin of each kind implements, and what the core hands it.

A plugin is a thin adapter to one external system. It owns a pydantic options model
(``extra="forbid"``), named once as the type parameter of its base (``LogSink[AcmeOptions]``), and
implements the kind's small async contract: ``open``, ``health``, the kind's operations, ``close``.
Module logic (batching, retries of whole batches, dead-lettering, offsets) lives in the core.

This module and :mod:`ce_daemon.http` are the whole public surface a plugin imports from: the error
taxonomy (:class:`TransientError`, :class:`AuthError`…), :func:`register_secret`, the syslog
framing (:class:`SyslogFramer`) and the daemon's one backoff (:class:`Backoff`, for a plugin's own
retries inside one ``send``) are re-exported here so that a plugin never reaches into the core.

A plugin class says which version of this contract it was written for (``api_version``); the
registry checks it against :data:`API_VERSION` when it loads the plugin (see ``docs/plugins.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Final, Generic, NamedTuple, get_args, overload

import structlog
from pydantic import BaseModel, ConfigDict
from structlog.typing import FilteringBoundLogger
from typing_extensions import TypeVar

from ce_daemon.backoff import Backoff
from ce_daemon.config.values import Duration, SecretOrText, Size, Timeout
from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.framing import Framing, SyslogFramer, SyslogHeader, stamp_or_now
from ce_daemon.redact import register as register_secret

__all__ = [
    "API_VERSION",
    "OLDEST_API_VERSION",
    "AuthError",
    "Backoff",
    "ComponentConfigError",
    "Duration",
    "Framing",
    "Health",
    "IocPage",
    "IocRecord",
    "LogSink",
    "OptionsT_co",
    "OutBatch",
    "OutRecord",
    "PermanentError",
    "Plugin",
    "PluginContext",
    "PluginOptions",
    "Pull",
    "Push",
    "PushResult",
    "RiskAction",
    "RiskPage",
    "RiskRecord",
    "RiskScale",
    "RiskSource",
    "RiskTarget",
    "SecretOrText",
    "SendResult",
    "SharedIoc",
    "Size",
    "SyslogFramer",
    "SyslogHeader",
    "ThreatSink",
    "ThreatSource",
    "Ticket",
    "TicketRef",
    "TicketSink",
    "TicketStatus",
    "Timeout",
    "TransientError",
    "register_secret",
    "stamp_or_now",
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


OptionsT_co = TypeVar("OptionsT_co", bound=PluginOptions, covariant=True, default=PluginOptions)
"""A plugin's options model, the type parameter of its base class (``LogSink[AcmeOptions]``)."""


@dataclass(frozen=True)
class PluginContext:
    """What the core gives a plugin instance.

    ``base_dir`` is the folder of the pipeline file (relative paths in options resolve from
    there); ``data_dir`` is a folder the plugin may keep files in (beside the state database).
    """

    name: str
    base_dir: Path
    data_dir: Path
    log: FilteringBoundLogger = field(default_factory=structlog.get_logger)
    """The component's logger, already bound to its name (``component=``, ``sink=``)."""

    def resolve(self, path: Path) -> Path:
        """``path`` made absolute against the pipeline file's folder."""
        return path if path.is_absolute() else self.base_dir / path


@dataclass(frozen=True, slots=True)
class Health:
    """A plugin's answer to a health check."""

    ok: bool
    detail: str = ""


class OutRecord(NamedTuple):
    """One formatted record on its way to a log sink.

    ``data`` is the formatted line (CEF, LEEF or JSON, UTF-8, no trailing newline);
    ``id`` is the Netskope ``_id`` (an idempotency key where the target has one).

    Immutable, and a tuple: a route makes one per record it ships (three routes at a tenant's full
    rate, 120,000 a second), and a frozen dataclass took twice as long to make (2.1 against 1.1 µs on
    the 2-core CI machine: it sets each field through ``object.__setattr__``).
    """

    id: str
    timestamp: int
    data: bytes
    kind: str
    subtype: str
    format: str


class OutBatch(Sequence[OutRecord]):
    """A batch of records as a route hands it to a log sink: one list per field of :class:`OutRecord`.

    It is a ``Sequence[OutRecord]`` like any other (an item is made when it is asked for), so a sink
    that iterates records works unchanged. A sink that reads one field of every record reads that
    field's list instead, and no record object is made at all: the route ships 120,000 records a second
    at a tenant's full rate on three routes, and making them cost it more than anything else it does.
    ``OutBatch.of(batch)`` gives the lists of any sequence of records (itself, for an ``OutBatch``).

    The lists belong to the batch: a sink reads them, never changes them.
    """

    __slots__ = ("data", "formats", "ids", "kinds", "subtypes", "timestamps")

    def __init__(
        self,
        ids: list[str] | None = None,
        timestamps: list[int] | None = None,
        data: list[bytes] | None = None,
        kinds: list[str] | None = None,
        subtypes: list[str] | None = None,
        formats: list[str] | None = None,
    ) -> None:
        self.ids: list[str] = [] if ids is None else ids
        self.timestamps: list[int] = [] if timestamps is None else timestamps
        self.data: list[bytes] = [] if data is None else data
        self.kinds: list[str] = [] if kinds is None else kinds
        self.subtypes: list[str] = [] if subtypes is None else subtypes
        self.formats: list[str] = [] if formats is None else formats
        if len({len(field) for field in self._fields()}) != 1:
            raise ValueError("every field of an OutBatch needs one value per record")

    @classmethod
    def of(cls, records: Sequence[OutRecord]) -> OutBatch:
        """``records`` as an ``OutBatch`` (itself when it is one)."""
        if isinstance(records, OutBatch):
            return records
        return cls(*(list(field) for field in zip(*records, strict=True))) if records else cls()

    def append(self, record: OutRecord) -> None:
        """Add one record at the end."""
        self.ids.append(record.id)
        self.timestamps.append(record.timestamp)
        self.data.append(record.data)
        self.kinds.append(record.kind)
        self.subtypes.append(record.subtype)
        self.formats.append(record.format)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> OutRecord: ...

    @overload
    def __getitem__(self, index: slice) -> OutBatch: ...

    def __getitem__(self, index: int | slice) -> OutRecord | OutBatch:
        if isinstance(index, slice):
            return OutBatch(*(field[index] for field in self._fields()))
        return OutRecord(
            self.ids[index],
            self.timestamps[index],
            self.data[index],
            self.kinds[index],
            self.subtypes[index],
            self.formats[index],
        )

    def __iter__(self) -> Iterator[OutRecord]:
        return map(OutRecord._make, zip(*self._fields(), strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, as a list is

    def __repr__(self) -> str:
        return f"OutBatch({list(self)!r})"

    def _fields(self) -> tuple[list[Any], ...]:
        return (self.ids, self.timestamps, self.data, self.kinds, self.subtypes, self.formats)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a sink did with a batch: ``rejected`` lists (index, reason) of records refused for good.

    Raise :class:`~ce_daemon.errors.TransientError` instead when the whole batch should be
    retried, and :class:`~ce_daemon.errors.AuthError` when credentials were refused.
    """

    rejected: Sequence[tuple[int, str]] = ()


def _options_model(cls: type) -> type[PluginOptions] | None:
    """The options model ``cls`` names as a type parameter of its own bases, if it names one."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        for argument in get_args(base):
            if isinstance(argument, type) and issubclass(argument, PluginOptions):
                return argument
    return None


class Plugin(ABC, Generic[OptionsT_co]):
    """What every plugin kind shares.

    The core calls, on one instance: ``open`` once, then ``health``, then the kind's operations
    one at a time, then ``close`` exactly once — also when ``open`` raised. A start attempt that
    failed is retried with a new instance.
    """

    Options: ClassVar[type[PluginOptions]]
    """The options model the core validates a component's settings with.

    Derived from the type parameter (``class AcmeSink(LogSink[AcmeOptions])``): a plugin names its
    model once. A plugin written before the base was generic sets ``Options = AcmeOptions`` instead.
    """
    options: OptionsT_co
    kind: ClassVar[str]
    api_version: ClassVar[int]
    """The :data:`API_VERSION` the plugin was written for: set it as a number, never as ``API_VERSION``.

    Declared by each plugin class, not here, so that the registry can tell a plugin that declares none.
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        model = _options_model(cls)
        if model is None:
            return
        declared = cls.__dict__.get("Options")
        if declared is not None and declared is not model:
            raise TypeError(
                f"{cls.__name__} declares Options = {declared.__name__} but is parameterised with "
                f"{model.__name__}: name the options model once, as the type parameter"
            )
        cls.Options = model

    def __init__(self, options: OptionsT_co, context: PluginContext) -> None:
        self.options = options
        self.context = context

    async def open(self) -> None:
        """Acquire connections and sessions; anything it raises is a start failure of the component."""

    async def health(self) -> Health:
        """Check the target is reachable and accepts our credentials (used at start and reload).

        Answer ``Health(ok=False, detail=why)`` for a target that is down or refuses the credentials
        rather than raising.
        """
        return Health(ok=True)

    async def close(self) -> None:
        """Release everything ``open`` acquired; called once, also after a failed ``open``.

        It must not raise when ``open`` stopped half-way or never ran, and a second call does nothing.
        """


class LogSink(Plugin[OptionsT_co]):
    """Ships formatted log records to a SIEM, a store or a socket."""

    kind: ClassVar[str] = "log_sink"
    max_batch_bytes: ClassVar[int | None] = None
    """The most a target accepts in one request; the core never builds a larger batch."""

    @abstractmethod
    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        """Deliver ``batch``; return only once the target acknowledged it."""


@dataclass(frozen=True, slots=True)
class IocRecord:
    """One indicator as a threat source read it; the core normalises and guards it before storing.

    ``type`` is one of ``url domain hostname ipv4 ipv6 md5 sha1 sha256`` (None: the core guesses it
    from the value); ``seen`` is when the source last saw it (epoch seconds; None: the poll's time);
    ``verdict`` is ``malicious`` or ``safe``; ``severity`` one of ``unknown low medium high
    critical``; ``reputation`` CE's 1 (benign) to 10 (malicious); ``confidence`` 0 to 100. Values out
    of those ranges are clamped, an unknown severity or verdict is refused with the record.
    """

    value: str
    type: str | None = None
    seen: float | None = None
    verdict: str = "malicious"
    severity: str = "unknown"
    reputation: int = 5
    confidence: int = 50
    tags: tuple[str, ...] = ()
    comment: str = ""
    dlp: bool = False
    """A DLP file fingerprint (hash types only), not a malware verdict."""


@dataclass(frozen=True, slots=True)
class IocPage:
    """One page of a pull: the indicators read, what could not be read, and where to resume.

    ``refused`` lists ``(what, reason)`` for items the plugin could not make an indicator of (a STIX
    pattern it cannot parse, a CSV row without the value column): counted for the source and
    logged, never stored. ``checkpoint`` is the cursor after this page (an incremental source's
    timestamp, a TAXII ``next``): the core stores it with the page's indicators and hands it back on
    the next pull, so a restart resumes after the last stored page. None keeps the previous one.
    """

    records: Sequence[IocRecord]
    refused: Sequence[tuple[str, str]] = ()
    checkpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Pull:
    """What the core asks of one poll of a threat source."""

    checkpoint: str | None
    """The ``checkpoint`` of the last page stored (None: the first poll, or a full-list source)."""
    exclude_tags: frozenset[str]
    """Indicators carrying any of these tags were pushed by this daemon: skip them (no sharing loops)."""
    now: float
    """The poll's time (epoch seconds)."""


class ThreatSource(Plugin[OptionsT_co]):
    """Pulls indicators from a threat-intelligence system (MISP, TAXII, a feed…).

    A source is incremental (each pull returns what changed since ``Pull.checkpoint``) or a full list
    (each pull returns the whole list: what it no longer lists is deactivated, only after a pull
    that went through to its last page). A pull that fails part-way raises; the pages already
    yielded stay stored.
    """

    kind: ClassVar[str] = "threat_source"
    full_list: bool = False
    """True when every pull returns the source's whole list (set per instance when an option decides)."""

    @abstractmethod
    def pull(self, request: Pull) -> AsyncIterator[IocPage]:
        """The pages of one poll, in order (an async generator)."""


@dataclass(frozen=True, slots=True)
class SharedIoc:
    """One indicator as the core shares it: the merged view of every source's word on it."""

    type: str
    value: str
    severity: str
    reputation: int
    confidence: int
    tags: tuple[str, ...]
    comment: str
    first_seen: float
    last_seen: float
    sources: tuple[str, ...]
    dlp: bool = False


@dataclass(frozen=True, slots=True)
class Push:
    """One push to a threat destination.

    ``full`` False (a destination with ``incremental = True``): add ``add`` and remove ``remove``,
    leaving the rest as it is. ``full`` True: ``add`` is the destination's whole list, replacing
    what it holds (``remove`` is then empty). ``tag`` marks what this daemon pushed: write it where
    the destination keeps tags, so that a source reading the same system skips it.

    A push whose answer was lost is pushed again: adding what is already there and removing what is
    already gone must do no harm (look before appending where the target would double an entry).
    """

    add: Sequence[SharedIoc]
    remove: Sequence[SharedIoc]
    full: bool
    tag: str


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a destination did with a push: ``rejected`` lists ``(value, reason)`` it refused for good.

    Refused entries are dropped, counted and reported, and not offered again until they change.
    Raise :class:`~ce_daemon.errors.TransientError` instead when the push should be retried whole.
    """

    rejected: Sequence[tuple[str, str]] = ()


class ThreatSink(Plugin[OptionsT_co]):
    """Shares indicators with a system that blocks or hunts with them (a Netskope list, MISP, TAXII…)."""

    kind: ClassVar[str] = "threat_sink"
    types: frozenset[str] = frozenset()
    """The indicator types it takes (the core never offers others)."""
    incremental: bool = True
    """True: pushes carry what to add and remove; False: each push is the whole list."""
    max_entries: int | None = None
    """The most entries the destination holds: the core orders the list and drops the rest (reported)."""
    max_bytes: int | None = None
    """The most bytes its list may take, counted with :meth:`entry_size`."""

    def entry_size(self, ioc: SharedIoc) -> int:
        """What ``ioc`` counts against :attr:`max_bytes` (by default its value and a newline)."""
        return len(ioc.value.encode()) + 1

    @abstractmethod
    async def push(self, push: Push) -> PushResult:
        """Apply ``push``; return only once the destination acknowledged it."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One ticket or notification as the core asks a destination to open or update it.

    ``key`` identifies the dedup group (stable across restarts and replays, at most 64 characters of
    ``[a-z0-9-]``): use it as the destination's idempotency key where it has one (PagerDuty's
    ``dedup_key``, ServiceNow's ``correlation_id``, a Jira label) and to :meth:`TicketSink.find` a
    ticket whose creation answer was lost. ``fields`` are the queue's mappings rendered for this
    alert (destination field → text; a placeholder stands where an alert lacks a field).
    """

    key: str
    rule: str
    title: str
    description: str
    severity: str
    """``informational``, ``low``, ``medium``, ``high`` or ``critical``."""
    fields: Mapping[str, str]
    alert: Mapping[str, Any]
    """The alert as Netskope sent it (read-only)."""
    count: int = 1
    """How many alerts the dedup group holds, this one included."""


@dataclass(frozen=True, slots=True)
class TicketRef:
    """Where a destination put a ticket: its id, a link a person can open, and what updating it needs."""

    id: str
    url: str = ""
    state: Mapping[str, str] = field(default_factory=dict)
    """Anything the plugin needs later to update it (a Slack message's channel and ``ts``), stored as is."""


@dataclass(frozen=True, slots=True)
class TicketStatus:
    """A ticket's status in its system, mapped: ``new``, ``in_progress``, ``on_hold``, ``closed``,
    ``deleted`` (gone from the system) or ``other``; ``raw`` is the system's own word."""

    id: str
    status: str
    raw: str = ""


class TicketSink(Plugin[OptionsT_co]):
    """Opens tickets (Jira, ServiceNow) or sends notifications (Slack, PagerDuty, email…) for alerts.

    The core writes its intent to an outbox before calling :meth:`create` and marks it done after:
    a crash in between calls it again. Where the answer was lost the core calls :meth:`find` first
    (look before re-creating); a destination with an idempotency key may simply create again.
    """

    kind: ClassVar[str] = "ticket_sink"
    tracks: bool = False
    """True for a ticketing system whose tickets have a status the core syncs (:meth:`statuses`)."""

    @abstractmethod
    async def create(self, ticket: Ticket) -> TicketRef:
        """Open the ticket (send the notification); return once the destination acknowledged it."""

    async def find(self, key: str) -> TicketRef | None:
        """The ticket opened earlier for ``key``, or None (the default: the destination cannot tell)."""
        return None

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        """A duplicate joined ``ref``'s group: comment on it, edit it, or re-send (the default: a new
        notification, as a destination that cannot update does)."""
        return await self.create(ticket)

    async def statuses(self, refs: Sequence[TicketRef]) -> Sequence[TicketStatus]:
        """The current status of each of ``refs`` (a ticket the system no longer has: ``deleted``)."""
        return ()

    async def resolve(self, ref: TicketRef) -> None:
        """Close what ``ref`` opened, where the destination has such a call (PagerDuty's ``resolve``)."""


@dataclass(frozen=True, slots=True)
class RiskScale:
    """How a risk source's raw values map onto Netskope's scale (0-1000, higher = safer).

    ``low``/``high`` bound the raw scale (``higher_is_safer`` False: it is inverted); ``labels`` map a
    grade or level to a score on Netskope's scale (``{"LOW": 875, "MEDIUM": 625, "HIGH": 375}``);
    ``population`` True: min-max over each poll's population (unbounded scales), inverted when
    ``higher_is_safer`` is False. A source declares its vendor's scale; the YAML may override it.
    """

    low: float = 0.0
    high: float = 1000.0
    higher_is_safer: bool = True
    labels: Mapping[str, float] | None = None
    population: bool = False


@dataclass(frozen=True, slots=True)
class RiskRecord:
    """One entity's score as a risk source gives it.

    ``entity`` is ``user``, ``device`` or ``application``; ``key`` its unique field (an email, a host
    id, an application name: the core lower-cases emails). ``score`` is the raw value on the source's
    scale, or ``label`` a grade or level its :class:`RiskScale` maps; ``seen`` when the source scored
    it (None: the poll's time); ``attributes`` extra facts (a display name, a department).
    """

    entity: str
    key: str
    score: float | None = None
    label: str | None = None
    seen: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RiskPage:
    """One page of a risk source's poll; ``refused`` lists ``(what, reason)`` it could not read."""

    records: Sequence[RiskRecord]
    refused: Sequence[tuple[str, str]] = ()


class RiskSource(Plugin[OptionsT_co]):
    """Scores users, devices or applications (CrowdStrike ZTA, KnowBe4, BitSight, Okta…).

    Each poll returns the source's current scores, page by page (``pull``); a poll that fails part-way
    raises, and the scores stored before stay as they were (marked stale once older than the YAML says).
    """

    kind: ClassVar[str] = "risk_source"
    entities: frozenset[str] = frozenset()
    """The entity types it scores."""
    scale: RiskScale = RiskScale()
    """Its vendor's scale (the YAML's ``scale:`` overrides it)."""
    asks_about: frozenset[str] = frozenset()
    """The entity types it can only be asked about by key (Netskope's ``getuci`` wants the users named):
    before each poll the core sets :attr:`known` to the keys of each that any source gave."""
    known: Mapping[str, Sequence[str]] = MappingProxyType({})
    """Per type in :attr:`asks_about`, the keys the state holds (at most the core's bound), sorted."""

    @abstractmethod
    def pull(self) -> AsyncIterator[RiskPage]:
        """The pages of one poll (an async generator)."""


@dataclass(frozen=True, slots=True)
class RiskTarget:
    """What a risk action acts on: an entity, why (the rule and the score), and what it knows of it."""

    entity: str
    key: str
    rule: str
    score: float
    """The combined score (Netskope's scale) when the rule matched."""
    band: str
    """``critical``, ``high``, ``medium`` or ``low``."""
    attributes: Mapping[str, str] = field(default_factory=dict)
    state: Mapping[str, str] = field(default_factory=dict)
    """What :meth:`RiskAction.apply` returned for this target, handed to :meth:`RiskAction.revert`."""
    action_id: int = 0
    """The action-log entry this call stands for (0: none). A call made again — its answer was lost,
    the daemon was killed, another node took over — carries the same id and ``decided``: an action
    without idempotency of its own builds its request from them, so that the retry is the same request
    (a notification's dedup key, an impact's timestamp)."""
    decided: float = 0.0
    """When the core decided the call (epoch seconds), the same for every retry of it."""


class RiskAction(Plugin[OptionsT_co]):
    """Acts when a risk rule starts matching an entity (add to a group, lower a UCI, notify), and where it
    can, reverts when it stops. Every call is logged with its outcome by the core."""

    kind: ClassVar[str] = "risk_action"
    entities: frozenset[str] = frozenset()
    """The entity types it acts on."""
    revertible: bool = False

    @abstractmethod
    async def apply(self, target: RiskTarget) -> Mapping[str, str]:
        """Act on ``target``; return what reverting it needs (an anomaly id), stored with the action.

        Applying what is already applied must do no harm: an action whose answer was lost is applied
        again."""

    async def revert(self, target: RiskTarget) -> None:
        """Undo :meth:`apply` (``target.state`` holds what it returned); reverting twice does no harm."""
