"""From a loaded pipeline to the components that run it, each keyed by name with a fingerprint.

Reload by diff compares fingerprints: a component whose name and fingerprint are unchanged
keeps running untouched (see :mod:`ce_daemon.topology`). Each job plans its own components
(:meth:`ce_daemon.jobs.Job.plan`); pollers are derived, not configured: one per stream that any
job's consumers subscribe to (the union over every job), recomputed on every reload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.config.load import LoadedPipeline
from ce_daemon.config.model import Tenant
from ce_daemon.config.source import Loc
from ce_daemon.health import HealthRegistry
from ce_daemon.keys import ComponentKey, StreamKey
from ce_daemon.metrics import Metrics
from ce_daemon.netskope.client import TenantClient
from ce_daemon.spool import Spool
from ce_daemon.store import Store
from ce_daemon.supervisor import Component
from ce_daemon.taps import TapHub
from ce_daemon.teardown import close_all

Stage = Literal["producer", "consumer", "other"]


@dataclass
class ComponentSpec:
    """How to build one component, and what identifies its settings."""

    key: ComponentKey
    fingerprint: str
    stage: Stage
    build: Callable[[], Component]
    place: Loc = ()
    """Where the YAML that defines it is (``("logs", "routes", 2)``): a reload it refuses points there."""
    consumes: frozenset[str] | None = None
    """The spool streams a consumer reads (``tenant/kind/subtype``)."""
    require_healthy: bool = False
    """A reload that adds or changes it is refused when its start check fails (else it runs degraded)."""
    client: str | None = None
    """The key of the tenant client it uses (:meth:`Runtime.client_for`), kept open while any uses it."""
    unit: str = ""
    """The unit of work it belongs to: one node holds a unit's lease and runs all its components
    (``tenant:<name>`` for a tenant's pollers, whose request budget one node then counts exactly;
    the component's name when the planner gives none: a route's consumer is a unit of its own)."""

    def __post_init__(self) -> None:
        if not self.unit:
            self.unit = self.name

    @property
    def name(self) -> str:
        """The component's name, as status, metrics and logs show it."""
        return str(self.key)

    def build_for(self, lease: LeaseHandle | None) -> Component:
        """Build the component to run under ``lease`` (None: this process is the only node)."""
        component = self.build()
        component.lease = lease
        return component


@dataclass
class Runtime:
    """What components of every generation share: the database, the spool, one client per tenant, metrics,
    and the taps open on them (``ce-daemon tap``)."""

    store: Store
    spool: Spool
    health: HealthRegistry
    data_dir: Path
    metrics: Metrics
    clients: dict[str, TenantClient] = field(default_factory=dict)
    taps: TapHub = field(default_factory=TapHub)

    @staticmethod
    def client_key(tenant: Tenant, fingerprint: str) -> str:
        """The key of the client of ``tenant`` with settings ``fingerprint``."""
        return f"{tenant.name}:{fingerprint}"

    def client_for(self, tenant: Tenant, fingerprint: str) -> TenantClient:
        """The tenant's shared client (one session, one token bucket for all its pollers)."""
        key = self.client_key(tenant, fingerprint)
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = TenantClient(tenant)
        return client

    async def forget_unused(self, specs: Mapping[str, ComponentSpec]) -> None:
        """Close the clients no component of ``specs`` uses (each close tried, failures raised together)."""
        used = {s.client for s in specs.values() if s.client is not None}
        await close_all(
            [(k, self.clients.pop(k)) for k in list(self.clients) if k not in used], "tenant clients"
        )

    async def close(self) -> None:
        """Close every tenant client."""
        clients = list(self.clients.items())
        self.clients.clear()
        await close_all(clients, "tenant clients")


def tenant_unit(tenant: str) -> str:
    """The unit of a tenant's ingest: its pollers and look-backs, on the one node that holds it."""
    return f"tenant:{tenant}"


def plan_components(loaded: LoadedPipeline, runtime: Runtime) -> dict[str, ComponentSpec]:
    """Every component ``loaded`` needs, by name: each job's, and one poller per stream they read."""
    specs: dict[str, ComponentSpec] = {}
    for job, resolved in loaded.resolved_jobs():
        for spec in job.plan(loaded, resolved, runtime):
            if spec.name in specs:
                raise ValueError(f"two components named {spec.name!r} (the {job.name!r} job planned one)")
            specs[spec.name] = spec
    for stream in loaded.streams().values():
        specs.update((spec.name, spec) for spec in _pollers(loaded, stream, runtime))
    return specs


def _pollers(loaded: LoadedPipeline, stream: StreamKey, runtime: Runtime) -> list[ComponentSpec]:
    """The live poller of ``stream``, and its look-back when the tenant asks for one."""
    from ce_daemon.netskope.poller import HistoryPoller, Poller

    tenant = loaded.tenants[stream.tenant]
    tenant_fp = loaded.tenant_fingerprints[tenant.name]
    client = runtime.client_key(tenant, tenant_fp)
    place = ("tenants", [t.name for t in loaded.config.tenants].index(tenant.name))
    roles: list[tuple[ComponentKey, type[Poller], tuple[str, ...]]] = [
        (ComponentKey.poller(stream), Poller, (str(stream),))
    ]
    if tenant.lookback is not None:
        roles.append((ComponentKey.history(stream), HistoryPoller, (str(stream), "history")))
    specs = []
    for key, factory, digested in roles:
        fingerprint = f"{client}:{_digest(*digested)}"
        specs.append(
            ComponentSpec(
                key=key,
                fingerprint=fingerprint,
                stage="producer",
                build=_bind(
                    factory, str(key), fingerprint, stream, tenant, tenant_fp, runtime, now=loaded.loaded_at
                ),
                place=place,
                client=client,
                unit=tenant_unit(tenant.name),
            )
        )
    return specs


def _bind(factory: Callable[..., Component], *args: object, **kwargs: object) -> Callable[[], Component]:
    return lambda: factory(*args, **kwargs)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
