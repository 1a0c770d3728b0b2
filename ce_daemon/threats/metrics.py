"""The threat exchange's Prometheus families: stored IOCs by type, source and status, and what each
destination holds, what caps dropped and what it refused.

Collectors run without awaiting (a scrape reads one instant), so the families read a snapshot of the
store's counts taken whenever the job reads them (``status``) and after every ageing pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ce_daemon.metrics import Metrics

Counts = list[tuple[str, str, bool, int]]

if TYPE_CHECKING:
    from ce_daemon.threats.share import PushRecord


class ThreatMetrics:
    """``ce_daemon_threat_iocs{type, source, status}`` of one registry (``metrics.own(ThreatMetrics)``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.counts: Counts = []
        self.pushes: Sequence[PushRecord] = ()
        metrics.registry.register(self)

    def update(self, counts: Counts, pushes: Sequence[PushRecord] | None = None) -> None:
        """Take the store's latest counts (:meth:`IocStore.counts`, :meth:`ShareStore.pushes`)."""
        self.counts = counts
        if pushes is not None:
            self.pushes = pushes

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "ce_daemon_threat_iocs",
            "Stored IOC rows by type, source and status.",
            labels=["type", "source", "status"],
        )
        for kind, source, active, rows in self.counts:
            family.add_metric([kind, source, "active" if active else "inactive"], rows)
        yield family
        for name, text, read in (
            ("ce_daemon_threat_shared", "Entries a destination holds, as of its last push.", "listed"),
            ("ce_daemon_threat_dropped", "Entries the caps cut from a destination's last push.", "dropped"),
            ("ce_daemon_threat_refused", "Entries a destination refused in its last push.", "rejected"),
            ("ce_daemon_threat_pushes", "Pushes tried per destination (each run).", "runs"),
        ):
            gauge = GaugeMetricFamily(name, text, labels=["destination"])
            for push in self.pushes:
                gauge.add_metric([push.destination], getattr(push, read))
            yield gauge
