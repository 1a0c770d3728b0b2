"""Google service-account auth: a signed JWT (RS256) exchanged at the key's ``token_uri`` for an access token.

The OAuth 2.0 JWT bearer flow (RFC 7523) as Google documents it for service accounts: claims
``iss`` (the account's e-mail), ``scope``, ``aud`` (the token URI), ``iat`` and ``exp`` (at most
an hour later), signed with the account's private key; the token is cached until shortly before
it expires.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ce_daemon.http import OAuth2Token
from ce_daemon.plugin import ComponentConfigError

INGESTION_SCOPE = "https://www.googleapis.com/auth/malachite-ingestion"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - an endpoint, not a secret
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_LIFETIME = 3600  # Google refuses assertions valid for longer than an hour


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


class GoogleToken(OAuth2Token):
    """An access token for one service account and scope."""

    def __init__(self, account: ServiceAccount, scope: str = INGESTION_SCOPE) -> None:
        uri = account.token_uri
        super().__init__(
            uri, target=f"Google token endpoint {uri}", principal=f"service account {account.client_email}"
        )
        self.account = account
        self.scope = scope

    def grant(self) -> Mapping[str, str]:
        return {
            "grant_type": JWT_BEARER,
            "assertion": jwt_assertion(self.account, self.scope, int(time.time())),
        }
