"""The threat exchange's Prometheus family: stored IOCs by type, source and status.

Collectors run without awaiting (a scrape reads one instant), so the family reads a snapshot of the
store's counts taken whenever the job reads them (``status``; the ageing loop that comes with the
sources refreshes it on its own).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ce_daemon.metrics import Metrics

Counts = list[tuple[str, str, bool, int]]


class ThreatMetrics:
    """``ce_daemon_threat_iocs{type, source, status}`` of one registry (``metrics.own(ThreatMetrics)``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.counts: Counts = []
        metrics.registry.register(self)

    def update(self, counts: Counts) -> None:
        """Take the store's latest counts (:meth:`IocStore.counts`)."""
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "ce_daemon_threat_iocs",
            "Stored IOC rows by type, source and status.",
            labels=["type", "source", "status"],
        )
        for kind, source, active, rows in self.counts:
            family.add_metric([kind, source, "active" if active else "inactive"], rows)
        yield family
