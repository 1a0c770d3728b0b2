"""POST (or PUT) batches of records as JSON to any HTTPS endpoint.

The body is a JSON array of records, or NDJSON. A record formatted as JSON is embedded as the
object itself (its bytes spliced in, never re-parsed); a CEF or LEEF line is wrapped as
``{"message", "id", "timestamp", "kind", "subtype"}``. Batches larger than ``max_request_bytes``
are split into several requests (``parallel_requests`` of them under way at once, 4 unless set); a
413 answer splits the request in halves, down to the one
record the endpoint cannot take, which is refused alone (as is a record larger than
``max_request_bytes`` on its own). A request refused for good (a 400) refuses its own records only.

A webhook has no idempotency key: so that a batch retried after a failure half-way does not send
again the requests the endpoint took, the sink remembers which records of the batch were
delivered until it succeeds (the core retries with the very same records).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    HttpOptions,
    HttpSink,
    RequestTooLargeError,
    ResumableSender,
    basic,
    bearer,
    make_session,
    prepare_body,
    raise_for_status,
    transport_error,
)
from ce_daemon.plugin import Health, OutBatch, OutRecord, PluginContext, PluginOptions, SendResult

_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


class BasicAuth(PluginOptions):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str
    password: SecretStr


class BearerAuth(PluginOptions):
    """``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token: SecretStr


class HeaderAuth(PluginOptions):
    """A secret in a header of your choice (``X-API-Key: …``)."""

    type: Literal["header"]
    name: Annotated[str, Field(pattern=_HEADER_NAME)]
    value: SecretStr


class WebhookOptions(HttpOptions):
    """Options of the ``webhook`` sink."""

    method: Literal["POST", "PUT"] = "POST"
    body: Literal["json", "ndjson"] = "json"
    """``json``: one JSON array per request; ``ndjson``: one JSON object per line."""
    auth: Annotated[BasicAuth | BearerAuth | HeaderAuth, Field(discriminator="type")] | None = None
    gzip: bool = False
    """Compress request bodies (``Content-Encoding: gzip``); only if the endpoint accepts it."""
    max_request_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 1_000_000
    """The largest body (before compression) one request may carry."""
    parallel_requests: Annotated[int, Field(ge=1, le=32)] = 4
    """Requests of one batch under way at once (a batch over ``max_request_bytes`` takes several): they
    may then arrive in any order; 1 sends them one after another."""
    health_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Checked with GET at start and reload (2xx: healthy); without it, the URL is probed with HEAD."""


class WebhookSink(HttpSink[WebhookOptions]):
    """The ``webhook`` log sink."""

    api_version = 1

    def __init__(self, options: WebhookOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        if self.options.body == "json":
            self._content_type = "application/json"
        else:
            self._content_type = "application/x-ndjson"
        self._sender = ResumableSender()

    def new_session(self) -> aiohttp.ClientSession:
        auth = self.options.auth
        headers: dict[str, str] = {}
        if isinstance(auth, BasicAuth):
            headers["Authorization"] = basic(auth.username, auth.password)
        elif isinstance(auth, BearerAuth):
            headers["Authorization"] = bearer(auth.token)
        elif isinstance(auth, HeaderAuth):
            headers[auth.name] = auth.value.get_secret_value()
        return make_session(self.options, self.context.base_dir, **headers)

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> Health:
        """GET ``health_url`` when given (2xx: healthy); else HEAD the URL (any answer but 401/403)."""
        session = self.session()
        probe = self.options.health_url
        method, url = ("GET", probe) if probe else ("HEAD", self.options.url)
        try:
            async with session.request(method, url, allow_redirects=False) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Health(ok=False, detail=str(transport_error(exc, url)))
        if status in (401, 403):
            return Health(ok=False, detail=f"{url} refused our credentials (HTTP {status}): check `auth`")
        if probe and not 200 <= status < 300:
            return Health(ok=False, detail=f"health_url {probe} answered HTTP {status}")
        return Health(ok=True, detail=f"{url} answered HTTP {status}")

    # -- sending -----------------------------------------------------------------------------

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        json_array = self.options.body == "json"
        records = OutBatch.of(batch)
        raw = records.formats.count("json") == len(records)  # JSON lines go as they are: no _item
        return await self._sender.send(
            records,
            None if raw else _item,
            lambda items: self._request(self._body(items)),
            limit=self.options.max_request_bytes,
            overhead=2 if json_array else 1,  # the brackets, or the last newline
            separator=1,  # the commas, or the newlines
            oversize=lambda size: f"record of {size} bytes exceeds max_request_bytes",
            on_split=lambda part: self.log.info("webhook.request_split", records=len(part)),
            concurrency=self.options.parallel_requests,
        )

    def _body(self, items: list[bytes]) -> bytes:
        if self.options.body == "json":
            return b"[" + b",".join(items) + b"]"
        return b"\n".join([*items, b""])  # the last newline too, in one copy of the lines

    async def _request(self, body: bytes) -> None:
        """Send one body; any failure raises (a 413 as RequestTooLargeError, for the caller to split)."""
        session = self.session()
        body, headers = await prepare_body(body, self._content_type, compress=self.options.gzip)
        url = self.options.url
        try:
            async with session.request(
                self.options.method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if response.status == 413:
                    raise RequestTooLargeError(f"{url} refused {len(body)} bytes as too large (HTTP 413)")
                await raise_for_status(response, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, url) from exc


def _item(record: OutRecord) -> bytes:
    if record.format == "json":
        return record.data
    return orjson.dumps(
        {
            "message": record.data.decode("utf-8", "replace"),
            "id": record.id,
            "timestamp": record.timestamp,
            "kind": record.kind,
            "subtype": record.subtype,
        }
    )
