"""The ``azure_logs_ingestion`` log sink: Microsoft Sentinel / Log Analytics through a DCR.

``POST {dce}/dataCollectionRules/{dcr_immutable_id}/streams/{stream_name}?api-version=2023-01-01``
with a gzip JSON array, an Entra ID bearer token (client credentials), success 204. The API takes
at most 1 MB per call, compressed or not, so each call's uncompressed array is kept under
``max_request_bytes`` and a batch is split into as many calls as needed; a 413 splits further.

Log Analytics has no idempotency key. So that a batch retried after a partial failure does not
send again the calls already accepted, the sink remembers which rows of the batch were delivered
until the batch succeeds (the core retries with the very same records).
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Annotated

import aiohttp
import orjson
import structlog
from pydantic import Field, SecretStr

from ce_azure.entra import EntraToken
from ce_azure.rows import RowEncoder, json_array, pack
from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.http import RETRYABLE, HttpOptions, TlsOptions, make_session, retry_after, transport_error
from ce_daemon.plugin import Health, LogSink, OutRecord, PluginContext, PluginOptions, SendResult

log = structlog.get_logger(__name__)

API_VERSION = "2023-01-01"
API_LIMIT = 1_048_576  # "Maximum allowed content length: 1048576 bytes (1 MB)"
_THREAD_MIN_BYTES = 128 * 1024  # gzip larger bodies off the event loop
_Column = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,44}$")]


class AzureLogsIngestionOptions(PluginOptions):
    """Options of the ``azure_logs_ingestion`` sink."""

    dce: Annotated[str, Field(pattern=r"^https?://[^/?#]+/?$")]
    """The data collection endpoint (or the DCR's own logs ingestion endpoint)."""
    dcr_immutable_id: Annotated[str, Field(pattern=r"^dcr-[0-9A-Za-z]+$")]
    stream_name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*-[A-Za-z0-9_-]+$")]
    """The DCR stream, for example ``Custom-NetskopeAlerts_CL``."""
    tenant_id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9.-]+$")]
    client_id: Annotated[str, Field(min_length=1)]
    client_secret: SecretStr
    authority: Annotated[str, Field(pattern=r"^https?://")] = "https://login.microsoftonline.com"
    """Entra ID's login host (sovereign clouds have their own)."""
    time_column: _Column = "TimeGenerated"
    raw_column: _Column = "RawData"
    """Where a CEF or LEEF line goes."""
    id_column: _Column = "Id"
    """Where the Netskope ``_id`` of a CEF or LEEF line goes."""
    gzip: bool = True
    max_request_bytes: Annotated[int, Field(ge=1024, le=API_LIMIT)] = 1_000_000
    """The largest uncompressed JSON array sent in one call."""
    timeout: Annotated[float, Field(gt=0)] = 30.0
    tls: TlsOptions = TlsOptions()


class _TooLargeError(Exception):
    """The API refused a call's size (413)."""


class AzureLogsIngestionSink(LogSink):
    """The ``azure_logs_ingestion`` log sink."""

    Options = AzureLogsIngestionOptions
    options: AzureLogsIngestionOptions
    max_batch_bytes = 900_000
    """Under the 1 MB call limit; rows add a time column (and JSON escaping), so calls split anyway."""

    def __init__(self, options: PluginOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        opts = self.options
        self.url = (
            f"{opts.dce.rstrip('/')}/dataCollectionRules/{opts.dcr_immutable_id}"
            f"/streams/{opts.stream_name}?api-version={API_VERSION}"
        )
        self.token = EntraToken(opts.authority, opts.tenant_id, opts.client_id, opts.client_secret)
        self.rows = RowEncoder(opts.time_column, opts.raw_column, opts.id_column)
        self._session: aiohttp.ClientSession | None = None
        self._progress: tuple[tuple[int, str, str], set[int]] | None = None

    async def open(self) -> None:
        if self._session is None:
            http = HttpOptions(url=self.options.dce, timeout=self.options.timeout, tls=self.options.tls)
            self._session = make_session(http, self.context.base_dir)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> Health:
        """Obtain a token: proves the tenant, the client id and the secret (the API has no cheap call)."""
        try:
            await self.token.get(self._open_session(), fresh=True)
        except (AuthError, TransientError) as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"Entra ID token obtained for client {self.options.client_id}")

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        """Post the batch as gzip JSON arrays of at most ``max_request_bytes``; 204 means accepted."""
        if not batch:
            return SendResult()
        delivered = self._delivered_so_far(batch)
        pending = [i for i in range(len(batch)) if i not in delivered]
        rows = {i: self.rows.encode(batch[i]) for i in pending}
        chunks, oversize = pack([len(rows[i]) for i in pending], self.options.max_request_bytes)
        rejected = [
            (pending[p], f"row of {len(rows[pending[p]])} bytes exceeds the call limit") for p in oversize
        ]
        queue = deque([pending[p] for p in chunk] for chunk in chunks)
        refusal: str | None = None
        while queue:
            chunk = queue.popleft()
            try:
                await self._post(json_array([rows[i] for i in chunk]), len(chunk))
            except _TooLargeError as exc:
                if len(chunk) == 1:
                    rejected.append((chunk[0], str(exc)))
                else:
                    half = len(chunk) // 2
                    queue.extendleft([chunk[half:], chunk[:half]])
                continue
            except PermanentError as exc:
                refusal = str(exc)
                rejected.extend((i, refusal) for i in chunk)
                continue
            delivered.update(chunk)
        self._progress = None
        if refusal is not None and not delivered and len(rejected) == len(batch):
            raise PermanentError(refusal)
        return SendResult(rejected=sorted(rejected)) if rejected else SendResult()

    def _delivered_so_far(self, batch: Sequence[OutRecord]) -> set[int]:
        """Rows of this very batch a failed earlier attempt already delivered (empty for a new batch)."""
        key = (len(batch), batch[0].id, batch[-1].id)
        if self._progress is None or self._progress[0] != key:
            self._progress = (key, set())
        return self._progress[1]

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the azure_logs_ingestion sink is not open")
        return self._session

    async def _post(self, body: bytes, rows: int) -> None:
        session = self._open_session()
        headers = {"Content-Type": "application/json", "x-ms-client-request-id": str(uuid.uuid4())}
        if self.options.gzip:
            headers["Content-Encoding"] = "gzip"
            if len(body) >= _THREAD_MIN_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, 6)
            else:
                body = gzip.compress(body, 6)
        for attempt in (1, 2):
            token = await self.token.get(session)
            headers["Authorization"] = f"Bearer {token}"
            try:
                async with session.post(self.url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        log.debug("azure.rows_accepted", rows=rows, bytes=len(body))
                        return
                    if response.status == 401 and attempt == 1:
                        self.token.invalidate()  # expired or revoked early: one fresh token, one more try
                        continue
                    await self._raise(response)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, self._target()) from exc

    async def _raise(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        code, detail = _error_of(await response.read())
        code = code or response.headers.get("x-ms-error-code", "")
        message = f"{self._target()} answered HTTP {status}" + (f" {code}" if code else "")
        message += f": {detail}" if detail else ""
        if status == 413:
            raise _TooLargeError(message)
        if status in RETRYABLE:
            raise TransientError(message, retry_after=retry_after(response.headers))
        if status == 401:
            raise AuthError(message)
        if status == 403:
            raise AuthError(message + " (the app needs the Monitoring Metrics Publisher role on the DCR)")
        if status == 404:
            raise ComponentConfigError(message + " (check dce, dcr_immutable_id and stream_name)")
        raise PermanentError(message)

    def _target(self) -> str:
        opts = self.options
        return f"Azure Monitor {opts.dce} DCR {opts.dcr_immutable_id} stream {opts.stream_name}"


def _error_of(body: bytes) -> tuple[str, str]:
    """(code, message) of an Azure error body ``{"error": {"code", "message"}}``."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return "", body[:300].decode("utf-8", "replace").strip()
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("code") or ""), str(error.get("message") or "")[:300]
