"""Roles, API tokens and password hashes: the secrets themselves, never stored or shown in clear.

**API tokens** are 256 random bits, shown once: ``ced_<id>_<secret>``. The ``ced_`` prefix lets a
secret scanner recognise a leaked one; ``<id>`` (public, 12 hex digits) finds the row; the secret is
stored as HMAC-SHA-256 keyed with a random salt of its own. A fast keyed hash is enough here, unlike
for passwords: a key-stretching KDF slows down guessing a *low*-entropy secret, and no one guesses
256 random bits, stretched or not, while a fast hash keeps every API request cheap. The stored
digest is compared with :func:`hmac.compare_digest`, in constant time.

**Passwords** are chosen by people, so they get a memory-hard KDF: scrypt (RFC 7914, in the standard
library) with N=2**15, r=8, p=1 — 32 MiB and some 50-100 ms per hash, OWASP's recommended floor
for scrypt — a 16-byte random salt and a 32-byte key, stored as ``scrypt$N$r$p$salt$key`` so that the
parameters can be raised later without breaking stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

TOKEN_PREFIX = "ced_"  # noqa: S105 - the public prefix of every token, not a secret
_TOKEN = re.compile(r"ced_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024**2  # above the 32 MiB these parameters take (OpenSSL's default cap is 32 MiB)
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
"""Longer passwords are refused before hashing: a megabyte "password" is work for the server, not security."""


class Role(StrEnum):
    """What a credential may do: each role may do what the ones below it may."""

    VIEWER = "viewer"
    """Read: health, metrics, every view."""
    OPERATOR = "operator"
    """Act on the pipeline: approve, retry, mute, replay, reload."""
    ADMIN = "admin"
    """Manage who may do what: tokens and users."""

    @property
    def rank(self) -> int:
        """Its place in viewer < operator < admin."""
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return self.rank >= needed.rank


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from: a token's or a user's name, its role, and how it proved it."""

    name: str
    role: Role
    kind: Literal["token", "session"]
    csrf: str | None = None
    """The session's CSRF token (sessions only): every write made with the cookie must repeat it."""

    @property
    def actor(self) -> str:
        """How the audit log names it: ``token:NAME`` or ``user:NAME``."""
        return f"{'token' if self.kind == 'token' else 'user'}:{self.name}"


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just made: what to store (``token_id``, ``salt``, ``digest``) and the secret to show once."""

    token_id: str
    salt: str
    digest: str
    secret: str


def new_token() -> NewToken:
    """A fresh API token and what to store of it."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return NewToken(token_id, salt, token_digest(salt, secret), f"{TOKEN_PREFIX}{token_id}_{secret}")


def parse_token(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a token as written, or None when it cannot be one of ours."""
    match = _TOKEN.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


def token_digest(salt: str, secret: str) -> str:
    """The stored form of a token's secret: HMAC-SHA-256 keyed with its salt (hex)."""
    return hmac.new(bytes.fromhex(salt), secret.encode("ascii"), hashlib.sha256).hexdigest()


def token_matches(salt: str, digest: str, secret: str) -> bool:
    """Whether ``secret`` is the token stored as ``salt``/``digest`` (constant time)."""
    return hmac.compare_digest(token_digest(salt, secret), digest)


def hash_password(password: str) -> str:
    """The stored form of ``password`` (see the module's docstring for the parameters)."""
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)))


def password_matches(stored: str | None, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant time in the key comparison).

    With ``stored`` None (no such user) a hash is computed all the same, so that the time taken does
    not tell whether a user exists.
    """
    if stored is None:
        hash_password(password[:MAX_PASSWORD])
        return False
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = _scrypt(password[:MAX_PASSWORD], _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(computed, _unb64(key))


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be set (too short, too long), or None."""
    if len(password) < MIN_PASSWORD:
        return f"a password has at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"a password has at most {MAX_PASSWORD} characters"
    return None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueError("not base64") from exc
