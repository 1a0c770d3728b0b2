"""The tenant's User Confidence Index (UCI, Advanced UEBA) and the endpoints CE's risk actions use.

REST API v2 with the data-export endpoints' ``Netskope-Api-Token`` header, tokens and rate limit
(`TenantSimulator.admit`), as Netskope's CE plugin (``netskope_ztre``) calls them:

- ``POST /api/v2/incidents/uba/getuci`` ``{"users": [...], "fromTime": ms, "capPerUser": n}`` →
  ``{"usersUci": [{"userId", "confidences": [{"confidenceScore", "timestamp"}]}]}``: each user that
  has a UCI, with its last ``capPerUser`` scores since ``fromTime`` (oldest first: the last is current);
  at most ``GETUCI_USERS_MAX`` users per request (CE's batch), more is a 400.
- ``POST /api/v2/incidents/user/uciimpact`` ``{"user", "score", "timestamp", "source", "reason"}`` →
  ``{"anomalyId"}``: lowers the user's UCI by ``score`` (a reduction; floor 0).
- ``POST /api/v2/incidents/anomalies/{id}/allow``: marks the anomaly allowed, which gives the reduction
  back (allowing it again changes nothing).
- ``POST /api/v2/incidents/users/uci/reset`` ``{"users": [...]}``: every listed UCI back to 1000 (its
  anomalies stop counting); 400 when a listed user has no UCI, as the vendor answers.

A user's UCI is its *base* (1000, or what the test hook `UciBook.set_uci` made it) less the
reductions of its active anomalies, within 0-1000. A user has a UCI once an impact, the hook or
`UciBook.add_users` named it. The real tenant turns an impact into an anomaly asynchronously (about
15 minutes); the simulator applies it at once.

Idempotency (the simulator's stand-in; the vendor documents none): an impact identical to an earlier
one (same user, ``timestamp``, ``source`` and ``reason``) is the same anomaly: it answers the same
``anomalyId`` and reduces nothing again. A client that sends a lost request again unchanged relies on
this.

Errors have the data-export API's shape ``{"status": "error", "errorCode", "errors": [...]}``. Faults
scripted for these endpoints (`TenantSimulator.inject_endpoints` with `UCI_ENDPOINTS`): ``status`` and
``rate_limit`` refuse the request (nothing applied), ``truncate`` applies it and loses the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ce_daemon.simulator.faults import Fault, status_fault_body

if TYPE_CHECKING:
    from ce_daemon.simulator.tenant import TenantSimulator

UCI_ENDPOINTS = "uci"
"""The name the UCI endpoints' faults go by (`TenantSimulator.inject_endpoints`, ``/_sim/faults``)."""
ENDPOINT_FAULT_TYPES = ("status", "rate_limit", "truncate")
UCI_MAX = 1000
GETUCI_PATH = "/api/v2/incidents/uba/getuci"
GETUCI_USERS_MAX = 512
UCIIMPACT_PATH = "/api/v2/incidents/user/uciimpact"
ALLOW_PATH = "/api/v2/incidents/anomalies/{id}/allow"
RESET_PATH = "/api/v2/incidents/users/uci/reset"
_ERROR_CODES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
}


class ApiError(ValueError):
    """A request the tenant refuses: ``status`` is the HTTP status; ``scim_type`` the SCIM error type."""

    def __init__(self, status: int, message: str, scim_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.scim_type = scim_type


def check_endpoint_fault(fault: Fault) -> None:
    """Raise ValueError unless the UCI and SCIM endpoints can suffer ``fault``."""
    if fault.type not in ENDPOINT_FAULT_TYPES:
        raise ValueError(f"these endpoints take {', '.join(ENDPOINT_FAULT_TYPES)} faults, not {fault.type!r}")


# -- the state -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Anomaly:
    """One UCI impact: ``reduction`` counts while the anomaly is neither allowed nor reset."""

    anomaly_id: str
    user: str
    reduction: int
    timestamp: int
    source: str
    reason: str
    allowed: bool = False
    reset: bool = False

    @property
    def active(self) -> bool:
        return not self.allowed and not self.reset

    def to_dict(self) -> dict[str, Any]:
        return {
            "anomalyId": self.anomaly_id,
            "user": self.user,
            "score": self.reduction,
            "timestamp": self.timestamp,
            "source": self.source,
            "reason": self.reason,
            "allowed": self.allowed,
            "reset": self.reset,
        }


class UciBook:
    """Every user's UCI, its history and the anomalies that lowered it (no I/O).

    ``clock`` gives wall time in seconds; each change appends ``(score, ms)`` to the user's history.
    User ids are e-mail addresses, compared without case.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._base: dict[str, int] = {}
        self._history: dict[str, list[tuple[int, int]]] = {}
        self.anomalies: dict[str, Anomaly] = {}
        self._by_request: dict[tuple[str, int, str, str], str] = {}
        self.impacts_received = 0

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def has_uci(self, user: str) -> bool:
        return user.lower() in self._base

    def score(self, user: str) -> int:
        """The user's current UCI (1000 for a user without one)."""
        key = user.lower()
        lowered = sum(a.reduction for a in self.anomalies.values() if a.user == key and a.active)
        return max(0, min(UCI_MAX, self._base.get(key, UCI_MAX) - lowered))

    def _record(self, key: str) -> None:
        self._history.setdefault(key, []).append((self.score(key), self._now_ms()))

    def add_users(self, users: list[str], score: int = UCI_MAX) -> None:
        """Give ``users`` a UCI of ``score`` (those who have one keep it)."""
        for user in users:
            key = user.lower()
            if key not in self._base:
                self._base[key] = score
                self._record(key)

    def set_uci(self, user: str, score: int) -> int:
        """The test hook: make the user's UCI before its anomalies ``score``; answers the current UCI."""
        if not 0 <= score <= UCI_MAX:
            raise ValueError(f"a UCI is 0-{UCI_MAX}, not {score}")
        key = user.lower()
        self._base[key] = score
        self._record(key)
        return self.score(key)

    def adjust_uci(self, user: str, delta: int) -> int:
        """The test hook: raise (or, negative, lower) the user's UCI by ``delta``; answers the current UCI."""
        return self.set_uci(user, max(0, min(UCI_MAX, self._base.get(user.lower(), UCI_MAX) + delta)))

    def confidences(self, user: str, from_time: int, cap: int) -> list[dict[str, int]]:
        """The user's last ``cap`` scores since ``from_time`` (ms), oldest first."""
        since = [(s, t) for s, t in self._history.get(user.lower(), ()) if t >= from_time]
        return [{"confidenceScore": s, "timestamp": t} for s, t in since[-cap:]]

    def impact(self, user: str, reduction: int, timestamp: int, source: str, reason: str) -> str:
        """Lower the user's UCI by ``reduction``: the anomaly's id (an identical request: the same one)."""
        self.impacts_received += 1
        key = user.lower()
        request = (key, timestamp, source, reason)
        if (known := self._by_request.get(request)) is not None:
            return known
        anomaly_id = f"{len(self.anomalies) + 1:024x}"
        self.anomalies[anomaly_id] = Anomaly(anomaly_id, key, reduction, timestamp, source, reason)
        self._by_request[request] = anomaly_id
        self._base.setdefault(key, UCI_MAX)
        self._record(key)
        return anomaly_id

    def allow(self, anomaly_id: str) -> Anomaly:
        """Mark the anomaly allowed: its reduction stops counting. KeyError when there is no such anomaly."""
        anomaly = self.anomalies[anomaly_id]
        if not anomaly.allowed:
            anomaly.allowed = True
            self._record(anomaly.user)
        return anomaly

    def reset(self, users: list[str]) -> None:
        """Every listed UCI back to 1000; ValueError naming those without a UCI (nothing changes then)."""
        missing = [user for user in users if not self.has_uci(user)]
        if missing:
            raise ValueError(f"Users have no UCI: {', '.join(missing[:10])}")
        for user in users:
            key = user.lower()
            self._base[key] = UCI_MAX
            for anomaly in self.anomalies.values():
                if anomaly.user == key:
                    anomaly.reset = True
            self._record(key)

    def report(self) -> dict[str, Any]:
        """Every user's UCI and history, and every anomaly (``/_sim/uci``)."""
        return {
            "users": {
                user: {
                    "score": self.score(user),
                    "base": base,
                    "history": [{"confidenceScore": s, "timestamp": t} for s, t in self._history[user]],
                }
                for user, base in sorted(self._base.items())
            },
            "anomalies": [anomaly.to_dict() for anomaly in self.anomalies.values()],
            "impacts_received": self.impacts_received,
        }


# -- serving ---------------------------------------------------------------------------------------

Act = Callable[[web.Request, Any], "tuple[int, Any]"]
"""What an endpoint does with the request and its decoded JSON body: the status and the answer's payload."""
ErrorShape = Callable[[int, str, "str | None"], Any]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


def api_error(status: int, message: str, scim_type: str | None = None) -> dict[str, Any]:
    """The data-export API's error body."""
    return {"status": "error", "errorCode": _ERROR_CODES.get(status, "Error"), "errors": [message]}


async def cut_short(request: web.Request, answer: web.Response, keep_fraction: float) -> web.StreamResponse:
    """Send ``answer``'s headers and the first ``keep_fraction`` of its body, then drop the connection."""
    body = answer.body if isinstance(answer.body, bytes) else b""
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    response.content_type = answer.content_type
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: int(len(body) * keep_fraction)])
    if request.transport is not None:
        request.transport.close()
    return response


def tenant_handler(
    simulator: TenantSimulator, family: str, endpoint: str, act: Act, error: ErrorShape = api_error
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler: token and rate limit, the family's scripted faults, the JSON body, ``act``, errors in
    the ``error`` shape."""

    async def handle(request: web.Request) -> web.StreamResponse:
        token = request.headers.get(simulator.token_header, "")
        status, headers, refused = simulator.admit(endpoint, token)
        fault = simulator.take_endpoint_fault(family) if refused is None else None
        if refused is not None:
            answer = json_response(error(status, refused, None), status, headers)
        elif fault is not None and fault.type == "status":
            body, content_type = status_fault_body(fault.status)
            answer = web.Response(status=fault.status, body=body, headers=headers, content_type=content_type)
        elif fault is not None and fault.type == "rate_limit":
            headers |= {"ratelimit-remaining": "0", "Retry-After": str(fault.retry_after)}
            answer = json_response(error(429, "Rate limit exceeded", None), 429, headers)
        else:
            try:
                raw = await request.read()
                code, payload = act(request, orjson.loads(raw) if raw else None)
                answer = json_response(payload, code, headers)
            except orjson.JSONDecodeError as exc:
                answer = json_response(
                    error(400, f"The request body is not valid JSON: {exc}", None), 400, headers
                )
            except ApiError as exc:
                answer = json_response(error(exc.status, str(exc), exc.scim_type), exc.status, headers)
        simulator.count_response(answer.status)
        if fault is not None and fault.type == "truncate" and answer.status < 300:
            return await cut_short(request, answer, fault.keep_fraction)
        return answer

    return handle


def _field(body: Any, name: str, kind: type, required: bool = True) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ApiError(400, f"{name} is required and must be a {kind.__name__}")
    return value


def _users(body: Any) -> list[str]:
    users = _field(body, "users", list)
    if not all(isinstance(user, str) and user for user in users):
        raise ApiError(400, "users must be a list of non-empty strings")
    return [str(user) for user in users]


class UciEndpoints:
    """The UCI endpoints over ``simulator.uci``."""

    def __init__(self, simulator: TenantSimulator) -> None:
        self.simulator = simulator
        self.book = simulator.uci

    def routes(self) -> list[web.RouteDef]:
        def handle(endpoint: str, act: Act) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            return tenant_handler(self.simulator, UCI_ENDPOINTS, endpoint, act)

        return [
            web.post(GETUCI_PATH, handle("incidents/uba/getuci", self.getuci)),
            web.post(UCIIMPACT_PATH, handle("incidents/user/uciimpact", self.impact)),
            web.post(ALLOW_PATH, handle("incidents/anomalies/allow", self.allow)),
            web.post(RESET_PATH, handle("incidents/users/uci/reset", self.reset)),
        ]

    def getuci(self, request: web.Request, body: Any) -> tuple[int, Any]:
        users = _users(body)
        if len(users) > GETUCI_USERS_MAX:
            raise ApiError(400, f"at most {GETUCI_USERS_MAX} users per request, not {len(users)}")
        from_time = _field(body, "fromTime", int, required=False) or 0
        cap = _field(body, "capPerUser", int, required=False) or 1
        if cap < 1:
            raise ApiError(400, "capPerUser must be at least 1")
        answer = []
        for user in users:
            confidences = self.book.confidences(user, from_time, cap) if self.book.has_uci(user) else []
            if confidences:
                answer.append({"userId": user.lower(), "confidences": confidences})
        return 200, {"usersUci": answer}

    def impact(self, request: web.Request, body: Any) -> tuple[int, Any]:
        user = _field(body, "user", str)
        reduction = _field(body, "score", int)
        timestamp = _field(body, "timestamp", int)
        source = _field(body, "source", str)
        reason = _field(body, "reason", str)
        if not user or not 1 <= reduction <= UCI_MAX:
            raise ApiError(400, f"user must be named and score (a reduction) be 1-{UCI_MAX}")
        return 200, {"anomalyId": self.book.impact(user, reduction, timestamp, source, reason)}

    def allow(self, request: web.Request, body: Any) -> tuple[int, Any]:
        anomaly_id = request.match_info["id"]
        try:
            anomaly = self.book.allow(anomaly_id)
        except KeyError:
            raise ApiError(404, f"Anomaly {anomaly_id!r} not found") from None
        return 200, {"status": "success", "anomalyId": anomaly.anomaly_id}

    def reset(self, request: web.Request, body: Any) -> tuple[int, Any]:
        users = _users(body)
        try:
            self.book.reset(users)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return 200, {"status": "success", "users": [user.lower() for user in users]}


def uci_routes(simulator: TenantSimulator) -> list[web.RouteDef]:
    """The UCI routes of ``simulator`` (its `uci` book)."""
    return UciEndpoints(simulator).routes()
