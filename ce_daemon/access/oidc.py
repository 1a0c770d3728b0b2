"""Single sign-on for the dashboard: OpenID Connect's authorisation-code flow with PKCE (RFC 7636).

``GET /login/oidc?next=…`` sends the browser to the provider's authorisation endpoint with a fresh
``state``, ``nonce`` and S256 code challenge (kept here, in memory, for ``PENDING_TTL`` seconds: a login
is finished on the node that began it). ``GET /login/oidc/callback`` takes the code back: the ``state``
must be one this listener issued and not used yet; the code is exchanged at the token endpoint with
the PKCE verifier (and the client secret, HTTP Basic, when there is one); the ID token must be an RS256
JWT signed by a key of the provider's JWKS, issued by the configured issuer, for this client, not
expired, carrying the nonce. The role is the highest one whose configured values the role claim
holds; none, and the login is refused. The session it opens holds that role (its user is not a local
one: ``sso:<name>``).

What the provider answers is bounded (size, time), and its words quoted in errors are scrubbed. The
provider's endpoints come from its discovery document, fetched from the issuer over TLS (loopback may
be plain HTTP, for tests): the client secret goes only to the token endpoint it names.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import orjson
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ce_daemon.access.credentials import Role
from ce_daemon.config.model import OidcSettings
from ce_daemon.redact import scrub

__all__ = ["LoginRefusedError", "OidcClient", "SignedIn"]

log = structlog.get_logger("ce_daemon.access.oidc")

PENDING_TTL: Final = 600.0
PENDING_MAX: Final = 10_000
ANSWER_MAX: Final = 1 << 20
DISCOVERY_TTL: Final = 3600.0
LEEWAY: Final = 60.0
"""Seconds of clock skew allowed on ``exp``, ``iat`` and ``nbf``."""


class LoginRefusedError(Exception):
    """A single-sign-on login that cannot be completed, with why (no secret in it)."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who the provider says logged in, and the role the claim gives."""

    name: str
    role: Role
    next: str


@dataclass(frozen=True, slots=True)
class _Pending:
    nonce: str
    verifier: str
    next: str
    redirect: str
    expires: float


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise LoginRefusedError("the ID token is not base64url") from exc


class OidcClient:
    """The dashboard's OpenID Connect client for one provider."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._pending: dict[str, _Pending] = {}
        self._discovery: dict[str, Any] | None = None
        self._discovered = 0.0
        self._keys: dict[str, rsa.RSAPublicKey] = {}

    # -- the provider's documents -----------------------------------------------------------------

    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> Any:
        async with session.get(url, allow_redirects=False) as answer:
            body = await answer.content.read(ANSWER_MAX + 1)
            if answer.status != 200:
                raise LoginRefusedError(f"{url} answered HTTP {answer.status}")
        if len(body) > ANSWER_MAX:
            raise LoginRefusedError(f"{url} answered more than {ANSWER_MAX} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise LoginRefusedError(f"{url} answered no JSON") from exc

    async def discovery(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """The provider's configuration (cached for an hour); its endpoints are what the flow uses."""
        if self._discovery is not None and time.monotonic() - self._discovered < DISCOVERY_TTL:
            return self._discovery
        found = await self._get_json(session, self.settings.issuer + "/.well-known/openid-configuration")
        if not isinstance(found, dict) or str(found.get("issuer", "")).rstrip("/") != self.settings.issuer:
            raise LoginRefusedError("the provider's discovery document names another issuer")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(found.get(key), str) or not found[key].startswith(("https://", "http://")):
                raise LoginRefusedError(f"the provider's discovery document has no {key}")
        self._discovery, self._discovered = found, time.monotonic()
        return found

    async def _key(self, session: aiohttp.ClientSession, kid: str) -> rsa.RSAPublicKey:
        if kid not in self._keys:  # a key not seen yet: the provider may have rotated, read the set again
            jwks = await self._get_json(session, (await self.discovery(session))["jwks_uri"])
            keys = jwks.get("keys") if isinstance(jwks, dict) else None
            for jwk in keys if isinstance(keys, list) else []:
                if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and isinstance(jwk.get("kid"), str):
                    try:
                        n = int.from_bytes(b64url_decode(str(jwk["n"])), "big")
                        e = int.from_bytes(b64url_decode(str(jwk["e"])), "big")
                        self._keys[jwk["kid"]] = rsa.RSAPublicNumbers(e, n).public_key()
                    except (KeyError, ValueError, LoginRefusedError):
                        continue
        if kid not in self._keys:
            raise LoginRefusedError("the ID token is signed with a key the provider does not publish")
        return self._keys[kid]

    # -- the flow ---------------------------------------------------------------------------------

    async def begin(self, session: aiohttp.ClientSession, redirect: str, back: str) -> str:
        """Where to send the browser: the authorisation endpoint with this login's state and challenge."""
        now = time.time()
        self._pending = {k: p for k, p in self._pending.items() if p.expires > now}
        if len(self._pending) >= PENDING_MAX:
            raise LoginRefusedError("too many logins under way: try again in a few minutes")
        state, nonce, verifier = (
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
        )
        self._pending[state] = _Pending(nonce, verifier, back, redirect, now + PENDING_TTL)
        challenge = b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        query = {
            "response_type": "code", "client_id": self.settings.client_id, "redirect_uri": redirect,
            "scope": " ".join(self.settings.scopes), "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        }  # fmt: skip
        return f"{(await self.discovery(session))['authorization_endpoint']}?{urlencode(query)}"

    async def finish(self, session: aiohttp.ClientSession, query: dict[str, str]) -> SignedIn:
        """The login the provider sent back (``code`` and ``state``), checked; :class:`LoginRefusedError`."""
        pending = self._pending.pop(query.get("state", ""), None)
        if pending is None or pending.expires < time.time():
            raise LoginRefusedError("this login was not begun here, was finished already, or took too long")
        if "error" in query:
            raise LoginRefusedError(f"the provider refused the login: {scrub(query['error'])[:100]}")
        code = query.get("code")
        if not code:
            raise LoginRefusedError("the provider sent no code")
        token_endpoint = (await self.discovery(session))["token_endpoint"]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect,
                "client_id": self.settings.client_id, "code_verifier": pending.verifier}  # fmt: skip
        auth = None
        if self.settings.client_secret is not None:
            auth = aiohttp.BasicAuth(self.settings.client_id, self.settings.client_secret.get_secret_value())
        async with session.post(token_endpoint, data=form, auth=auth, allow_redirects=False) as answer:
            body = await answer.content.read(ANSWER_MAX + 1)
            if answer.status != 200 or len(body) > ANSWER_MAX:
                raise LoginRefusedError(f"the token endpoint answered HTTP {answer.status}")
        try:
            tokens = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise LoginRefusedError("the token endpoint answered no JSON") from exc
        id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
        if not isinstance(id_token, str):
            raise LoginRefusedError("the token endpoint answered no id_token")
        claims = await self.verify(session, id_token, pending.nonce)
        return SignedIn(self._name(claims), self._role(claims), pending.next)

    async def verify(self, session: aiohttp.ClientSession, token: str, nonce: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature, issuer, audience, times and nonce hold."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > ANSWER_MAX:
            raise LoginRefusedError("the ID token is not a signed JWT")
        try:
            header, claims = orjson.loads(b64url_decode(parts[0])), orjson.loads(b64url_decode(parts[1]))
        except orjson.JSONDecodeError as exc:
            raise LoginRefusedError("the ID token is not JSON") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise LoginRefusedError("the ID token is not a JWT")
        if header.get("alg") != "RS256":  # never `none`, never an HMAC keyed with something public
            raise LoginRefusedError(f"the ID token's algorithm {str(header.get('alg'))[:20]!r} is not RS256")
        key = await self._key(session, str(header.get("kid", "")))
        try:
            key.verify(b64url_decode(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(),
                       hashes.SHA256())  # fmt: skip
        except (InvalidSignature, ValueError) as exc:
            raise LoginRefusedError("the ID token's signature does not hold") from exc
        now = time.time()
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        checks = (
            (str(claims.get("iss", "")).rstrip("/") == self.settings.issuer, "was issued by another issuer"),
            (self.settings.client_id in audiences, "is for another client"),
            (_number(claims.get("exp")) > now - LEEWAY, "has expired"),
            (_number(claims.get("iat"), now) < now + LEEWAY, "was issued in the future"),
            (_number(claims.get("nbf"), 0) < now + LEEWAY, "is not valid yet"),
            (claims.get("nonce") == nonce, "carries another nonce (a replayed token?)"),
        )
        for holds, why in checks:
            if not holds:
                raise LoginRefusedError(f"the ID token {why}")
        return claims

    def _name(self, claims: dict[str, Any]) -> str:
        name = claims.get(self.settings.name_claim) or claims.get("sub")
        if not isinstance(name, str) or not name or len(name) > 200:
            raise LoginRefusedError(f"the ID token names nobody ({self.settings.name_claim}, sub)")
        return "sso:" + name

    def _role(self, claims: dict[str, Any]) -> Role:
        value = claims.get(self.settings.role_claim)
        held = (
            {value}
            if isinstance(value, str)
            else {str(v) for v in value}
            if isinstance(value, list)
            else set()
        )
        granted = [Role(role) for role, values in self.settings.roles.items() if held & set(values)]
        if not granted:
            raise LoginRefusedError(f"no role is given to this user (claim {self.settings.role_claim!r})")
        return max(granted, key=lambda role: role.rank)


def _number(value: object, default: float = 0.0) -> float:
    if isinstance(value, bool):
        return default
    return float(value) if isinstance(value, int | float) else default
