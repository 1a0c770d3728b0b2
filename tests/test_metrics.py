"""Prometheus metrics: what the collector reads from the live state, and a real Prometheus scraping it.

The collector tests build the components of a real pipeline file (``plan_components``) beside a
real spool and let the test do the counting the components would do; the scrape is parsed back
with prometheus-client's own parser. The last test runs the daemon and a real Prometheus.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ce_webhook.fake import FakeWebhook
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from ce_daemon.config.load import load_pipeline
from ce_daemon.health import HealthRegistry
from ce_daemon.jobs import Jobs
from ce_daemon.logs.route import RouteComponent
from ce_daemon.metrics import Metrics
from ce_daemon.netskope.checkpoint import Checkpoints, IteratorMark
from ce_daemon.netskope.poller import Poller
from ce_daemon.pipeline import ComponentSpec, Runtime, plan_components
from ce_daemon.registry import Registry
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.supervisor import Component, Supervised, Supervisor
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import SIM_TOKEN, backlog_simulator, pipeline_config
from ce_daemon.testing.prometheus import PrometheusServer, prometheus_path
from ce_daemon.testing.state import open_test_store

PIPELINE = """\
version: 1
state: {path: ./state/db.sqlite}
tenants:
  - name: acme
    url: https://acme.goskope.com
    token: {$env: ACME_TOKEN}
    lookback: {start: 1d}
logs:
  routes:
    - name: to-file
      tenant: acme
      alerts: [dlp]
      sink: {type: file, path: out/x.cef}
"""
ROUTE = {"route": "to-file", "sink": "file"}
DLP = {"tenant": "acme", "kind": "alerts", "subtype": "dlp"}
SPOOL_CAP = 10_000_000

# Outside CI a machine without prometheus skips the scrape test (make test installs it); in CI it runs.
_IN_CI = bool(os.environ.get("CI"))
needs_prometheus = pytest.mark.skipif(
    prometheus_path() is None and not _IN_CI, reason="prometheus is not installed"
)

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


@dataclass
class Live:
    """The live objects the metrics read, held as the daemon holds them; nothing runs, the test counts."""

    health: HealthRegistry
    supervisor: Supervisor
    runtime: Runtime
    specs: dict[str, ComponentSpec]
    generation: int = 1
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = self.runtime.metrics
        self.metrics.watch(self)

    def build(self, name: str) -> Component:
        """Build the component ``name`` and put it where the daemon would (replacing the one before)."""
        component = self.specs[name].build()
        self.health.adopt(component.status)
        self.supervisor.running[name] = Supervised(component)
        return component

    def route(self) -> RouteComponent:
        """The running route."""
        component = self.supervisor.running["route:to-file"].component
        assert isinstance(component, RouteComponent)
        return component

    def poller(self, name: str = "poller:acme/alerts/dlp") -> Poller:
        """A running poller."""
        component = self.supervisor.running[name].component
        assert isinstance(component, Poller)
        return component

    async def scrape(self) -> Samples:
        """Every sample of a scrape in the text format, by name then label set."""
        body, content_type = await self.metrics.render()
        assert content_type.startswith("text/plain")
        samples: Samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
        return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the series ``name{labels}`` (None when the scrape does not have it)."""
    return samples.get(name, {}).get(frozenset(labels.items()))


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    (tmp_path / "pipeline.yaml").write_text(PIPELINE, encoding="utf-8")
    loaded = load_pipeline(tmp_path / "pipeline.yaml", Registry.discover(), environ={"ACME_TOKEN": "t"})
    jobs = Jobs.discover()
    store = await open_test_store(loaded.config.state.path, SPOOL_MIGRATIONS + jobs.migrations())
    spool = Spool(store, SPOOL_CAP)
    await spool.load()
    health = HealthRegistry()
    metrics = Metrics()
    for job in jobs.loaded():
        job.register_metrics(metrics)
    runtime = Runtime(store=store, spool=spool, health=health, data_dir=tmp_path, metrics=metrics)
    state = Live(health, Supervisor(), runtime, plan_components(loaded, runtime))
    await spool.set_consumers({"route:to-file": {"acme/alerts/dlp"}})
    for name in state.specs:
        state.build(name)
    yield state
    await runtime.close()
    await store.close()


# -- the collector ----------------------------------------------------------------------------------


async def test_route_counters_follow_the_route_status_labelled_by_route_and_sink(live: Live) -> None:
    """Each route counter is a `_total` series labelled route and sink, moving as the route counts."""
    route = live.route()
    route.status.count("received", 9)
    route.status.count("sent", 5)
    route.status.count("bytes", 800)
    first = await live.scrape()
    route.status.count("sent", 3)
    second = await live.scrape()
    assert value(first, "ce_daemon_route_received_records_total", **ROUTE) == 9
    assert value(first, "ce_daemon_route_sent_records_total", **ROUTE) == 5
    assert value(first, "ce_daemon_route_bytes_total", **ROUTE) == 800
    assert value(first, "ce_daemon_route_dead_lettered_records_total", **ROUTE) == 0
    assert value(second, "ce_daemon_route_sent_records_total", **ROUTE) == 8


async def test_stream_counters_and_lag_follow_each_poller(live: Live) -> None:
    """Pages and records per tenant, kind, subtype and iterator; lag is now minus the page's timestamp_hwm."""
    poller = live.poller()
    poller.status.count("pages", 2)
    poller.status.count("records", 150)
    poller.status.counters["timestamp_hwm"] = int(time.time()) - 120
    samples = await live.scrape()
    assert value(samples, "ce_daemon_stream_pages_total", **DLP, iterator="live") == 2
    assert value(samples, "ce_daemon_stream_records_total", **DLP, iterator="live") == 150
    assert value(samples, "ce_daemon_stream_records_total", **DLP, iterator="history") == 0
    lag = value(samples, "ce_daemon_stream_lag_seconds", **DLP, iterator="live")
    assert lag is not None and lag >= 120
    assert value(samples, "ce_daemon_stream_lag_seconds", **DLP, iterator="history") is None  # no page yet


async def test_counters_continue_when_a_reload_rebuilds_the_component(live: Live) -> None:
    """A rebuilt route starts its status from zero; the series goes on from what the old one had counted."""
    old = live.route()
    old.status.count("sent", 5)
    assert value(await live.scrape(), "ce_daemon_route_sent_records_total", **ROUTE) == 5
    old.status.count("sent", 3)  # counted after the last scrape, before the swap
    new = live.build("route:to-file")
    assert new is not old and new.status.counters["sent"] == 0
    new.status.count("sent", 2)
    samples = await live.scrape()
    assert value(samples, "ce_daemon_route_sent_records_total", **ROUTE) == 10


async def test_a_removed_route_keeps_its_counters_and_loses_its_gauges(live: Live) -> None:
    """Counters of a route a reload removed stay, frozen; its lag, backlog and state are gone."""
    live.route().status.count("sent", 4)
    live.route().status.counters["lag_s"] = 3
    assert value(await live.scrape(), "ce_daemon_route_lag_seconds", **ROUTE) == 3
    del live.supervisor.running["route:to-file"]
    live.health.unregister("route:to-file")
    samples = await live.scrape()
    assert value(samples, "ce_daemon_route_sent_records_total", **ROUTE) == 4
    assert value(samples, "ce_daemon_route_lag_seconds", **ROUTE) is None
    assert value(samples, "ce_daemon_route_backlog_records", **ROUTE) is None
    assert not any(
        dict(labels)["component"] == "route:to-file" for labels in samples["ce_daemon_component_state"]
    )


async def test_tenant_counters_continue_when_the_client_is_replaced(live: Live) -> None:
    """Requests, 429s and bucket wait are per tenant, and survive a new client for changed settings."""
    [(key, old)] = live.runtime.clients.items()
    old.requests, old.throttled, old.bucket_wait_seconds = 4, 1, 0.75
    assert value(await live.scrape(), "ce_daemon_tenant_requests_total", tenant="acme") == 4
    new = live.runtime.client_for(old.tenant, "changed-settings")
    await live.runtime.clients.pop(key).close()
    new.requests, new.bucket_wait_seconds = 2, 0.25
    samples = await live.scrape()
    assert value(samples, "ce_daemon_tenant_requests_total", tenant="acme") == 6
    assert value(samples, "ce_daemon_tenant_throttled_total", tenant="acme") == 1
    assert value(samples, "ce_daemon_tenant_bucket_wait_seconds_total", tenant="acme") == 1.0


async def test_spool_fill_and_route_backlog_come_from_the_spool(live: Live) -> None:
    """Spool bytes, cap and fill ratio, and the records a route has not had acknowledged yet."""
    records = [{"_id": f"r{i}", "timestamp": 1_700_000_000 + i} for i in range(40)]
    await live.runtime.spool.append(
        "acme/alerts/dlp",
        records,
        commit=Checkpoints(live.runtime.spool.store).page_commit(
            "acme/alerts/dlp", records, IteratorMark(timestamp_hwm=1)
        ),
    )
    samples = await live.scrape()
    used = value(samples, "ce_daemon_spool_bytes")
    assert used is not None and used > 0
    assert value(samples, "ce_daemon_spool_max_bytes") == SPOOL_CAP
    assert value(samples, "ce_daemon_spool_fill_ratio") == pytest.approx(used / SPOOL_CAP)
    assert value(samples, "ce_daemon_spool_records") == 40
    assert value(samples, "ce_daemon_route_backlog_records", **ROUTE) == 40


async def test_component_state_is_one_for_the_current_state_only(live: Live) -> None:
    """`ce_daemon_component_state` has a series per state; only the component's current one is 1."""
    live.route().status.degraded("sink failing, retrying")
    samples = await live.scrape()
    states = {
        dict(labels)["state"]: v
        for labels, v in samples["ce_daemon_component_state"].items()
        if dict(labels)["component"] == "route:to-file"
    }
    assert states == {"starting": 0, "ok": 0, "degraded": 1, "failed": 0, "stopped": 0}


async def test_reload_outcomes_generation_and_build_info(live: Live) -> None:
    """Reloads are counted by outcome; the generation and the version are gauges."""
    live.metrics.reload_outcome("applied")
    live.metrics.reload_outcome("rejected")
    live.metrics.reload_outcome("applied")
    live.generation = 3
    samples = await live.scrape()
    assert value(samples, "ce_daemon_reloads_total", outcome="applied") == 2
    assert value(samples, "ce_daemon_reloads_total", outcome="rejected") == 1
    assert value(samples, "ce_daemon_generation") == 3
    [(labels, one)] = samples["ce_daemon_build_info"].items()
    assert one == 1 and dict(labels)["version"]


async def test_names_follow_prometheus_conventions(live: Live) -> None:
    """Families are ce_daemon_* (or prometheus-client's process_*); counters end in _total; base units."""
    body, _ = await live.metrics.render()
    families = list(text_string_to_metric_families(body.decode()))
    assert families
    for family in families:
        assert family.name.startswith(("ce_daemon_", "process_")), family.name
        assert not family.name.endswith(("_ms", "_milliseconds", "_kb", "_mb")), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name


async def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(live: Live) -> None:
    """With Prometheus's Accept header the answer is OpenMetrics, which its own parser reads."""
    live.route().status.count("sent", 7)
    body, content_type = await live.metrics.render("application/openmetrics-text;version=1.0.0,*/*;q=0.1")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    sent = [
        s.value
        for family in openmetrics_families(body.decode())
        for s in family.samples
        if s.name == "ce_daemon_route_sent_records_total"
    ]
    assert sent == [7]


# -- a real Prometheus ---------------------------------------------------------------------------------


@needs_prometheus
@pytest.mark.prometheus
async def test_a_real_prometheus_scrapes_the_daemon_and_sees_its_counters_move(tmp_path: Path) -> None:
    """Debian's prometheus scrapes /metrics every second and sees records pulled and sent increase."""
    hook = FakeWebhook()
    async with (
        # a backlog, then a steady trickle: the counters keep moving from scrape to scrape
        backlog_simulator(SIM_TOKEN, 200, arrival_rate=50, page_size=100) as sim,
        hook,
    ):
        assert sim.url is not None
        route = {"name": "to-hook", "tenant": "sim", "alerts": ["dlp"], "format": "json"}
        route["sink"] = {"type": "webhook", "url": hook.url + "/hook"}
        route["batch"] = {"max_wait": "200ms"}
        config = pipeline_config(
            tmp_path, sim.url, [route], http={"listen": "127.0.0.1:0", "public": ["/metrics"]}
        )
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={"SIM_TOKEN": SIM_TOKEN}) as daemon:
            url = (await daemon.wait_for_event("http.listening"))["url"]
            target = url.removeprefix("http://").rstrip("/")
            async with PrometheusServer(tmp_path, [target]) as prometheus:
                await prometheus.wait_for('up{job="ce-daemon"} == 1')
                pulled = await prometheus.wait_for("increase(ce_daemon_stream_records_total[1m]) > 0")
                sent = await prometheus.wait_for("increase(ce_daemon_route_sent_records_total[1m]) > 0")
                batches = await prometheus.wait_for("ce_daemon_route_batch_duration_seconds_count > 0")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert [s.labels["subtype"] for s in pulled] == ["dlp"]
    assert [(s.labels["route"], s.labels["sink"]) for s in sent] == [("to-hook", "webhook")]
    assert [s.labels["route"] for s in batches] == ["to-hook"]
