"""A risk rule's notification through one of the ticket module's destinations (Slack, PagerDuty, e-mail,
Jira, ServiceNow, a webhook…): an action written in the YAML as ``notify: {type: <ticket_sink>, …}``.

Applying opens a ticket (sends a notification) naming the entity, its score and band and the rule;
reverting resolves it where the destination has such a call (PagerDuty's ``resolve``, a webhook's
resolve) and is not offered where it has none (a Slack message stays as it was).

The ticket's ``key`` comes from the core's action-log entry, so a call made again (its answer lost,
the daemon killed, another node taking over) is the same ticket: the destination's idempotency key
where it has one (PagerDuty's ``dedup_key``, ServiceNow's ``correlation_id``, a Jira label), and a
look first (:meth:`TicketSink.find`) before anything is created.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from ce_daemon.plugin import (
    PluginContext,
    PluginOptions,
    RiskAction,
    RiskTarget,
    Ticket,
    TicketRef,
    TicketSink,
)

__all__ = ["Notification", "resolves", "ticket_of"]

SEVERITY: Final = {"critical": "critical", "high": "high", "medium": "medium", "low": "low"}
"""A band's ticket severity (an entity without a band: informational)."""
_STATE_PREFIX: Final = "ref."


def resolves(sink: type[Any] | None) -> bool:
    """Whether a destination of class ``sink`` can close what it opened (it overrides ``resolve``)."""
    return sink is not None and getattr(sink, "resolve", None) is not TicketSink.resolve


def ticket_key(target: RiskTarget) -> str:
    """``risk-<entry>-<digest of rule, type and key>``: unique per action-log entry and entity, at most
    64 characters of ``[a-z0-9-]`` (the ticket contract's shape)."""
    digest = hashlib.sha256(f"{target.rule}\n{target.entity}\n{target.key}".encode()).hexdigest()[:16]
    return f"risk-{target.action_id}-{digest}" if target.action_id else f"risk-{digest}"


def ticket_of(target: RiskTarget) -> Ticket:
    """The ticket a rule's notification opens for ``target``."""
    score = "no score" if target.score < 0 else f"score {target.score:.0f}"
    title = f"Risk: {target.entity} {target.key} is {target.band} ({score}), rule {target.rule}"
    lines = [
        f"The {target.entity} {target.key} matched the risk rule {target.rule!r}.",
        f"Combined score: {score} on Netskope's scale (0-1000, higher is safer); band: {target.band}.",
    ]
    lines.extend(f"{name}: {value}" for name, value in sorted(target.attributes.items()))
    facts = {"entity": target.entity, "key": target.key, "rule": target.rule, "score": target.score,
             "band": target.band, "attributes": dict(target.attributes)}  # fmt: skip
    fields = {"entity": target.entity, "key": target.key, "band": target.band, "score": score}
    return Ticket(
        ticket_key(target), target.rule, title, "\n".join(lines), SEVERITY.get(target.band, "informational"),
        fields, facts,
    )  # fmt: skip


class Notification(RiskAction[PluginOptions]):
    """A ticket destination acting as a risk action (built by the evaluator, not an entry point)."""

    api_version = 1
    entities = frozenset({"user", "device", "application"})

    def __init__(self, sink: TicketSink[Any], context: PluginContext) -> None:
        super().__init__(sink.options, context)
        self.sink = sink
        self.revertible = resolves(type(sink))

    async def open(self) -> None:
        await self.sink.open()

    async def close(self) -> None:
        await self.sink.close()

    async def apply(self, target: RiskTarget) -> Mapping[str, str]:
        ticket = ticket_of(target)
        ref = await self.sink.find(ticket.key)  # look before (re-)creating: this call may be a retry
        if ref is None:
            ref = await self.sink.create(ticket)
        else:
            self.context.log.info("risk.notification_found", key=ticket.key, ticket=ref.id)
        state = {"ticket": ref.id, "url": ref.url, "key": ticket.key}
        state.update({_STATE_PREFIX + name: value for name, value in ref.state.items()})
        return state

    async def revert(self, target: RiskTarget) -> None:
        ticket = target.state.get("ticket")
        if not ticket or not self.revertible:
            return
        prefix = _STATE_PREFIX
        saved = {k.removeprefix(prefix): v for k, v in target.state.items() if k.startswith(prefix)}
        await self.sink.resolve(TicketRef(ticket, target.state.get("url", ""), saved))
