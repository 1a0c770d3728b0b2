"""Index batches into Elasticsearch or OpenSearch with the ``_bulk`` API.

Every record is a ``create`` action whose ``_id`` is the Netskope ``_id``, so sending a batch again
never duplicates: an item answered 409 ``version_conflict_engine_exception`` is already indexed and
counts as delivered. The body is NDJSON (final newline included), gzipped unless switched off, and
split into requests of at most ``max_request_bytes`` (a 413 halves a request).

A 200 answer may still carry per-item failures: 429 and 5xx items are retried here, alone, a few
times with a growing pause (Elasticsearch gives no ``Retry-After`` for items); if some still fail
the whole batch is reported transient (safe to resend, thanks to ``create`` + ``_id``). Items
refused for good (400 mapping or parsing errors) are rejected with ``error.type: error.reason``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from ce_daemon.http import (
    HttpOptions,
    HttpSink,
    RequestTooLargeError,
    basic,
    excerpt,
    json_object,
    make_session,
    prepare_body,
    read_body,
    send_halving,
    split_by_size,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    AuthError,
    Backoff,
    ComponentConfigError,
    Health,
    OutRecord,
    PluginContext,
    SendResult,
    TransientError,
)
from ce_elastic.documents import IndexNamer, document

_ALREADY_THERE = "version_conflict_engine_exception"


class ElasticsearchOptions(HttpOptions):
    """Options of the ``elasticsearch`` sink; ``url`` is the cluster's (``https://es:9200``)."""

    index: str = "netskope-{kind}-%Y.%m.%d"
    """Index name: ``{kind}`` (alerts/events), ``{subtype}``, and strftime codes of the record's UTC time."""
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    """An API key as Elasticsearch returns it encoded (base64 of ``id:key``)."""
    pipeline: str | None = None
    """An ingest pipeline to run documents through."""
    timestamp_field: str | None = "@timestamp"
    """Add the record time (ISO 8601) under this name, unless the document has it (None: don't)."""
    gzip: bool = True
    max_request_bytes: Annotated[int, Field(ge=4096, le=1024**3)] = 10_000_000
    """The largest body (before compression) of one request; keep it under ``http.max_content_length``."""
    item_retries: Annotated[int, Field(ge=0, le=10)] = 3
    """How many times items refused with 429/5xx are retried before the batch is reported transient."""
    item_retry_delay: Annotated[float, Field(gt=0, le=60)] = 0.5
    """The longest first pause before retrying items; the bound doubles each time (full jitter)."""

    @field_validator("index")
    @classmethod
    def _index_pattern(cls, value: str) -> str:
        return IndexNamer.check(value)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> ElasticsearchOptions:
        if self.api_key is not None and (self.username is not None or self.password is not None):
            raise ValueError("give either `api_key` or `username`/`password`, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("`username` and `password` go together")
        return self


class ElasticsearchSink(HttpSink[ElasticsearchOptions]):
    """The ``elasticsearch`` log sink."""

    api_version = 1

    def __init__(self, options: ElasticsearchOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self._namer = IndexNamer(self.options.index)
        base = self.options.url.rstrip("/")
        self._root_url = base + "/"
        self._bulk_url = base + "/_bulk"
        self._bulk_params = {"pipeline": self.options.pipeline} if self.options.pipeline else None

    def new_session(self) -> aiohttp.ClientSession:
        opts = self.options
        headers: dict[str, str] = {}
        if opts.api_key is not None:
            headers["Authorization"] = f"ApiKey {opts.api_key.get_secret_value()}"
        elif opts.username is not None and opts.password is not None:
            headers["Authorization"] = basic(opts.username, opts.password)
        return make_session(opts, self.context.base_dir, **headers)

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> Health:
        """``GET /`` with our credentials: 200 names the cluster; 401 means the credentials are wrong.

        A 403 still proves the credentials: a key that may only write has no right to read cluster info.
        """
        session = self.session()
        try:
            async with session.get(self._root_url, allow_redirects=False) as response:
                status = response.status
                answer = await _answer(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Health(ok=False, detail=str(transport_error(exc, self._root_url)))
        if status == 200:
            version = _mapping(answer.get("version"))
            product = version.get("distribution") or "elasticsearch"
            return Health(
                ok=True,
                detail=f"{product} {version.get('number', '?')}, cluster {answer.get('cluster_name', '?')}",
            )
        if status == 403:
            return Health(ok=True, detail="credentials accepted (cluster info not permitted to them)")
        if status == 401:
            return Health(ok=False, detail=f"credentials refused: {_describe(status, answer)}")
        return Health(ok=False, detail=f"{self._root_url} answered {_describe(status, answer)}")

    # -- sending -----------------------------------------------------------------------------

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        rejected: list[tuple[int, str]] = []
        entries: list[tuple[int, bytes]] = []
        field = self.options.timestamp_field
        name = self._namer.name
        for index, record in enumerate(batch):
            try:
                source = document(record, field)
            except ValueError as exc:
                rejected.append((index, f"not a JSON document: {exc}"))
                continue
            action = {"_index": name(record.kind, record.subtype, record.timestamp)}
            if record.id:
                action["_id"] = record.id
            entries.append((index, orjson.dumps({"create": action}) + b"\n" + source + b"\n"))
        attempt = 0
        while entries:
            outcome = await self._bulk(entries)
            retry: list[tuple[int, bytes]] = []
            failures: list[str] = []
            for entry, item in zip(entries, outcome, strict=True):
                verdict = self._verdict(item)
                if verdict == "retry":
                    retry.append(entry)
                    failures.append(_item_reason(item))
                elif verdict is not None:
                    rejected.append((entry[0], verdict))
            if not retry:
                break
            attempt += 1
            if attempt > self.options.item_retries:
                raise TransientError(
                    f"Elasticsearch still refuses {len(retry)} item(s) after {attempt - 1} retries: "
                    + failures[0]
                )
            delay = Backoff(first=self.options.item_retry_delay, cap=math.inf).delay(attempt)
            self.log.info("elasticsearch.items_retried", items=len(retry), attempt=attempt, first=failures[0])
            await asyncio.sleep(delay)  # no Retry-After for items: back off before asking again
            entries = retry
        return SendResult(rejected=sorted(rejected))

    def _verdict(self, item: dict[str, Any]) -> str | None:
        """None: delivered; "retry": try again; any other text: refused for good, with this reason."""
        status = item.get("status")
        if not isinstance(status, int):
            return "retry"
        if 200 <= status < 300:
            return None
        error = _mapping(item.get("error"))
        if status == 409 and error.get("type") == _ALREADY_THERE:
            return None
        if status == 429 or status >= 500:
            return "retry"
        if status in (401, 403):
            raise AuthError(f"Elasticsearch refused to index: {_item_reason(item)}")
        if status == 404 and error.get("type") == "index_not_found_exception":
            raise ComponentConfigError(
                f"Elasticsearch: {_item_reason(item)}; "
                "create the index (or its template) or allow its automatic creation"
            )
        return _item_reason(item)

    async def _bulk(self, entries: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        """One result per entry, in order; entries are split over as many requests as the size cap needs."""
        results: list[dict[str, Any]] = [{} for _ in entries]

        async def post(part: range) -> None:
            results[part.start : part.stop] = await self._post(entries[part.start : part.stop])

        parts = split_by_size([len(lines) for _, lines in entries], self.options.max_request_bytes)
        too_large = await send_halving(
            parts, post, on_split=lambda part: self.log.info("elasticsearch.request_split", items=len(part))
        )
        for position, _ in too_large:
            size = len(entries[position][1])
            reason = f"request_too_large: a document of {size} bytes is over the cluster's limit (413)"
            results[position] = {"status": 413, "error": {"type": "request_too_large", "reason": reason}}
        return results

    async def _post(self, entries: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        body = b"".join(lines for _, lines in entries)
        status, answer, headers = await self._request(body)
        if status == 413:
            raise RequestTooLargeError(_describe(status, answer))
        if not 200 <= status < 300:
            message = f"Elasticsearch answered {_describe(status, answer)}"
            raise status_error(status, message, headers, "Elasticsearch")
        items = answer.get("items")
        if not isinstance(items, list) or len(items) != len(entries):
            raise TransientError("Elasticsearch answered _bulk without one item per action")
        return [_item_result(item) for item in items]

    async def _request(self, body: bytes) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        session = self.session()
        body, headers = await prepare_body(body, "application/x-ndjson", compress=self.options.gzip)
        try:
            async with session.post(
                self._bulk_url, data=body, headers=headers, params=self._bulk_params, allow_redirects=False
            ) as response:
                return response.status, await _answer(response), response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, self._bulk_url) from exc


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _item_result(item: object) -> dict[str, Any]:
    """The body of one ``items[]`` entry (``{"create": {...}}`` → ``{...}``)."""
    if isinstance(item, dict) and len(item) == 1:
        inner = next(iter(item.values()))
        if isinstance(inner, dict):
            return inner
    return {}


def _item_reason(item: dict[str, Any]) -> str:
    error = item.get("error")
    if isinstance(error, dict):
        reason = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict) and cause.get("reason"):
            reason += f" (caused by {cause.get('type', 'error')}: {cause['reason']})"
        return reason
    return f"HTTP {item.get('status', '?')}: {error or 'no reason given'}"


async def _answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await read_body(response, "Elasticsearch")
    answer = json_object(body)
    return answer if answer is not None else {"error": excerpt(body, 200)}


def _describe(status: int, answer: dict[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, dict):
        return f"HTTP {status}: {error.get('type', 'error')}: {error.get('reason', '')}"
    return f"HTTP {status}" + (f": {error}" if error else "")
