"""The ``tickets:`` section's shape (the ticket orchestrator job), composed into the pipeline's model.

Destinations are ``ticket_sink`` plugins (each with a request rate and, for systems whose tickets have
a status, a status sync interval). Rules read alert and event streams like log routes do, filter them
in the core language, drop what a mute window matches, fold duplicates into the open ticket of their
group, and queue tickets to one or more destinations, each with templated fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import Field, model_validator

from ce_daemon.config.model import as_aware
from ce_daemon.config.values import Duration, Name, Strict

__all__ = ["Dedup", "Destination", "Mute", "Queue", "Rule", "Tickets"]

DAY = 86_400.0


class Destination(Strict):
    """One system tickets or notifications go to (a ``ticket_sink`` plugin)."""

    name: Name
    plugin: dict[str, Any]
    """``type:`` (the plugin's entry-point name) and its options."""
    rate_limit: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    """Requests per second at most (each create, update, resolve or status batch is one)."""
    sync_every: Annotated[Duration, Field(ge=1, le=7 * DAY)] = 300.0
    """How often open tickets' statuses are fetched (plugins that track statuses only)."""
    enabled: bool = True


class Mute(Strict):
    """Alerts matching ``filter`` (every alert when unset) are dropped between ``start`` and ``end``."""

    name: str = "mute"
    filter: Any = None
    start: datetime
    end: datetime
    reason: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if as_aware(self.end) <= as_aware(self.start):
            raise ValueError("a mute window's end must come after its start")
        return self


class Dedup(Strict):
    """Alerts of one group join the open ticket of that group opened less than ``window`` earlier.

    A group is the values of ``fields`` (dotted paths), or every alert ``filter`` matches (one group).
    """

    fields: list[str] = []
    filter: Any = None
    window: Annotated[Duration, Field(gt=0, le=365 * DAY)] = 3600.0

    @model_validator(mode="after")
    def _one(self) -> Self:
        if bool(self.fields) == (self.filter is not None):
            raise ValueError("dedup names either `fields` or `filter`")
        return self


class Queue(Strict):
    """Where a rule's tickets go and what they say (templates: ``$field``, ``${dotted.path}``)."""

    to: str
    """The destination's name."""
    title: str = "Netskope $alert_type alert: ${alert_name}"
    description: str = "User ${user} on ${app}: ${alert_name} (${policy}, action ${action}) at ${timestamp}"
    severity: str = "${severity}"
    """Rendered, then read as informational, low, medium, high or critical (medium when unknown)."""
    fields: dict[str, str] = {}
    """Destination field → template."""
    require_approval: bool = False
    """Tickets wait for ``ce-daemon tickets approve`` before they are sent."""


class Rule(Strict):
    """Which alerts of which tenant become tickets, and where they go."""

    name: Name
    tenant: str
    alerts: list[str] = []
    events: list[str] = []
    filter: Any = None
    mute: list[Mute] = []
    muted_until: datetime | None = None
    """While muted, every alert of the rule is dropped (counted as muted)."""
    dedup: Dedup | None = None
    queues: Annotated[list[Queue], Field(min_length=1)]
    write_back: bool = False
    """Write status changes back to the Netskope incident (alerts carrying an ``object_id``)."""
    enabled: bool = True


class Tickets(Strict):
    """The ``tickets:`` section."""

    destinations: list[Destination] = []
    rules: list[Rule] = []
