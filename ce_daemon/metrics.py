"""Prometheus metrics: the daemon's own registry, read from the live state when Prometheus asks.

Components already count what they do for ``ce-daemon status`` (``ComponentStatus.counters``, the
tenant clients' request counts); a scrape reads those, so the hot paths carry no instrumentation
beyond one histogram observation per batch a sink accepts. The registry is the daemon's own, never
prometheus-client's global one, so two daemons in one process (tests) never mix their series.

Counters stay monotonic for the life of the process: a component rebuilt by a reload, or a tenant
client replaced because its settings changed, starts counting from zero, so what the object it
replaced had counted is carried over into the same series. A series whose component went away
stays, frozen, until the process restarts (as an instrumented counter would); gauges of what no
longer runs (lag, backlog, state) disappear with it.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import structlog
from prometheus_client import CollectorRegistry, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from ce_daemon import __version__
from ce_daemon.health import HealthRegistry, State
from ce_daemon.netskope.poller import HistoryPoller, Poller
from ce_daemon.store import StoreError

if TYPE_CHECKING:
    from ce_daemon.pipeline import Runtime
    from ce_daemon.supervisor import Supervisor

log = structlog.get_logger("ce_daemon.metrics")

Labels = tuple[str, ...]
OwnedT = TypeVar("OwnedT")

# What a poller counts in its status → (metric family, help). Per (tenant, kind, subtype, iterator).
STREAM_COUNTERS: Mapping[str, tuple[str, str]] = {
    "pages": ("ce_daemon_stream_pages", "Pages with records committed to the spool."),
    "empty_pages": ("ce_daemon_stream_empty_pages", "Pages without records (the stream was idle)."),
    "records": ("ce_daemon_stream_records", "Records committed to the spool."),
    "retries": ("ce_daemon_stream_retries", "Requests retried after a transient failure."),
    "broken_pages": (
        "ce_daemon_stream_broken_pages",
        "Pages whose body could not be read after a 200 (asked again with resend).",
    ),
    "malformed_records": (
        "ce_daemon_stream_malformed_records",
        "Records dropped because they are not JSON objects.",
    ),
    "timeouts": ("ce_daemon_stream_timeouts", "Requests whose answer did not come in time (then resent)."),
    "lost_answers": (
        "ce_daemon_stream_lost_answers",
        "Requests whose connection dropped before the answer (then resent).",
    ),
    "server_errors": ("ce_daemon_stream_server_errors", "Answers with a 5xx status (then resent)."),
    "oversized_pages": (
        "ce_daemon_stream_oversized_pages",
        "Answers refused for exceeding max_page_bytes after decompression (then resent).",
    ),
    "pages_parsed": (
        "ce_daemon_stream_pages_parsed",
        "Pages the fast path could not vouch for: parsed and written again (about twice the CPU).",
    ),
    "records_repaired": (
        "ce_daemon_stream_records_repaired",
        "Records with a value the spool cannot encode, kept with that value as its JSON text.",
    ),
    "wait_time_corrected": (
        "ce_daemon_stream_wait_time_corrected",
        "Pages whose wait_time was invalid or above max_wait_time, and was corrected.",
    ),
}
# What a tenant client counts → (metric family, help). Per tenant: the bucket and a 429 are the tenant's.
TENANT_COUNTERS: Mapping[str, tuple[str, str]] = {
    "requests": (
        "ce_daemon_tenant_requests",
        "Requests sent to the tenant's data-export API, retries included.",
    ),
    "throttled": ("ce_daemon_tenant_throttled", "Requests the tenant refused with 429."),
    "bucket_wait_seconds": (
        "ce_daemon_tenant_bucket_wait_seconds",
        "Time requests spent waiting for the tenant's token bucket (or a 429 pause).",
    ),
}


class MetricsSource(Protocol):
    """What the metrics read: the daemon, or anything holding the same live objects."""

    @property
    def generation(self) -> int:
        """The running generation."""

    @property
    def health(self) -> HealthRegistry:
        """Every live component's status."""

    @property
    def supervisor(self) -> Supervisor:
        """The running components."""

    @property
    def runtime(self) -> Runtime | None:
        """The spool and the tenant clients (None before the state database is open)."""


class Metrics:
    """The daemon's Prometheus registry: reload outcomes, the live state, and each job's own families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reloads: Counter[str] = Counter(applied=0, rejected=0)
        build = Info("ce_daemon_build", "The running ce-daemon.", registry=self.registry)
        build.info({"version": __version__, "python": sys.version.split()[0]})
        ProcessCollector(registry=self.registry)
        self._state = _StateCollector(self)
        self.registry.register(self._state)
        self.source: MetricsSource | None = None
        self._owned: dict[Callable[[Metrics], object], object] = {}

    @property
    def spool(self) -> dict[str, Any] | None:
        """The spool's statistics read for the scrape being rendered (None when unavailable)."""
        return self._state.spool

    def own(self, kind: Callable[[Metrics], OwnedT]) -> OwnedT:
        """The one ``kind(self)`` of this registry, made at the first call: how a job adds its families
        (``kind`` registers its collectors and metrics on :attr:`registry`) and its components find them."""
        if kind not in self._owned:
            self._owned[kind] = kind(self)
        return cast("OwnedT", self._owned[kind])

    def watch(self, source: MetricsSource) -> None:
        """Read the live state from ``source`` at every scrape."""
        self.source = source

    def reload_outcome(self, outcome: str) -> None:
        """Count a reload: ``applied`` or ``rejected``."""
        self.reloads[outcome] += 1

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when ``accept`` asks for it) and its content type."""
        runtime = self.source.runtime if self.source is not None else None
        spool = None
        if runtime is not None:
            try:
                spool = await runtime.spool.stats()
            except (StoreError, OSError) as exc:  # the other metrics stay useful
                log.warning("metrics.spool_unavailable", error=str(exc))
        # No await from here on: the collector reads these statistics and the live objects at one instant.
        self._state.spool = spool
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class Carry:
    """Counter totals per label set that survive the replacement of the objects counting them.

    Each scrape passes the live objects per label set; an object seen before and gone now has its
    last values (read from it now: it stopped counting when it was replaced) added to the label set's
    retired total, which every later total includes.
    """

    def __init__(self, read: Callable[[Any], Mapping[str, float]]) -> None:
        self._read = read
        self._retired: dict[Labels, Counter[str]] = {}
        self._seen: dict[Labels, list[object]] = {}

    def totals(self, live: Mapping[Labels, list[object]]) -> dict[Labels, Counter[str]]:
        for labels, objects in self._seen.items():
            current = live.get(labels, [])
            for gone in (o for o in objects if not any(o is c for c in current)):
                self._retired.setdefault(labels, Counter()).update(self._read(gone))
        self._seen = {labels: list(objects) for labels, objects in live.items()}
        totals: dict[Labels, Counter[str]] = {}
        for labels in self._retired.keys() | live.keys():
            total = Counter(self._retired.get(labels, {}))
            for obj in live.get(labels, []):
                total.update(self._read(obj))
            totals[labels] = total
        return totals


def status_counters(table: Mapping[str, object]) -> Callable[[Any], Mapping[str, float]]:
    """Read the counters of ``table`` from a ``ComponentStatus``."""

    def read(status: Any) -> Mapping[str, float]:
        counters = status.counters
        return {k: counters[k] for k in table if isinstance(counters.get(k), int | float)}

    return read


def _restarts(status: Any) -> Mapping[str, float]:
    return {"restarts": status.restarts}


def _client_counters(client: Any) -> Mapping[str, float]:
    return {name: float(getattr(client, name, 0)) for name in TENANT_COUNTERS}


class _StateCollector:
    """Builds every state-derived family at scrape time (prometheus-client's ``Collector`` protocol)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.spool: dict[str, Any] | None = None
        self._streams = Carry(status_counters(STREAM_COUNTERS))
        self._components = Carry(_restarts)
        self._tenants = Carry(_client_counters)

    def collect(self) -> Iterable[Metric]:
        source = self._metrics.source
        reloads = CounterMetricFamily("ce_daemon_reloads", "Reloads (SIGHUP) by outcome.", labels=["outcome"])
        for outcome, count in sorted(self._metrics.reloads.items()):
            reloads.add_metric([outcome], count)
        yield reloads
        if source is None:
            return
        yield GaugeMetricFamily(
            "ce_daemon_generation", "The running generation (1 at start, +1 per applied reload).",
            value=source.generation,
        )  # fmt: skip
        yield from self._component_families(source)
        yield from self._stream_families(source)
        if source.runtime is not None:
            yield from self._tenant_families(source.runtime)
        if self.spool is not None:
            yield from _spool_families(self.spool)

    def _component_families(self, source: MetricsSource) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "ce_daemon_component_state",
            "1 for the state each component is in, 0 for the others.",
            labels=["component", "kind", "state"],
        )
        live: dict[Labels, list[object]] = {}
        for status in source.health.all():
            for candidate in State:
                state.add_metric([status.name, status.kind, str(candidate)], int(status.state is candidate))
            live[(status.name, status.kind)] = [status]
        yield state
        restarts = CounterMetricFamily(
            "ce_daemon_component_restarts",
            "Times the supervisor restarted a component after it crashed.",
            labels=["component", "kind"],
        )
        for labels, total in sorted(self._components.totals(live).items()):
            restarts.add_metric(list(labels), total["restarts"])
        yield restarts

    def _stream_families(self, source: MetricsSource) -> Iterator[Metric]:
        labels = ["tenant", "kind", "subtype", "iterator"]
        live: dict[Labels, list[object]] = {}
        lag = GaugeMetricFamily(
            "ce_daemon_stream_lag_seconds",
            "Now minus the tenant's timestamp_hwm of the stream's last page.",
            labels=labels,
        )
        now = time.time()
        for supervised in source.supervisor.running.values():
            poller = supervised.component
            if not isinstance(poller, Poller):
                continue
            stream = poller.stream
            key = (
                stream.tenant,
                stream.kind,
                stream.subtype,
                "history" if isinstance(poller, HistoryPoller) else "live",
            )
            live.setdefault(key, []).append(poller.status)
            hwm = poller.status.counters.get("timestamp_hwm")
            if isinstance(hwm, int | float):
                lag.add_metric(list(key), max(0.0, now - hwm))
        yield from counter_families(STREAM_COUNTERS, labels, self._streams.totals(live))
        yield lag

    def _tenant_families(self, runtime: Runtime) -> Iterator[Metric]:
        live: dict[Labels, list[object]] = {}
        for client in runtime.clients.values():
            live.setdefault((client.tenant.name,), []).append(client)
        yield from counter_families(TENANT_COUNTERS, ["tenant"], self._tenants.totals(live))


def counter_families(
    table: Mapping[str, tuple[str, str]], labels: list[str], totals: Mapping[Labels, Counter[str]]
) -> Iterator[Metric]:
    """One counter family per entry of ``table`` (counter → (family, help)), a series per label set."""
    for counter, (name, documentation) in table.items():
        family = CounterMetricFamily(name, documentation, labels=labels)
        for key, total in sorted(totals.items()):
            family.add_metric(list(key), total[counter])
        yield family


def _spool_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    used, cap = stats.get("bytes", 0), stats.get("max_bytes", 0)
    yield GaugeMetricFamily("ce_daemon_spool_bytes", "Bytes of compressed pages in the spool.", value=used)
    yield GaugeMetricFamily("ce_daemon_spool_max_bytes", "The spool's byte cap (spool.max_bytes).", value=cap)
    yield GaugeMetricFamily(
        "ce_daemon_spool_fill_ratio", "Spool bytes over its cap; at 1 the pollers pause.",
        value=used / cap if cap else 0.0,
    )  # fmt: skip
    yield GaugeMetricFamily("ce_daemon_spool_pages", "Pages in the spool.", value=stats.get("pages", 0))
    yield GaugeMetricFamily("ce_daemon_spool_records", "Records in the spool.", value=stats.get("records", 0))
