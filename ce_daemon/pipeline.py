"""From a loaded pipeline to the components that run it, each keyed by name with a fingerprint.

Reload by diff compares fingerprints: a component whose name and fingerprint are unchanged
keeps running untouched. Pollers are derived, not configured: one per stream that any
consumer subscribes to (the union over every module), recomputed on every reload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ce_daemon.config.load import LoadedPipeline
from ce_daemon.config.model import Tenant
from ce_daemon.health import HealthRegistry
from ce_daemon.metrics import Metrics
from ce_daemon.netskope.client import TenantClient
from ce_daemon.spool import Spool
from ce_daemon.store import Store
from ce_daemon.supervisor import Component

Stage = Literal["producer", "consumer", "other"]


@dataclass
class ComponentSpec:
    """How to build one component, and what identifies its settings."""

    name: str
    fingerprint: str
    stage: Stage
    build: Callable[[], Component]
    consumes: frozenset[str] | None = None
    require_healthy: bool = False
    """A reload that adds or changes it is refused when its start check fails (else it runs degraded)."""


@dataclass
class Runtime:
    """What components of every generation share: the database, the spool, one client per tenant, metrics."""

    store: Store
    spool: Spool
    health: HealthRegistry
    data_dir: Path
    clients: dict[str, TenantClient] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)

    def client_for(self, tenant: Tenant, fingerprint: str) -> TenantClient:
        """The tenant's shared client (one session, one token bucket for all its pollers)."""
        key = f"{tenant.name}:{fingerprint}"
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = TenantClient(tenant)
        return client

    async def forget_unused(self, specs: dict[str, ComponentSpec]) -> None:
        """Close the clients no component of the new generation uses."""
        used = {":".join(s.fingerprint.split(":")[:2]) for s in specs.values() if s.stage == "producer"}
        for key in [k for k in self.clients if k not in used]:
            await self.clients.pop(key).close()

    async def close(self) -> None:
        """Close every tenant client."""
        for client in self.clients.values():
            await client.close()
        self.clients.clear()


def plan_components(loaded: LoadedPipeline, runtime: Runtime) -> dict[str, ComponentSpec]:
    """Every component ``loaded`` needs, by name."""
    from ce_daemon.logs.route import RouteComponent
    from ce_daemon.netskope.poller import HistoryPoller, Poller

    specs: dict[str, ComponentSpec] = {}
    for stream in loaded.streams().values():
        tenant = loaded.tenants[stream.tenant]
        tenant_fp = loaded.tenant_fingerprints[tenant.name]
        client_key = f"{tenant.name}:{tenant_fp}"
        name = f"poller:{stream.key}"
        specs[name] = ComponentSpec(
            name=name,
            fingerprint=f"{client_key}:{_digest(stream.key)}",
            stage="producer",
            build=_bind(
                Poller,
                name,
                f"{client_key}:{_digest(stream.key)}",
                stream,
                tenant,
                tenant_fp,
                runtime,
                now=loaded.loaded_at,
            ),
        )
        if tenant.lookback is not None:
            history = f"history:{stream.key}"
            fingerprint = f"{client_key}:{_digest(stream.key, 'history')}"
            specs[history] = ComponentSpec(
                name=history,
                fingerprint=fingerprint,
                stage="producer",
                build=_bind(
                    HistoryPoller,
                    history,
                    fingerprint,
                    stream,
                    tenant,
                    tenant_fp,
                    runtime,
                    now=loaded.loaded_at,
                ),
            )
    for route in loaded.routes.values():
        if not route.config.enabled:
            continue
        name = f"route:{route.config.name}"
        specs[name] = ComponentSpec(
            name=name,
            fingerprint=route.fingerprint,
            stage="consumer",
            build=_bind(RouteComponent, name, route.fingerprint, route, loaded, runtime),
            consumes=frozenset(s.key for s in route.streams),
            require_healthy=route.config.require_healthy,
        )
    return specs


def _bind(factory: Callable[..., Component], *args: object, **kwargs: object) -> Callable[[], Component]:
    return lambda: factory(*args, **kwargs)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
