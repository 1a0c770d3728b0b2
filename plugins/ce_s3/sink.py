"""The ``s3`` log sink: gzip NDJSON objects in any S3-compatible store (AWS, MinIO, Ceph).

Each batch becomes one object per (kind, subtype), or a few when an object would pass
``max_object_bytes``. Object keys are deterministic::

    {prefix}/{kind}/{subtype}/{YYYY}/{MM}/{DD}/{HH}/{first_id}-{last_id}-{count}.ndjson.gz

(hour of the first record, ``_id`` of the first and last record, record count), so a batch that
is sent again overwrites its object instead of adding a copy. The core retries a failed batch
with the very same records, and after a restart a route reads again from its last acknowledged
offset, so the batch starts with the same record; it ends on the same record too unless the
batch was cut by ``batch.max_wait`` rather than by a size limit — then the replayed object has
another name, and downstream readers should de-duplicate on ``id``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from pydantic import Field, SecretStr
from yarl import URL

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSink,
    gzip_compress,
    read_at_most,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    ComponentConfigError,
    Health,
    OutRecord,
    PermanentError,
    PluginContext,
    SendResult,
    Timeout,
)
from ce_s3.sigv4 import EMPTY_SHA256, Credentials, sha256_hex, signed_headers, uri_encode

log = structlog.get_logger(__name__)

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,300})</Message>")
_REGION = re.compile(rb"<Region>([a-z0-9-]{1,40})</Region>")

_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted"}
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
        "AccountProblem",
        "AllAccessDisabled",
        "InvalidSecurity",
    }
)


class S3SinkOptions(ConnectionOptions):
    """Options of the ``s3`` sink."""

    bucket: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")]
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "us-east-1"
    endpoint: Annotated[str | None, Field(pattern=r"^https?://[^/?#]+/?$")] = None
    """Where the store listens (MinIO: ``http://minio:9000``).

    Default: ``https://s3.{region}.amazonaws.com``."""
    addressing: Literal["path", "virtual"] = "path"
    """``path``: ``{endpoint}/{bucket}/{key}`` (MinIO, Ceph, tests).

    ``virtual``: ``{bucket}.{endpoint host}/{key}`` (AWS's preferred style)."""
    access_key_id: SecretStr
    secret_access_key: SecretStr
    session_token: SecretStr | None = None
    """The session token of temporary (STS) credentials."""
    prefix: str = "netskope"
    content: Literal["ndjson", "lines"] = "ndjson"
    """``ndjson``: JSON records as they are, CEF/LEEF lines as ``{"message", "id", "timestamp"}``;
    ``lines``: every record as its formatted line."""
    max_object_bytes: Annotated[int, Field(ge=1024, le=5 * 1024**3)] = 64 * 1024 * 1024
    """The most uncompressed bytes in one object; a larger batch is written as several objects."""
    compression_level: Annotated[int, Field(ge=1, le=9)] = 6
    storage_class: str | None = None
    timeout: Timeout = 60.0


class S3Sink(HttpSink[S3SinkOptions]):
    """The ``s3`` log sink."""

    api_version = 1

    def __init__(self, options: S3SinkOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        opts = self.options
        self.credentials = Credentials(
            opts.access_key_id.get_secret_value(),
            opts.secret_access_key.get_secret_value(),
            opts.session_token.get_secret_value() if opts.session_token else None,
        )
        self.endpoint = (opts.endpoint or f"https://s3.{opts.region}.amazonaws.com").rstrip("/")

    # -- addressing ----------------------------------------------------------------------------

    def location(self, key: str = "") -> tuple[str, str]:
        """``(host, encoded path)`` of ``key`` in the bucket (the bucket itself when ``key`` is empty)."""
        netloc = urlsplit(self.endpoint).netloc
        bucket = self.options.bucket
        encoded_key = uri_encode(key, keep_slash=True)
        if self.options.addressing == "virtual":
            return f"{bucket}.{netloc}", "/" + encoded_key
        return netloc, f"/{uri_encode(bucket)}" + (f"/{encoded_key}" if key else "")

    def url(self, host: str, path: str) -> URL:
        """The request URL; ``encoded=True`` so the path goes out exactly as it was signed."""
        scheme = urlsplit(self.endpoint).scheme
        return URL(f"{scheme}://{host}{path}", encoded=True)

    # -- the contract --------------------------------------------------------------------------

    async def health(self) -> Health:
        """``HEAD`` the bucket, signed: proves the endpoint, the bucket and the credentials."""
        host, path = self.location()
        try:
            async with self._request("HEAD", host, path, b"", {}) as response:
                status = response.status
                region = response.headers.get("x-amz-bucket-region")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Health(ok=False, detail=str(transport_error(exc, self._target())))
        bucket = repr(self.options.bucket)
        if status == 200:
            return Health(ok=True, detail=f"bucket {bucket} reachable at {self.endpoint}")
        if status == 404:
            return Health(ok=False, detail=f"bucket {bucket} does not exist at {self.endpoint}")
        if status in (301, 400) and region and region != self.options.region:
            return Health(
                ok=False, detail=f"bucket {bucket} is in region {region!r}, not {self.options.region!r}"
            )
        if status in (401, 403):
            detail = f"{self._target()} refused the credentials (HTTP {status})"
            return Health(ok=False, detail=detail + ": check the keys, the clock and the bucket policy")
        return Health(ok=False, detail=f"{self._target()} answered HTTP {status} to HEAD bucket")

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        """Write the batch as one object per (kind, subtype) and size slice; return once S3 has them all."""
        for key, records, body in self._objects(batch):
            await self._put(key, body, len(records))
        return SendResult()

    # -- objects -------------------------------------------------------------------------------

    def _objects(self, batch: Sequence[OutRecord]) -> list[tuple[str, list[OutRecord], bytes]]:
        """``(key, records, uncompressed body)`` per object, groups in order of first appearance."""
        groups: dict[tuple[str, str], list[OutRecord]] = {}
        for record in batch:
            groups.setdefault((record.kind, record.subtype), []).append(record)
        cap = self.options.max_object_bytes
        objects: list[tuple[str, list[OutRecord], bytes]] = []
        for group in groups.values():
            lines: list[bytes] = []
            members: list[OutRecord] = []
            size = 0
            for record in group:
                line = self._line(record)
                if members and size + len(line) + 1 > cap:
                    objects.append(self._object(members, lines))
                    lines, members, size = [], [], 0
                lines.append(line)
                members.append(record)
                size += len(line) + 1
            if members:
                objects.append(self._object(members, lines))
        return objects

    def _line(self, record: OutRecord) -> bytes:
        if self.options.content == "lines" or record.format == "json":
            return record.data
        return orjson.dumps(
            {
                "message": record.data.decode("utf-8", "replace"),
                "id": record.id,
                "timestamp": record.timestamp,
            }
        )

    def _object(self, records: list[OutRecord], lines: list[bytes]) -> tuple[str, list[OutRecord], bytes]:
        return self.object_key(records), records, b"\n".join(lines) + b"\n"

    def object_key(self, records: Sequence[OutRecord]) -> str:
        """The deterministic key of the object holding ``records`` (all of one kind and subtype)."""
        first, last = records[0], records[-1]
        hour = datetime.fromtimestamp(max(0, first.timestamp), UTC).strftime("%Y/%m/%d/%H")
        extension = "ndjson.gz" if self.options.content == "ndjson" else "log.gz"
        name = f"{_key_part(first.id)}-{_key_part(last.id)}-{len(records)}.{extension}"
        parts = [self.options.prefix.strip("/"), _key_part(first.kind), _key_part(first.subtype), hour, name]
        return "/".join(part for part in parts if part)

    async def _put(self, key: str, body: bytes, count: int) -> None:
        payload = await gzip_compress(body, self.options.compression_level)
        headers = {
            "Content-Type": "application/x-ndjson" if self.options.content == "ndjson" else "text/plain",
            "Content-Encoding": "gzip",
        }
        if self.options.storage_class:
            headers["x-amz-storage-class"] = self.options.storage_class
        host, path = self.location(key)
        try:
            async with self._request("PUT", host, path, payload, headers) as response:
                if response.status == 200:
                    log.debug("s3.object_written", key=key, records=count, bytes=len(payload))
                    return
                await self._raise(response, key)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, self._target()) from exc

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, host: str, path: str, payload: bytes, extra: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = signed_headers(
            self.credentials,
            method=method,
            host=host,
            encoded_path=path,
            payload_hash=sha256_hex(payload) if payload else EMPTY_SHA256,
            region=self.options.region,
            moment=datetime.now(UTC),
            extra=extra,
        )
        async with self.session().request(
            method, self.url(host, path), data=payload or None, headers=headers, allow_redirects=False
        ) as response:
            yield response

    async def _raise(self, response: aiohttp.ClientResponse, key: str) -> None:
        body = await read_at_most(response, ERROR_BODY_BYTES)
        code_match, message_match = _CODE.search(body), _MESSAGE.search(body)
        code = code_match.group(1).decode("utf-8", "replace") if code_match else ""
        message = message_match.group(1).decode("utf-8", "replace").strip() if message_match else ""
        status = response.status
        what = f"{self._target()} refused PUT {key}: HTTP {status}" + (f" {code}" if code else "")
        what += f": {message}" if message else ""
        if code == "NoSuchBucket" or (status == 404 and not code):
            raise PermanentError(f"bucket {self.options.bucket!r} does not exist at {self.endpoint} ({what})")
        if code in ("AuthorizationHeaderMalformed", "PermanentRedirect") or status == 301:
            region_match = _REGION.search(body)
            region = (
                region_match.group(1).decode()
                if region_match
                else response.headers.get("x-amz-bucket-region")
            )
            where = f"region {region!r}" if region else "another region"
            raise ComponentConfigError(f"{what} (the bucket lives in {where}; set `region:` to match)")
        if code:  # S3 names its errors: the code decides, though any 5xx is retried
            retry: bool | None = code in _TRANSIENT_CODES or status >= 500
        else:  # no code (a proxy's answer): the status decides
            retry = True if status >= 500 else None
        hint = " (check the system clock)" if code == "RequestTimeTooSkewed" else ""
        raise status_error(
            status, what + hint, response.headers, self._target(), retry=retry, auth=code in _AUTH_CODES
        )

    def _target(self) -> str:
        return f"s3 {self.endpoint} bucket {self.options.bucket!r}"


def _key_part(text: str) -> str:
    """``text`` safe in an object key (ids and subtypes are plain already; this guards odd input)."""
    return _UNSAFE_KEY_CHARS.sub("_", text) or "none"
