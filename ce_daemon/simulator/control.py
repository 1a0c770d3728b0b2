"""The tenant simulator's test-control endpoints under ``/_sim/``.

They let a test that drives the daemon as a subprocess script faults and read what was served:

- ``GET /_sim/stats``: `SimulatorStats` as JSON.
- ``GET /_sim/served[?kind=&subtype=&index=]``: the pages built, per endpoint, by sequence numbers.
- ``GET /_sim/leases``: who drove each index under a lease, and the violations
  (`ce_daemon.simulator.leases.LeaseLedger.report`).
- ``GET /_sim/lists``: every URL list's deployed and pending entries, the file-hash lists and the
  deploy count (`ce_daemon.simulator.policy_lists.PolicyLists.report`).
- ``GET /_sim/faults``: the faults still queued; ``DELETE /_sim/faults`` drops them.
- ``POST /_sim/faults`` with ``{"kind": ..., "subtype": ..., "fault": {...}}`` (or a list of
  those): queue faults (`Fault.from_dict` gives the fault keys); ``{"endpoint": "policy",
  "fault": {...}}`` queues one for the URL-list endpoints (`TenantSimulator.inject_policy`).

Each handler is a thin layer over the simulator's public Python API.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ce_daemon.netskope.subtypes import all_streams, check_kind, normalise_subtype
from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.policy import POLICY_ENDPOINTS, check_policy_fault

if TYPE_CHECKING:
    from ce_daemon.simulator.tenant import TenantSimulator


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _fault_item(item: dict[str, Any]) -> tuple[str | None, str | None, Fault]:
    """``(kind, subtype, fault)`` of one fault request, kind and subtype None for the policy endpoints."""
    fault = Fault.from_dict(item["fault"])
    if item.get("endpoint") == POLICY_ENDPOINTS:
        check_policy_fault(fault)
        return None, None, fault
    kind, subtype = item["kind"], item["subtype"]
    normalise_subtype(check_kind(kind), subtype)
    return kind, subtype, fault


def control_routes(simulator: TenantSimulator) -> list[web.RouteDef]:
    """The ``/_sim/`` routes of ``simulator``."""

    async def stats(request: web.Request) -> web.Response:
        return _json(simulator.stats().to_dict())

    async def served(request: web.Request) -> web.Response:
        kind, subtype, index = (request.query.get(key) for key in ("kind", "subtype", "index"))
        try:
            if kind and subtype:
                checked = check_kind(kind)
                streams = [(checked, normalise_subtype(checked, subtype))]
            else:
                streams = list(all_streams())
        except ValueError as exc:
            return _json({"ok": 0, "error": str(exc)}, status=400)
        pages = {f"{k}/{s}": [asdict(p) for p in simulator.served(k, s, index)] for k, s in streams}
        return _json({endpoint: listed for endpoint, listed in pages.items() if listed})

    async def leases(request: web.Request) -> web.Response:
        return _json(simulator.leases.report())

    async def lists(request: web.Request) -> web.Response:
        return _json(simulator.policy.report())

    async def list_faults(request: web.Request) -> web.Response:
        return _json(simulator.pending_faults())

    async def inject(request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
            items = payload if isinstance(payload, list) else [payload]
            parsed = [_fault_item(item) for item in items]  # every item valid before any is queued
        except (ValueError, KeyError, TypeError) as exc:
            return _json({"ok": 0, "error": f"bad fault request: {exc}"}, status=400)
        for kind, subtype, fault in parsed:
            if kind is None or subtype is None:
                simulator.inject_policy(fault)
            else:
                simulator.inject(kind, subtype, fault)
        return _json({"ok": 1, "pending": simulator.pending_faults()})

    async def clear_faults(request: web.Request) -> web.Response:
        simulator.clear_faults()
        return _json({"ok": 1})

    return [
        web.get("/_sim/stats", stats),
        web.get("/_sim/served", served),
        web.get("/_sim/leases", leases),
        web.get("/_sim/lists", lists),
        web.get("/_sim/faults", list_faults),
        web.post("/_sim/faults", inject),
        web.delete("/_sim/faults", clear_faults),
    ]
