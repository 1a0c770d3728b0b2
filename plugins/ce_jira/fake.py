"""A fake Jira Cloud site: the REST API v3 calls a ticket destination opens, finds, comments and syncs by.

Follows developer.atlassian.com's v3 reference for the calls used:

- ``POST /rest/api/3/issue`` ``{"fields": {project, issuetype, summary, description, labels,
  priority, components, assignee, reporter, environment, customfield_…}}`` → 201 ``{id, key, self}``.
  Refused as Jira does, 400 ``{"errorMessages": [], "errors": {field: message}}``: an unknown project
  or issue type, a missing summary, one of 255 characters or more or with a line break, a
  description (or environment) that is not an Atlassian Document, a label with spaces, an unknown
  priority, a field that is not on the screen (a ``customfield_`` not in :attr:`FakeJira.custom_fields`).
- ``POST /rest/api/3/search/jql`` ``{jql, fields, maxResults, nextPageToken}`` (and ``GET`` with the
  same as query parameters) → ``{"issues": [{id, key, self, fields}], "isLast", "nextPageToken"}``.
  The JQL understood: clauses ``project``, ``labels``, ``key``/``issue``/``issuekey`` with ``=`` or
  ``in (…)``, joined by ``AND``, then ``ORDER BY created|key [ASC|DESC]``; strings in double or
  single quotes with backslash escapes. As Jira, a key that does not exist fails the whole query
  (400 "An issue with key 'X-9' does not exist for field 'key'."), and a moved issue is found by its
  old key (answering under its new one).
- The legacy ``/rest/api/3/search`` answers 410 Gone, as on Cloud since its removal (CHANGE-2046).
- ``POST /rest/api/3/issue/{key}/comment`` ``{"body": ADF}`` → 201; an unknown issue → 404.
- ``GET /rest/api/3/issue/{key}`` (``fields``), ``GET /rest/api/3/myself``, ``GET /rest/api/3/project/{key}``.

Auth is HTTP basic with an e-mail and API token (:attr:`FakeJira.credentials`); anything else is 401.
Scripted failures (``fail_next``) apply before auth, in Jira's error shape; a 429 also carries
:attr:`FakeJira.rate_limit_headers`. :meth:`FakeJira.drop_after_apply` makes the next requests take
effect and then drops the connection unanswered. Tests change an issue's status with
:meth:`FakeJira.set_status`, delete it with :meth:`FakeJira.delete` and move it with :meth:`FakeJira.move`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import ssl
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

EMAIL = "soc-bot@example.com"
TOKEN = "ATATT3xFfGF0-fake-jira-api-token-0123456789"  # noqa: S105 -- the fake's own test credential
STATUSES = {
    "To Do": "new",
    "In Progress": "indeterminate",
    "Waiting for customer": "indeterminate",
    "On Hold": "indeterminate",
    "Done": "done",
    "Won't Do": "done",
}
"""Status name → status category key, as a default Jira Software/Service Management workflow has."""
_CATEGORY_NAMES = {"new": "To Do", "indeterminate": "In Progress", "done": "Done"}
ISSUE_TYPES = ("Task", "Bug", "Story", "Incident")
PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")
SYSTEM_FIELDS = frozenset(
    {
        "project",
        "issuetype",
        "summary",
        "description",
        "labels",
        "priority",
        "components",
        "assignee",
        "reporter",
        "environment",
    }
)
BAD_PAYLOAD = "Invalid request payload. Refer to the REST API documentation and try again."
NOT_ADF = "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
_BLOCKS = frozenset({"paragraph", "heading", "codeBlock", "bulletList", "orderedList", "blockquote", "rule"})
_INLINES = frozenset({"text", "hardBreak", "mention", "emoji", "inlineCard"})
_MARKS = frozenset({"strong", "em", "code", "strike", "underline", "link", "subsup", "textColor"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class JiraError(Exception):
    """An error answer in Jira's shape: ``{"errorMessages": [...], "errors": {field: message}}``."""

    def __init__(self, status: int, *messages: str, errors: Mapping[str, str] | None = None) -> None:
        super().__init__("; ".join(messages))
        self.status, self.messages, self.errors = status, list(messages), dict(errors or {})

    def response(self) -> web.Response:
        return json_response({"errorMessages": self.messages, "errors": self.errors}, self.status)


@dataclass(slots=True)
class Issue:
    """One issue as the fake keeps it."""

    id: int
    key: str
    project: str
    fields: dict[str, Any]
    created: int
    status: str = "To Do"
    comments: list[dict[str, Any]] = field(default_factory=list)


class FakeJira(FakeHttpServer):
    """A Jira Cloud site: ``issues`` by key (what tests read back), ``projects`` it has."""

    def __init__(
        self,
        *,
        projects: Collection[str] = ("SEC",),
        credentials: Mapping[str, str] | None = None,
        custom_fields: Collection[str] = ("customfield_10010",),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.projects = set(projects)
        self.credentials = dict(credentials if credentials is not None else {EMAIL: TOKEN})
        self.custom_fields = set(custom_fields)
        self.issues: dict[str, Issue] = {}
        self.moved: dict[str, str] = {}
        """Old key → new key of moved issues (Jira finds an issue by any key it had)."""
        self.searches: list[str] = []
        """Every JQL query received, in order."""
        self.rate_limit_headers: dict[str, str] = {}
        """Headers added to a scripted 429 (``X-RateLimit-Reset``, ``RateLimit-Reason``…)."""
        self._ids = itertools.count(10_000)
        self._numbers: dict[str, itertools.count[int]] = {}
        self._clock = itertools.count(1)
        self._drops: deque[bool] = deque()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/rest/api/3/issue", self._guard(self._create)),
            web.post("/rest/api/3/search/jql", self._guard(self._search)),
            web.get("/rest/api/3/search/jql", self._guard(self._search)),
            web.get("/rest/api/3/search", self._guard(self._removed)),
            web.post("/rest/api/3/search", self._guard(self._removed)),
            web.post("/rest/api/3/issue/{key}/comment", self._guard(self._comment)),
            web.get("/rest/api/3/issue/{key}", self._guard(self._get_issue)),
            web.get("/rest/api/3/myself", self._guard(self._myself)),
            web.get("/rest/api/3/project/{key}", self._guard(self._project)),
        ]

    # -- what tests do -----------------------------------------------------------------------

    def drop_after_apply(self, count: int = 1, *, after: int = 0) -> None:
        """The next ``count`` requests (once ``after`` more passed) take effect, then go unanswered."""
        self._drops.extend([False] * after + [True] * count)

    def refuse_credentials(self) -> None:
        """Every API token is revoked: requests get 401."""
        self.credentials.clear()

    def set_status(self, key: str, name: str) -> None:
        """Move issue ``key`` to status ``name`` (one of :data:`STATUSES`)."""
        assert name in STATUSES, name
        self.issues[key].status = name

    def delete(self, key: str) -> None:
        """Delete issue ``key`` (its key no longer exists)."""
        del self.issues[key]

    def move(self, key: str, project: str) -> str:
        """Move issue ``key`` to ``project``: it gets a new key there; the old one still finds it."""
        issue = self.issues.pop(key)
        self.projects.add(project)
        issue.key, issue.project = self._next_key(project), project
        self.issues[issue.key] = issue
        self.moved[key] = issue.key
        return issue.key

    def labelled(self, label: str) -> list[Issue]:
        """The issues carrying ``label``."""
        return [issue for issue in self.issues.values() if label in issue.fields.get("labels", [])]

    def error_body(self, status: int) -> bytes:
        message = "Rate limit exceeded." if status == 429 else HTTPStatus(status).phrase
        return orjson.dumps({"errorMessages": [message], "errors": {}})

    async def intercept(self, request: web.Request) -> web.Response | None:
        answer = await super().intercept(request)
        if answer is not None and answer.status == 429:
            answer.headers.update(self.rate_limit_headers)
        return answer

    # -- handlers ----------------------------------------------------------------------------

    def _create(self, request: web.Request, payload: Any) -> web.Response:
        fields = payload.get("fields") if isinstance(payload, dict) else None
        if not isinstance(fields, dict):
            raise JiraError(400, "Request body is missing the 'fields' object.")
        errors = self._field_errors(fields)
        if errors:
            raise JiraError(400, errors=errors)
        project = fields["project"]["key"]
        issue = Issue(
            id=next(self._ids),
            key=self._next_key(project),
            project=project,
            fields=fields,
            created=next(self._clock),
        )
        self.issues[issue.key] = issue
        return json_response({"id": str(issue.id), "key": issue.key, "self": self._self(issue)}, 201)

    def _field_errors(self, fields: dict[str, Any]) -> dict[str, str]:
        errors: dict[str, str] = {}
        project = fields.get("project")
        if not isinstance(project, dict) or project.get("key") not in self.projects:
            errors["project"] = "valid project is required"
        issuetype = fields.get("issuetype")
        if not isinstance(issuetype, dict) or issuetype.get("name") not in ISSUE_TYPES:
            errors["issuetype"] = "valid issue type is required"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) >= 255:
            errors["summary"] = "Summary must be less than 255 characters."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        for name in ("description", "environment"):
            if name in fields and not valid_adf(fields[name]):
                errors[name] = NOT_ADF
        return errors | self._more_field_errors(fields)

    def _more_field_errors(self, fields: dict[str, Any]) -> dict[str, str]:
        errors: dict[str, str] = {}
        labels = fields.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            errors["labels"] = "data was not an array"
        else:
            for label in labels:
                if not label or any(c.isspace() for c in label) or len(label) > 255:
                    errors["labels"] = f"The label '{label}' contains spaces which is invalid."
        priority = fields.get("priority")
        if priority is not None and (
            not isinstance(priority, dict) or priority.get("name") not in PRIORITIES
        ):
            errors["priority"] = "Specify the Priority (name) in the string format"
        for name in fields:
            if name not in SYSTEM_FIELDS and name not in self.custom_fields:
                errors[name] = (
                    f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
                )
        return errors

    def _search(self, request: web.Request, payload: Any) -> dict[str, Any]:
        query = payload if request.method == "POST" else dict(request.query)
        if not isinstance(query, dict) or not isinstance(query.get("jql"), str):
            raise JiraError(400, BAD_PAYLOAD)
        jql = query["jql"]
        self.searches.append(jql)
        wanted = query.get("fields", ["*navigable"])
        if isinstance(wanted, str):
            wanted = wanted.split(",")
        try:
            limit = max(1, min(int(query.get("maxResults", 50)), 100))
            offset = int(query.get("nextPageToken") or 0)
        except (TypeError, ValueError):
            raise JiraError(400, BAD_PAYLOAD) from None
        found = self.run_jql(jql)
        page = found[offset : offset + limit]
        answer: dict[str, Any] = {
            "issues": [self._render(issue, wanted) for issue in page],
            "isLast": offset + limit >= len(found),
        }
        if offset + limit < len(found):
            answer["nextPageToken"] = str(offset + limit)
        return answer

    def _removed(self, request: web.Request, payload: Any) -> dict[str, Any]:
        raise JiraError(
            410, "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API."
        )

    def _comment(self, request: web.Request, payload: Any) -> web.Response:
        issue = self._issue(request.match_info["key"])
        body = payload.get("body") if isinstance(payload, dict) else None
        if not valid_adf(body):
            raise JiraError(400, errors={"comment": "Comment body is not valid!"})
        comment = {"id": str(next(self._ids)), "body": body, "created": next(self._clock)}
        issue.comments.append(comment)
        return json_response({**comment, "self": f"{self._self(issue)}/comment/{comment['id']}"}, 201)

    def _get_issue(self, request: web.Request, payload: Any) -> dict[str, Any]:
        issue = self._issue(request.match_info["key"])
        return self._render(issue, request.query.get("fields", "*all").split(","))

    def _myself(self, request: web.Request, payload: Any) -> dict[str, Any]:
        email = _basic(request)[0]
        return {"accountId": "5b10ac8d82e05b22cc7d4ef5", "emailAddress": email, "displayName": "SOC bot"}

    def _project(self, request: web.Request, payload: Any) -> dict[str, Any]:
        key = request.match_info["key"]
        if key not in self.projects:
            raise JiraError(404, "No project could be found with key '" + key + "'.")
        return {"id": "10000", "key": key, "name": key}

    # -- JQL ---------------------------------------------------------------------------------

    def run_jql(self, jql: str) -> list[Issue]:
        """The issues matching ``jql`` (the subset in the module docstring), in its order."""
        clauses, order, descending = parse_jql(jql)
        matches = list(self.issues.values())
        for name, values in clauses:
            if name == "project":
                for value in values:
                    if value not in self.projects:
                        raise JiraError(400, f"The value '{value}' does not exist for the field 'project'.")
                matches = [issue for issue in matches if issue.project in values]
            elif name == "labels":
                matches = [issue for issue in matches if set(values) & set(issue.fields.get("labels", []))]
            else:
                keys = {self._resolve(value) for value in values}
                matches = [issue for issue in matches if issue.key in keys]
        sort: Callable[[Issue], Any] = (lambda i: i.id) if order == "key" else (lambda i: i.created)
        return sorted(matches, key=sort, reverse=descending)

    def _resolve(self, key: str) -> str:
        project = key.rsplit("-", 1)[0] if "-" in key else ""
        if project not in self.projects and key not in self.moved:
            raise JiraError(400, f"The issue key '{key}' for field 'key' is invalid.")
        key = self.moved.get(key, key)
        if key not in self.issues:
            raise JiraError(400, f"An issue with key '{key}' does not exist for field 'key'.")
        return key

    # -- plumbing ----------------------------------------------------------------------------

    def _next_key(self, project: str) -> str:
        counter = self._numbers.setdefault(project, itertools.count(1))
        return f"{project}-{next(counter)}"

    def _self(self, issue: Issue) -> str:
        return f"{self.url}/rest/api/3/issue/{issue.id}"

    def _issue(self, key: str) -> Issue:
        issue = self.issues.get(self.moved.get(key, key))
        if issue is None:
            raise JiraError(404, "Issue does not exist or you do not have permission to see it.")
        return issue

    def _render(self, issue: Issue, wanted: Iterable[str]) -> dict[str, Any]:
        everything = {"*all", "*navigable"} & set(wanted)
        fields: dict[str, Any] = {}
        for name in [*issue.fields, "status", "created"] if everything else wanted:
            if name == "status":
                fields["status"] = _status(issue.status)
            elif name == "created":
                fields["created"] = f"2026-01-01T00:00:{issue.created % 60:02d}.000+0000"
            elif name in issue.fields:
                fields[name] = issue.fields[name]
        return {"id": str(issue.id), "key": issue.key, "self": self._self(issue), "fields": fields}

    def _authenticate(self, request: web.Request) -> None:
        email, token = _basic(request)
        if not email or self.credentials.get(email) != token:
            raise JiraError(401, "Client must be authenticated to access this resource.")

    def _guard(self, handle: Callable[[web.Request, Any], Any]) -> Callable[[web.Request], Any]:
        """Script, auth, the JSON body, the handler, Jira's error shape; every request recorded."""

        async def guarded(request: web.Request) -> web.Response:
            scripted = await self.intercept(request)
            if scripted is not None:
                return scripted
            body = await request.read()
            try:
                self._authenticate(request)
                try:
                    payload = orjson.loads(body) if body else None
                except orjson.JSONDecodeError:
                    raise JiraError(400, "Unexpected character in the request body.") from None
                result = handle(request, payload)
                answer = result if isinstance(result, web.Response) else json_response(result)
            except JiraError as exc:
                answer = exc.response()
            await self.record(request, body, answer.status)
            if self._drops and self._drops.popleft() and request.transport is not None:
                request.transport.abort()  # applied, but the answer never leaves
            return answer

        return guarded


def _basic(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return "", ""
    try:
        email, _, token = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return email, token


def _status(name: str) -> dict[str, Any]:
    category = STATUSES[name]
    return {
        "name": name,
        "id": str(list(STATUSES).index(name) + 1),
        "statusCategory": {"key": category, "name": _CATEGORY_NAMES[category], "colorName": "blue-gray"},
    }


# -- ADF -------------------------------------------------------------------------------------------


def valid_adf(doc: Any) -> bool:
    """Whether ``doc`` is an Atlassian Document Jira takes (the node types a ticket body uses).

    A ``doc`` of version 1 whose content is block nodes; paragraphs and headings hold inline nodes;
    a text node has a non-empty text without control characters (tab and line feed aside) and only
    known marks; a hard break has no content.
    """
    if not isinstance(doc, dict) or doc.get("type") != "doc" or doc.get("version") != 1:
        return False
    if set(doc) - {"type", "version", "content"}:
        return False
    content = doc.get("content")
    return isinstance(content, list) and all(_valid_block(node) for node in content)


def _valid_block(node: Any) -> bool:
    if not isinstance(node, dict) or node.get("type") not in _BLOCKS:
        return False
    kind, content = node["type"], node.get("content", [])
    if not isinstance(content, list) or set(node) - {"type", "content", "attrs"}:
        return False
    if kind in ("paragraph", "heading", "codeBlock"):
        return all(_valid_inline(child) for child in content)
    if kind in ("bulletList", "orderedList"):
        return bool(content) and all(
            isinstance(item, dict)
            and item.get("type") == "listItem"
            and all(_valid_block(child) for child in item.get("content", []))
            for item in content
        )
    if kind == "blockquote":
        return all(_valid_block(child) for child in content)
    return not content  # rule


def _valid_inline(node: Any) -> bool:
    if not isinstance(node, dict) or node.get("type") not in _INLINES:
        return False
    if node["type"] == "hardBreak":
        return set(node) <= {"type", "attrs"}
    if node["type"] != "text":
        return True
    text, marks = node.get("text"), node.get("marks", [])
    if not isinstance(text, str) or not text or _CONTROL.search(text):
        return False
    if set(node) - {"type", "text", "marks"} or not isinstance(marks, list):
        return False
    return all(isinstance(mark, dict) and mark.get("type") in _MARKS for mark in marks)


# -- JQL -------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<punct>[(),=])|(?P<word>[A-Za-z0-9_.\-]+))""",
    re.DOTALL,
)
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "'": "'", "\\": "\\", " ": " "}
_FIELDS = {"project": "project", "labels": "labels", "key": "key", "issue": "key", "issuekey": "key"}


def parse_jql(jql: str) -> tuple[list[tuple[str, list[str]]], str, bool]:
    """``(clauses, order field, descending)`` of a query in the subset the fake understands."""
    tokens = deque(_tokens(jql))
    clauses: list[tuple[str, list[str]]] = []
    while tokens:
        kind, text = _take(tokens)
        if kind == "word" and text.lower() == "order":
            return clauses, *_order(tokens)
        if clauses:
            if text.lower() != "and":
                raise JiraError(400, f"Error in the JQL Query: Expecting 'AND' but got '{text}'.")
            kind, text = _take(tokens)
        name = _FIELDS.get(text.lower())
        if kind != "word" or name is None:
            raise JiraError(400, f"Field '{text}' does not exist or you do not have permission to view it.")
        clauses.append((name, _operand(tokens)))
    return clauses, "created", True


def _take(tokens: deque[tuple[str, str]]) -> tuple[str, str]:
    if not tokens:
        raise JiraError(400, "Error in the JQL Query: Expecting more of the query.")
    return tokens.popleft()


def _order(tokens: deque[tuple[str, str]]) -> tuple[str, bool]:
    if _take(tokens)[1].lower() != "by":
        raise JiraError(400, "Error in the JQL Query: expecting 'by'.")
    order = _take(tokens)[1].lower()
    descending = _take(tokens)[1].lower() == "desc" if tokens else True
    if tokens or order not in ("created", "key"):
        raise JiraError(400, "Error in the JQL Query: unsupported ORDER BY.")
    return order, descending


def _operand(tokens: deque[tuple[str, str]]) -> list[str]:
    operator = _take(tokens)[1].lower()
    if operator == "=":
        return [_value(_take(tokens))]
    if operator != "in":
        raise JiraError(400, f"Error in the JQL Query: the operator '{operator}' is not supported here.")
    if _take(tokens)[1] != "(":
        raise JiraError(400, "Error in the JQL Query: Expecting '(' after 'in'.")
    values = [_value(_take(tokens))]
    while (separator := _take(tokens)[1]) == ",":
        values.append(_value(_take(tokens)))
    if separator != ")":
        raise JiraError(400, "Error in the JQL Query: Expecting ')'.")
    return values


def _tokens(jql: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(jql):
        if not jql[position:].strip():
            break
        match = _TOKEN.match(jql, position)
        if match is None or match.end() == position:
            raise JiraError(400, f"Error in the JQL Query: The character at position {position} is reserved.")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _value(token: tuple[str, str]) -> str:
    kind, text = token
    if kind == "word":
        return text
    if kind != "string":
        raise JiraError(400, f"Error in the JQL Query: Expecting a value but got '{text}'.")
    body, out, escaping = text[1:-1], [], False
    for char in body:
        if escaping:
            if char not in _UNESCAPE:
                raise JiraError(400, f"Error in the JQL Query: '\\{char}' is an illegal escape sequence.")
            out.append(_UNESCAPE[char])
            escaping = False
        elif char == "\\":
            escaping = True
        else:
            out.append(char)
    return "".join(out)
