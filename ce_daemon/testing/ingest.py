"""Netskope ingestion in-process, for tests: the pollers of a real pipeline file, the test as their consumer.

The pollers are planned from a real pipeline file (`plan_components`) and run under the real
`Supervisor`, over real sockets to a tenant (the simulator, or a proxy in front of it); the test is
the spool's only consumer, so it sees exactly what the pollers committed, in order, and can read
every poller's status while it runs. :class:`Watch` lets a test wait for a condition without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.config.load import LoadedPipeline, load_pipeline
from ce_daemon.health import ComponentStatus, HealthRegistry, State
from ce_daemon.keys import ComponentKey, StreamKey
from ce_daemon.metrics import Metrics
from ce_daemon.netskope.client import TenantClient
from ce_daemon.netskope.poller import Poller
from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.pipeline import Runtime, plan_components
from ce_daemon.registry import Registry
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.store import Store
from ce_daemon.supervisor import Supervisor
from ce_daemon.testing.harness import write_pipeline
from ce_daemon.testing.state import open_test_store, state_section

CONSUMER = "test"
StreamId = tuple[DataKind, str]


class Watch:
    """Something tests wait on: ``until(predicate)`` re-checks after every ``changed()``."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """Wake every ``until`` so it re-checks its predicate."""
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Return once ``predicate()`` holds; fail after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()  # cleared before the check: a change after it is never missed
                if predicate():
                    return
                await self._changed.wait()


class Ingest:
    """Every poller of a pipeline file at work, with the test as the spool's one consumer.

    ``watch`` changes after every page consumed and every health transition.
    """

    def __init__(
        self,
        loaded: LoadedPipeline,
        store: Store,
        spool: Spool,
        data_dir: Path,
        leases: Mapping[str, LeaseHandle] | None = None,
    ) -> None:
        self.watch = Watch()
        self.leases = dict(leases or {})
        """The lease each unit's pollers run under (none: this process is the only node)."""
        self.spool = spool
        self.health = HealthRegistry(on_transition=self._on_transition)
        self.runtime = Runtime(
            store=store, spool=spool, health=self.health, data_dir=data_dir, metrics=Metrics()
        )
        self.specs = plan_components(loaded, self.runtime)
        self.pollers: dict[str, Poller] = {}
        self.supervisor = Supervisor()
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.transitions: list[tuple[str, State, str]] = []
        self.consuming = asyncio.Event()
        self.consuming.set()
        self._consumer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe the test to every polled stream, then start the consumer and every poller."""
        producers = [spec for spec in self.specs.values() if spec.stage == "producer"]
        streams = {spec.key.name for spec in producers}  # a poller and its look-back fill one stream
        await self.spool.set_consumers({CONSUMER: streams})
        self._consumer = asyncio.create_task(self._consume())
        for spec in producers:
            poller = spec.build_for(self.leases.get(spec.unit))
            assert isinstance(poller, Poller)
            self.health.adopt(poller.status)
            await poller.start()
            self.pollers[spec.name] = poller
            self.supervisor.start(poller)

    async def stop(self) -> None:
        """Stop the pollers (as the daemon does), then the consumer; close the tenant clients."""
        await self.supervisor.stop_many(list(self.supervisor.running), 10.0)
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        await self.runtime.close()

    async def _consume(self) -> None:
        while True:
            await self.consuming.wait()
            page = await self.spool.next_page(CONSUMER)
            assert page is not None  # without a timeout next_page waits for a page
            self.records.setdefault(page.stream, []).extend(page.unread)
            await self.spool.ack(CONSUMER, page.seq)
            self.watch.changed()

    def _on_transition(self, status: ComponentStatus, old: State, new: State) -> None:
        self.transitions.append((status.name, new, status.detail))
        self.watch.changed()

    # -- what the tests look at -----------------------------------------------------------------

    def poller(self, stream: StreamId, tenant: str = "sim") -> Poller:
        """The poller of ``tenant``'s ``stream``."""
        return self.pollers[str(ComponentKey.poller(StreamKey(tenant, *stream)))]

    @property
    def client(self) -> TenantClient:
        """The one client (and send window) of a single-tenant pipeline."""
        (client,) = self.runtime.clients.values()
        return client

    def ids(self, stream: StreamId, tenant: str = "sim") -> list[Any]:
        """The ``_id`` of every record consumed from ``stream``, in the order consumed."""
        return [record.get("_id") for record in self.stream_records(stream, tenant)]

    def stream_records(self, stream: StreamId, tenant: str = "sim") -> list[dict[str, Any]]:
        """Every record consumed from ``stream``, in the order consumed."""
        return self.records.get(f"{tenant}/{stream[0]}/{stream[1]}", [])

    def has_all(self, expected: Mapping[StreamId, Sequence[Any]], tenant: str = "sim") -> bool:
        """Whether at least as many records as expected were consumed from every stream."""
        return all(len(self.ids(stream, tenant)) >= len(ids) for stream, ids in expected.items())

    def state(self, stream: StreamId, tenant: str = "sim") -> State:
        """The health state of ``stream``'s poller."""
        return self.poller(stream, tenant).status.state

    def counters(self, stream: StreamId, tenant: str = "sim") -> dict[str, Any]:
        """A copy of the status counters of ``stream``'s poller."""
        return dict(self.poller(stream, tenant).status.counters)


def tenant(name: str, url: str, token_env: str = "SIM_TOKEN", **options: Any) -> dict[str, Any]:  # noqa: S107 - the name of a variable, not a secret
    """A tenant reading the simulator's whole backlog (it spans the hour before the simulator started)."""
    return {"name": name, "url": url, "token": {"$env": token_env}, "start": "2h", **options}


def route(name: str, tenant_name: str, streams: Iterable[StreamId]) -> dict[str, Any]:
    """A log route subscribing to ``streams``: what makes the planner start their pollers."""
    streams = list(streams)
    return {
        "name": name,
        "tenant": tenant_name,
        "alerts": [subtype for kind, subtype in streams if kind == "alerts"],
        "events": [subtype for kind, subtype in streams if kind == "events"],
        "format": "json",
        "sink": {"type": "file", "path": f"out/{name}.ndjson"},
    }


@asynccontextmanager
async def ingesting(
    tmp_path: Path,
    tenants: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    *,
    environ: Mapping[str, str],
    max_bytes: int = 256 * 1024**2,
    consuming: bool = True,
    leases: Mapping[str, LeaseHandle] | None = None,
) -> AsyncIterator[Ingest]:
    """The pollers of a pipeline file with ``tenants`` and ``routes``, running until the block ends.

    The state database is ``tmp_path/state.db``: a second block on the same ``tmp_path`` is a restart.
    ``leases`` (unit → handle) runs each unit's pollers under its lease, as a node of a cluster does.
    """
    config = {
        "version": 1,
        "state": state_section(tmp_path / "state.db"),
        "health": {"syslog": {"enabled": False}},
        "tenants": tenants,
        "logs": {"routes": routes},
    }
    path = write_pipeline(tmp_path / "pipeline.yaml", config)
    loaded = load_pipeline(path, Registry.discover(), environ=environ)
    async with await open_test_store(tmp_path / "state.db", SPOOL_MIGRATIONS) as store:
        spool = Spool(store, max_bytes)
        await spool.load()
        ingest = Ingest(loaded, store, spool, tmp_path, leases)
        if not consuming:
            ingest.consuming.clear()
        await ingest.start()
        try:
            yield ingest
        finally:
            await ingest.stop()
