"""The ``threats:`` section's shape (the threat exchange job), composed into the pipeline's model.

Sources and destinations come with the plugin contract of the next step; until then the section
holds what the store, the guards and the trust policy need, and refuses ``sources``/``destinations``
as unknown keys (a file that names them is told so, not silently ignored).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from ce_daemon.config.values import Duration, Name, Strict
from ce_daemon.threats.guards import Guards
from ce_daemon.threats.model import IocType, Rejected
from ce_daemon.threats.normalise import normalise

__all__ = ["DAY", "Conflict", "Lifetime", "SourceTrust", "Threats"]

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


class Threats(Strict):
    """The ``threats:`` section: lifetimes, guards, trust, and the local allowlist that always wins."""

    lifetime: Lifetime = Lifetime()
    guards: Guards = Guards()
    conflict: Conflict = Conflict()
    trust: list[SourceTrust] = []
    """Rank and lifetime per source name (sources not listed: rank 50, the section's lifetime)."""
    allowlist: list[str] = []
    """Indicators never shared whatever a source says (normalised like any other; untyped, guessed)."""

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
