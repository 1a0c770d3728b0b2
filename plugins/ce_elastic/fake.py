"""A fake Elasticsearch cluster: ``GET /`` and the ``_bulk`` API, as documented.

- Security: with no ``users`` and no ``api_keys`` the cluster is open; otherwise every request needs
  ``Authorization: Basic …`` or ``ApiKey base64(id:key)``; failures are 401 ``security_exception``
  with ``WWW-Authenticate``; users in ``read_only`` get 403 on ``_bulk``.
- ``POST /_bulk`` and ``POST /{index}/_bulk``: NDJSON (``application/x-ndjson`` or ``application/json``,
  else 406), terminated by a newline (else 400), gzip accepted, ``Content-Length`` over
  ``max_content_length`` → 413. Actions ``create`` and ``index``; ``create`` of an existing ``_id``
  → item 409 ``version_conflict_engine_exception``; a document with an ``_id`` field, bad JSON, or
  a value that does not fit a mapped ``field_types`` type → item 400 ``document_parsing_exception``;
  an invalid index name → 400 ``invalid_index_name_exception``; a missing index when
  ``auto_create_index`` is off → 404 ``index_not_found_exception``. The answer is 200 with
  ``errors`` and one ``items[]`` entry per action.
- Scripting: :meth:`FakeElasticsearch.reject_items` makes the next N matching items fail with 429
  ``es_rejected_execution_exception`` (or another status), as a busy write queue does; documents
  ``refuse_when`` returns True for are refused for good (400 ``document_parsing_exception``).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

_INVALID_INDEX = re.compile(r'[\\/*?"<>| ,#:]')
_ITEM_ERRORS = {
    429: "es_rejected_execution_exception",
    500: "exception",
    503: "unavailable_shards_exception",
}


def es_error(status: int, kind: str, reason: str, **extra: Any) -> dict[str, Any]:
    """Elasticsearch's error body: ``{"error": {"root_cause", "type", "reason"}, "status"}``."""
    cause = {"type": kind, "reason": reason, **extra}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


@dataclass
class _ItemRejection:
    remaining: int
    status: int
    when: Callable[[str, str | None], bool] | None


class FakeElasticsearch(FakeHttpServer):
    """One fake cluster; ``documents[index][_id]`` holds what was indexed (decoded sources)."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        api_keys: Mapping[str, str] | None = None,
        read_only: Iterable[str] = (),
        max_content_length: int = 100 * 1024 * 1024,
        auto_create_index: bool = True,
        field_types: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.users = dict(users or {})
        self.api_keys = dict(api_keys or {})
        self.read_only = set(read_only)
        self.max_content_length = max_content_length
        self.auto_create_index = auto_create_index
        self.field_types = dict(field_types or {"timestamp": "long"})
        self.documents: dict[str, dict[str, dict[str, Any]]] = {}
        self.item_attempts: list[tuple[str, str | None]] = []
        self._rejections: list[_ItemRejection] = []
        self._auto_id = 0

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.get("/", self._info),
            web.post("/_bulk", self._bulk),
            web.put("/_bulk", self._bulk),
            web.post("/{index}/_bulk", self._bulk),
            web.put("/{index}/_bulk", self._bulk),
        ]

    def create_index(self, name: str) -> None:
        """Create an (empty) index, for a cluster that does not create them on the fly."""
        self.documents.setdefault(name, {})

    def reject_items(
        self, count: int, status: int = 429, *, when: Callable[[str, str | None], bool] | None = None
    ) -> None:
        """Fail the next ``count`` items (those ``when(index, _id)`` accepts) with ``status``."""
        self._rejections.append(_ItemRejection(count, status, when))

    @property
    def all_documents(self) -> dict[str, dict[str, Any]]:
        """Every indexed document by ``_id``, whatever its index."""
        return {doc_id: source for docs in self.documents.values() for doc_id, source in docs.items()}

    def refuse_credentials(self) -> None:
        """Every user's password and every API key change (security stays on): requests get 401."""
        self.users = {"elastic": secrets.token_hex(16)}
        self.api_keys = {}

    def error_body(self, status: int) -> bytes:
        kind = {429: "es_rejected_execution_exception", 503: "cluster_block_exception"}.get(
            status, "exception"
        )
        return orjson.dumps(es_error(status, kind, f"scripted failure {status}"))

    # -- security ----------------------------------------------------------------------------

    def _principal(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """Who is asking (None when security is off), or the 401 to answer."""
        if not self.users and not self.api_keys:
            return None, None
        path = request.path
        challenge = {"WWW-Authenticate": 'Basic realm="security" charset="UTF-8", ApiKey'}
        header = request.headers.get("Authorization")
        if header is None:
            reason = f"missing authentication credentials for REST request [{path}]"
            return None, json_response(es_error(401, "security_exception", reason), 401, challenge)
        scheme, _, value = header.partition(" ")
        try:
            username, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username, secret = "", ""
        if scheme == "Basic" and self.users.get(username) == secret and username:
            return username, None
        if scheme == "ApiKey" and self.api_keys.get(username) == secret and username:
            return f"api_key:{username}", None
        if scheme == "Basic":
            reason = f"unable to authenticate user [{username}] for REST request [{path}]"
        else:
            reason = "unable to authenticate with provided credentials and anonymous access is not allowed"
        return None, json_response(es_error(401, "security_exception", reason), 401, challenge)

    # -- endpoints ---------------------------------------------------------------------------

    async def _info(self, request: web.Request) -> web.Response:
        _, refused = self._principal(request)
        if refused is not None:
            return refused
        return json_response(
            {
                "name": "fake-node-1",
                "cluster_name": "fake-cluster",
                "cluster_uuid": "f4k3-c1u5t3r",
                "version": {"number": "8.15.0", "build_flavor": "default", "lucene_version": "9.11.1"},
                "tagline": "You Know, for Search",
            }
        )

    async def _bulk(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        answer, body = await self._bulk_answer(request)
        await self.record(request, body, answer.status)
        return answer

    def _refusal(self, request: web.Request) -> web.Response | None:
        """What a cluster answers before reading the body: security, content type, size."""
        principal, refused = self._principal(request)
        if refused is not None:
            return refused
        if principal in self.read_only:
            reason = f"action [indices:data/write/bulk] is unauthorized for user [{principal}]"
            return json_response(es_error(403, "security_exception", reason), 403)
        if request.content_type not in ("application/x-ndjson", "application/json"):
            error = {"error": f"Content-Type header [{request.content_type}] is not supported", "status": 406}
            return json_response(error, 406)
        if (request.content_length or 0) > self.max_content_length:
            return web.Response(status=413)
        return None

    async def _bulk_answer(self, request: web.Request) -> tuple[web.Response, bytes]:
        refused = self._refusal(request)
        if refused is not None:
            return refused, b""
        body = await request.read()
        try:
            items = self._apply(body, request.match_info.get("index"))
        except _BadRequestError as exc:
            return json_response(es_error(400, exc.kind, str(exc)), 400), body
        errors = any(next(iter(item.values()))["status"] >= 300 for item in items)
        return json_response({"took": 1, "errors": errors, "items": items}), body

    def _apply(self, body: bytes, default_index: str | None) -> list[dict[str, Any]]:
        if not body:
            raise _BadRequestError("parse_exception", "request body is required")
        if not body.endswith(b"\n"):
            reason = "The bulk request must be terminated by a newline [\\n]"
            raise _BadRequestError("illegal_argument_exception", reason)
        lines = body.split(b"\n")[:-1]
        items: list[dict[str, Any]] = []
        position = 0
        while position < len(lines):
            try:
                action_line = orjson.loads(lines[position])
            except orjson.JSONDecodeError as exc:
                raise _BadRequestError("x_content_parse_exception", f"[{position + 1}:1] {exc}") from exc
            if not isinstance(action_line, dict) or len(action_line) != 1:
                raise _BadRequestError(
                    "illegal_argument_exception", f"Malformed action/metadata line [{position + 1}]"
                )
            action, meta = next(iter(action_line.items()))
            if action not in ("create", "index") or not isinstance(meta, dict):
                raise _BadRequestError(
                    "illegal_argument_exception",
                    f"Malformed action/metadata line [{position + 1}], expected one of [create, index] "
                    f"(this fake) but found [{action}]",
                )
            if position + 1 >= len(lines):
                raise _BadRequestError(
                    "illegal_argument_exception", "The bulk request must be terminated by a newline"
                )
            index = meta.get("_index") or default_index
            if not index:
                raise _BadRequestError(
                    "action_request_validation_exception", "Validation Failed: 1: index is missing;"
                )
            doc_id = meta.get("_id")
            items.append({action: self._item(action, str(index), doc_id, lines[position + 1])})
            position += 2
        return items

    def _item(self, action: str, index: str, doc_id: str | None, source_line: bytes) -> dict[str, Any]:
        self.item_attempts.append((index, doc_id))
        head: dict[str, Any] = {"_index": index, "_id": doc_id}
        for rejection in self._rejections:
            if rejection.remaining > 0 and (rejection.when is None or rejection.when(index, doc_id)):
                rejection.remaining -= 1
                status = rejection.status
                kind = _ITEM_ERRORS.get(status, "exception")
                return {
                    **head,
                    "status": status,
                    "error": {"type": kind, "reason": f"rejected execution ({status})"},
                }
        if index != index.lower() or _INVALID_INDEX.search(index) or index[0] in "-_+":
            reason = f"Invalid index name [{index}], must be lowercase"
            return {
                **head,
                "status": 400,
                "error": {"type": "invalid_index_name_exception", "reason": reason},
            }
        if index not in self.documents and not self.auto_create_index:
            reason = f"no such index [{index}]"
            return {**head, "status": 404, "error": {"type": "index_not_found_exception", "reason": reason}}
        problem = self._parse_problem(source_line, doc_id)
        if problem is None and self.refuses(orjson.loads(source_line)):
            problem = {"type": "document_parsing_exception", "reason": f"[1:1] document '{doc_id}' refused"}
        if problem is not None:
            return {**head, "status": 400, "error": problem}
        docs = self.documents.setdefault(index, {})
        if doc_id is None:
            self._auto_id += 1
            doc_id = f"auto-{self._auto_id}"
            head["_id"] = doc_id
        if doc_id in docs and action == "create":
            reason = f"[{doc_id}]: version conflict, document already exists (current version [1])"
            return {
                **head,
                "status": 409,
                "error": {"type": "version_conflict_engine_exception", "reason": reason},
            }
        existed = doc_id in docs
        docs[doc_id] = orjson.loads(source_line)
        return {
            **head,
            "_version": 2 if existed else 1,
            "result": "updated" if existed else "created",
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "status": 200 if existed else 201,
        }

    def _parse_problem(self, source_line: bytes, doc_id: str | None) -> dict[str, Any] | None:
        """The ``document_parsing_exception`` a real cluster would give this source, if any."""
        try:
            source = orjson.loads(source_line)
        except orjson.JSONDecodeError as exc:
            return {"type": "document_parsing_exception", "reason": f"[1:1] failed to parse: {exc}"}
        if not isinstance(source, dict):
            return {"type": "document_parsing_exception", "reason": "[1:1] failed to parse: not an object"}
        if "_id" in source:
            return {
                "type": "document_parsing_exception",
                "reason": f"[1:8] failed to parse field [_id] of type [_id] in document with id '{doc_id}'",
                "caused_by": {
                    "type": "document_parsing_exception",
                    "reason": "Field [_id] is a metadata field and cannot be added inside a document. "
                    "Use the index API request parameters.",
                },
            }
        for field, mapped in self.field_types.items():
            value = _lookup(source, field)
            if value is not None and mapped == "long" and not _is_long(value):
                return {
                    "type": "document_parsing_exception",
                    "reason": f"[1:2] failed to parse field [{field}] of type [long] in document with id "
                    f"'{doc_id}'. Preview of field's value: '{value}'",
                }
        return None


class _BadRequestError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _lookup(source: dict[str, Any], dotted: str) -> Any:
    value: Any = source
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _is_long(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, str):
        return value.strip().lstrip("-").isdigit()
    return False
