"""The tenant's SCIM 2.0 users and groups (RFC 7643/7644), as CE's "add user to group" action uses them.

Behind the v2 ``Netskope-Api-Token`` header, tokens and rate limit (`TenantSimulator.admit`):

- ``GET /api/v2/scim/Users[?filter=userName eq "x"][&startIndex=n&count=m]``: a ListResponse;
  ``GET …/Users/{id}``; ``POST …/Users`` ``{userName, emails?, active?}`` → 201 (409 ``uniqueness``
  when the userName is taken).
- ``GET /api/v2/scim/Groups[?filter=displayName eq "x"]``; ``GET …/Groups/{id}``; ``POST …/Groups``
  ``{displayName, members?}`` → 201 (409 when the name is taken); ``PATCH …/Groups/{id}`` with a
  PatchOp: ``add``/``remove`` ``members`` ``[{"value": userId}]`` (what CE sends), or ``remove`` with
  the path ``members[value eq "id"]``. Adding a member already there and removing one that is not
  change nothing; adding an unknown user is a 400 ``invalidValue``.

Filters take one ``attribute eq "value"`` comparison (the value a JSON string, so quotes and
backslashes come escaped); ``userName`` and ``displayName`` compare without case (RFC 7643 makes
neither caseExact). Errors have SCIM's shape ``{"schemas": [ERROR], "status": "404", "detail"}``
(``scimType`` where RFC 7644 names one), also for a refused token and the rate limit. Faults scripted
for these endpoints: `TenantSimulator.inject_endpoints` with `SCIM_ENDPOINTS`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ce_daemon.simulator.uba import Act, ApiError, tenant_handler

if TYPE_CHECKING:
    from ce_daemon.simulator.tenant import TenantSimulator

SCIM_ENDPOINTS = "scim"
"""The name the SCIM endpoints' faults go by (`TenantSimulator.inject_endpoints`, ``/_sim/faults``)."""
SCIM_USERS = "/api/v2/scim/Users"
SCIM_GROUPS = "/api/v2/scim/Groups"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
DEFAULT_COUNT = 100
_FILTER = re.compile(r'\s*([A-Za-z][\w.]*)\s+eq\s+("(?:[^"\\]|\\.)*")\s*', re.IGNORECASE | re.DOTALL)
_MEMBER_PATH = re.compile(r'\s*members\s*\[\s*value\s+eq\s+("(?:[^"\\]|\\.)*")\s*\]\s*', re.IGNORECASE)


def scim_error(status: int, message: str, scim_type: str | None = None) -> dict[str, Any]:
    """SCIM's error body (RFC 7644 §3.12): ``status`` is a string."""
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": message}
    if scim_type:
        body["scimType"] = scim_type
    return body


def parse_filter(text: str, attributes: tuple[str, ...]) -> tuple[str, str]:
    """``(attribute, value)`` of ``attribute eq "value"``; ApiError 400 ``invalidFilter`` otherwise."""
    match = _FILTER.fullmatch(text)
    if match is None:
        raise ApiError(400, f'Unsupported filter {text[:200]!r}: use attribute eq "value"', "invalidFilter")
    name = next((a for a in attributes if a.lower() == match.group(1).lower()), None)
    if name is None:
        raise ApiError(
            400, f"Cannot filter on {match.group(1)!r}: use {', '.join(attributes)}", "invalidFilter"
        )
    try:
        value = orjson.loads(match.group(2))
    except orjson.JSONDecodeError:
        raise ApiError(
            400, f"The filter's value is not a valid string: {text[:200]!r}", "invalidFilter"
        ) from None
    return name, value


@dataclass(slots=True)
class ScimUser:
    id: str
    user_name: str
    emails: list[str]
    active: bool = True

    def to_api(self) -> dict[str, Any]:
        return {
            "schemas": [USER_SCHEMA],
            "id": self.id,
            "userName": self.user_name,
            "emails": [{"value": email, "primary": n == 0} for n, email in enumerate(self.emails)],
            "active": self.active,
            "meta": {"resourceType": "User", "location": f"{SCIM_USERS}/{self.id}"},
        }


@dataclass(slots=True)
class ScimGroup:
    id: str
    display_name: str
    members: list[str] = field(default_factory=list)

    def to_api(self, users: dict[str, ScimUser]) -> dict[str, Any]:
        return {
            "schemas": [GROUP_SCHEMA],
            "id": self.id,
            "displayName": self.display_name,
            "members": [
                {"value": uid, "display": users[uid].user_name} for uid in self.members if uid in users
            ],
            "meta": {"resourceType": "Group", "location": f"{SCIM_GROUPS}/{self.id}"},
        }


class ScimDirectory:
    """The tenant's SCIM users and groups (no I/O)."""

    def __init__(self) -> None:
        self.users: dict[str, ScimUser] = {}
        self.groups: dict[str, ScimGroup] = {}
        self.patches = 0
        self._next = 0

    def _new_id(self) -> str:
        self._next += 1
        return f"{self._next:08x}-5c1b-4e0d-9a3e-{self._next:012x}"

    def user_named(self, user_name: str) -> ScimUser | None:
        return next((u for u in self.users.values() if u.user_name.lower() == user_name.lower()), None)

    def group_named(self, name: str) -> ScimGroup | None:
        return next((g for g in self.groups.values() if g.display_name.lower() == name.lower()), None)

    def add_user(self, user_name: str, emails: list[str] | None = None) -> ScimUser:
        """Create a user (the test set-up and ``POST /Users``); ApiError 409 when the name is taken."""
        if self.user_named(user_name) is not None:
            raise ApiError(409, f"User with userName {user_name!r} already exists", "uniqueness")
        user = ScimUser(self._new_id(), user_name, emails if emails is not None else [user_name])
        self.users[user.id] = user
        return user

    def add_group(self, name: str, members: list[str] | None = None) -> ScimGroup:
        """Create a group; ApiError 409 when the name is taken, 400 when a member is unknown."""
        if self.group_named(name) is not None:
            raise ApiError(409, f"Group with displayName {name!r} already exists", "uniqueness")
        for uid in members or ():
            self._known_user(uid)
        group = ScimGroup(self._new_id(), name, list(dict.fromkeys(members or ())))
        self.groups[group.id] = group
        return group

    def _known_user(self, uid: str) -> None:
        if uid not in self.users:
            raise ApiError(400, f"No user with id {uid!r}", "invalidValue")

    def patch(self, group_id: str, body: Any) -> ScimGroup:
        """Apply a PatchOp to a group's members; every operation checked before any applies."""
        group = self.groups.get(group_id)
        if group is None:
            raise ApiError(404, f"Group {group_id!r} not found")
        if not isinstance(body, dict) or PATCH_SCHEMA not in (body.get("schemas") or ()):
            raise ApiError(400, f"A PATCH must carry the schema {PATCH_SCHEMA}", "invalidSyntax")
        operations = body.get("Operations")
        if not isinstance(operations, list) or not operations:
            raise ApiError(400, "Operations must be a non-empty list", "invalidSyntax")
        steps = [self._operation(op) for op in operations]
        members = list(group.members)
        for op, ids in steps:
            if ids is None:
                members = []
            elif op == "add":
                members += [uid for uid in ids if uid not in members]
            else:
                members = [uid for uid in members if uid not in ids]
        group.members = members
        self.patches += 1
        return group

    def _operation(self, operation: Any) -> tuple[str, list[str] | None]:
        """``(op, user ids)`` of one operation (ids None: remove every member)."""
        if not isinstance(operation, dict):
            raise ApiError(400, "Each operation must be an object", "invalidSyntax")
        op = str(operation.get("op", "")).lower()
        path = operation.get("path")
        value = operation.get("value")
        if op not in ("add", "remove"):
            raise ApiError(400, f"Unsupported op {operation.get('op')!r}: use add or remove", "invalidSyntax")
        if isinstance(path, str) and (match := _MEMBER_PATH.fullmatch(path)) and op == "remove":
            return op, [orjson.loads(match.group(1))]
        if not isinstance(path, str) or path.strip().lower() != "members":
            raise ApiError(400, f"Unsupported path {path!r}: use members", "invalidPath")
        if value is None and op == "remove":
            return op, None
        if not isinstance(value, list) or not all(
            isinstance(v, dict) and isinstance(v.get("value"), str) for v in value
        ):
            raise ApiError(400, 'value must be a list of {"value": userId}', "invalidValue")
        ids = [v["value"] for v in value]
        if op == "add":
            for uid in ids:
                self._known_user(uid)
        return op, ids

    def report(self) -> dict[str, Any]:
        """Every user, and every group with its members' userNames (``/_sim/scim``)."""
        return {
            "users": [{"id": u.id, "userName": u.user_name} for u in self.users.values()],
            "groups": [
                {
                    "id": g.id,
                    "displayName": g.display_name,
                    "members": [self.users[uid].user_name for uid in g.members if uid in self.users],
                }
                for g in self.groups.values()
            ],
            "patches": self.patches,
        }


def _page(request: web.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        start = max(1, int(request.query.get("startIndex", "1")))
        count = max(0, int(request.query.get("count", str(DEFAULT_COUNT))))
    except ValueError:
        raise ApiError(400, "startIndex and count must be integers", "invalidValue") from None
    shown = items[start - 1 : start - 1 + count]
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": len(items),
        "startIndex": start,
        "itemsPerPage": len(shown),
        "Resources": shown,
    }


class ScimEndpoints:
    """The SCIM endpoints over ``simulator.scim``."""

    def __init__(self, simulator: TenantSimulator) -> None:
        self.simulator = simulator
        self.directory = simulator.scim

    def routes(self) -> list[web.RouteDef]:
        def handle(endpoint: str, act: Act) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            return tenant_handler(self.simulator, SCIM_ENDPOINTS, endpoint, act, scim_error)

        return [
            web.get(SCIM_USERS, handle("scim/Users", self.list_users)),
            web.post(SCIM_USERS, handle("scim/Users", self.create_user)),
            web.get(SCIM_USERS + "/{id}", handle("scim/Users", self.get_user)),
            web.get(SCIM_GROUPS, handle("scim/Groups", self.list_groups)),
            web.post(SCIM_GROUPS, handle("scim/Groups", self.create_group)),
            web.get(SCIM_GROUPS + "/{id}", handle("scim/Groups", self.get_group)),
            web.patch(SCIM_GROUPS + "/{id}", handle("scim/Groups", self.patch_group)),
        ]

    def list_users(self, request: web.Request, body: Any) -> tuple[int, Any]:
        users = list(self.directory.users.values())
        if (text := request.query.get("filter")) is not None:
            _, value = parse_filter(text, ("userName",))
            users = [u for u in users if u.user_name.lower() == value.lower()]
        return 200, _page(request, [u.to_api() for u in users])

    def get_user(self, request: web.Request, body: Any) -> tuple[int, Any]:
        user = self.directory.users.get(request.match_info["id"])
        if user is None:
            raise ApiError(404, f"User {request.match_info['id']!r} not found")
        return 200, user.to_api()

    def create_user(self, request: web.Request, body: Any) -> tuple[int, Any]:
        user_name = body.get("userName") if isinstance(body, dict) else None
        if not isinstance(user_name, str) or not user_name:
            raise ApiError(400, "userName is required", "invalidValue")
        emails = [
            e["value"]
            for e in body.get("emails") or ()
            if isinstance(e, dict) and isinstance(e.get("value"), str)
        ]
        return 201, self.directory.add_user(user_name, emails or None).to_api()

    def list_groups(self, request: web.Request, body: Any) -> tuple[int, Any]:
        groups = list(self.directory.groups.values())
        if (text := request.query.get("filter")) is not None:
            _, value = parse_filter(text, ("displayName",))
            groups = [g for g in groups if g.display_name.lower() == value.lower()]
        return 200, _page(request, [g.to_api(self.directory.users) for g in groups])

    def get_group(self, request: web.Request, body: Any) -> tuple[int, Any]:
        group = self.directory.groups.get(request.match_info["id"])
        if group is None:
            raise ApiError(404, f"Group {request.match_info['id']!r} not found")
        return 200, group.to_api(self.directory.users)

    def create_group(self, request: web.Request, body: Any) -> tuple[int, Any]:
        name = body.get("displayName") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise ApiError(400, "displayName is required", "invalidValue")
        members = body.get("members") or []
        if not isinstance(members, list) or not all(
            isinstance(m, dict) and isinstance(m.get("value"), str) for m in members
        ):
            raise ApiError(400, 'members must be a list of {"value": userId}', "invalidValue")
        group = self.directory.add_group(name, [m["value"] for m in members])
        return 201, group.to_api(self.directory.users)

    def patch_group(self, request: web.Request, body: Any) -> tuple[int, Any]:
        group = self.directory.patch(request.match_info["id"], body)
        return 200, group.to_api(self.directory.users)


def scim_routes(simulator: TenantSimulator) -> list[web.RouteDef]:
    """The SCIM routes of ``simulator`` (its `scim` directory)."""
    return ScimEndpoints(simulator).routes()
