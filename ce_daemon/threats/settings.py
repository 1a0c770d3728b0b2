"""The ``threats:`` section's shape (the threat exchange job), composed into the pipeline's model.

Beside what the store, the guards and the trust policy need, it names the sources polled (each a
``threat_source`` plugin, or Netskope's own alerts read from the spool), the destinations shared
to (each a ``threat_sink`` plugin) and the sharing rules between them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from ce_daemon.config.values import Duration, Name, Size, Strict
from ce_daemon.threats.guards import Guards
from ce_daemon.threats.model import IocType, Rejected
from ce_daemon.threats.normalise import normalise

__all__ = [
    "DAY",
    "Conflict",
    "Destination",
    "Lifetime",
    "NetskopeAlerts",
    "SharingRule",
    "Source",
    "SourceTrust",
    "TagFilter",
    "Threats",
]

DAY = 86_400.0


class Lifetime(Strict):
    """How long an indicator of one source stays active: from its first or last sighting (CE: 90 days)."""

    basis: Literal["first_seen", "last_seen"] = "last_seen"
    after: Annotated[Duration, Field(gt=0)] = 90 * DAY
    types: dict[IocType, Annotated[Duration, Field(gt=0)]] = {}
    """Per-type overrides of ``after`` (an IP is reassigned sooner than a hash changes meaning)."""

    def of(self, kind: IocType) -> float:
        """Seconds an indicator of ``kind`` lives."""
        return self.types.get(kind, self.after)


class SourceTrust(Strict):
    """What the trust policy knows of one source (by the name its IOCs are stored under)."""

    name: Name
    rank: Annotated[int, Field(ge=0, le=100)] = 50
    """Higher wins under ``policy: priority``."""
    lifetime: Lifetime | None = None
    """This source's lifetime; the section's ``lifetime`` when unset."""


class Conflict(Strict):
    """How disagreeing sources (one says safe, another malicious) are settled."""

    policy: Literal["priority", "max_confidence", "most_recent"] = "priority"


class NetskopeAlerts(Strict):
    """Netskope's own verdicts as a source: Malware alerts give file hashes, malsite alerts URLs."""

    tenant: str
    alerts: list[Literal["malware", "malsite"]] = ["malware", "malsite"]


class Source(Strict):
    """One system indicators are pulled from: a ``threat_source`` plugin, or a Netskope tenant's alerts."""

    name: Name
    plugin: dict[str, Any] | None = None
    """``type:`` (the plugin's entry-point name) and its options."""
    netskope: NetskopeAlerts | None = None
    interval: Annotated[Duration, Field(ge=1, le=7 * DAY)] = 300.0
    """Time between the end of one poll and the start of the next."""
    timeout: Annotated[Duration, Field(gt=0, le=DAY)] = 600.0
    """The longest one poll may take; a poll past it fails (what it stored stays, nothing expires)."""
    enabled: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.plugin is None) == (self.netskope is None):
            raise ValueError("a source names either `plugin` (a threat_source plugin) or `netskope`")
        return self


class TagFilter(Strict):
    """Indicators carrying any ``include`` tag (when set), and none of the ``exclude`` tags."""

    include: list[str] = []
    exclude: list[str] = []


class Cap(Strict):
    """At most this many entries and bytes (the destination's own limits apply too)."""

    entries: Annotated[int, Field(gt=0)] | None = None
    bytes: Size | None = None


class SharingRule(Strict):
    """Which indicators of which sources go to one destination."""

    name: Name
    to: str
    """The destination's name."""
    sources: list[str] = []
    """The sources whose word counts (any of them listing it): empty means every source."""
    filter: Any = None
    """The core filter language over the merged view: ``type value severity reputation confidence
    tags sources first_seen last_seen sightings dlp``."""
    types: list[IocType] = []
    """Only these types (empty: every type the destination takes)."""
    min_reputation: Annotated[int, Field(ge=1, le=10)] = 1
    tags: TagFilter = TagFilter()
    order: Literal["last_seen", "first_seen", "reputation", "severity", "sightings"] = "last_seen"
    """What comes first when a cap cuts the list (the highest or most recent first)."""
    cap: Cap = Cap()
    muted_until: datetime | None = None
    """While muted, nothing new is shared and nothing is retracted (what it shared stays as it is)."""
    enabled: bool = True


class Destination(Strict):
    """One system indicators are shared with (a ``threat_sink`` plugin), pushed to every ``interval``."""

    name: Name
    plugin: dict[str, Any]
    interval: Annotated[Duration, Field(ge=1, le=7 * DAY)] = 300.0
    tag: str = "ce-daemon"
    """Marks what this daemon pushed (sources skip indicators carrying it: two-way sharing never loops)."""
    echo_of: str | None = None
    """The source that reads this same system (MISP pulled and pushed): what only it says is never
    pushed back to where it came from."""
    enabled: bool = True


class Threats(Strict):
    """The ``threats:`` section: lifetimes, guards, trust, and the local allowlist that always wins."""

    lifetime: Lifetime = Lifetime()
    guards: Guards = Guards()
    conflict: Conflict = Conflict()
    trust: list[SourceTrust] = []
    """Rank and lifetime per source name (sources not listed: rank 50, the section's lifetime)."""
    allowlist: list[str] = []
    """Indicators never shared whatever a source says (normalised like any other; untyped, guessed)."""
    sources: list[Source] = []
    destinations: list[Destination] = []
    sharing: list[SharingRule] = []
    expire_every: Annotated[Duration, Field(ge=1, le=DAY)] = 300.0
    """How often indicators past their lifetime are deactivated (and retracted where shared)."""

    @field_validator("allowlist")
    @classmethod
    def _normalisable(cls, values: list[str]) -> list[str]:
        for value in values:
            result = normalise(value)
            if isinstance(result, Rejected):
                raise ValueError(f"allowlist entry {value!r}: {result.reason}")  # noqa: TRY004 - pydantic reports ValueError
        return values

    def lifetime_of(self, source: str) -> Lifetime:
        """The lifetime of ``source``'s indicators."""
        for trust in self.trust:
            if trust.name == source and trust.lifetime is not None:
                return trust.lifetime
        return self.lifetime
