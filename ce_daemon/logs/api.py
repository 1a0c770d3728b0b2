"""The log shipper's HTTP API (``/api/v1/logs/…``): each route with its state, counters and lag; the
dead letters (listed without their content; replayed or purged by an operator), as ``ce-daemon status``
and ``ce-daemon dlq`` show and do them; and the mutes added while running (listed, added, expired)."""

from __future__ import annotations

from typing import Any, Final

import orjson

from ce_daemon.api import HISTORY, ApiCall, ApiError, ApiRoute, Param, limit_param
from ce_daemon.logs.deadletter import DeadLetters, replay
from ce_daemon.logs.mutes import MuteError, MuteStore

__all__ = ["log_routes"]

ROUTE: Final = {
    "type": "object",
    "required": ["name", "state", "detail", "counters"],
    "properties": {
        "name": {"type": "string"},
        "state": {"type": "string"},
        "detail": {"type": "string"},
        "since": {"type": "number"},
        "counters": {"type": "object", "additionalProperties": {"type": "number"}},
        "in_per_s": {"type": ["number", "null"]},
        "out_per_s": {"type": ["number", "null"]},
    },
}
DEAD: Final = {
    "type": "object",
    "required": ["id", "route", "stream", "record_id", "reason", "created", "attempts"],
    "properties": {
        "id": {"type": "integer"},
        "route": {"type": "string"},
        "stream": {"type": "string"},
        "record_id": {"type": "string"},
        "reason": {"type": "string"},
        "created": {"type": "number"},
        "attempts": {"type": "integer"},
    },
}


async def _routes(call: ApiCall) -> Any:
    snapshot = await call.host.status_snapshot()
    rates = HISTORY.rates(snapshot)
    routes = []
    for c in snapshot.get("components", ()):
        if c.get("kind") != "route":
            continue
        taken, sent = rates.get(c["name"], (None, None))
        routes.append({
            "name": str(c["name"]).removeprefix("route:"), "state": c["state"],
            "detail": c.get("detail") or "", "since": c.get("since"), "counters": c.get("counters") or {},
            "in_per_s": taken, "out_per_s": sent,
        })  # fmt: skip
    return {"routes": routes, "spool": snapshot.get("spool") or {}}


def _known(call: ApiCall) -> str | None:
    route = call.args["route"]
    if route is not None and route not in call.resolved.routes:
        raise ApiError(404, f"the running pipeline has no route named {route!r}")
    return route  # type: ignore[no-any-return]


async def _dead_letters(call: ApiCall) -> Any:
    dead = DeadLetters(call.store)
    route = _known(call)
    rows = await dead.oldest(route, call.args["limit"])
    listed = [{k: v for k, v in row.items() if k not in ("formatted", "timestamp")} for row in rows]
    return {"count": await dead.count(route), "dead_letters": listed}


async def _replay(call: ApiCall) -> Any:
    route = _known(call)
    said: list[str] = []
    loaded = call.host.loaded
    assert loaded is not None
    left = await replay(loaded, DeadLetters(call.store), route, said.append)
    return {"still_dead": left, "messages": said[-100:]}


async def _purge(call: ApiCall) -> Any:
    return {"purged": await DeadLetters(call.store).purge(_known(call))}


MUTE: Final = {
    "type": "object",
    "required": ["id", "route", "name", "start", "end", "reason", "created", "created_by", "active"],
    "properties": {
        "id": {"type": "integer"}, "route": {"type": "string"}, "name": {"type": "string"},
        "start": {"type": "number"}, "end": {"type": "number"}, "filter": {},
        "reason": {"type": "string"}, "created": {"type": "number"}, "created_by": {"type": "string"},
        "expired_by": {"type": "string"}, "active": {"type": "boolean"},
    },
}  # fmt: skip


async def _mutes(call: ApiCall) -> Any:
    route = _known(call)
    found = await MuteStore(call.store).listed(
        route, active_only=call.args["active"], limit=call.args["limit"]
    )
    return {"mutes": [m.as_dict() for m in found]}


async def _mute(call: ApiCall) -> Any:
    a = call.args
    route = _known(call)
    assert route is not None
    spec = None
    if a["filter"] is not None:
        try:
            spec = orjson.loads(a["filter"])
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"parameter 'filter' is not JSON: {exc}") from None
    try:
        added = await MuteStore(call.store).add(
            route, seconds=a["minutes"] * 60, name=a["name"], spec=spec, reason=a["reason"] or "", by=call.who
        )
    except MuteError as exc:
        raise ApiError(400, str(exc)) from None
    return {"mute": added.as_dict()}


async def _expire(call: ApiCall) -> Any:
    found = await MuteStore(call.store).expire(call.args["id"], by=call.who)
    if found is None:
        raise ApiError(404, f"no mute {call.args['id']}")
    return {"mute": found.as_dict()}


def log_routes() -> list[ApiRoute]:
    """The logs job's routes."""
    route = Param("route", "only this route")
    one_mute = {"type": "object", "required": ["mute"], "properties": {"mute": MUTE}}
    return [
        ApiRoute(
            "GET", "/mutes", _mutes, "Mutes added while running, newest first",
            {"type": "object", "required": ["mutes"],
             "properties": {"mutes": {"type": "array", "items": MUTE}}},
            (route, Param("active", "only those in force now", "boolean", default=False), limit_param()),
        ),
        ApiRoute(
            "POST", "/mutes", _mute, "Mute a route's records (matching a filter) for a while", one_mute,
            (Param("route", "the route", required=True),
             Param("minutes", "how long", "number", required=True, minimum=0.1, maximum=129_600),
             Param("name", "a name for it", default="mute"), Param("reason", "why"),
             Param("filter", "which records, in the core filter language (JSON; all when absent)")),
            role="operator",
        ),
        ApiRoute(
            "POST", "/mutes/{id}/expire", _expire, "End a mute now", one_mute,
            (Param("id", "the mute's id", "integer", where="path", required=True, minimum=1),),
            role="operator",
        ),
        ApiRoute(
            "GET", "/routes", _routes, "Each route: state, counters (sent, dead-lettered, lag_s…), the spool",
            {"type": "object", "required": ["routes"],
             "properties": {"routes": {"type": "array", "items": ROUTE}, "spool": {"type": "object"}}},
        ),
        ApiRoute(
            "GET", "/dead-letters", _dead_letters, "The oldest dead letters (without their content)",
            {"type": "object", "required": ["count", "dead_letters"],
             "properties": {"count": {"type": "integer"}, "dead_letters": {"type": "array", "items": DEAD}}},
            (route, limit_param()),
        ),
        ApiRoute(
            "POST", "/dead-letters/replay", _replay, "Send dead letters to their sinks again",
            {"type": "object", "required": ["still_dead", "messages"],
             "properties": {"still_dead": {"type": "integer"},
                            "messages": {"type": "array", "items": {"type": "string"}}}},
            (route,), role="operator",
        ),
        ApiRoute(
            "POST", "/dead-letters/purge", _purge, "Delete dead letters",
            {"type": "object", "required": ["purged"], "properties": {"purged": {"type": "integer"}}},
            (route,), role="operator",
        ),
    ]  # fmt: skip
