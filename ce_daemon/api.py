"""The HTTP API: JSON under ``/api/v1`` on the daemon's listener, described by an OpenAPI document.

The core serves ``/api/v1/status`` (the daemon and every component, as ``ce-daemon status`` shows
them) and ``/api/v1/openapi.json``; each job contributes its own routes through the job contract
(:meth:`ce_daemon.jobs.Job.api_routes`), mounted under ``/api/v1/<job>/``, so the core names none.

A route declares its method, path, parameters (typed, validated before the handler runs: a bad one
is a 400 naming it), the role it needs (``viewer`` reads; ``operator`` approves, retries, mutes,
replays; ``admin`` manages tokens and users) and the JSON schema of its answer, from which the
OpenAPI document is built. A handler gets an :class:`ApiCall`: the validated arguments, the state
database and the job's resolved section of the pipeline now running; it returns what is sent as
JSON, or raises :class:`ApiError`. Each route's handler carries its role for the listener's access
gate (:mod:`ce_daemon.access.guard`), which refuses a missing, wrong or revoked credential (401) and
a lower role (403) before the handler runs; answers carry no secret.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import orjson
import structlog
from aiohttp import web

from ce_daemon import redact
from ce_daemon.access.credentials import Principal
from ce_daemon.access.credentials import Role as AccessRole
from ce_daemon.access.guard import PRINCIPAL, HandlerT, requires
from ce_daemon.errors import describe

if TYPE_CHECKING:
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.jobs import Jobs
    from ce_daemon.pipeline import Runtime
    from ce_daemon.store import Store

__all__ = [
    "ApiCall",
    "ApiError",
    "ApiHost",
    "ApiRoute",
    "Caller",
    "Param",
    "Role",
    "api_application",
    "call_for",
    "caller_of",
    "guarded",
    "openapi_document",
]

log = structlog.get_logger("ce_daemon.api")

Role = Literal["viewer", "operator", "admin"]
PREFIX: Final = "/api/v1"
LIMIT_MAX: Final = 10_000
"""The most items one answer lists (``limit`` above it is refused)."""
TEXT_MAX: Final = 1_000
"""The longest text parameter taken."""

Kind = Literal["string", "integer", "number", "boolean"]


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a route: in its path or its query string."""

    name: str
    description: str
    kind: Kind = "string"
    where: Literal["query", "path"] = "query"
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    repeated: bool = False
    """A query parameter that may be given several times (a list)."""

    def schema(self) -> dict[str, Any]:
        """Its JSON schema (OpenAPI 3.1)."""
        one: dict[str, Any] = {"type": self.kind}
        if self.choices:
            one["enum"] = list(self.choices)
        if self.minimum is not None:
            one["minimum"] = self.minimum
        if self.maximum is not None:
            one["maximum"] = self.maximum
        if self.kind == "string":
            one["maxLength"] = TEXT_MAX
        if self.default is not None:
            one["default"] = self.default
        return {"type": "array", "items": one} if self.repeated else one

    def parse(self, raw: list[str]) -> Any:
        """The value of ``raw`` (the texts given for it; an empty one counts as not given, as a form's
        unset field sends it), or :class:`ApiError` naming what is wrong."""
        raw = [text for text in raw if text != ""]
        if not raw:
            if self.required:
                raise ApiError(400, f"parameter {self.name!r} is required")
            return [] if self.repeated else self.default
        if not self.repeated and len(raw) > 1:
            raise ApiError(400, f"parameter {self.name!r} is given {len(raw)} times; give it once")
        values = [self._one(text) for text in raw[:100]]
        return values if self.repeated else values[0]

    def _one(self, text: str) -> Any:
        if len(text) > TEXT_MAX:
            raise ApiError(400, f"parameter {self.name!r} is longer than {TEXT_MAX} characters")
        value: Any = text
        if self.kind == "integer":
            try:
                value = int(text)
            except ValueError:
                raise ApiError(400, f"parameter {self.name!r} must be a whole number") from None
        elif self.kind == "number":
            try:
                value = float(text)
            except ValueError:
                raise ApiError(400, f"parameter {self.name!r} must be a number") from None
            if not math.isfinite(value):
                raise ApiError(400, f"parameter {self.name!r} must be a finite number")
        elif self.kind == "boolean":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ApiError(400, f"parameter {self.name!r} must be true or false")
            value = text.lower() in ("true", "1")
        if self.choices and value not in self.choices:
            raise ApiError(400, f"parameter {self.name!r} must be one of: {', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise ApiError(400, f"parameter {self.name!r} must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ApiError(400, f"parameter {self.name!r} must be at most {self.maximum:g}")
        return value


def limit_param(default: int = 100) -> Param:
    """The usual ``limit`` parameter."""
    return Param("limit", "the most items listed", "integer", default=default, minimum=1, maximum=LIMIT_MAX)


class ApiError(Exception):
    """An answer other than 200: its status and a message (sent as ``{"error": message}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ApiCall:
    """What a handler gets: the validated arguments, the state, the job's resolved section."""

    args: Mapping[str, Any]
    store: Store
    resolved: Any
    """The job's resolved section of the running pipeline (None for core routes)."""
    host: ApiHost
    who: str = ""
    """Who is calling (a token's or user's name), for what a write records."""


Handler = Callable[[ApiCall], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One endpoint of a job (its ``path`` relative to ``/api/v1/<job>``) or of the core."""

    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    summary: str
    response: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    """The JSON schema of a 200 answer."""
    params: tuple[Param, ...] = ()
    role: Role = "viewer"
    tag: str = ""


class SnapshotHistory:
    """Status snapshots kept a little while, so that a view can show rates (counter deltas over at least
    ``span`` seconds) without sampling in the background: the first view has none yet."""

    def __init__(self, span: float = 5.0, keep: float = 120.0) -> None:
        self.span, self.keep = span, keep
        self._kept: list[dict[str, Any]] = []

    def rates(self, current: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
        """Input and output rates per component of ``current``, against the newest snapshot at least
        ``span`` seconds older (then ``current`` is kept)."""
        from ce_daemon.top import component_rates

        at = float(current.get("at") or 0.0)
        self._kept = [s for s in self._kept if at - float(s.get("at") or 0.0) <= self.keep]
        older = [s for s in self._kept if at - float(s.get("at") or 0.0) >= self.span]
        found = component_rates(current, older[-1] if older else None)
        if not self._kept or at - float(self._kept[-1].get("at") or 0.0) >= 1.0:
            self._kept.append(current)
        return found


HISTORY: Final = SnapshotHistory()
"""The listener's one history (a view that reads the status snapshot shows rates from it)."""


class ApiHost(Protocol):
    """What the API reads of the running daemon."""

    loaded: LoadedPipeline | None
    runtime: Runtime | None
    jobs: Jobs

    async def status_snapshot(self) -> dict[str, Any]: ...


Caller = Callable[[web.Request], str]
"""Who made a request, as the audit log names it (the access gate let it through already)."""


def caller_of(request: web.Request) -> str:
    """The caller the access gate identified (``anonymous`` on a path ``http.public`` opened)."""
    who = request.get(PRINCIPAL)
    return who.actor if isinstance(who, Principal) else "anonymous"


def guarded(role: Role, handler: HandlerT) -> HandlerT:
    """``handler`` marked for the access gate: ``role`` or above may call it."""
    return requires(AccessRole(role))(handler)


ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def _core_routes() -> list[ApiRoute]:
    async def status(call: ApiCall) -> Any:
        return await call.host.status_snapshot()

    return [
        ApiRoute(
            "GET", "/status", status, "The daemon and every component: state, reason, counters, lag",
            {"type": "object", "required": ["phase", "components"],
             "properties": {"phase": {"type": "string"}, "generation": {"type": "integer"},
                            "components": {"type": "array", "items": {"type": "object"}},
                            "jobs": {"type": "object"}}},
            tag="daemon",
        )
    ]  # fmt: skip


def all_routes(jobs: Jobs) -> list[tuple[str | None, ApiRoute]]:
    """Every route: ``(job name or None for the core, route)``."""
    found: list[tuple[str | None, ApiRoute]] = [(None, r) for r in _core_routes()]
    for info in jobs.all():
        if info.job is None:
            continue
        found.extend((info.name, route) for route in info.job.api_routes())
    return found


def full_path(job: str | None, route: ApiRoute) -> str:
    return f"{PREFIX}{'' if job is None else '/' + job}{route.path}"


def api_application(host: ApiHost, caller: Caller = caller_of) -> list[web.RouteDef]:
    """The routes of the API (every job's, the core's and the OpenAPI document), for the listener."""
    routes = all_routes(host.jobs)
    document = openapi_document(routes)
    defs: list[web.RouteDef] = []
    for job, route in routes:
        handler = guarded(route.role, _endpoint(host, job, route, caller))
        defs.append(web.route(route.method, full_path(job, route), handler))

    async def openapi(request: web.Request) -> web.Response:
        return _json(document)

    defs.append(web.get(f"{PREFIX}/openapi.json", guarded("viewer", openapi)))
    return defs


def _endpoint(
    host: ApiHost, job: str | None, route: ApiRoute, caller: Caller
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        who = caller(request)
        try:
            answer = await route.handler(call_for(host, job, route.params, request, who))
        except ApiError as exc:
            return _json({"error": redact.scrub(exc.message)}, exc.status)
        except Exception as exc:  # noqa: BLE001 - one failing view must not take the listener down
            reason = redact.scrub(describe(exc))
            log.warning("api.failed", path=request.path, error=reason)
            return _json({"error": f"the request failed: {reason[:300]}"}, 500)
        return _json(answer)

    return handle


def call_for(
    host: ApiHost, job: str | None, params: Iterable[Param], request: web.Request, who: str = ""
) -> ApiCall:
    """What a handler of ``job`` (None: the core) taking ``params`` gets for ``request`` (an
    :class:`ApiError` when it cannot run: a bad parameter, no pipeline yet, no such section)."""
    args = {}
    for p in params:
        given = [request.match_info[p.name]] if p.where == "path" else request.query.getall(p.name, [])
        args[p.name] = p.parse(given)
    runtime, loaded = host.runtime, host.loaded
    if runtime is None or loaded is None:
        raise ApiError(503, "the daemon is starting: no pipeline is running yet")
    resolved = None
    if job is not None:
        resolved = {j.name: r for j, r in loaded.resolved_jobs()}.get(job)
        if resolved is None:
            raise ApiError(404, f"the running pipeline has no {job!r} section")
    return ApiCall(args, runtime.store, resolved, host, who)


def _json(payload: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def openapi_document(routes: Iterable[tuple[str | None, ApiRoute]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for job, route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}{full_path(job, route)}".replace("/", "_").replace("{", "")
            .replace("}", ""),
            "tags": [route.tag or job or "daemon"],
            "x-role": route.role,
            "parameters": [
                {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                 "description": p.description, "schema": p.schema(),
                 **({"explode": True, "style": "form"} if p.repeated else {})}
                for p in route.params
            ],
            "responses": {
                "200": {"description": "OK",
                        "content": {"application/json": {"schema": dict(route.response)}}},
                "400": _error("a parameter is missing or wrong"),
                "401": _error("no credential, or a wrong or revoked one"),
                "403": _error(f"the credential's role is below {route.role}"),
                "404": _error("no such item, or the pipeline has no such section"),
                "503": _error("the daemon is starting"),
            },
        }  # fmt: skip
        paths.setdefault(full_path(job, route), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ce-daemon", "version": "1",
                 "description": "The running daemon's state: components, log routes, IOCs, tickets, risk."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "security": [{"bearer": []}],
    }  # fmt: skip


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
