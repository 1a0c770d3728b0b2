"""The ``servicenow`` ticket destination: records in ``incident`` or ``sn_si_incident`` via the Table API."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import Field, SecretStr, model_validator

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    HttpOptions,
    HttpSession,
    basic,
    bearer,
    excerpt,
    make_session,
    read_at_most,
    read_body,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    Health,
    PermanentError,
    PluginContext,
    Size,
    Ticket,
    TicketRef,
    TicketSink,
    TicketStatus,
    TransientError,
    register_secret,
)

Table = Literal["incident", "sn_si_incident"]
BATCH = 100
"""sys_ids per status query (``sys_idIN…`` keeps the URL well under the instance's 8 KB limit)."""
SHORT_DESCRIPTION_LIMIT = 160
DESCRIPTION_LIMIT = 4000
"""The default lengths of ``short_description`` and ``description`` on ``task`` (the instance cuts)."""
IMPACT_URGENCY = {
    "critical": ("1", "1"),
    "high": ("1", "2"),
    "medium": ("2", "2"),
    "low": ("3", "2"),
    "informational": ("3", "3"),
}
"""Severity → (impact, urgency): the default priority lookup makes these P1, P2, P3, P4, P5."""
PRIORITY = {"critical": "1", "high": "2", "medium": "3", "low": "4", "informational": "5"}
STATES: dict[str, dict[str, tuple[str, str]]] = {
    "incident": {
        "1": ("new", "New"),
        "2": ("in_progress", "In Progress"),
        "3": ("on_hold", "On Hold"),
        "4": ("on_hold", "Awaiting Caller"),
        "5": ("on_hold", "Awaiting Evidence"),
        "6": ("closed", "Resolved"),
        "7": ("closed", "Closed"),
        "8": ("closed", "Canceled"),
    },
    "sn_si_incident": {
        "10": ("new", "Draft"),
        "16": ("in_progress", "Analysis"),
        "18": ("in_progress", "Contain"),
        "19": ("in_progress", "Eradicate"),
        "20": ("in_progress", "Recover"),
        "100": ("in_progress", "Review"),
        "3": ("closed", "Closed"),
        "7": ("closed", "Cancelled"),
    },
}
"""A record's ``state`` → (mapped status, the state's label), per table (see the package's docstring)."""
_SYS_ID = re.compile(r"^[0-9a-f]{32}$")
_KEY = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_RECORD_REFUSED = "Operation Failed"
"""The message of a 403 that refuses a record (a data policy, a business rule), not the caller."""


class ServiceNowOptions(HttpOptions):
    """Options of the ``servicenow`` ticket destination (see the package's docstring)."""

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    table: Table = "incident"
    fields: dict[str, str | int | bool] = {}
    assignment_group: str | None = None
    caller: str | None = None
    priority_from: Literal["impact_urgency", "priority", "none"] = "impact_urgency"
    correlation_display: Annotated[str, Field(max_length=100)] = "ce-daemon"
    max_body: Annotated[Size, Field(ge=1024)] = 16 * 1024**2

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        basic_auth = self.username is not None and self.password is not None
        if basic_auth == (self.token is not None) or (self.username is None) != (self.password is None):
            raise ValueError("give either username and password (basic) or token (OAuth bearer)")
        return self


class ServiceNowSink(HttpSession, TicketSink[ServiceNowOptions]):
    """Opens ServiceNow incidents (ITSM) or security incidents (SecOps) with ``correlation_id`` = the key."""

    api_version = 1
    tracks = True

    def __init__(self, options: ServiceNowOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.base = options.url.rstrip("/")
        self.table = options.table

    # -- lifecycle ---------------------------------------------------------------------------

    def new_session(self) -> aiohttp.ClientSession:
        """The session, made on first use by :meth:`session` (basic or bearer authentication, JSON)."""
        opts = self.options
        if opts.token is not None:
            register_secret(opts.token.get_secret_value())
            authorization = bearer(opts.token)
        else:
            assert opts.username is not None and opts.password is not None
            register_secret(opts.password.get_secret_value())
            authorization = basic(opts.username, opts.password)
        return make_session(
            opts, self.context.base_dir, Authorization=authorization, Accept="application/json"
        )

    async def health(self) -> Health:
        """One record of the table is readable with our credentials (the table exists, we may read it)."""
        try:
            await self._records({"sysparm_limit": "1", "sysparm_fields": "sys_id"})
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"ServiceNow at {self.base}, table {self.table}")

    # -- tickets -----------------------------------------------------------------------------

    def record(self, ticket: Ticket) -> dict[str, Any]:
        """The record ``ticket`` opens: computed fields, then static ``fields``, then the ticket's own."""
        opts = self.options
        record: dict[str, Any] = {
            "short_description": (" ".join(clean(ticket.title).split()) or "(no title)")[
                :SHORT_DESCRIPTION_LIMIT
            ],
            "description": clean(ticket.description)[:DESCRIPTION_LIMIT],
        }
        if opts.priority_from == "impact_urgency" and ticket.severity in IMPACT_URGENCY:
            record["impact"], record["urgency"] = IMPACT_URGENCY[ticket.severity]
        elif opts.priority_from == "priority" and ticket.severity in PRIORITY:
            record["priority"] = PRIORITY[ticket.severity]
        if opts.assignment_group:
            record["assignment_group"] = opts.assignment_group
        if opts.caller:
            record["caller_id" if self.table == "incident" else "requested_by"] = opts.caller
        record.update(opts.fields)
        record.update(ticket.fields)
        record["correlation_id"] = _key(ticket.key)
        record["correlation_display"] = opts.correlation_display
        return record

    async def create(self, ticket: Ticket) -> TicketRef:
        params = {**_PLAIN, "sysparm_fields": "sys_id,number,state"}
        answer = await self._call("POST", self._path(), params, self.record(ticket))
        assert answer is not None
        result = answer.get("result")
        sys_id = result.get("sys_id") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(sys_id, str) or not _SYS_ID.match(sys_id):
            raise _shape(f"ServiceNow POST {self._path()}", "no record with a sys_id", answer)
        self.context.log.info("servicenow.record_created", sys_id=sys_id, ticket=ticket.key)
        return self.ref(result)

    def ref(self, record: Mapping[str, Any]) -> TicketRef:
        """The reference of ``record``: its sys_id, a link a person opens, its number."""
        sys_id = str(record["sys_id"])
        uri = quote(f"{self.table}.do?sys_id={sys_id}", safe=".")
        state = {"number": str(record.get("number") or ""), "table": self.table}
        return TicketRef(id=sys_id, url=f"{self.base}/nav_to.do?uri={uri}", state=state)

    async def find(self, key: str) -> TicketRef | None:
        found = await self._records(
            {
                "sysparm_query": f"correlation_id={_key(key)}^ORDERBYDESCsys_created_on",
                "sysparm_fields": "sys_id,number,state",
                "sysparm_limit": "1",
            }
        )
        for record in found:
            if isinstance(record.get("sys_id"), str) and _SYS_ID.match(record["sys_id"]):
                return self.ref(record)
        return None

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        note = f"Seen again: {ticket.count} alerts in this group so far. Latest: {clean(ticket.title)}"
        if ticket.description:
            note += f"\n\n{clean(ticket.description)[:DESCRIPTION_LIMIT]}"
        if not _SYS_ID.match(ref.id):
            raise PermanentError(f"{excerpt(ref.id, 80)!r} is not a ServiceNow sys_id")
        params = {**_PLAIN, "sysparm_fields": "sys_id"}
        path = f"{self._path()}/{ref.id}"
        if await self._call("PATCH", path, params, {"work_notes": note}, missing_ok=True) is None:
            number = ref.state.get("number") or ref.id
            raise PermanentError(f"ServiceNow {self.table} {number} is gone (deleted, or an ACL hides it)")
        return ref

    async def statuses(self, refs: Sequence[TicketRef]) -> Sequence[TicketStatus]:
        ids = list(dict.fromkeys(ref.id for ref in refs if _SYS_ID.match(ref.id)))
        states: dict[str, str] = {}
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            for record in await self._records(
                {
                    "sysparm_query": "sys_idIN" + ",".join(batch),
                    "sysparm_fields": "sys_id,state",
                    "sysparm_limit": str(len(batch)),
                }
            ):
                if isinstance(record.get("sys_id"), str):
                    states[record["sys_id"]] = str(record.get("state", ""))
        table = STATES[self.table]
        result = []
        for ref in refs:
            if ref.id not in states:
                result.append(TicketStatus(id=ref.id, status="deleted"))
                continue
            status, label = table.get(states[ref.id], ("other", states[ref.id]))
            result.append(TicketStatus(id=ref.id, status=status, raw=label))
        return result

    # -- HTTP --------------------------------------------------------------------------------

    def _path(self) -> str:
        return f"/api/now/table/{self.table}"

    async def _records(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """The records a query on the table answers (``GET``, no display values, no reference links)."""
        answer = await self._call("GET", self._path(), {**_PLAIN, **params})
        assert answer is not None
        result = answer.get("result")
        if not isinstance(result, list):
            raise _shape(f"ServiceNow GET {self._path()}", "no list of records", answer)
        return [record for record in result if isinstance(record, dict)]

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        payload: Any = None,
        *,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """One request: a 2xx JSON object answer, None for a 404 if ``missing_ok``, or the answer's error."""
        target = f"ServiceNow {method} {path}"
        data = None if payload is None else orjson.dumps(payload)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self.session().request(
                method,
                f"{self.base}{path}",
                params=params,
                data=data,
                headers=headers,
                allow_redirects=False,
            ) as response:
                status, answer_headers = response.status, response.headers
                ok = 200 <= status < 300
                raw = await (
                    read_body(response, target, self.options.max_body)
                    if ok
                    else read_at_most(response, ERROR_BODY_BYTES)
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        if status == 404 and missing_ok:
            return None
        if not ok:
            raise _status_error(status, raw, answer_headers, target)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # a hibernating developer instance answers 200 with an HTML page
            raise TransientError(
                f"{target} answered HTTP {status} with a body that is not JSON: {excerpt(raw) or '(empty)'}"
            ) from None
        if not isinstance(body, dict):
            raise _shape(target, "no JSON object", body)
        return body


_PLAIN = {"sysparm_display_value": "false", "sysparm_exclude_reference_link": "true"}
"""Values as stored (state ``"2"``, not ``"In Progress"``), references as bare sys_ids."""


def clean(text: str) -> str:
    """``text`` without control characters (tab and line ends aside) or lone surrogates."""
    return _UNSAFE.sub("", text)


def map_state(table: str, state: str) -> tuple[str, str]:
    """``(mapped status, label)`` of a record's ``state`` value in ``table``; unknown: ``other``."""
    return STATES[table].get(state, ("other", state))


def _key(key: str) -> str:
    """``key`` checked to stand in an encoded query as it is (no ``^``, ``=``, ``,`` to escape)."""
    if not _KEY.match(key):
        raise PermanentError(f"ticket key {excerpt(key, 80)!r} cannot be a ServiceNow correlation_id")
    return key


def _message(raw: bytes) -> str:
    """ServiceNow's error ``{"error": {"message", "detail"}, "status": "failure"}`` as one line."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return excerpt(raw) or "(empty body)"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return excerpt(raw)
    message, detail = str(error.get("message") or ""), str(error.get("detail") or "")
    return excerpt(f"{message}: {detail}" if detail and detail != "null" else message)


def _status_error(status: int, raw: bytes, headers: Mapping[str, str], target: str) -> Exception:
    message = _message(raw)
    text = f"{target} answered HTTP {status}: {message}"
    if status == 403 and message.startswith(_RECORD_REFUSED):
        return PermanentError(text)  # a data policy or business rule refused the record, not us
    error = status_error(status, text, headers, target)
    if isinstance(error, TransientError) and error.retry_after is None:
        error.retry_after = _rate_limit_reset(headers)
    return error


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (epoch seconds), when the instance gave no ``Retry-After``."""
    try:
        reset = float(headers.get("X-RateLimit-Reset") or "")
    except ValueError:
        return None
    return max(0.0, reset - time.time())


def _shape(target: str, what: str, body: Any) -> TransientError:
    return TransientError(f"{target} answered {what}: {excerpt(orjson.dumps(body))}")
