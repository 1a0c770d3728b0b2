"""AWS Signature Version 4 for S3 requests: header-based, with a signed payload hash.

Follows AWS's documented algorithm (canonical request → string to sign → signing key → HMAC):
S3 encodes the path once (``/`` kept), sorts the query by encoded key, and signs lower-cased,
space-collapsed header values. Verified against AWS's published S3 examples in the tests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair, plus the session token of temporary (STS) credentials."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """AWS's URI encoding: every byte but ``A-Z a-z 0-9 - _ . ~`` as ``%XX`` (upper-case hex)."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def sha256_hex(data: bytes) -> str:
    """The lower-case hex SHA-256 of ``data`` (the ``x-amz-content-sha256`` value)."""
    return hashlib.sha256(data).hexdigest()


def amz_date(moment: datetime) -> str:
    """``moment`` as the ``x-amz-date`` basic ISO 8601 form (``20130524T000000Z``)."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """The query string as SigV4 wants it: each name and value encoded, sorted by name then value."""
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in params)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """``(canonical header block, signed header list)`` for the headers to sign."""
    items = sorted((name.strip().lower(), " ".join(value.split())) for name, value in headers.items())
    block = "".join(f"{name}:{value}\n" for name, value in items)
    return block, ";".join(name for name, _ in items)


def canonical_request(
    method: str,
    encoded_path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    payload_hash: str,
) -> tuple[str, str]:
    """``(canonical request, signed headers)``; ``encoded_path`` is already URI-encoded."""
    block, signed = canonical_headers(headers)
    lines = [method.upper(), encoded_path or "/", canonical_query(query), block, signed, payload_hash]
    return "\n".join(lines), signed


def signing_key(secret_access_key: str, day: str, region: str, service: str) -> bytes:
    """The derived key: HMAC chain over the date, region, service and ``aws4_request``."""
    key = f"AWS4{secret_access_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def authorization(
    credentials: Credentials,
    *,
    method: str,
    encoded_path: str,
    query: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str],
    payload_hash: str,
    region: str,
    service: str = "s3",
) -> str:
    """The ``Authorization`` header value for a request whose ``headers`` (to be signed) are final.

    ``headers`` must contain ``host`` and ``x-amz-date``; every header given is signed.
    """
    stamp = next((value for name, value in headers.items() if name.lower() == "x-amz-date"), None)
    if stamp is None:
        raise ValueError("the headers to sign need x-amz-date")
    day = stamp[:8]
    scope = f"{day}/{region}/{service}/aws4_request"
    request, signed = canonical_request(method, encoded_path, query, headers, payload_hash)
    to_sign = "\n".join([ALGORITHM, stamp, scope, sha256_hex(request.encode())])
    key = signing_key(credentials.secret_access_key, day, region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    credential = f"{credentials.access_key_id}/{scope}"
    return f"{ALGORITHM} Credential={credential}, SignedHeaders={signed}, Signature={signature}"


def signed_headers(
    credentials: Credentials,
    *,
    method: str,
    host: str,
    encoded_path: str,
    query: Iterable[tuple[str, str]] = (),
    payload_hash: str,
    region: str,
    moment: datetime,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every header a request needs to be accepted: ``extra`` plus host, dates, hash, token, signature."""
    headers = {
        **(extra or {}),
        "host": host,
        "x-amz-date": amz_date(moment),
        "x-amz-content-sha256": payload_hash,
    }
    if credentials.session_token:
        headers["x-amz-security-token"] = credentials.session_token
    query = list(query)
    headers["Authorization"] = authorization(
        credentials,
        method=method,
        encoded_path=encoded_path,
        query=query,
        headers=headers,
        payload_hash=payload_hash,
        region=region,
    )
    return headers
