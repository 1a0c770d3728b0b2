"""A small OpenID Connect provider for the single-sign-on tests: discovery, an authorisation endpoint that
signs in the user the test names at once, a token endpoint that checks the code, the client and the PKCE
verifier, and a JWKS. ID tokens are RS256 JWTs signed with a key made at start.

``tamper`` makes the next ID tokens wrong in one way (``signature``, ``nonce``, ``expired``, ``issuer``,
``audience``, ``alg_none``, ``unknown_key``): what the client must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

__all__ = ["FakeIdentityProvider"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str
    claims: dict[str, Any]


class FakeIdentityProvider(FakeHttpServer):
    """An OpenID Connect provider for one confidential client."""

    def __init__(self, client_id: str = "ce-daemon", client_secret: str | None = None) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(18)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "key-1"
        self.claims: dict[str, Any] = {"sub": "u-1", "email": "alice@example.com", "groups": ["soc"]}
        """Who the authorisation endpoint signs in."""
        self.tamper: str | None = None
        self._grants: dict[str, _Grant] = {}
        self.token_requests: list[dict[str, str]] = []

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.get("/.well-known/openid-configuration", self._discovery),
            web.get("/authorize", self._authorize),
            web.post("/token", self._token),
            web.get("/jwks", self._jwks),
        ]

    async def _discovery(self, request: web.Request) -> web.Response:
        base = self.url
        return json_response({
            "issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks", "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"], "id_token_signing_alg_values_supported": ["RS256"],
        })  # fmt: skip

    async def _jwks(self, request: web.Request) -> web.Response:
        numbers = self.key.public_key().public_numbers()
        jwk = {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
               "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
               "e": _b64(numbers.e.to_bytes(3, "big"))}  # fmt: skip
        return json_response({"keys": [jwk]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("response_type") != "code" or q.get("client_id") != self.client_id:
            return json_response({"error": "unauthorized_client"}, 400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return json_response({"error": "invalid_request", "error_description": "PKCE S256 required"}, 400)
        if "openid" not in q.get("scope", "").split():
            return json_response({"error": "invalid_scope"}, 400)
        code = secrets.token_urlsafe(16)
        self._grants[code] = _Grant(
            self.client_id, q["redirect_uri"], q.get("nonce", ""), q["code_challenge"], dict(self.claims)
        )
        separator = "&" if "?" in q["redirect_uri"] else "?"
        raise web.HTTPFound(f"{q['redirect_uri']}{separator}code={code}&state={q.get('state', '')}")

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            return json_response({"error": "invalid_client"}, 401)
        grant = self._grants.pop(form.get("code", ""), None)  # a code is good once
        if grant is None or form.get("grant_type") != "authorization_code":
            return json_response({"error": "invalid_grant"}, 400)
        if form.get("redirect_uri") != grant.redirect_uri:
            return json_response({"error": "invalid_grant", "error_description": "redirect_uri differs"}, 400)
        verifier = form.get("code_verifier", "").encode()
        if _b64(hashlib.sha256(verifier).digest()) != grant.challenge:
            return json_response({"error": "invalid_grant", "error_description": "PKCE verifier"}, 400)
        return json_response({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                              "id_token": self.id_token(grant)})  # fmt: skip

    def id_token(self, grant: _Grant) -> str:
        """The signed ID token of ``grant`` (as :attr:`tamper` says)."""
        now = int(time.time())
        claims = {"iss": self.url, "aud": grant.client_id, "iat": now, "exp": now + 300, "nonce": grant.nonce,
                  **grant.claims}  # fmt: skip
        header: dict[str, Any] = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        match self.tamper:
            case "nonce":
                claims["nonce"] = "another"
            case "expired":
                claims["exp"] = now - 3600
            case "issuer":
                claims["iss"] = "https://evil.example"
            case "audience":
                claims["aud"] = "another-client"
            case "alg_none":
                header["alg"] = "none"
            case "unknown_key":
                header["kid"] = "key-2"
        signed = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
        signature = self.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        if self.tamper == "signature":
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        if self.tamper == "alg_none":
            return signed + "."
        return f"{signed}.{_b64(signature)}"
