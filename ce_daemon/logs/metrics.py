"""The log routes' Prometheus families, registered on the daemon's registry by the logs job.

Per (route, sink): the counters each route keeps for ``status`` (carried over when a reload rebuilds
the route), its lag and backlog, and the time its sink takes to accept a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ce_daemon.metrics import Carry, Labels, Metrics, counter_families, status_counters

# What a log route counts in its status → (metric family, help). Per (route, sink).
ROUTE_COUNTERS: Mapping[str, tuple[str, str]] = {
    "received": ("ce_daemon_route_received_records", "Records read from the spool."),
    "filtered": ("ce_daemon_route_filtered_records", "Records the route's filter or mapping left out."),
    "muted": ("ce_daemon_route_muted_records", "Records not shipped because a mute window matched."),
    "sent": ("ce_daemon_route_sent_records", "Records the sink accepted."),
    "failed": (
        "ce_daemon_route_failed_records",
        "Records of send attempts that failed and are retried (counted per attempt).",
    ),
    "dead_lettered": (
        "ce_daemon_route_dead_lettered_records",
        "Records refused for good, kept in the dead-letter table.",
    ),
    "bytes": ("ce_daemon_route_bytes", "Formatted bytes handed to the sink (one separator per record)."),
    "retries": ("ce_daemon_route_retries", "Batch send attempts that failed and were retried."),
    "batches": ("ce_daemon_route_batches", "Batches handed to the sink."),
}
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RouteMetrics:
    """The route families of one :class:`~ce_daemon.metrics.Metrics` (``metrics.own(RouteMetrics)``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._totals = Carry(status_counters(ROUTE_COUNTERS))
        self.batch_seconds = Histogram(
            "ce_daemon_route_batch_duration_seconds",
            "Time the sink took to accept a batch (sink.send), per route.",
            ["route", "sink"],
            buckets=BATCH_SECONDS_BUCKETS,
            registry=metrics.registry,
        )
        metrics.registry.register(self)

    def collect(self) -> Iterable[Metric]:
        """The route families, read from the running routes at this scrape."""
        from ce_daemon.logs.route import RouteComponent  # which imports this module

        source = self._metrics.source
        if source is None:
            return

        labels = ["route", "sink"]
        live: dict[Labels, list[object]] = {}
        lag = GaugeMetricFamily(
            "ce_daemon_route_lag_seconds",
            "Now minus the newest record timestamp the route shipped.",
            labels=labels,
        )
        backlog = GaugeMetricFamily(
            "ce_daemon_route_backlog_records",
            "Records in the spool the route has not had acknowledged by its sink yet.",
            labels=labels,
        )
        spool = self._metrics.spool
        consumers = (spool or {}).get("consumers", {})
        for supervised in source.supervisor.running.values():
            route = supervised.component
            if not isinstance(route, RouteComponent):
                continue
            key = (route.config.name, route.route.sink.name)
            live.setdefault(key, []).append(route.status)
            if route.status.refresh is not None:
                route.status.refresh()  # counters that follow the clock (lag_s) are brought up to date
            if isinstance(lag_s := route.status.counters.get("lag_s"), int | float):
                lag.add_metric(list(key), lag_s)
            if spool is not None:
                backlog.add_metric(list(key), consumers.get(route.name, {}).get("records", 0))
        yield from counter_families(ROUTE_COUNTERS, labels, self._totals.totals(live))
        yield lag
        yield backlog
