"""The risk exchange's Prometheus families: entities per type and band, the average combined score per
type, action-log entries by outcome, and each source's staleness.

Collectors run without awaiting, so the families read a snapshot the evaluator takes after each pass
(and ``status`` when it is asked).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ce_daemon.metrics import Metrics


class RiskMetrics:
    """``ce_daemon_risk_*`` of one registry (``metrics.own(RiskMetrics)``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.bands: list[tuple[str, str, int, float | None]] = []
        self.outcomes: list[tuple[str, str, int]] = []
        self.freshness: dict[str, float] = {}
        self.stale_after: dict[str, float] = {}
        metrics.registry.register(self)

    def update(
        self,
        bands: list[tuple[str, str, int, float | None]],
        outcomes: list[tuple[str, str, int]],
        freshness: Mapping[str, float],
        stale_after: Mapping[str, float],
    ) -> None:
        self.bands, self.outcomes = bands, outcomes
        self.freshness, self.stale_after = dict(freshness), dict(stale_after)

    def collect(self) -> Iterable[Metric]:
        entities = GaugeMetricFamily(
            "ce_daemon_risk_entities",
            "Entities by type and band of their combined score.",
            labels=["type", "band"],
        )
        average = GaugeMetricFamily(
            "ce_daemon_risk_average_score",
            "Average combined score (0-1000, higher = safer) per type.",
            labels=["type"],
        )
        sums: dict[str, tuple[float, int]] = {}
        for kind, band, n, mean in self.bands:
            entities.add_metric([kind, band], n)
            if mean is not None:
                total, count = sums.get(kind, (0.0, 0))
                sums[kind] = (total + mean * n, count + n)
        for kind, (total, count) in sorted(sums.items()):
            average.add_metric([kind], total / count if count else 0.0)
        yield entities
        yield average
        actions = GaugeMetricFamily(
            "ce_daemon_risk_actions", "Action-log entries by kind and outcome.", labels=["kind", "outcome"]
        )
        for kind, outcome, n in self.outcomes:
            actions.add_metric([kind, outcome], n)
        yield actions
        age = GaugeMetricFamily(
            "ce_daemon_risk_source_age_seconds", "Age of each source's newest score.", labels=["source"]
        )
        stale = GaugeMetricFamily(
            "ce_daemon_risk_source_stale",
            "1 when a source's newest score is older than its stale_after.",
            labels=["source"],
        )
        now = time.time()
        for source, newest in sorted(self.freshness.items()):
            age.add_metric([source], max(0.0, now - newest))
            limit = self.stale_after.get(source)
            stale.add_metric([source], 1.0 if limit is not None and now - newest > limit else 0.0)
        yield age
        yield stale
