"""Google service-account auth: a signed JWT (RS256) exchanged at the key's ``token_uri`` for an access token.

The OAuth 2.0 JWT bearer flow (RFC 7523) as Google documents it for service accounts: claims
``iss`` (the account's e-mail), ``scope``, ``aud`` (the token URI), ``iat`` and ``exp`` (at most
an hour later), signed with the account's private key; the token is cached until shortly before
it expires.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass

import aiohttp
import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ce_daemon.errors import AuthError, ComponentConfigError, TransientError
from ce_daemon.http import RETRYABLE, retry_after, transport_error

INGESTION_SCOPE = "https://www.googleapis.com/auth/malachite-ingestion"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - an endpoint, not a secret
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_LIFETIME = 3600  # Google refuses assertions valid for longer than an hour
_REFRESH_MARGIN = 300.0


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a service-account JSON key the flow needs."""

    client_email: str
    private_key: rsa.RSAPrivateKey
    private_key_id: str
    token_uri: str

    def __repr__(self) -> str:
        return f"ServiceAccount({self.client_email!r}, <private key redacted>)"

    @classmethod
    def from_json(cls, text: str | bytes) -> ServiceAccount:
        """Parse a JSON key; errors say what is wrong without ever quoting the key."""
        try:
            info = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ComponentConfigError("the service-account key is not valid JSON") from None
        if not isinstance(info, dict):
            raise ComponentConfigError("the service-account key is not a JSON object")
        missing = [name for name in ("client_email", "private_key") if not isinstance(info.get(name), str)]
        if missing:
            raise ComponentConfigError(f"the service-account key lacks {', '.join(missing)}")
        try:
            key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ComponentConfigError("the service-account private_key is not a readable PEM key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ComponentConfigError("the service-account private_key is not an RSA key")
        token_uri = info.get("token_uri") or GOOGLE_TOKEN_URI
        if not isinstance(token_uri, str) or not token_uri.startswith(("https://", "http://")):
            raise ComponentConfigError("the service-account token_uri is not an http(s) URL")
        return cls(info["client_email"], key, str(info.get("private_key_id") or ""), token_uri)


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def jwt_assertion(account: ServiceAccount, scope: str, now: int) -> str:
    """The signed JWT asking ``account.token_uri`` for a token of ``scope``."""
    header = {
        "alg": "RS256",
        "typ": "JWT",
        **({"kid": account.private_key_id} if account.private_key_id else {}),
    }
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": account.token_uri,
        "iat": now,
        "exp": now + _LIFETIME,
    }
    signing_input = _b64url(orjson.dumps(header)) + b"." + _b64url(orjson.dumps(claims))
    signature = account.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + _b64url(signature)).decode()


class GoogleToken:
    """An access token for one service account and scope."""

    def __init__(self, account: ServiceAccount, scope: str = INGESTION_SCOPE) -> None:
        self.account = account
        self.scope = scope
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the cached token (the API refused it)."""
        self._token = None

    async def get(self, session: aiohttp.ClientSession, *, fresh: bool = False) -> str:
        """A valid access token: the cached one, or a new one when none, expiring, or ``fresh``."""
        async with self._lock:
            if fresh or self._token is None or time.monotonic() >= self._renew_at:
                await self._fetch(session)
            assert self._token is not None
            return self._token

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        uri = self.account.token_uri
        form = {
            "grant_type": JWT_BEARER,
            "assertion": jwt_assertion(self.account, self.scope, int(time.time())),
        }
        target = f"Google token endpoint {uri}"
        try:
            async with session.post(uri, data=form) as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        try:
            answer = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if status == 200 and isinstance(answer.get("access_token"), str):
            try:
                lifetime = float(answer.get("expires_in", 3600))
            except (TypeError, ValueError):
                lifetime = 3600.0
            self._token = answer["access_token"]
            self._renew_at = time.monotonic() + lifetime - min(_REFRESH_MARGIN, lifetime / 2)
            return
        reason = str(answer.get("error_description") or "")[:300]
        message = f"{target} answered HTTP {status}" + (f" {answer['error']}" if answer.get("error") else "")
        message += f": {reason}" if reason else ""
        if status in RETRYABLE:
            raise TransientError(message, retry_after=retry_after(headers))
        raise AuthError(message + f" (service account {self.account.client_email})")
