"""The tenant's policy endpoints CE pushes threat intel to: URL lists and file-hash lists.

REST API v2 (netskope-apiv2-oas ``endpoints/policy/urllist.yaml``), with the data-export
endpoints' ``Netskope-Api-Token`` header, tokens and per-token rate limit:

- ``GET /api/v2/policy/urllist[?pending=0|1][&field=…]``: every list (``pending=0``: as applied,
  only those deployed; ``1``: only those with pending changes).
- ``POST /api/v2/policy/urllist`` ``{name, data: {urls, type}}``: create (answers an array).
- ``GET|PUT|DELETE /api/v2/policy/urllist/{id}``; ``PATCH …/{id}/append|replace``.
- ``POST /api/v2/policy/urllist/deploy``: apply every pending change (answers the applied lists).

Errors have the data-export API's shape ``{"status": "error", "errorCode", "errors": [...]}``; a
change with invalid entries also lists them under ``invalid_urls`` (the vendor's report is not
documented: this is the simulator's stand-in, which a client drops before retrying).

REST API v1 ``POST /api/v1/updateFileHashList`` ``{name, list: "h1,h2,…", token}``: the token goes
in the body, and as v1 does, errors come back as HTTP 200 with ``{"status": "error", "errorCode":
"General Error", "errors": [...]}`` (a 429 stays a 429). A list is created on its first update.

Faults scripted for the URL-list endpoints (`TenantSimulator.inject_policy`): ``status`` and
``rate_limit`` refuse a change, ``truncate`` applies it and loses the answer (the crash window a
pusher must survive without doubling entries).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ce_daemon.simulator.faults import Fault, status_fault_body
from ce_daemon.simulator.policy_lists import ListError

if TYPE_CHECKING:
    from ce_daemon.simulator.tenant import TenantSimulator

POLICY_ENDPOINTS = "policy"
"""The name the URL-list endpoints' faults go by (`TenantSimulator.inject_policy`, ``/_sim/faults``)."""
POLICY_FAULT_TYPES = ("status", "rate_limit", "truncate")
URLLIST_PATH = "/api/v2/policy/urllist"
FILE_HASH_LIST_PATH = "/api/v1/updateFileHashList"
_ERROR_CODES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
}
_FIELDS = ("id", "name", "data", "modify_type", "modify_time", "modify_by", "pending")
_V1_INVALID_TOKEN_MESSAGE = "Invalid token. Please generate a new token or specify a valid token."  # noqa: S105  # an error message, not a secret

Action = Callable[[web.Request, Any], Any]
"""What a v2 endpoint does with the request and its decoded JSON body: the answer's payload."""


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(payload)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _error(status: int, message: str, invalid: list[str] | None = None) -> dict[str, Any]:
    code = _ERROR_CODES.get(status, "Error")
    body: dict[str, Any] = {"status": "error", "errorCode": code, "errors": [message]}
    if invalid:
        body["invalid_urls"] = invalid
    return body


def _v1_error(message: str, headers: dict[str, str], invalid: list[str] | None = None) -> web.Response:
    """A v1 error: HTTP 200 whose body says ``status: error`` (v1 clients must read the body)."""
    body: dict[str, Any] = {"status": "error", "errorCode": "General Error", "errors": [message]}
    if invalid:
        body["invalid_hashes"] = invalid
    return _json(body, headers=headers)


async def _cut_short(request: web.Request, answer: web.Response, keep_fraction: float) -> web.StreamResponse:
    """Send ``answer``'s headers and the first ``keep_fraction`` of its body, then drop the connection."""
    body = answer.body if isinstance(answer.body, bytes) else b""
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: int(len(body) * keep_fraction)])
    if request.transport is not None:
        request.transport.close()
    return response


def check_policy_fault(fault: Fault) -> None:
    """Raise ValueError unless the URL-list endpoints can suffer ``fault``."""
    if fault.type not in POLICY_FAULT_TYPES:
        raise ValueError(f"policy endpoints take {', '.join(POLICY_FAULT_TYPES)} faults, not {fault.type!r}")


def _list_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise ListError(404, f"URL list with id {request.match_info['id']!r} not found") from None


class PolicyEndpoints:
    """The URL-list and file-hash-list endpoints over ``simulator.policy``."""

    def __init__(self, simulator: TenantSimulator) -> None:
        self.simulator = simulator
        self.lists = simulator.policy

    def routes(self) -> list[web.RouteDef]:
        """The routes, each v2 one behind the token check and the rate limit."""
        v2 = self._v2
        return [
            web.get(URLLIST_PATH, v2("policy/urllist", self.get_all)),
            web.post(URLLIST_PATH, v2("policy/urllist", self.create)),
            web.post(f"{URLLIST_PATH}/deploy", v2("policy/urllist/deploy", self.deploy)),
            web.get(URLLIST_PATH + "/{id}", v2("policy/urllist", self.get_one)),
            web.put(URLLIST_PATH + "/{id}", v2("policy/urllist", self.put)),
            web.delete(URLLIST_PATH + "/{id}", v2("policy/urllist", self.delete)),
            web.patch(URLLIST_PATH + "/{id}/{action}", v2("policy/urllist", self.patch)),
            web.post(FILE_HASH_LIST_PATH, self.file_hashes),
        ]

    def _v2(self, endpoint: str, act: Action) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A v2 handler: token and rate limit, the JSON body, ``act``, errors in the vendor's shape."""

        async def handle(request: web.Request) -> web.StreamResponse:
            token = request.headers.get(self.simulator.token_header, "")
            status, headers, refused = self.simulator.admit(endpoint, token)
            fault = self.simulator.take_policy_fault() if refused is None else None
            if refused is not None:
                answer = _json(_error(status, refused), status, headers)
            elif fault is not None and fault.type == "status":
                body, content_type = status_fault_body(fault.status)
                answer = web.Response(
                    status=fault.status, body=body, headers=headers, content_type=content_type
                )
            elif fault is not None and fault.type == "rate_limit":
                headers |= {"ratelimit-remaining": "0", "Retry-After": str(fault.retry_after)}
                answer = _json(_error(429, "Rate limit exceeded"), 429, headers)
            else:
                answer = await self._act(request, act, headers)
            self.simulator.count_response(answer.status)
            if fault is not None and fault.type == "truncate" and answer.status == 200:
                return await _cut_short(request, answer, fault.keep_fraction)
            return answer

        return handle

    @staticmethod
    async def _act(request: web.Request, act: Action, headers: dict[str, str]) -> web.Response:
        """``act`` on the decoded body; a refusal in the API's error shape."""
        try:
            body = orjson.loads(await request.read()) if request.can_read_body else None
            return _json(act(request, body), headers=headers)
        except orjson.JSONDecodeError as exc:
            return _json(_error(400, f"The request body is not valid JSON: {exc}"), 400, headers)
        except ListError as exc:
            return _json(_error(exc.status, str(exc), exc.invalid), exc.status, headers)

    def get_all(self, request: web.Request, body: object) -> list[dict[str, Any]]:
        """``GET``: every list, or (``pending``) only the applied or only the pending ones."""
        pending = request.query.get("pending")
        if pending not in (None, "0", "1"):
            raise ListError(400, f"Invalid pending {pending!r}: use 0 or 1")
        known = self.lists.url_lists.values()
        if pending == "0":
            shown = [u.to_api(applied=True) for u in known if u.deployed is not None]
        else:
            shown = [u.to_api() for u in known if pending is None or u.pending]
        wanted = request.query.getall("field", [])
        if unknown := [name for name in wanted if name not in _FIELDS]:
            raise ListError(400, f"Invalid field {unknown[0]!r}: use one of {', '.join(_FIELDS)}")
        return [{k: v for k, v in item.items() if k in wanted} for item in shown] if wanted else shown

    def create(self, request: web.Request, body: object) -> list[dict[str, Any]]:
        return [self.lists.create(body).to_api()]

    def get_one(self, request: web.Request, body: object) -> dict[str, Any]:
        return self.lists.get(_list_id(request)).to_api()

    def put(self, request: web.Request, body: object) -> dict[str, Any]:
        return self.lists.replace(_list_id(request), body).to_api()

    def patch(self, request: web.Request, body: object) -> dict[str, Any]:
        return self.lists.patch(_list_id(request), request.match_info["action"], body).to_api()

    def delete(self, request: web.Request, body: object) -> dict[str, Any]:
        return self.lists.delete(_list_id(request)).to_api()

    def deploy(self, request: web.Request, body: object) -> list[dict[str, Any]]:
        return [url_list.to_api(applied=True) for url_list in self.lists.deploy()]

    async def file_hashes(self, request: web.Request) -> web.Response:
        """v1 ``updateFileHashList``: the token is in the body, errors are HTTP 200."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        fields = body if isinstance(body, dict) else {}
        token, name, hashes = fields.get("token", ""), fields.get("name"), fields.get("list")
        status, headers, refused = self.simulator.admit("v1/updateFileHashList", str(token))
        if status == 429:
            answer = _json(_error(429, refused or ""), 429, headers)
        elif refused is not None:
            answer = _v1_error(_V1_INVALID_TOKEN_MESSAGE, headers)
        elif not isinstance(name, str) or not name or not isinstance(hashes, str):
            answer = _v1_error("name and list are required strings", headers)
        else:
            try:
                count = self.lists.update_file_hashes(name, hashes)
                message = f"File hash list {name} updated: {count} hashes"
                answer = _json({"status": "success", "msg": message}, headers=headers)
            except ListError as exc:
                answer = _v1_error(str(exc), headers, exc.invalid)
        self.simulator.count_response(answer.status)
        return answer


def policy_routes(simulator: TenantSimulator) -> list[web.RouteDef]:
    """The URL-list and file-hash-list routes of ``simulator`` (its `policy` lists)."""
    return PolicyEndpoints(simulator).routes()
