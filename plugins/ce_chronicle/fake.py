"""A fake Google OAuth token endpoint and Chronicle (SecOps) legacy ingestion API, on one server.

- ``POST /token``: the service-account JWT bearer grant. The fake holds the service account's
  public key and checks the assertion's RS256 signature, ``iss``, ``aud``, ``scope``, ``iat`` and
  ``exp`` (at most one hour); errors are Google's ``{"error", "error_description"}`` (400
  ``invalid_grant`` "Invalid JWT Signature.", 400 ``invalid_scope``, 400 ``unsupported_grant_type``).
- ``POST /v2/unstructuredlogentries:batchCreate``: a token it issued, a JSON body ``{customer_id,
  log_type, namespace?, labels?: [{key, value}], entries: [{log_text, ts_epoch_microseconds |
  ts_rfc3339}]}`` (gzip or not), at most 1 MB; 200 ``{}``. Errors are Google's
  ``{"error": {"code", "message", "status"}}``: 401 UNAUTHENTICATED, 403 PERMISSION_DENIED (an
  unknown customer), 400 INVALID_ARGUMENT (bad body, unknown log type, "Request payload size
  exceeds the limit: 1048576 bytes."), 429 RESOURCE_EXHAUSTED.

Usage::

    fake = FakeChronicle()
    async with fake as url:
        key = fake.service_account_key()   # JSON key whose token_uri is the fake's /token
        ...  # fake.entries holds every accepted entry; await fake.wait_until(predicate)

Scripted failures (:meth:`~ce_daemon.testing.fakes.base.FakeHttpServer.fail_next`, ``message`` as
Google's error) and holds apply to authenticated batchCreate calls only.
"""

from __future__ import annotations

import base64
import functools
import secrets
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ce_daemon.testing.fakes.base import FakeHttpServer, VendorError, inflate, json_response

API_LIMIT = 1_048_576
SCOPE = "https://www.googleapis.com/auth/malachite-ingestion"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@functools.cache
def _rsa_key(slot: int) -> rsa.RSAPrivateKey:
    """A process-wide RSA key per slot (generating one costs tens of milliseconds)."""
    del slot
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True, slots=True)
class BatchCall:
    """One batchCreate request as received, and our answer."""

    customer_id: str
    log_type: str
    namespace: str | None
    labels: list[dict[str, str]]
    entries: list[dict[str, Any]]
    wire_bytes: int
    json_bytes: int
    gzip: bool
    status: int


class FakeChronicle(FakeHttpServer):
    """Google's token endpoint plus Chronicle's unstructured-log ingestion on 127.0.0.1."""

    auto_decompress = False  # the size limit applies to the bytes on the wire too

    def __init__(
        self,
        *,
        customer_id: str = "c8c65bfa-5f2c-42d4-9189-64bb7b939f2c",
        client_email: str = "ce-daemon@example-project.iam.gserviceaccount.com",
        log_types: Iterable[str] = ("NETSKOPE_ALERT_V2", "NETSKOPE_ALERT", "NETSKOPE_WEBPROXY"),
        max_body_bytes: int = API_LIMIT,
        token_lifetime: int = 3599,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.customer_id = customer_id
        self.client_email = client_email
        self.log_types = set(log_types)
        self.max_body_bytes = max_body_bytes
        self.token_lifetime = token_lifetime
        self.entries: list[dict[str, Any]] = []
        """Every entry accepted, decoded, in arrival order."""
        self.calls: list[BatchCall] = []
        self.tokens_issued = 0
        self._key = _rsa_key(0)
        self._tokens: set[str] = set()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/token", self._token),
            web.post("/v2/unstructuredlogentries:batchCreate", self._batch_create),
        ]

    def refuse_credentials(self) -> None:
        """The service account's key is deleted (another takes its place) and every token revoked."""
        self._key = _rsa_key(2)
        self.revoke_tokens()

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far."""
        self._tokens.clear()

    # -- keys ---------------------------------------------------------------------------------

    def service_account_key(self, *, foreign: bool = False) -> str:
        """The JSON key of the service account (``foreign``: same account, a key Google never issued)."""
        key = _rsa_key(1) if foreign else self._key
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        info = {
            "type": "service_account",
            "project_id": "example-project",
            "private_key_id": "f" * 40,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": f"{self.url}/token",
        }
        return orjson.dumps(info, option=orjson.OPT_INDENT_2).decode()

    # -- OAuth --------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assertion = form.get("assertion")
        try:
            self._check_assertion(
                form.get("grant_type") == JWT_BEARER,
                assertion if isinstance(assertion, str) else "",
                f"{self.url}/token",
            )
        except _OAuthRefusal as refusal:
            body = {"error": refusal.error, "error_description": refusal.description}
            return json_response(body, 400)
        token = "ya29." + secrets.token_urlsafe(32)
        self._tokens.add(token)
        self.tokens_issued += 1
        return json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    def _check_assertion(self, jwt_grant: bool, assertion: str, audience: str) -> None:
        """Refuse (raise `_OAuthRefusal`) unless the JWT is signed by the account's key with sound claims."""
        if not jwt_grant:
            raise _OAuthRefusal("unsupported_grant_type", "Invalid grant_type")
        parts = assertion.split(".")
        try:
            header, claims = (orjson.loads(_unb64(part)) for part in parts[:2])
            signature = _unb64(parts[2])
        except (ValueError, IndexError, orjson.JSONDecodeError):
            raise _OAuthRefusal("invalid_request", "Invalid JWT: malformed assertion") from None
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            raise _OAuthRefusal("invalid_grant", "Invalid JWT: algorithm must be RS256")
        try:
            self._key.public_key().verify(
                signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise _OAuthRefusal("invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("iss") != self.client_email:
            raise _OAuthRefusal("invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != audience:
            raise _OAuthRefusal("invalid_grant", "Invalid JWT: audience is not the token endpoint")
        iat, exp, now = claims.get("iat"), claims.get("exp"), time.time()
        if (
            not isinstance(iat, int)
            or not isinstance(exp, int)
            or exp - iat > 3600
            or exp < now
            or iat > now + 300
        ):
            raise _OAuthRefusal(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        if SCOPE not in str(claims.get("scope", "")).split():
            raise _OAuthRefusal("invalid_scope", "Invalid OAuth scope or ID token audience provided.")

    # -- ingestion ----------------------------------------------------------------------------

    async def _batch_create(self, request: web.Request) -> web.Response:
        wire = await request.read()
        try:
            call = await self._accept(request, wire)
            response = json_response({})
        except VendorError as exc:
            status_name = _STATUS.get(exc.status, "UNKNOWN")
            body = {"error": {"code": exc.status, "message": exc.message, "status": status_name}}
            response = json_response(body, exc.status, exc.headers)
            call = BatchCall("", "", None, [], [], len(wire), 0, False, exc.status)
        self.calls.append(call)
        await self.record(request, wire, response.status)
        return response

    async def _accept(self, request: web.Request, wire: bytes) -> BatchCall:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
            raise VendorError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                "or other valid authentication credential.",
            )
        failure = await self.scripted()
        if failure is not None:
            raise VendorError(failure.status, failure.message, headers=failure.headers)
        try:
            data, compressed = inflate(request, wire)
        except ValueError as exc:
            raise VendorError(400, f"Invalid gzip body: {exc}") from exc
        if max(len(wire), len(data)) > self.max_body_bytes:
            raise VendorError(400, f"Request payload size exceeds the limit: {self.max_body_bytes} bytes.")
        body = self._body(data)
        self.entries.extend(body["entries"])
        return BatchCall(
            body["customer_id"],
            body["log_type"],
            body.get("namespace"),
            body.get("labels", []),
            body["entries"],
            len(wire),
            len(data),
            compressed,
            200,
        )

    def _body(self, data: bytes) -> dict[str, Any]:
        """The request body, validated as the API does."""
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise VendorError(400, f"Invalid JSON payload received. {exc}") from exc
        if not isinstance(body, dict):
            raise VendorError(400, "Invalid JSON payload received. Expected an object.")
        unknown = set(body) - {"customer_id", "log_type", "namespace", "labels", "entries"}
        if unknown:
            raise VendorError(400, f"Invalid JSON payload received. Unknown name {min(unknown)!r}.")
        if body.get("customer_id") != self.customer_id:
            raise VendorError(403, "The caller does not have permission")
        if body.get("log_type") not in self.log_types:
            raise VendorError(400, f"Invalid log type: {body.get('log_type')!r}")
        labels = body.get("labels", [])
        if not isinstance(labels, list) or not all(
            isinstance(label, dict) and set(label) == {"key", "value"} for label in labels
        ):
            raise VendorError(400, "labels must be a list of {key, value}")
        entries = body.get("entries")
        if not isinstance(entries, list) or not entries:
            raise VendorError(400, "entries must be a non-empty list")
        for n, entry in enumerate(entries):
            good = (
                isinstance(entry, dict)
                and isinstance(entry.get("log_text"), str)
                and set(entry) <= {"log_text", "ts_epoch_microseconds", "ts_rfc3339"}
                and isinstance(entry.get("ts_epoch_microseconds", 0), int | str)
            )
            if not good:
                raise VendorError(
                    400, f"entries[{n}] must be {{log_text, ts_epoch_microseconds | ts_rfc3339}}"
                )
            if self.refuses(entry):
                raise VendorError(400, f"entries[{n}] was refused")
        return body


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class _OAuthRefusal(Exception):  # noqa: N818 - a refusal answered to the client, not an error of ours
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description
