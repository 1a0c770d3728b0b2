"""POST (or PUT) batches of records as JSON to any HTTPS endpoint.

The body is a JSON array of records, or NDJSON. A record formatted as JSON is embedded as the
object itself (its bytes spliced in, never re-parsed); a CEF or LEEF line is wrapped as
``{"message", "id", "timestamp", "kind", "subtype"}``. Batches larger than ``max_request_bytes``
are split into several requests; a 413 answer splits the request in halves, down to the one
record the endpoint cannot take, which is refused alone.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import Sequence
from typing import Annotated, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.errors import ComponentConfigError
from ce_daemon.http import HttpOptions, bearer, make_session, raise_for_status, transport_error
from ce_daemon.plugin import Health, LogSink, OutRecord, PluginContext, PluginOptions, SendResult

_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
_GZIP_IN_THREAD = 256 * 1024
"""Bodies larger than this are compressed off the event loop."""


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
    max_request_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    """The largest body (before compression) one request may carry."""
    health_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Checked with GET at start and reload (2xx: healthy); without it, the URL is probed with HEAD."""


class WebhookSink(LogSink):
    """The ``webhook`` log sink."""

    Options = WebhookOptions
    options: WebhookOptions

    def __init__(self, options: PluginOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self._session: aiohttp.ClientSession | None = None
        if self.options.body == "json":
            self._content_type = "application/json"
        else:
            self._content_type = "application/x-ndjson"

    def _auth_headers(self) -> dict[str, str]:
        auth = self.options.auth
        if isinstance(auth, BasicAuth):
            pair = f"{auth.username}:{auth.password.get_secret_value()}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if isinstance(auth, BearerAuth):
            return {"Authorization": bearer(auth.token)}
        if isinstance(auth, HeaderAuth):
            return {auth.name: auth.value.get_secret_value()}
        return {}

    async def open(self) -> None:
        if self._session is None:
            self._session = make_session(self.options, self.context.base_dir, **self._auth_headers())

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            await self.open()
        assert self._session is not None
        return self._session

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> Health:
        """GET ``health_url`` when given (2xx: healthy); else HEAD the URL (any answer but 401/403)."""
        session = await self._client()
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
        items = [_item(record) for record in batch]
        rejected: list[tuple[int, str]] = []
        for start, end in _chunks(items, self.options.max_request_bytes):
            await self._post(items, start, end, rejected)
        return SendResult(rejected=rejected)

    async def _post(self, items: list[bytes], start: int, end: int, rejected: list[tuple[int, str]]) -> None:
        """Deliver ``items[start:end]`` in one request, halving it while the endpoint says 413."""
        status = await self._request(self._body(items[start:end]))
        if status != 413:
            return
        if end - start == 1:
            reason = f"the endpoint refused a record of {len(items[start])} bytes as too large (HTTP 413)"
            rejected.append((start, reason))
            return
        self.log.info("webhook.request_split", records=end - start)
        middle = (start + end) // 2
        await self._post(items, start, middle, rejected)
        await self._post(items, middle, end, rejected)

    def _body(self, items: list[bytes]) -> bytes:
        if self.options.body == "json":
            return b"[" + b",".join(items) + b"]"
        return b"\n".join(items) + b"\n"

    async def _request(self, body: bytes) -> int:
        """Send one body; 413 is returned for the caller to split, every other failure raises."""
        session = await self._client()
        headers = {"Content-Type": self._content_type}
        if self.options.gzip:
            headers["Content-Encoding"] = "gzip"
            body = await _gzip(body)
        url = self.options.url
        try:
            async with session.request(
                self.options.method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if response.status == 413:
                    return 413
                if 300 <= response.status < 400:
                    location = response.headers.get("Location", "?")
                    raise ComponentConfigError(
                        f"{url} redirects (HTTP {response.status}) to {location}: configure the final URL"
                    )
                await raise_for_status(response, url)
                return response.status
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


def _chunks(items: Sequence[bytes], limit: int) -> list[tuple[int, int]]:
    """(start, end) ranges of ``items`` whose body stays within ``limit`` (a lone big item alone).

    Each item counts one byte more (the "," of an array or the newline of NDJSON), plus the brackets.
    """
    ranges: list[tuple[int, int]] = []
    start, size = 0, 2
    for index, item in enumerate(items):
        grown = size + len(item) + 1
        if index > start and grown > limit:
            ranges.append((start, index))
            start, grown = index, 2 + len(item) + 1
        size = grown
    if start < len(items):
        ranges.append((start, len(items)))
    return ranges


async def _gzip(body: bytes) -> bytes:
    if len(body) < _GZIP_IN_THREAD:
        return gzip.compress(body, 6, mtime=0)
    return await asyncio.to_thread(gzip.compress, body, 6, mtime=0)
