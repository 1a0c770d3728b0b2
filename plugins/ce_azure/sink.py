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

import uuid
from collections.abc import Sequence
from typing import Annotated

import aiohttp
import structlog
from pydantic import Field, SecretStr

from ce_azure.entra import EntraToken
from ce_azure.rows import RowEncoder, json_array
from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSink,
    RequestTooLargeError,
    ResumableSender,
    json_error,
    prepare_body,
    read_at_most,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    Health,
    OutRecord,
    PluginContext,
    SendResult,
    TransientError,
)

log = structlog.get_logger(__name__)

API_VERSION = "2023-01-01"
API_LIMIT = 1_048_576  # "Maximum allowed content length: 1048576 bytes (1 MB)"
_Column = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,44}$")]


class AzureLogsIngestionOptions(ConnectionOptions):
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


class AzureLogsIngestionSink(HttpSink[AzureLogsIngestionOptions]):
    """The ``azure_logs_ingestion`` log sink."""

    api_version = 1
    max_batch_bytes = 900_000
    """Under the 1 MB call limit; rows add a time column (and JSON escaping), so calls split anyway."""

    def __init__(self, options: AzureLogsIngestionOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        opts = self.options
        self.url = (
            f"{opts.dce.rstrip('/')}/dataCollectionRules/{opts.dcr_immutable_id}"
            f"/streams/{opts.stream_name}?api-version={API_VERSION}"
        )
        self.token = EntraToken(opts.authority, opts.tenant_id, opts.client_id, opts.client_secret)
        self.rows = RowEncoder(opts.time_column, opts.raw_column, opts.id_column)
        self._sender = ResumableSender()

    async def health(self) -> Health:
        """Obtain a token: proves the tenant, the client id and the secret (the API has no cheap call)."""
        try:
            await self.token.get(self.session(), fresh=True)
        except (AuthError, TransientError) as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"Entra ID token obtained for client {self.options.client_id}")

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        """Post the batch as gzip JSON arrays of at most ``max_request_bytes``; 204 means accepted."""
        return await self._sender.send(
            batch,
            self.rows.encode,
            lambda rows: self._post(json_array(rows), len(rows)),
            limit=self.options.max_request_bytes,
            overhead=2,  # the brackets
            separator=1,  # the commas
            oversize=lambda size: f"row of {size} bytes exceeds the call limit",
        )

    async def _post(self, body: bytes, rows: int) -> None:
        session = self.session()
        body, headers = await prepare_body(body, "application/json", compress=self.options.gzip)
        headers["x-ms-client-request-id"] = str(uuid.uuid4())
        try:
            async with self.token.post(session, self.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    log.debug("azure.rows_accepted", rows=rows, bytes=len(body))
                    return
                await self._raise(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, self._target()) from exc

    async def _raise(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        code, detail = json_error(await read_at_most(response, ERROR_BODY_BYTES), "code")
        code = code or response.headers.get("x-ms-error-code", "")
        message = f"{self._target()} answered HTTP {status}" + (f" {code}" if code else "")
        message += f": {detail}" if detail else ""
        if status == 413:
            raise RequestTooLargeError(message)
        if status == 403:
            raise AuthError(message + " (the app needs the Monitoring Metrics Publisher role on the DCR)")
        if status == 404:
            raise ComponentConfigError(message + " (check dce, dcr_immutable_id and stream_name)")
        raise status_error(status, message, response.headers, self._target())

    def _target(self) -> str:
        opts = self.options
        return f"Azure Monitor {opts.dce} DCR {opts.dcr_immutable_id} stream {opts.stream_name}"
