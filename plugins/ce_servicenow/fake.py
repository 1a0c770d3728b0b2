"""A fake ServiceNow instance: the Table API calls a ticket destination opens, finds, notes and syncs by.

ServiceNow publishes no OpenAPI for the Table API; this follows its REST API reference
(docs.servicenow.com, "Table API") for the calls used, on the ``incident`` and ``sn_si_incident``
tables (:attr:`FakeServiceNow.tables`):

- ``POST /api/now/table/{table}``: inserts a record (unknown fields are ignored, as the instance
  does) → 201 ``{"result": record}``; a record without ``short_description`` is refused by the
  default data policy, 403 "Operation Failed" / "Data Policy Exception".
- ``GET /api/now/table/{table}``: ``sysparm_query`` (``field=value``, ``fieldIN a,b``, ``active=true``,
  joined by ``^``, then ``ORDERBY``/``ORDERBYDESC`` a field), ``sysparm_fields``, ``sysparm_limit``,
  ``sysparm_offset`` → ``{"result": [records]}`` with ``X-Total-Count``.
- ``GET``/``PATCH``/``PUT /api/now/table/{table}/{sys_id}``: one record; ``work_notes`` and
  ``comments`` on an update are journal entries (kept in :attr:`Record.journal`, read back empty).
  An unknown sys_id → 404 "No Record found".

Values are strings as with ``sysparm_display_value=false``; reference fields (``assignment_group``,
``caller_id``, ``requested_by``) come as ``{"link", "value"}`` unless ``sysparm_exclude_reference_link``
is true. A table the instance lacks → 400 "Invalid table". New records get a 32-hex ``sys_id``, a
``number`` (INC…, SIR…) and the table's first state (incident 1 New, sn_si_incident 10 Draft).

Auth is HTTP basic (:attr:`FakeServiceNow.users`) or a bearer token (:attr:`FakeServiceNow.tokens`);
anything else is 401 "User Not Authenticated". Errors are ``{"error": {"message", "detail"},
"status": "failure"}``. Scripted failures (``fail_next``) apply before auth; a 429 also carries
:attr:`FakeServiceNow.rate_limit_headers`. :meth:`FakeServiceNow.drop_after_apply` makes the next
requests take effect and then drops the connection unanswered. Tests change states with
:meth:`FakeServiceNow.set_state` and delete records with :meth:`FakeServiceNow.delete`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import ssl
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

USERNAME = "ce.daemon"
PASSWORD = "fake-servicenow-password-0123456789"  # noqa: S105 -- the fake's own test credential
TOKEN = "fake-servicenow-oauth-token-abcdefghijklmnopqrstuvwxyz"  # noqa: S105 -- likewise
PREFIXES = {"incident": "INC", "sn_si_incident": "SIR"}
FIRST_STATE = {"incident": "1", "sn_si_incident": "10"}
REFERENCES = frozenset({"assignment_group", "caller_id", "requested_by", "assigned_to", "cmdb_ci"})
MANDATORY = "Data Policy Exception: \n Short description is mandatory"
NO_RECORD = "Record doesn't exist or ACL restricts the record retrieval"
JOURNAL = frozenset({"work_notes", "comments"})
_CONDITION = re.compile(r"^(?P<field>[a-z_][a-z0-9_]*)(?P<op>=|IN|!=)(?P<value>.*)$", re.DOTALL)


class ServiceNowError(Exception):
    """An error answer in ServiceNow's shape: ``{"error": {"message", "detail"}, "status": "failure"}``."""

    def __init__(self, status: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "detail": self.detail}, "status": "failure"}
        return json_response(body, self.status)


@dataclass(slots=True)
class Record:
    """One record as the fake keeps it: its fields (strings) and its journal (work notes, comments)."""

    table: str
    fields: dict[str, str]
    journal: list[tuple[str, str]] = field(default_factory=list)

    @property
    def sys_id(self) -> str:
        return self.fields["sys_id"]


class FakeServiceNow(FakeHttpServer):
    """A ServiceNow instance: ``records`` by sys_id (what tests read back), ``tables`` it has."""

    def __init__(
        self,
        *,
        tables: Collection[str] = ("incident", "sn_si_incident"),
        users: Mapping[str, str] | None = None,
        tokens: Collection[str] = (TOKEN,),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.tables = set(tables)
        self.users = dict(users if users is not None else {USERNAME: PASSWORD})
        self.tokens = set(tokens)
        self.records: dict[str, Record] = {}
        self.queries: list[str] = []
        """Every ``sysparm_query`` received, in order."""
        self.rate_limit_headers: dict[str, str] = {}
        """Headers added to a scripted 429 (``X-RateLimit-Reset``, ``X-RateLimit-Rule``…)."""
        self._numbers = itertools.count(10_001)
        self._clock = itertools.count(1)
        self._drops: deque[bool] = deque()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/api/now/table/{table}", self._guard(self._insert)),
            web.get("/api/now/table/{table}", self._guard(self._query)),
            web.get("/api/now/table/{table}/{sys_id}", self._guard(self._read)),
            web.patch("/api/now/table/{table}/{sys_id}", self._guard(self._update)),
            web.put("/api/now/table/{table}/{sys_id}", self._guard(self._update)),
        ]

    # -- what tests do -----------------------------------------------------------------------

    def drop_after_apply(self, count: int = 1, *, after: int = 0) -> None:
        """The next ``count`` requests (once ``after`` more passed) take effect, then go unanswered."""
        self._drops.extend([False] * after + [True] * count)

    def refuse_credentials(self) -> None:
        """Every password and token is revoked: requests get 401."""
        self.users.clear()
        self.tokens.clear()

    def set_state(self, sys_id: str, state: str) -> None:
        """Set record ``sys_id``'s ``state`` (its number, as stored: ``"2"``, ``"18"``)."""
        self.records[sys_id].fields["state"] = state

    def delete(self, sys_id: str) -> None:
        """Delete record ``sys_id``."""
        del self.records[sys_id]

    def correlated(self, key: str) -> list[Record]:
        """The records whose ``correlation_id`` is ``key``."""
        return [r for r in self.records.values() if r.fields.get("correlation_id") == key]

    def error_body(self, status: int) -> bytes:
        message = "Rate limit exceeded" if status == 429 else HTTPStatus(status).phrase
        return orjson.dumps({"error": {"message": message, "detail": None}, "status": "failure"})

    async def intercept(self, request: web.Request) -> web.Response | None:
        answer = await super().intercept(request)
        if answer is not None and answer.status == 429:
            answer.headers.update(self.rate_limit_headers)
        return answer

    # -- handlers ----------------------------------------------------------------------------

    def _insert(self, request: web.Request, table: str, payload: Any) -> web.Response:
        if not isinstance(payload, dict):
            raise ServiceNowError(400, "Exception while reading request", "The payload is not a JSON object.")
        values = {name: _text(value) for name, value in payload.items() if name not in JOURNAL}
        if not values.get("short_description", "").strip():
            raise ServiceNowError(403, "Operation Failed", MANDATORY)
        sys_id = uuid.uuid4().hex
        stamp = next(self._clock)
        record = Record(
            table,
            {
                "correlation_id": "",
                "correlation_display": "",
                "description": "",
                "impact": "3",
                "urgency": "3",
                "priority": "5",
                **values,
                "sys_id": sys_id,
                "number": f"{PREFIXES.get(table, 'REC')}{next(self._numbers):07d}",
                "state": FIRST_STATE.get(table, "1"),
                "active": "true",
                "sys_created_on": f"2026-01-01 00:{stamp // 60 % 60:02d}:{stamp % 60:02d}",
                "sys_created_order": str(stamp),
            },
        )
        record.journal += [(name, _text(payload[name])) for name in JOURNAL if payload.get(name)]
        self.records[sys_id] = record
        return json_response({"result": self._render(record, request)}, 201)

    def _query(self, request: web.Request, table: str, payload: Any) -> web.Response:
        query = request.query.get("sysparm_query", "")
        self.queries.append(query)
        matches = self._select(table, query)
        try:
            limit = int(request.query.get("sysparm_limit", "10000"))
            offset = int(request.query.get("sysparm_offset", "0"))
        except ValueError:
            raise ServiceNowError(400, "Invalid sysparm_limit or sysparm_offset") from None
        page = matches[offset : offset + limit]
        body = {"result": [self._render(record, request) for record in page]}
        return json_response(body, headers={"X-Total-Count": str(len(matches))})

    def _read(self, request: web.Request, table: str, payload: Any) -> dict[str, Any]:
        return {"result": self._render(self._record(request, table), request)}

    def _update(self, request: web.Request, table: str, payload: Any) -> dict[str, Any]:
        record = self._record(request, table)
        if not isinstance(payload, dict):
            raise ServiceNowError(400, "Exception while reading request", "The payload is not a JSON object.")
        for name, value in payload.items():
            if name in JOURNAL:
                record.journal.append((name, _text(value)))
            elif name not in ("sys_id", "number"):
                record.fields[name] = _text(value)
        return {"result": self._render(record, request)}

    # -- queries -----------------------------------------------------------------------------

    def _select(self, table: str, query: str) -> list[Record]:
        matches = [r for r in self.records.values() if r.table == table]
        order, descending = "sys_created_order", False
        for part in query.split("^") if query else []:
            if part.startswith("ORDERBYDESC"):
                order, descending = _order_field(part[11:]), True
                continue
            if part.startswith("ORDERBY"):
                order, descending = _order_field(part[7:]), False
                continue
            condition = _CONDITION.match(part)
            if condition is None:
                raise ServiceNowError(400, "Invalid query", f"cannot read the condition {part!r}")
            name, operator, value = condition.group("field", "op", "value")
            if operator == "IN":
                wanted = set(value.split(","))
                matches = [r for r in matches if r.fields.get(name, "") in wanted]
            elif operator == "=":
                matches = [r for r in matches if r.fields.get(name, "") == value]
            else:
                matches = [r for r in matches if r.fields.get(name, "") != value]
        return sorted(matches, key=lambda r: _sort_key(r.fields.get(order, "")), reverse=descending)

    # -- plumbing ----------------------------------------------------------------------------

    def _record(self, request: web.Request, table: str) -> Record:
        record = self.records.get(request.match_info["sys_id"])
        if record is None or record.table != table:
            raise ServiceNowError(404, "No Record found", NO_RECORD)
        return record

    def _render(self, record: Record, request: web.Request) -> dict[str, Any]:
        wanted = request.query.get("sysparm_fields")
        names = wanted.split(",") if wanted else [*record.fields, *JOURNAL]
        links = request.query.get("sysparm_exclude_reference_link", "false").lower() != "true"
        rendered: dict[str, Any] = {}
        for name in names:
            value = "" if name in JOURNAL else record.fields.get(name, "")
            if name in REFERENCES and value and links:
                rendered[name] = {"link": f"{self.url}/api/now/table/sys_user_group/{value}", "value": value}
            else:
                rendered[name] = value
        return rendered

    def _authenticate(self, request: web.Request) -> str:
        """The table of an authenticated request (401 for anyone else, 400 for a table not here)."""
        header = request.headers.get("Authorization", "")
        allowed = header.startswith("Bearer ") and header[7:] in self.tokens
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            allowed = bool(user) and self.users.get(user) == password
        if not allowed:
            raise ServiceNowError(401, "User Not Authenticated", "Required to provide Auth information")
        table = request.match_info["table"]
        if table not in self.tables:
            raise ServiceNowError(400, f"Invalid table {table}")
        return table

    def _guard(self, handle: Callable[[web.Request, str, Any], Any]) -> Callable[[web.Request], Any]:
        """Script, auth, the table, the JSON body, the handler, ServiceNow's error shape; recorded."""

        async def guarded(request: web.Request) -> web.Response:
            scripted = await self.intercept(request)
            if scripted is not None:
                return scripted
            body = await request.read()
            try:
                table = self._authenticate(request)
                try:
                    payload = orjson.loads(body) if body else None
                except orjson.JSONDecodeError:
                    raise ServiceNowError(
                        400, "Exception while reading request", "The payload is not valid JSON."
                    ) from None
                result = handle(request, table, payload)
                answer = result if isinstance(result, web.Response) else json_response(result)
            except ServiceNowError as exc:
                answer = exc.response()
            await self.record(request, body, answer.status)
            if self._drops and self._drops.popleft() and request.transport is not None:
                request.transport.abort()  # applied, but the answer never leaves
            return answer

        return guarded


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else orjson.dumps(value).decode() if value is not None else ""


def _order_field(name: str) -> str:
    return "sys_created_order" if name == "sys_created_on" else name


def _sort_key(value: str) -> tuple[int, int, str]:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)
