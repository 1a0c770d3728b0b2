"""The ``chronicle`` log sink: Google SecOps (Chronicle) legacy ingestion API, unstructured log entries.

``POST {endpoint}/v2/unstructuredlogentries:batchCreate`` with ``{"customer_id", "log_type",
"namespace"?, "labels"?, "entries": [{"log_text", "ts_epoch_microseconds"}]}`` and a
service-account bearer token (scope ``malachite-ingestion``). A request carries at most 1 MB;
like Netskope CE the sink keeps each JSON body under 800,000 bytes by default and splits a batch
into as many requests as needed (a "payload size exceeds the limit" answer splits further).

Chronicle has no idempotency key, so, as for Azure, the sink remembers which entries of a batch
were accepted until the batch succeeds, and a retry of that batch sends only the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Self

import aiohttp
import orjson
import structlog
from pydantic import Field, SecretStr, model_validator

from ce_chronicle.auth import GoogleToken, ServiceAccount
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

API_LIMIT = 1_048_576


def regional_endpoint(region: str) -> str:
    """The ingestion host of a Chronicle region (``us`` is the unprefixed multi-region host)."""
    prefix = "" if region == "us" else f"{region}-"
    return f"https://{prefix}malachiteingestion-pa.googleapis.com"


class ChronicleOptions(ConnectionOptions):
    """Options of the ``chronicle`` sink."""

    customer_id: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")]
    log_type: Annotated[str, Field(pattern=r"^[A-Z0-9_]+$")] = "NETSKOPE_ALERT_V2"
    namespace: str | None = None
    labels: dict[str, str] = {}
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "us"
    """``us``, ``europe``, ``asia-southeast1``, ``europe-west2``… (the regional ingestion host)."""
    endpoint: Annotated[str | None, Field(pattern=r"^https?://[^/?#]+/?$")] = None
    """An explicit ingestion host, instead of the region's."""
    credentials: SecretStr | None = None
    """The service-account JSON key itself (``{$file: key.json}``)."""
    credentials_file: Path | None = None
    """Or the path of the JSON key (relative to the pipeline file)."""
    gzip: bool = True
    max_request_bytes: Annotated[int, Field(ge=10_000, le=API_LIMIT)] = 800_000

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if (self.credentials is None) == (self.credentials_file is None):
            raise ValueError(
                "give the service-account key as exactly one of `credentials` or `credentials_file`"
            )
        return self


class ChronicleSink(HttpSink[ChronicleOptions]):
    """The ``chronicle`` log sink."""

    api_version = 1
    max_batch_bytes = 700_000
    """Below the 800,000-byte request default: each entry adds its JSON wrapping, so requests split anyway."""

    def __init__(self, options: ChronicleOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        opts = self.options
        host = (opts.endpoint or regional_endpoint(opts.region)).rstrip("/")
        self.url = f"{host}/v2/unstructuredlogentries:batchCreate"
        head: dict[str, object] = {"customer_id": opts.customer_id, "log_type": opts.log_type}
        if opts.namespace:
            head["namespace"] = opts.namespace
        if opts.labels:
            head["labels"] = [{"key": key, "value": value} for key, value in opts.labels.items()]
        self._head = orjson.dumps(head)[:-1] + b',"entries":['
        self.token: GoogleToken | None = None
        self._sender = ResumableSender()

    async def open(self) -> None:
        if self.token is None:
            self.token = GoogleToken(await self._account())
        await super().open()

    async def _account(self) -> ServiceAccount:
        if self.options.credentials is not None:
            return ServiceAccount.from_json(self.options.credentials.get_secret_value())
        assert self.options.credentials_file is not None
        path = self.context.resolve(self.options.credentials_file)
        try:
            text = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ComponentConfigError(f"cannot read the service-account key {path}: {exc.strerror}") from exc
        return ServiceAccount.from_json(text)

    async def health(self) -> Health:
        """Obtain a token: proves the key, the account and the token endpoint."""
        token = self._token()
        try:
            await token.get(self.session(), fresh=True)
        except (AuthError, TransientError) as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"token obtained for {token.account.client_email}")

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        """Post the batch as batchCreate requests of at most ``max_request_bytes``."""
        return await self._sender.send(
            batch,
            _entry,
            lambda entries: self._post(self._head + b",".join(entries) + b"]}", len(entries)),
            limit=self.options.max_request_bytes,
            overhead=len(self._head) + 2,  # the request around the entries, and its closing "]}"
            separator=1,  # the commas
            oversize=lambda _: "entry exceeds the request size limit on its own",
        )

    def _token(self) -> GoogleToken:
        if self.token is None:
            raise RuntimeError("the chronicle sink is not open")
        return self.token

    async def _post(self, body: bytes, entries: int) -> None:
        token, session = self._token(), self.session()
        body, headers = await prepare_body(body, "application/json", compress=self.options.gzip)
        try:
            async with token.post(session, self.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    log.debug("chronicle.entries_accepted", entries=entries, bytes=len(body))
                    return
                await self._raise(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, f"Chronicle {self.url}") from exc

    async def _raise(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        code, detail = json_error(await read_at_most(response, ERROR_BODY_BYTES), "status")
        message = f"Chronicle {self.url} answered HTTP {status}" + (f" {code}" if code else "")
        message += f": {detail}" if detail else ""
        if status == 413 or (status == 400 and "payload size exceeds" in detail.lower()):
            raise RequestTooLargeError(message)
        if status == 404:
            raise ComponentConfigError(message + " (check region, endpoint and customer_id)")
        busy = True if code == "RESOURCE_EXHAUSTED" else None  # Google's quota answer, whatever its status
        raise status_error(status, message, response.headers, f"Chronicle {self.url}", retry=busy)


def _entry(record: OutRecord) -> bytes:
    """One entry, built from bytes: the line as a JSON string and its time in microseconds."""
    text = orjson.dumps(record.data.decode("utf-8", "replace"))
    return b'{"log_text":%s,"ts_epoch_microseconds":%d}' % (text, max(0, record.timestamp) * 1_000_000)
