"""The risk exchange's HTTP API (``/api/v1/risk/…``): entities with their scores, one entity's history,
daily averages with delta and trend, the action log, approvals, and what a weight change would do.
The same views as ``ce-daemon risk``."""

from __future__ import annotations

import time
from typing import Any, Final

from ce_daemon.api import ApiCall, ApiError, ApiRoute, Param, limit_param
from ce_daemon.risk.commands import (
    actions_view,
    decide_pending,
    entities_view,
    show_view,
    trend_view,
    what_if,
)
from ce_daemon.risk.resolve import RiskPlan
from ce_daemon.risk.store import RiskStore

__all__ = ["risk_routes"]

TYPES: Final = ("user", "device", "application")
BANDS: Final = ("critical", "high", "medium", "low", "none")
OUTCOMES: Final = (
    "running",
    "success",
    "failed",
    "muted",
    "suppressed",
    "deferred",
    "pending_approval",
    "approved",
    "declined",
    "cancelled",
)

_NUMBER_OR_NULL: Final = {"type": ["number", "null"]}
_ENTITY_FIELDS: Final[dict[str, Any]] = {
    "type": {"enum": list(TYPES)},
    "key": {"type": "string"},
    "score": _NUMBER_OR_NULL,
    "band": {"enum": list(BANDS)},
    "scores": {"type": "object", "additionalProperties": {"type": "number"}},
    "updated": {"type": "number"},
}
ENTITY: Final = {"type": "object", "required": list(_ENTITY_FIELDS), "properties": _ENTITY_FIELDS}
SHOWN: Final = {
    "type": "object",
    "required": [*_ENTITY_FIELDS, "attributes", "records", "history"],
    "properties": {
        **_ENTITY_FIELDS,
        "attributes": {"type": "object"},
        "records": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "score", "seen"],
                "properties": {
                    "source": {"type": "string"},
                    "raw": _NUMBER_OR_NULL,
                    "label": {"type": ["string", "null"]},
                    "score": {"type": "number"},
                    "seen": {"type": "number"},
                },
            },
        },
        "history": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["at", "score", "band"],
                "properties": {
                    "at": {"type": "number"},
                    "score": _NUMBER_OR_NULL,
                    "band": {"type": "string"},
                },
            },
        },
    },
}
TREND: Final = {
    "type": "object",
    "required": ["since", "types"],
    "properties": {
        "since": {"type": "string"},
        "types": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["days", "delta", "trend_per_day", "today"],
                "properties": {
                    "days": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["day", "average", "entities"],
                            "properties": {
                                "day": {"type": "string"},
                                "average": {"type": "number"},
                                "entities": {"type": "integer"},
                            },
                        },
                    },
                    "delta": _NUMBER_OR_NULL,
                    "trend_per_day": _NUMBER_OR_NULL,
                    "today": {
                        "type": "object",
                        "required": ["day", "average", "entities"],
                        "properties": {
                            "day": {"type": "string"},
                            "average": _NUMBER_OR_NULL,
                            "entities": {"type": "integer"},
                        },
                    },
                },
            },
        },
    },
}
ACTION: Final = {
    "type": "object",
    "required": ["id", "rule", "type", "key", "action", "kind", "outcome", "detail", "at", "done"],
    "properties": {
        "id": {"type": "integer"},
        "rule": {"type": "string"},
        "type": {"type": "string"},
        "key": {"type": "string"},
        "action": {"type": "string"},
        "kind": {"enum": ["apply", "revert"]},
        "outcome": {"enum": list(OUTCOMES)},
        "detail": {"type": "string"},
        "state": {"type": "object", "additionalProperties": {"type": "string"}},
        "score": _NUMBER_OR_NULL,
        "band": {"type": "string"},
        "at": {"type": "number"},
        "done": {"type": "number"},
    },
}


def _decided(outcome: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [outcome, "missing"],
        "properties": {
            outcome: {"type": "array", "items": {"type": "integer"}},
            "missing": {"type": "array", "items": {"type": "integer"}},
        },
    }


def _plan(call: ApiCall) -> RiskPlan:
    assert isinstance(call.resolved, RiskPlan)
    return call.resolved


async def _entities(call: ApiCall) -> Any:
    a = call.args
    return {
        "entities": await entities_view(RiskStore(call.store), a["type"], a["band"], a["source"], a["limit"])
    }


async def _entity(call: ApiCall) -> Any:
    shown = await show_view(RiskStore(call.store), call.args["type"], call.args["key"], call.args["limit"])
    if shown is None:
        raise ApiError(404, f"no {call.args['type']} {call.args['key']!r} is scored")
    return shown


async def _trend(call: ApiCall) -> Any:
    days = call.args["days"] or max(1, int(_plan(call).settings.snapshot.window // 86_400))
    return await trend_view(RiskStore(call.store), days)


async def _actions(call: ApiCall) -> Any:
    a = call.args
    return {
        "actions": await actions_view(
            RiskStore(call.store), tuple(a["outcome"]), a["rule"], a["key"], a["limit"]
        )
    }


def _decide(decline: bool) -> Any:
    outcome = "declined" if decline else "approved"

    async def decide(call: ApiCall) -> Any:
        ids, every = set(call.args["id"]), call.args["all"]
        if not ids and not every:
            raise ApiError(400, "name the actions (id=…, repeated) or all=true")
        changed, missing = await decide_pending(RiskStore(call.store), ids, every, decline, "through the API")
        return {outcome: changed, "missing": sorted(missing)}

    return decide


async def _what_if(call: ApiCall) -> Any:
    settings = _plan(call).settings
    names = {s.name for s in settings.sources}
    weights: dict[str, float] = {}
    for item in call.args["weight"]:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ApiError(400, f"weight {item!r} is not SOURCE=NUMBER") from None
        if name not in names or not 0 <= weights[name] <= 1000:
            raise ApiError(400, f"weight {item!r}: no source named {name!r}, or a weight outside 0-1000")
    records = await RiskStore(call.store).records(call.args["type"])
    return {"weights": weights, "types": what_if(records, settings, weights, time.time(), call.args["type"])}


def risk_routes() -> list[ApiRoute]:
    """The risk job's routes."""
    kind = Param("type", "entity type", choices=TYPES)
    entities = {
        "type": "object",
        "required": ["entities"],
        "properties": {"entities": {"type": "array", "items": ENTITY}},
    }
    actions = {
        "type": "object",
        "required": ["actions"],
        "properties": {"actions": {"type": "array", "items": ACTION}},
    }
    chosen = (
        Param("id", "an action-log id (repeatable)", "integer", repeated=True, minimum=1),
        Param("all", "every pending action", "boolean", default=False),
    )
    shares = {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["now", "after"],
                "properties": {"now": {"type": "number"}, "after": {"type": "number"}},
            },
        },
    }
    return [
        ApiRoute(
            "GET",
            "/entities",
            _entities,
            "Entities with their combined and per-source scores",
            entities,
            (
                kind,
                Param("band", "band", choices=BANDS),
                Param("source", "only entities this source scores"),
                limit_param(),
            ),
        ),
        ApiRoute(
            "GET",
            "/entities/{type}/{key}",
            _entity,
            "One entity: per-source scores and history",
            SHOWN,
            (
                Param("type", "entity type", where="path", required=True, choices=TYPES),
                Param("key", "e-mail, host id or application name", where="path", required=True),
                limit_param(50),
            ),
        ),
        ApiRoute(
            "GET",
            "/trend",
            _trend,
            "Daily averages per type with delta and trend",
            TREND,
            (
                Param(
                    "days", "the window in days (default: snapshot.window)", "integer", minimum=1, maximum=400
                ),
            ),
        ),
        ApiRoute(
            "GET",
            "/actions",
            _actions,
            "The action log, newest first",
            actions,
            (
                Param("outcome", "only this outcome (repeatable)", choices=OUTCOMES, repeated=True),
                Param("rule", "only this rule"),
                Param("key", "only this entity key"),
                limit_param(),
            ),
        ),
        ApiRoute(
            "POST",
            "/actions/approve",
            _decide(False),
            "Approve actions awaiting approval",
            _decided("approved"),
            chosen,
            role="operator",
        ),
        ApiRoute(
            "POST",
            "/actions/decline",
            _decide(True),
            "Decline actions awaiting approval",
            _decided("declined"),
            chosen,
            role="operator",
        ),
        ApiRoute(
            "GET",
            "/what-if",
            _what_if,
            "How each band's share would move with other weights",
            {
                "type": "object",
                "required": ["weights", "types"],
                "properties": {"weights": {"type": "object"}, "types": shares},
            },
            (Param("weight", "SOURCE=WEIGHT (repeatable)", repeated=True), kind),
        ),
    ]
