"""The ``jira`` ticket destination: Jira Cloud issues through REST API v3 (see the package's docstring)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    HttpOptions,
    HttpSession,
    basic,
    excerpt,
    make_session,
    read_at_most,
    read_body,
    retry_after,
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
from ce_jira.adf import clean, document

Severity = Literal["informational", "low", "medium", "high", "critical"]
SUMMARY_LIMIT = 255
"""Jira refuses a summary of 255 characters or more; it is cut to 254."""
BATCH = 100
"""Keys per status search (``maxResults`` of ``/search/jql`` is at most 100 with fields)."""
_PROJECT = re.compile(r"^[A-Z][A-Z0-9_]{0,254}$")
_LABEL = re.compile(r"^\S{1,255}$")
_TICKET_KEY = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_JQL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_ON_HOLD = ("hold", "wait", "block")
_RICH_TEXT = frozenset({"description", "environment"})
"""System fields that v3 takes only as ADF: a mapping for them is converted."""


class JiraOptions(HttpOptions):
    """Options of the ``jira`` ticket destination (see the package's docstring)."""

    email: Annotated[str, Field(min_length=3)]
    api_token: SecretStr
    project: str
    issue_type: Annotated[str, Field(min_length=1)] = "Task"
    labels: list[str] = []
    label_prefix: str = "ce-daemon-"
    priorities: dict[Severity, str] = {}
    fields: dict[str, Any] = {}
    max_body: Annotated[Size, Field(ge=1024)] = 16 * 1024**2

    @field_validator("project")
    @classmethod
    def _project_key(cls, value: str) -> str:
        if not _PROJECT.match(value):
            raise ValueError("a Jira project key: capital letters, digits and _, starting with a letter")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not _LABEL.match(label):
                raise ValueError(f"Jira labels have no spaces and at most 255 characters: {label!r}")
        return value

    @field_validator("label_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.match(r"^\S{0,180}$", value):
            raise ValueError("the label prefix has no spaces and at most 180 characters")
        return value


class JiraSink(HttpSession, TicketSink[JiraOptions]):
    """Opens Jira Cloud issues (REST v3, ADF), finds them by a label, comments, syncs their status."""

    api_version = 1
    tracks = True

    def __init__(self, options: JiraOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.base = options.url.rstrip("/")

    # -- lifecycle ---------------------------------------------------------------------------

    def new_session(self) -> aiohttp.ClientSession:
        """The session, made by :meth:`session` (basic auth with the e-mail and API token, JSON)."""
        register_secret(self.options.api_token.get_secret_value())
        return make_session(
            self.options,
            self.context.base_dir,
            Authorization=basic(self.options.email, self.options.api_token),
            Accept="application/json",
        )

    async def health(self) -> Health:
        """``/myself`` answers with our token, and the project is visible to us."""
        try:
            me = await self._call("GET", "/rest/api/3/myself")
            project = await self._call("GET", f"/rest/api/3/project/{self.options.project}", accept=(404,))
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        if project.status == 404:
            return Health(ok=False, detail=f"Jira at {self.base}: no project {self.options.project} visible")
        who = excerpt(str(me.body.get("emailAddress") or me.body.get("accountId") or "?"), 80)
        return Health(ok=True, detail=f"Jira at {self.base}, project {self.options.project}, as {who}")

    # -- tickets -----------------------------------------------------------------------------

    def label(self, key: str) -> str:
        """The label that marks the issue of dedup group ``key`` (what :meth:`find` searches)."""
        if not _TICKET_KEY.match(key):
            raise PermanentError(f"ticket key {excerpt(key, 80)!r} cannot be a Jira label")
        return self.options.label_prefix + key

    def issue_fields(self, ticket: Ticket) -> dict[str, Any]:
        """The ``fields`` of the issue ``ticket`` opens."""
        opts = self.options
        summary = " ".join(clean(ticket.title).split()) or "(no title)"
        fields: dict[str, Any] = {
            "project": {"key": opts.project},
            "issuetype": {"name": opts.issue_type},
            "summary": summary[: SUMMARY_LIMIT - 1],
            "description": document(ticket.description),
        }
        if ticket.severity in opts.priorities:
            fields["priority"] = {"name": opts.priorities[ticket.severity]}
        fields.update(opts.fields)
        labels = list(opts.labels)
        for name, value in ticket.fields.items():
            if name == "labels":
                labels += value.split()
            elif name in _RICH_TEXT:
                fields[name] = document(value)
            elif name in ("priority", "components", "assignee", "reporter"):
                fields[name] = _reference(name, value)
            elif name != "project":
                fields[name] = value
        labels.append(self.label(ticket.key))
        fields["labels"] = list(dict.fromkeys(labels))
        return fields

    async def create(self, ticket: Ticket) -> TicketRef:
        answer = await self._call("POST", "/rest/api/3/issue", {"fields": self.issue_fields(ticket)})
        key, issue_id = answer.body.get("key"), answer.body.get("id")
        if not isinstance(key, str) or not key:
            raise _shape("POST /rest/api/3/issue", "no issue key", answer.body)
        self.context.log.info("jira.issue_created", issue=key, ticket=ticket.key)
        return self.ref(key, str(issue_id or ""))

    def ref(self, key: str, issue_id: str = "") -> TicketRef:
        """The reference of issue ``key``: its link is ``<site>/browse/KEY``."""
        return TicketRef(id=key, url=f"{self.base}/browse/{key}", state={"id": issue_id} if issue_id else {})

    async def find(self, key: str) -> TicketRef | None:
        jql = (
            f"project = {jql_string(self.options.project)} AND labels = {jql_string(self.label(key))}"
            " ORDER BY created DESC"
        )
        issues, _ = await self._search(jql, ["created"], 1)
        for issue in issues:
            if isinstance(issue.get("key"), str):
                return self.ref(issue["key"], str(issue.get("id") or ""))
        return None

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        text = f"Seen again: {ticket.count} alerts in this group so far. Latest: {ticket.title}"
        if ticket.description:
            text += f"\n\n{ticket.description}"
        path = f"/rest/api/3/issue/{_issue_path(ref.id)}/comment"
        answer = await self._call("POST", path, {"body": document(text)}, accept=(404,))
        if answer.status == 404:
            raise PermanentError(f"Jira issue {ref.id} is gone (deleted, or no longer visible to us)")
        return ref

    async def statuses(self, refs: Sequence[TicketRef]) -> Sequence[TicketStatus]:
        found: dict[str, _Found] = {}
        keys = list(dict.fromkeys(ref.id for ref in refs))
        for start in range(0, len(keys), BATCH):
            found.update(await self._statuses(keys[start : start + BATCH]))
        by_id = {status.raw_id: status for status in found.values() if status.raw_id}
        result = []
        for ref in refs:
            # a moved issue answers under its new key: known by its id
            status = found.get(ref.id) or by_id.get(ref.state.get("id") or "-")
            if status is None:
                result.append(TicketStatus(id=ref.id, status="deleted"))
            else:
                result.append(TicketStatus(id=ref.id, status=status.status, raw=status.raw))
        return result

    async def _statuses(self, keys: list[str]) -> dict[str, _Found]:
        """The status of each of ``keys`` Jira still has; a key it says does not exist is left out."""
        found: dict[str, _Found] = {}
        while keys:
            jql = f"key in ({', '.join(jql_string(key) for key in keys)})"
            try:
                issues, _ = await self._search(jql, ["status"], BATCH, pages=(len(keys) // BATCH) + 2)
            except _SearchRefusedError as exc:
                # Jira refuses the whole query for a key it does not have (deleted, or its project
                # gone), naming each such key in its (localised) messages: ask again without them
                named = {key for key in keys if _names(exc.text, key)}
                if not named:
                    raise PermanentError(str(exc)) from None
                keys = [key for key in keys if key not in named]
                continue
            for issue in issues:
                key = issue.get("key")
                fields = issue.get("fields")
                status = fields.get("status") if isinstance(fields, dict) else None
                if isinstance(key, str) and isinstance(status, dict):
                    found[key] = _Found(*map_status(status), raw_id=str(issue.get("id") or ""))
            break
        return found

    async def _search(
        self, jql: str, fields: list[str], limit: int, *, pages: int = 1
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Issues matching ``jql`` (``POST /search/jql``), ``limit`` a page, up to ``pages`` pages."""
        issues: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(pages):
            payload: dict[str, Any] = {"jql": jql, "fields": fields, "maxResults": limit}
            if token:
                payload["nextPageToken"] = token
            answer = await self._call("POST", "/rest/api/3/search/jql", payload, accept=(400,))
            if answer.status == 400:
                raise _SearchRefusedError(_refusal("Jira refused the search", answer.body), answer.body)
            page = answer.body.get("issues")
            if not isinstance(page, list):
                raise _shape("POST /rest/api/3/search/jql", "no issues list", answer.body)
            issues += [issue for issue in page if isinstance(issue, dict)]
            token = answer.body.get("nextPageToken")
            if not isinstance(token, str) or not token or answer.body.get("isLast") is True:
                return issues, None
        return issues, token

    # -- HTTP --------------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, payload: Any = None, *, accept: Sequence[int] = ()
    ) -> _Answer:
        """One request; a 2xx (or ``accept``-ed) JSON object answer, or the error Jira's answer means."""
        target = f"Jira {method} {path.split('?', maxsplit=1)[0]}"
        data = None if payload is None else orjson.dumps(payload)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self.session().request(
                method, f"{self.base}{path}", data=data, headers=headers, allow_redirects=False
            ) as response:
                status, answer_headers = response.status, response.headers
                ok = 200 <= status < 300 or status in accept
                raw = await (
                    read_body(response, target, self.options.max_body)
                    if ok
                    else read_at_most(response, ERROR_BODY_BYTES)
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        if not ok:
            raise _status_error(status, raw, answer_headers, target)
        if not raw.strip():
            return _Answer(status, {})
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TransientError(
                f"{target} answered HTTP {status} with a body that is not JSON: {excerpt(raw)}"
            ) from None
        if not isinstance(body, dict):
            raise _shape(target, "no JSON object", body)
        return _Answer(status, body)


class _Answer:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body


class _Found:
    __slots__ = ("raw", "raw_id", "status")

    def __init__(self, status: str, raw: str, *, raw_id: str) -> None:
        self.status, self.raw, self.raw_id = status, raw, raw_id


class _SearchRefusedError(PermanentError):
    """Jira refused a JQL search (400); ``text`` is all it said (where the keys it lacks are named)."""

    def __init__(self, message: str, body: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.text = orjson.dumps(body).decode()


def map_status(status: Mapping[str, Any]) -> tuple[str, str]:
    """``(mapped, Jira's status name)`` for an issue's ``status`` field.

    By its category (names are localised and customised): ``new`` → new, ``done`` → closed,
    ``indeterminate`` → in_progress, or on_hold when the name says hold, wait or block.
    """
    name = str(status.get("name") or "")
    category = status.get("statusCategory")
    key = category.get("key") if isinstance(category, dict) else None
    if key == "new":
        return "new", name
    if key == "done":
        return "closed", name
    if key == "indeterminate":
        lowered = name.lower()
        return ("on_hold" if any(word in lowered for word in _ON_HOLD) else "in_progress"), name
    return "other", name


def jql_string(value: str) -> str:
    """``value`` as a JQL string literal: double-quoted, backslash and quote escaped, line ends as escapes."""
    return '"' + value.translate(_JQL_ESCAPES) + '"'


def _issue_path(key: str) -> str:
    if not re.match(r"^[A-Za-z0-9_-]+$", key):
        raise PermanentError(f"{excerpt(key, 80)!r} is not a Jira issue key")
    return key


def _reference(name: str, value: str) -> Any:
    """A ticket field for a Jira reference field, in the shape Jira takes it."""
    if name == "components":
        return [{"name": part.strip()} for part in value.split(",") if part.strip()]
    if name in ("assignee", "reporter"):
        return {"accountId": value}
    return {"name": value}


def _names(text: str, key: str) -> bool:
    """Whether ``text`` names issue ``key`` (``SEC-1``, not as part of ``SEC-10``)."""
    return re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text) is not None


def _refusal(what: str, body: Any) -> str:
    """Jira's reasons (``errorMessages`` and field ``errors``), quoted: what a person fixes."""
    if not isinstance(body, dict):
        return f"{what}: {excerpt(str(body))}"
    parts = [str(m) for m in body.get("errorMessages") or [] if m]
    errors = body.get("errors")
    if isinstance(errors, dict) and errors:
        parts.append("; ".join(f"{field}: {message}" for field, message in errors.items()))
    return f"{what}: {excerpt(' '.join(parts) or orjson.dumps(body).decode())}"


def _status_error(status: int, raw: bytes, headers: Mapping[str, str], target: str) -> Exception:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = raw.decode("utf-8", "replace")
    what = f"{target} answered HTTP {status}"
    message = _refusal(what, body) if raw.strip() else what
    error = status_error(status, message, headers, target)
    if isinstance(error, TransientError) and error.retry_after is None:
        error.retry_after = _rate_limit_reset(headers)
    return error


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (an ISO-8601 time), when Jira gave no ``Retry-After``."""
    value = headers.get("X-RateLimit-Reset")
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return retry_after({"Retry-After": value})
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - time.time())


def _shape(target: str, what: str, body: Any) -> TransientError:
    return TransientError(f"{target} answered {what}: {excerpt(orjson.dumps(body))}")
