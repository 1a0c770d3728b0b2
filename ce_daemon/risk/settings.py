"""The ``risk:`` section's shape (the risk exchange job), composed into the pipeline's model.

Sources score entities (each a ``risk_source`` plugin, or a Netskope tenant's UBA alerts read from the
spool), their scores are normalised onto Netskope's scale (0-1000, higher = safer) and combined per
entity; rules over the combined and per-source scores fire named actions (``risk_action`` plugins)
when an entity starts matching, and revert them when it stops.

The maintenance window: actions a rule decides *inside* ``maintenance`` (start-end, UTC; it may span
midnight) are deferred and run once the window ends, when their entity still matches. Reverts are
deferred the same way (a change window is when nothing is touched).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from ce_daemon.config.values import Duration, Name, Strict
from ce_daemon.plugin import RiskScale

__all__ = [
    "DAY",
    "ActionInstance",
    "Maintenance",
    "NetskopeStream",
    "NetskopeUba",
    "Risk",
    "RiskRule",
    "RiskSourceConfig",
    "ScaleOverride",
    "Snapshot",
]

DAY = 86_400.0
ENTITIES = ("user", "device", "application")
Entity = Literal["user", "device", "application"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class ScaleOverride(Strict):
    """The YAML's word on a source's scale (its plugin declares one: this replaces it whole)."""

    low: float = 0.0
    high: float = 1000.0
    higher_is_safer: bool = True
    labels: dict[str, Annotated[float, Field(ge=0, le=1000)]] | None = None
    population: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.labels is None and not self.population and not self.high > self.low:
            raise ValueError("`high` must be above `low`")
        return self

    def scale(self) -> RiskScale:
        """The :class:`RiskScale` it describes."""
        return RiskScale(self.low, self.high, self.higher_is_safer, self.labels, self.population)


NetskopeStream = Literal["uba", "application", "clientstatus"]


class NetskopeUba(Strict):
    """A Netskope tenant's records as a source of scores, read from the spool (``stream``):

    - ``uba`` (the default): UBA alerts score users. Each alert's ``field`` (the data export's
      ``score``: 0-1000, the anomaly's risk, higher = riskier) scores the alert's ``user``
      (lower-cased); a user's latest alert is their score, normalised as ``1000 - score``.
    - ``application``: application events score applications (``app``) by their Cloud Confidence
      Index ``cci`` (0-100, higher = safer).
    - ``clientstatus``: client status events score devices (``device_id``, the host id) by the client's
      ``status``: ``Enabled`` (traffic steered) 875, ``Upgrade failed`` 375, ``Disabled`` 125.

    ``field`` and ``key`` name other fields (a dotted path reaches inside: ``host_info.hostname``);
    the source's ``scale:`` replaces the stream's.
    """

    tenant: str
    stream: NetskopeStream = "uba"
    field: str | None = None
    """The scored field (default: ``score``, ``cci`` or ``status`` by stream)."""
    key: str | None = None
    """The entity's key field (default: ``user``, ``app`` or ``device_id`` by stream)."""
    higher_is_safer: bool | None = None
    """Whether a higher value of ``field`` is safer (default: by stream)."""


class RiskSourceConfig(Strict):
    """One system that scores entities: a ``risk_source`` plugin, or a Netskope tenant's records."""

    name: Name
    plugin: dict[str, Any] | None = None
    netskope: NetskopeUba | None = None
    interval: Annotated[Duration, Field(ge=1, le=7 * DAY)] = 3600.0
    """Time between the end of one poll and the start of the next (CE: 60 minutes)."""
    timeout: Annotated[Duration, Field(gt=0, le=DAY)] = 600.0
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    scale: ScaleOverride | None = None
    stale_after: Annotated[Duration, Field(gt=0)] = 7 * DAY
    """A score older than this counts as absent from the combined score (and the source is reported)."""
    enabled: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.plugin is None) == (self.netskope is None):
            raise ValueError("a risk source names either `plugin` (a risk_source plugin) or `netskope`")
        return self


class ActionInstance(Strict):
    """A named action (rules reference it by name, or carry their own): a ``risk_action`` plugin with its
    options, or ``notify``: a notification through a ticket destination (``{type: slack, …}``, the
    shape of a ``tickets.destinations`` entry's ``plugin``)."""

    name: Name
    plugin: dict[str, Any] | None = None
    notify: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.plugin is None) == (self.notify is None):
            raise ValueError(
                "an action names either `plugin` (a risk_action plugin) or `notify` (a ticket destination)"
            )
        return self


class RiskRule(Strict):
    """Which entities (a filter over their scores) get which actions, edge-triggered."""

    name: Name
    entity: Entity = "user"
    filter: Any = None
    """The core filter language over ``key type score band scores.<source> sources attributes.<name>``
    (each attribute also at the top level when no other field has its name)."""
    actions: list[str | ActionInstance] = []
    flap_suppression: Duration = 0.0
    """No second firing of this rule for one entity within this long of the last (the edge is consumed)."""
    muted_until: datetime | None = None
    require_approval: bool = False
    enabled: bool = True


class Maintenance(Strict):
    """A daily window (UTC) inside which actions are deferred until it ends."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00-23:59)")
        return value

    def minutes(self) -> tuple[int, int]:
        """``(start, end)`` in minutes after midnight."""
        h1, m1 = self.start.split(":")
        h2, m2 = self.end.split(":")
        return int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)

    def inside(self, epoch: float) -> bool:
        """Whether ``epoch`` falls inside the window (start included, end excluded)."""
        start, end = self.minutes()
        minute = int(epoch // 60) % 1440
        if start == end:
            return False
        return start <= minute < end if start < end else minute >= start or minute < end


class Snapshot(Strict):
    """Daily averages per entity type: the trend's window."""

    window: Annotated[Duration, Field(ge=DAY, le=400 * DAY)] = 30 * DAY


class Risk(Strict):
    """The ``risk:`` section."""

    sources: list[RiskSourceConfig] = []
    combine: Literal["weighted_mean", "minimum"] = "weighted_mean"
    snapshot: Snapshot = Snapshot()
    rules: list[RiskRule] = []
    actions: list[ActionInstance] = []
    maintenance: Maintenance | None = None
    evaluate_every: Annotated[Duration, Field(ge=0.2, le=DAY)] = 60.0
    """How often combined scores are recomputed and rules evaluated (also right after each poll)."""
    history_keep: Annotated[Duration, Field(ge=DAY)] = 90 * DAY
    """Combined-score history and the action log older than this are deleted."""
