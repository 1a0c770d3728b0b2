"""The ticket orchestrator's Prometheus families: tickets by destination and status, the outbox's depth
and its failures, per destination.

Collectors run without awaiting (a scrape reads one instant), so the families read a snapshot of the
store's counts taken by the dispatchers every few seconds and whenever ``status`` asks.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ce_daemon.metrics import Metrics

Counts = list[tuple[str, str, int]]


class TicketMetrics:
    """``ce_daemon_tickets{destination, status}``, ``ce_daemon_ticket_outbox{destination, state}``."""

    def __init__(self, metrics: Metrics) -> None:
        self.counts: Counts = []
        self.outbox: Counts = []
        metrics.registry.register(self)

    def update(self, counts: Counts, outbox: Counts) -> None:
        """Take the store's latest counts (:meth:`TicketStore.counts`, :meth:`TicketStore.outbox`)."""
        self.counts, self.outbox = counts, outbox

    def collect(self) -> Iterable[Metric]:
        tickets = GaugeMetricFamily(
            "ce_daemon_tickets", "Tickets by destination and status.", labels=["destination", "status"]
        )
        for destination, status, n in self.counts:
            tickets.add_metric([destination, status], n)
        yield tickets
        depth = GaugeMetricFamily(
            "ce_daemon_ticket_outbox",
            "Intents not done, by destination and state (pending, held for approval, failed).",
            labels=["destination", "state"],
        )
        for destination, state, n in self.outbox:
            depth.add_metric([destination, state], n)
        yield depth
        failures = GaugeMetricFamily(
            "ce_daemon_ticket_failures", "Intents the destination refused for good.", labels=["destination"]
        )
        failed: dict[str, int] = {}
        for destination, state, n in self.outbox:
            failed[destination] = failed.get(destination, 0) + (n if state == "failed" else 0)
        for destination, n in sorted(failed.items()):
            failures.add_metric([destination], n)
        yield failures
