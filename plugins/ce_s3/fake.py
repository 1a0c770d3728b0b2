"""A fake S3 endpoint (path-style and virtual-hosted) that checks AWS Signature Version 4 itself.

Every request is re-signed from what arrived on the wire (method, raw path, query, the signed
headers, the body hash) with the secret the fake knows; a mismatch is answered exactly as S3
does (403 ``SignatureDoesNotMatch``), so a sink that signs wrongly cannot pass a test. Errors
are S3's XML documents (``<Error><Code>…</Code><Message>…</Message>…</Error>``); ``HEAD`` errors
carry no body, as on S3.

Usage::

    fake = FakeS3(buckets=["logs"])
    async with fake as url:
        ...  # point the sink at ``url``; read ``fake.objects`` / ``await fake.wait_until(predicate)``

Scripted failures (:meth:`~ce_daemon.testing.fakes.base.FakeHttpServer.fail_next`, ``code`` and
``message`` as S3's ``<Error>``) and holds apply to requests whose signature is good. S3 never
refuses an object for its content, so ``refuse_when`` is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, VendorError, inflate

MAX_OBJECT_BYTES = 5 * 1024**3  # S3's single PUT limit
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
    r"/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_MAX_SKEW = 15 * 60


def expected_signature(
    secret_access_key: str,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: dict[str, str],
    signed_headers: list[str],
    payload_hash: str,
    amz_date: str,
    region: str,
    service: str = "s3",
) -> str:
    """The signature S3 computes for a request as received (``headers`` keyed lower-case)."""
    # S3 decodes the path it receives and encodes it again the canonical way, so a client that
    # encodes differently (say, leaves `$` bare) fails here as it would against AWS.
    canonical_uri = quote(unquote(raw_path), safe="/-_.~") or "/"
    pairs = parse_qsl(raw_query, keep_blank_values=True)
    canonical_query = "&".join(
        sorted(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}" for name, value in pairs)
    )
    header_lines = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers)
    canonical = "\n".join(
        [method, canonical_uri, canonical_query, header_lines, ";".join(signed_headers), payload_hash]
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = (
        f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    )
    key = ("AWS4" + secret_access_key).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as the fake keeps it: the bytes received and, when gzip, their decoded form."""

    bucket: str
    key: str
    raw: bytes
    body: bytes
    headers: dict[str, str]

    def lines(self) -> list[bytes]:
        """The decoded body split into lines (no trailing empty line)."""
        return self.body.splitlines()


class FakeS3(FakeHttpServer):
    """An S3-compatible server on 127.0.0.1 that verifies SigV4 and stores objects in memory.

    ``requests`` records every request (a body as received: S3 stores the bytes on the wire).
    """

    auto_decompress = False  # S3 hashes and stores the bytes on the wire: no inflating on the way in

    def __init__(
        self,
        *,
        access_key_id: str = "AKIAFAKEFAKEFAKE0001",
        secret_access_key: str = "fake/secret+access/key0123456789abcdef",  # noqa: S107 - the fake's own test key
        session_token: str | None = None,
        region: str = "us-east-1",
        buckets: Iterable[str] = ("netskope",),
        max_object_bytes: int = MAX_OBJECT_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.region = region
        self.buckets = set(buckets)
        self.max_object_bytes = max_object_bytes
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.puts: list[tuple[str, str]] = []
        """Every accepted PUT as (bucket, key), in order (a key written twice appears twice)."""
        self._clock = clock or (lambda: datetime.now(UTC).timestamp())

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.route("*", "/{tail:.*}", self._handle)]

    def refuse_credentials(self) -> None:
        """The secret key is rotated: requests signed with the old one get 403 SignatureDoesNotMatch."""
        self.secret_access_key = "rotated/" + secrets.token_hex(16)

    def stored(self, key: str, bucket: str | None = None) -> StoredObject:
        """The stored object at ``key`` (in the only bucket unless ``bucket`` is given)."""
        return self.objects[(bucket or next(iter(self.buckets)), key)]

    # -- the server ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            response = await self._answer(request, body)
        except VendorError as exc:
            response = self._error(request, exc)
        await self.record(request, body, response.status)
        return response

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        self._verify(request, body)
        failure = await self.scripted()
        if failure is not None:
            code = failure.code or "InternalError"
            raise VendorError(failure.status, failure.message, code=code, headers=failure.headers)
        bucket, key = self._address(request)
        if bucket not in self.buckets:
            raise VendorError(
                404, "The specified bucket does not exist", code="NoSuchBucket", BucketName=bucket
            )
        if request.method == "HEAD" and not key:
            return web.Response(status=200, headers={"x-amz-bucket-region": self.region})
        if request.method == "PUT" and key:
            return self._put(request, bucket, key, body)
        if request.method == "GET" and key:
            stored = self.objects.get((bucket, key))
            if stored is None:
                raise VendorError(404, "The specified key does not exist.", code="NoSuchKey", Key=key)
            return web.Response(body=stored.raw, headers={"ETag": _etag(stored.raw)})
        raise VendorError(
            405, "The specified method is not allowed against this resource.", code="MethodNotAllowed"
        )

    def _put(self, request: web.Request, bucket: str, key: str, body: bytes) -> web.StreamResponse:
        if len(body) > self.max_object_bytes:
            raise VendorError(
                400,
                "Your proposed upload exceeds the maximum allowed object size.",
                code="EntityTooLarge",
                ProposedSize=str(len(body)),
                MaxSizeAllowed=str(self.max_object_bytes),
            )
        try:
            decoded, _ = inflate(request, body)
        except ValueError as exc:
            raise VendorError(400, f"the body is not gzip: {exc}", code="InvalidRequest") from exc
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.objects[(bucket, key)] = StoredObject(bucket, key, body, decoded, headers)
        self.puts.append((bucket, key))
        return web.Response(status=200, headers={"ETag": _etag(body)})

    def _address(self, request: web.Request) -> tuple[str, str]:
        """(bucket, key) from a virtual-hosted ``Host`` or a path-style path."""
        host = request.headers.get("Host", "").split(":")[0]
        path = unquote(request.raw_path.split("?", 1)[0])
        for bucket in self.buckets:
            if host.startswith(bucket + "."):
                return bucket, path.lstrip("/")
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key

    def _verify(self, request: web.Request, body: bytes) -> None:
        header = request.headers.get("Authorization", "")
        match = _AUTH.match(header)
        if match is None:
            raise VendorError(403, "Access Denied", code="AccessDenied")
        if match["key"] != self.access_key_id:
            raise VendorError(
                403,
                "The AWS Access Key Id you provided does not exist in our records.",
                code="InvalidAccessKeyId",
                AWSAccessKeyId=match["key"],
            )
        if match["region"] != self.region or match["service"] != "s3":
            raise VendorError(
                400,
                f"The authorization header is malformed; the region '{match['region']}' is wrong; "
                f"expecting '{self.region}'",
                code="AuthorizationHeaderMalformed",
                Region=self.region,
            )
        signed = match["signed"].split(";")
        headers = {name.lower(): ",".join(request.headers.getall(name)) for name in request.headers}
        amz_date = headers.get("x-amz-date", "")
        if "host" not in signed or "x-amz-date" not in signed or not amz_date.startswith(match["day"]):
            raise VendorError(
                403, "host and x-amz-date must be signed, dated the credential's day", code="AccessDenied"
            )
        try:
            moment = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError as exc:
            raise VendorError(403, "x-amz-date is not a valid date", code="AccessDenied") from exc
        if abs(self._clock() - moment) > _MAX_SKEW:
            raise VendorError(
                403,
                "The difference between the request time and the current time is too large.",
                code="RequestTimeTooSkewed",
            )
        payload_hash = headers.get("x-amz-content-sha256", "")
        if not payload_hash:
            raise VendorError(
                400, "Missing required header for this request: x-amz-content-sha256", code="InvalidRequest"
            )
        if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(body).hexdigest():
            raise VendorError(
                400,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                code="XAmzContentSHA256Mismatch",
            )
        if self.session_token is not None and (
            headers.get("x-amz-security-token") != self.session_token or "x-amz-security-token" not in signed
        ):
            raise VendorError(
                403, "The provided token is malformed or otherwise invalid.", code="InvalidToken"
            )
        raw_path, _, raw_query = request.raw_path.partition("?")
        wanted = expected_signature(
            self.secret_access_key,
            method=request.method,
            raw_path=raw_path,
            raw_query=raw_query,
            headers=headers,
            signed_headers=signed,
            payload_hash=payload_hash,
            amz_date=amz_date,
            region=match["region"],
        )
        if not hmac.compare_digest(wanted, match["signature"]):
            raise VendorError(
                403,
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
                code="SignatureDoesNotMatch",
                AWSAccessKeyId=match["key"],
            )

    def _error(self, request: web.Request, error: VendorError) -> web.Response:
        headers = dict(error.headers)
        if request.method == "HEAD":
            if error.code == "AuthorizationHeaderMalformed":
                headers["x-amz-bucket-region"] = self.region
            return web.Response(status=error.status, headers=headers)
        details = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in error.details.items())
        document = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{error.code}</Code><Message>{escape(error.message)}</Message>{details}"
            f"<RequestId>{len(self.requests):016X}</RequestId></Error>"
        )
        return web.Response(
            status=error.status, body=document.encode(), content_type="application/xml", headers=headers
        )


def _etag(body: bytes) -> str:
    return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
