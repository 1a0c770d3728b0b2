"""The access tables (tokens, users, sessions) and the audit log, in the state database (both backends)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ce_daemon import redact
from ce_daemon.access.credentials import (
    Principal,
    Role,
    hash_password,
    new_token,
    parse_token,
    password_matches,
    token_matches,
)
from ce_daemon.store import Migration, Store

__all__ = ["ACCESS_MIGRATIONS", "AccessStore", "AuditLog", "Emit", "NameTakenError", "TokenInfo", "UserInfo"]

log = structlog.get_logger("ce_daemon.audit")

ACCESS_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "access",
        1,
        (
            (
                "CREATE TABLE access_tokens (name {text} PRIMARY KEY, token_id {text} NOT NULL UNIQUE,"
                " role {text} NOT NULL, salt {text} NOT NULL, digest {text} NOT NULL,"
                " created {real} NOT NULL, last_used {real}, revoked {int} NOT NULL DEFAULT 0)"
            ),
            (
                "CREATE TABLE access_users (name {text} PRIMARY KEY, role {text} NOT NULL,"
                " password {text} NOT NULL, created {real} NOT NULL, changed {real} NOT NULL)"
            ),
            # The session id is kept as its SHA-256 only: a copy of the database opens no session. `role`
            # is set for a single-sign-on session (its user is not a local one: the provider gave the role).
            (
                "CREATE TABLE access_sessions (digest {text} PRIMARY KEY, user_name {text} NOT NULL,"
                " csrf {text} NOT NULL, created {real} NOT NULL, expires {real} NOT NULL, role {text})"
            ),
            (
                "CREATE TABLE audit_log (id {id}, at {real} NOT NULL, action {text} NOT NULL,"
                " outcome {text} NOT NULL, actor {text}, address {text}, detail {text})"
            ),
        ),
    ),
)

LAST_USED_EVERY = 60.0
"""A token's ``last_used`` is written at most once a minute: a scraper's every request is not a write."""
DETAIL_LIMIT = 500
_DUMMY_SALT = "00" * 16

Emit = Callable[[str, dict[str, Any]], None]
"""Where an audit event goes besides the table and the app log (the daemon's syslog health channel)."""


class NameTakenError(ValueError):
    """A token or user of that name exists already."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as ``token list`` shows it: never its secret."""

    name: str
    token_id: str
    role: Role
    created: float
    last_used: float | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A local user as ``user list`` shows it: never the password hash."""

    name: str
    role: Role
    created: float
    changed: float


class AccessStore:
    """Tokens, users and sessions over an open :class:`~ce_daemon.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._used: dict[str, float] = {}

    # -- tokens ---------------------------------------------------------------------------------

    async def create_token(self, name: str, role: Role) -> str:
        """Store a new token ``name`` with ``role``; its secret (shown once, stored hashed)."""
        token = new_token()
        async with self.store.transaction() as tx:
            if await tx.fetchval("SELECT 1 FROM access_tokens WHERE name = :name", {"name": name}):
                raise NameTakenError(f"a token named {name!r} exists already (revoked ones keep their name)")
            await tx.execute(
                "INSERT INTO access_tokens (name, token_id, role, salt, digest, created, revoked)"
                " VALUES (:name, :id, :role, :salt, :digest, :now, 0)",
                {
                    "name": name, "id": token.token_id, "role": str(role), "salt": token.salt,
                    "digest": token.digest, "now": time.time(),
                },
            )  # fmt: skip
        return token.secret

    async def tokens(self) -> list[TokenInfo]:
        """Every token, by name."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT name, token_id, role, created, last_used, revoked FROM access_tokens ORDER BY name"
            )
        return [TokenInfo(r[0], r[1], Role(r[2]), r[3], r[4], bool(r[5])) for r in rows]

    async def revoke_token(self, name: str) -> bool:
        """Revoke the token ``name`` for good; False when there is none (or it was revoked already)."""
        async with self.store.transaction() as tx:
            changed = await tx.execute(
                "UPDATE access_tokens SET revoked = 1 WHERE name = :name AND revoked = 0", {"name": name}
            )
        return changed > 0

    async def verify_token(self, text: str) -> Principal | None:
        """Who the bearer token ``text`` is; None when it is malformed, unknown, wrong or revoked."""
        parsed = parse_token(text)
        if parsed is None:
            return None
        token_id, secret = parsed
        async with self.store.read() as tx:
            row = await tx.fetchrow(
                "SELECT name, role, salt, digest, revoked FROM access_tokens WHERE token_id = :id",
                {"id": token_id},
            )
        if row is None:  # the same work as for a known id: the time taken tells nothing either way
            token_matches(_DUMMY_SALT, _DUMMY_SALT, secret)
            return None
        if not token_matches(row[2], row[3], secret) or row[4]:
            return None
        now = time.time()
        if now - self._used.get(token_id, 0.0) >= LAST_USED_EVERY:
            self._used[token_id] = now
            async with self.store.transaction() as tx:
                await tx.execute(
                    "UPDATE access_tokens SET last_used = :now WHERE token_id = :id",
                    {"now": now, "id": token_id},
                )
        return Principal(str(row[0]), Role(row[1]), "token")

    # -- users -----------------------------------------------------------------------------------

    async def add_user(self, name: str, role: Role, password: str) -> None:
        """Add the local user ``name``; :class:`NameTakenError` when one exists."""
        hashed = await asyncio.to_thread(hash_password, password)
        now = time.time()
        async with self.store.transaction() as tx:
            if await tx.fetchval("SELECT 1 FROM access_users WHERE name = :name", {"name": name}):
                raise NameTakenError(f"a user named {name!r} exists already")
            await tx.execute(
                "INSERT INTO access_users (name, role, password, created, changed)"
                " VALUES (:name, :role, :password, :now, :now)",
                {"name": name, "role": str(role), "password": hashed, "now": now},
            )

    async def set_password(self, name: str, password: str) -> bool:
        """Change ``name``'s password and end its sessions; False when there is no such user."""
        hashed = await asyncio.to_thread(hash_password, password)
        async with self.store.transaction() as tx:
            changed = await tx.execute(
                "UPDATE access_users SET password = :password, changed = :now WHERE name = :name",
                {"password": hashed, "now": time.time(), "name": name},
            )
            await tx.execute("DELETE FROM access_sessions WHERE user_name = :name", {"name": name})
        return changed > 0

    async def remove_user(self, name: str) -> bool:
        """Remove ``name`` and end its sessions; False when there is no such user."""
        async with self.store.transaction() as tx:
            changed = await tx.execute("DELETE FROM access_users WHERE name = :name", {"name": name})
            await tx.execute("DELETE FROM access_sessions WHERE user_name = :name", {"name": name})
        return changed > 0

    async def users(self) -> list[UserInfo]:
        """Every local user, by name."""
        async with self.store.read() as tx:
            rows = await tx.fetch("SELECT name, role, created, changed FROM access_users ORDER BY name")
        return [UserInfo(r[0], Role(r[1]), r[2], r[3]) for r in rows]

    async def check_password(self, name: str, password: str) -> Role | None:
        """``name``'s role when ``password`` is theirs, else None (as slow for an unknown user)."""
        async with self.store.read() as tx:
            row = await tx.fetchrow(
                "SELECT role, password FROM access_users WHERE name = :name", {"name": name}
            )
        stored = None if row is None else str(row[1])
        matches = await asyncio.to_thread(password_matches, stored, password)
        return Role(row[0]) if matches and row is not None else None

    # -- sessions --------------------------------------------------------------------------------

    async def open_session(self, name: str, ttl: float, role: Role | None = None) -> tuple[str, str]:
        """A new session of user ``name`` for ``ttl`` seconds: (session id for the cookie, CSRF token).

        ``role`` is given for a single-sign-on user (not a local one): the session holds it."""
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute("DELETE FROM access_sessions WHERE expires < :now", {"now": now})
            await tx.execute(
                "INSERT INTO access_sessions (digest, user_name, csrf, created, expires, role)"
                " VALUES (:digest, :name, :csrf, :now, :expires, :role)",
                {
                    "digest": _session_digest(session),
                    "name": name,
                    "csrf": csrf,
                    "now": now,
                    "expires": now + ttl,
                    "role": None if role is None else str(role),
                },
            )
        return session, csrf

    async def session(self, session: str) -> Principal | None:
        """Who the session cookie ``session`` belongs to (with the user's role now); None when it is over."""
        async with self.store.read() as tx:
            row = await tx.fetchrow(
                "SELECT s.user_name, COALESCE(s.role, u.role), s.csrf, s.expires FROM access_sessions s"
                " LEFT JOIN access_users u ON u.name = s.user_name AND s.role IS NULL"
                " WHERE s.digest = :digest",
                {"digest": _session_digest(session)},
            )
        if row is None or row[1] is None or row[3] < time.time():
            return None  # over, or a local user's session whose user was removed
        return Principal(str(row[0]), Role(row[1]), "session", csrf=str(row[2]))

    async def close_session(self, session: str) -> None:
        """End the session ``session`` (logout)."""
        async with self.store.transaction() as tx:
            await tx.execute(
                "DELETE FROM access_sessions WHERE digest = :digest", {"digest": _session_digest(session)}
            )


def _session_digest(session: str) -> str:
    return hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Whether the CSRF token ``given`` with a write is the session's (constant time)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


class AuditLog:
    """Who did what, when and from where: a row of ``audit_log``, an ``audit.event`` app-log line, and
    (when the daemon gives one) the syslog health channel."""

    def __init__(self, store: Store, emit: Emit | None = None) -> None:
        self.store = store
        self.emit = emit

    async def record(
        self,
        action: str,
        outcome: str = "ok",
        *,
        actor: str | None = None,
        address: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record one event (``detail`` is scrubbed of configured secrets and bounded)."""
        detail = redact.scrub(detail, DETAIL_LIMIT) if detail else None
        fields: dict[str, Any] = {"action": action, "outcome": outcome, "actor": actor, "address": address}
        if detail:
            fields["detail"] = detail
        log.info("audit.event", **fields)
        if self.emit is not None:
            self.emit(f"audit.{action}", fields)
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO audit_log (at, action, outcome, actor, address, detail)"
                " VALUES (:at, :action, :outcome, :actor, :address, :detail)",
                {"at": time.time(), **fields, "detail": detail},
            )

    async def latest(self, limit: int = 100) -> list[dict[str, Any]]:
        """The ``limit`` latest events, oldest first."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT id, at, action, outcome, actor, address, detail FROM audit_log"
                " ORDER BY id DESC LIMIT :n",
                {"n": limit},
            )
        keys = ("id", "at", "action", "outcome", "actor", "address", "detail")
        return [dict(zip(keys, row, strict=True)) for row in reversed(rows)]
