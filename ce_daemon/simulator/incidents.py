"""The tenant's incident write-back endpoint, as ticket orchestration calls it.

- ``PATCH /api/v2/incidents/update`` ``{"payload": [{"object_id", "field", "old_value", "new_value",
  "user"}]}`` (``field``: ``status``, ``assignee`` or ``severity``), with the data-export endpoints'
  ``Netskope-Api-Token`` header, tokens and rate limit. Answers ``{"status": "success", "updated": n}``;
  a malformed body 400 in the API's error shape (nothing applied).
- ``GET /_sim/incidents``: what was written, in order, and each incident's fields as they are now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from ce_daemon.simulator.tenant import TenantSimulator

UPDATE_PATH: Final = "/api/v2/incidents/update"
FIELDS: Final = ("status", "assignee", "severity")
_KEYS: Final = ("object_id", "field", "old_value", "new_value", "user")


@dataclass
class Incidents:
    """What was written to the tenant's incidents."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply(self, body: object) -> int:
        """Apply one request's changes (all or none); ValueError says what is wrong."""
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, list) or not payload:
            raise ValueError("the body needs a non-empty `payload` list")
        for i, item in enumerate(payload):
            if not isinstance(item, dict) or any(k not in item for k in _KEYS):
                raise ValueError(f"payload[{i}] needs {', '.join(_KEYS)}")
            if item["field"] not in FIELDS:
                raise ValueError(f"payload[{i}].field must be one of {', '.join(FIELDS)}")
        for item in payload:
            self.updates.append({k: item[k] for k in _KEYS})
            self.state.setdefault(str(item["object_id"]), {})[str(item["field"])] = item["new_value"]
        return len(payload)

    def report(self) -> dict[str, Any]:
        """``/_sim/incidents``."""
        return {"updates": self.updates, "incidents": self.state}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


def incident_routes(simulator: TenantSimulator) -> list[web.RouteDef]:
    """The write-back endpoint and its ``/_sim/`` view."""

    async def update(request: web.Request) -> web.Response:
        token = request.headers.get(simulator.token_header, "")
        status, headers, refused = simulator.admit("incidents/update", token)
        if refused is not None:
            answer = _json({"status": "error", "errorCode": status, "errors": [refused]}, status, headers)
        else:
            try:
                count = simulator.incidents.apply(orjson.loads(await request.read()))
                answer = _json({"status": "success", "updated": count}, headers=headers)
            except (orjson.JSONDecodeError, ValueError) as exc:
                answer = _json(
                    {"status": "error", "errorCode": "Bad Request", "errors": [str(exc)]}, 400, headers
                )
        simulator.count_response(answer.status)
        return answer

    async def report(request: web.Request) -> web.Response:
        return _json(simulator.incidents.report())

    return [web.patch(UPDATE_PATH, update), web.get("/_sim/incidents", report)]
