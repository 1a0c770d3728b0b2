"""The tenant simulator's test-control endpoints under ``/_sim/``.

They let a test that drives the daemon as a subprocess script faults and read what was served:

- ``GET /_sim/stats``: `SimulatorStats` as JSON.
- ``GET /_sim/served[?kind=&subtype=&index=]``: the pages built, per endpoint, by sequence numbers.
- ``GET /_sim/leases``: who drove each index under a lease, and the violations
  (`ce_daemon.simulator.leases.LeaseLedger.report`).
- ``GET /_sim/lists``: every URL list's deployed and pending entries, the file-hash lists and the
  deploy count (`ce_daemon.simulator.policy_lists.PolicyLists.report`).
- ``GET /_sim/uci``: every user's UCI, history and anomalies (`ce_daemon.simulator.uba.UciBook.report`);
  ``POST /_sim/uci`` ``{"user", "score"}`` (or ``"delta"``) moves a user's UCI, the test hook a
  UBA-driven test lowers a score with.
- ``GET /_sim/scim``: the SCIM users and groups with their members; ``POST /_sim/scim/users``
  ``{"userName"}`` (or ``{"userNames": [...]}``) creates users, as the identity provider would.
- ``GET /_sim/faults``: the faults still queued; ``DELETE /_sim/faults`` drops them.
- ``POST /_sim/faults`` with ``{"kind": ..., "subtype": ..., "fault": {...}}`` (or a list of
  those): queue faults (`Fault.from_dict` gives the fault keys); ``{"endpoint": "policy",
  "fault": {...}}`` queues one for the URL-list endpoints (`TenantSimulator.inject_policy`), and
  ``"endpoint": "uci"`` or ``"scim"`` for those (`TenantSimulator.inject_endpoints`).

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
from ce_daemon.simulator.scim import SCIM_ENDPOINTS
from ce_daemon.simulator.uba import UCI_ENDPOINTS, check_endpoint_fault

if TYPE_CHECKING:
    from ce_daemon.simulator.tenant import TenantSimulator


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _fault_item(item: dict[str, Any]) -> tuple[str | None, str | None, Fault]:
    """``(kind, subtype, fault)`` of one fault request; for other endpoints ``(family, None, fault)``."""
    fault = Fault.from_dict(item["fault"])
    if item.get("endpoint") == POLICY_ENDPOINTS:
        check_policy_fault(fault)
        return POLICY_ENDPOINTS, None, fault
    if item.get("endpoint") in (UCI_ENDPOINTS, SCIM_ENDPOINTS):
        check_endpoint_fault(fault)
        return item["endpoint"], None, fault
    kind, subtype = item["kind"], item["subtype"]
    normalise_subtype(check_kind(kind), subtype)
    return kind, subtype, fault


def _queue(simulator: TenantSimulator, kind: str | None, subtype: str | None, fault: Fault) -> None:
    """Queue one parsed fault request (`_fault_item`)."""
    if kind == POLICY_ENDPOINTS and subtype is None:
        simulator.inject_policy(fault)
    elif kind is not None and subtype is None:
        simulator.inject_endpoints(kind, fault)
    elif kind is not None and subtype is not None:
        simulator.inject(kind, subtype, fault)


def _move_uci(simulator: TenantSimulator, payload: Any) -> dict[str, Any]:
    user = payload["user"]
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty string")
    if "score" in payload:
        score = simulator.uci.set_uci(user, int(payload["score"]))
    else:
        score = simulator.uci.adjust_uci(user, int(payload["delta"]))
    return {"ok": 1, "user": user.lower(), "score": score}


def _add_scim_users(simulator: TenantSimulator, payload: Any) -> dict[str, Any]:
    names = payload["userNames"] if "userNames" in payload else [payload["userName"]]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError("userNames must be non-empty strings")
    return {"ok": 1, "ids": [simulator.scim.add_user(name).id for name in names]}


def _user_risk_routes(simulator: TenantSimulator) -> list[web.RouteDef]:
    """``/_sim/uci`` and ``/_sim/scim``: read the UCI book and the SCIM directory, move a UCI, add users."""

    async def uci(request: web.Request) -> web.Response:
        return _json(simulator.uci.report())

    async def move_uci(request: web.Request) -> web.Response:
        try:
            return _json(_move_uci(simulator, orjson.loads(await request.read())))
        except (ValueError, KeyError, TypeError) as exc:
            return _json({"ok": 0, "error": f"bad UCI request: {exc}"}, status=400)

    async def scim(request: web.Request) -> web.Response:
        return _json(simulator.scim.report())

    async def add_scim_users(request: web.Request) -> web.Response:
        try:
            return _json(_add_scim_users(simulator, orjson.loads(await request.read())))
        except (ValueError, KeyError, TypeError) as exc:
            return _json({"ok": 0, "error": f"bad SCIM request: {exc}"}, status=400)

    return [
        web.get("/_sim/uci", uci),
        web.post("/_sim/uci", move_uci),
        web.get("/_sim/scim", scim),
        web.post("/_sim/scim/users", add_scim_users),
    ]


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
            _queue(simulator, kind, subtype, fault)
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
        *_user_risk_routes(simulator),
    ]
