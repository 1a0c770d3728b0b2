"""The threat exchange's HTTP API (``/api/v1/threats/…``): IOCs searched by value, type, source and
status with how often and where they were seen; one value with its share status per destination;
counts per type and source with each source's polls and each destination's pushes (what caps
dropped). The same views as ``ce-daemon iocs``."""

from __future__ import annotations

from typing import Any, Final

from ce_daemon.api import ApiCall, ApiError, ApiRoute, Param, limit_param
from ce_daemon.threats.commands import merged_dict, show_view, stats_view
from ce_daemon.threats.model import IocType
from ce_daemon.threats.store import IocStore

__all__ = ["threat_routes"]

ROW: Final = {
    "type": "object",
    "required": ["source", "verdict", "severity", "sightings", "active", "tags"],
    "properties": {
        "source": {"type": "string"},
        "verdict": {"type": "string"},
        "severity": {"type": "string"},
        "sightings": {"type": "integer"},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
IOC: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["value", "type", "active", "first_seen", "last_seen", "sightings", "sources"],
    "properties": {
        "value": {"type": "string"},
        "type": {"enum": [str(t) for t in IocType]},
        "dlp": {"type": "boolean"},
        "active": {"type": "boolean"},
        "first_seen": {"type": "number"},
        "last_seen": {"type": "number"},
        "sightings": {"type": "integer"},
        "sources": {"type": "array", "items": ROW},
    },
}
SHARED: Final = {
    "type": "object",
    "required": ["destination", "rule", "state"],
    "properties": {
        "destination": {"type": "string"},
        "rule": {"type": "string"},
        "state": {"type": "string"},
        "reason": {"type": ["string", "null"]},
    },
}


async def _search(call: ApiCall) -> Any:
    a = call.args
    active = None if a["status"] is None else a["status"] == "active"
    kind = None if a["type"] is None else IocType(a["type"])
    found = await IocStore(call.store).search(
        contains=a["value"], kind=kind, source=a["source"], active=active, limit=a["limit"]
    )
    return {"iocs": [merged_dict(m) for m in found]}


async def _show(call: ApiCall) -> Any:
    found = await show_view(IocStore(call.store), call.args["value"])
    if not found:
        raise ApiError(404, f"{call.args['value']!r} is not stored")
    return {"iocs": found}


async def _stats(call: ApiCall) -> Any:
    return await stats_view(IocStore(call.store))


def threat_routes() -> list[ApiRoute]:
    """The threats job's routes."""
    listed = {"type": "object", "required": ["iocs"], "properties": {"iocs": {"type": "array", "items": IOC}}}
    shown_ioc = {
        **IOC,
        "required": [*IOC["required"], "shared"],
        "properties": {**IOC["properties"], "shared": {"type": "array", "items": SHARED}},
    }
    shown = {
        "type": "object",
        "required": ["iocs"],
        "properties": {"iocs": {"type": "array", "items": shown_ioc}},
    }
    stats = {
        "type": "object",
        "required": ["counts", "sources", "destinations"],
        "properties": {
            "counts": {"type": "array", "items": {"type": "object"}},
            "sources": {"type": "array", "items": {"type": "object"}},
            "destinations": {"type": "array", "items": {"type": "object"}},
        },
    }
    return [
        ApiRoute(
            "GET",
            "/iocs",
            _search,
            "IOCs by value (a substring), type, source and status",
            listed,
            (
                Param("value", "a substring of the value"),
                Param("type", "IOC type", choices=tuple(IocType)),
                Param("source", "only IOCs this source gave"),
                Param("status", "active or inactive", choices=("active", "inactive")),
                limit_param(),
            ),
        ),
        ApiRoute(
            "GET",
            "/iocs/{value}",
            _show,
            "One value: each source's sighting and where it is shared",
            shown,
            (Param("value", "the IOC (normalised first)", where="path", required=True),),
        ),
        ApiRoute(
            "GET", "/stats", _stats, "Counts per type and source, polls, pushes and what caps dropped", stats
        ),
    ]
