"""The ``entra_id`` risk source: Entra ID Protection's risky users and their risk levels, page by page."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Final
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSession,
    OAuth2Token,
    excerpt,
    json_error,
    make_session,
    read_at_most,
    read_body,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    AuthError,
    Duration,
    Health,
    PluginContext,
    RiskPage,
    RiskRecord,
    RiskScale,
    RiskSource,
    Size,
    TransientError,
)

LEVELS: Final = {"low": 875.0, "medium": 625.0, "high": 375.0}
"""Entra's risk levels at the medians of Netskope's bands (as CE's microsoft_entra_id_ztre)."""
_RISKY_USERS = "/v1.0/identityProtection/riskyUsers"
_ATTRIBUTE_CHARS = 200
_Url = Annotated[str, Field(pattern=r"^https?://[^/?#]+/?$")]


class EntraIdOptions(ConnectionOptions):
    """Options of the ``entra_id`` risk source (see the package's docstring)."""

    tenant_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]{1,100}$")]
    client_id: Annotated[str, Field(min_length=1, max_length=100)]
    client_secret: SecretStr
    authority: _Url = "https://login.microsoftonline.com"
    graph_url: _Url = "https://graph.microsoft.com"
    scope: Annotated[str, Field(min_length=1)] = "https://graph.microsoft.com/.default"
    filter: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    page_size: Annotated[int, Field(ge=1, le=500)] = 500
    max_pages: Annotated[int, Field(ge=1)] = 1000
    max_users: Annotated[int, Field(ge=1)] = 100_000
    max_body: Annotated[Size, Field(ge=1024)] = 16 * 1024**2
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_retry_wait: Duration = 60.0


class GraphToken(OAuth2Token):
    """An app-only Graph token for one app registration (client credentials)."""

    def __init__(self, options: EntraIdOptions) -> None:
        url = f"{options.authority.rstrip('/')}/{options.tenant_id}/oauth2/v2.0/token"
        super().__init__(
            url, target=f"Entra ID token endpoint {url}", principal=f"client_id {options.client_id}"
        )
        self._options = options

    def grant(self) -> Mapping[str, str]:
        return {
            "client_id": self._options.client_id,
            "client_secret": self._options.client_secret.get_secret_value(),
            "grant_type": "client_credentials",
            "scope": self._options.scope,
        }


class EntraIdSource(HttpSession, RiskSource[EntraIdOptions]):
    """Risk levels (low/medium/high) of the users Entra ID Protection holds at risk."""

    api_version = 1
    entities = frozenset({"user"})
    scale = RiskScale(labels=dict(LEVELS))

    def __init__(self, options: EntraIdOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.graph = options.graph_url.rstrip("/")
        self.token = GraphToken(options)

    def new_session(self) -> aiohttp.ClientSession:
        """A session without credentials: each Graph request carries the current bearer token."""
        return make_session(self.options, self.context.base_dir, Accept="application/json")

    async def health(self) -> Health:
        try:
            body = await self._get(f"{self.graph}{_RISKY_USERS}?{urlencode({'$top': 1}, quote_via=quote)}")
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        if not isinstance(body.get("value"), list):
            return Health(ok=False, detail=f"Graph GET {_RISKY_USERS} answered no value list")
        return Health(ok=True, detail=f"Entra ID tenant {self.options.tenant_id}")

    async def pull(self) -> AsyncIterator[RiskPage]:
        opts = self.options
        query: dict[str, Any] = {"$top": opts.page_size}
        if opts.filter is not None:
            query["$filter"] = opts.filter
        url = f"{self.graph}{_RISKY_USERS}?{urlencode(query, quote_via=quote)}"
        visited: set[str] = set()
        seen: set[str] = set()
        read = 0
        for _ in range(opts.max_pages):
            visited.add(url)
            body = await self._get(url)
            users = body.get("value")
            if not isinstance(users, list):
                raise TransientError(
                    f"Graph GET {_RISKY_USERS} answered no value list: {excerpt(orjson.dumps(body))}"
                )
            records: list[RiskRecord] = []
            refused: list[tuple[str, str]] = []
            for user in users[: opts.max_users - read]:
                read += 1
                record, why = read_risky_user(user)
                if record is not None and record.key in seen:
                    refused.append((record.key, "userPrincipalName seen twice in one poll"))
                elif record is not None:
                    seen.add(record.key)
                    records.append(record)
                elif why:
                    refused.append((_what(user), why))
            yield RiskPage(records, refused)
            following = self._next(body, visited)
            if following is None:
                return
            if read >= opts.max_users:
                self.context.log.warning("entra_id.max_users_reached", users=opts.max_users)
                return
            url = following
        self.context.log.warning("entra_id.max_pages_reached", pages=opts.max_pages)

    def _next(self, body: dict[str, Any], visited: set[str]) -> str | None:
        following = body.get("@odata.nextLink")
        if following is None:
            return None
        try:
            off = (
                not isinstance(following, str)
                or _origin(following) != _origin(self.graph)
                or urlsplit(following).path != _RISKY_USERS
            )
        except ValueError:
            off = True
        if off or not isinstance(following, str):
            shown = following if isinstance(following, str) else repr(following)
            raise TransientError(
                f"Graph GET {_RISKY_USERS} answered an @odata.nextLink off {self.graph}{_RISKY_USERS}"
                f" ({excerpt(shown, 80)}); the token is only sent there"
            )
        if following in visited:
            raise TransientError(f"Graph GET {_RISKY_USERS} answered an @odata.nextLink it gave before")
        return following

    async def _get(self, url: str) -> dict[str, Any]:
        """``GET url`` with the token (a fresh one after a 401), as a JSON object; short waits retried."""
        opts = self.options
        target = f"Graph GET {_RISKY_USERS}"
        renewed = False
        attempt = 0
        while True:
            token = await self.token.get(self.session())
            try:
                async with self.session().get(
                    url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False
                ) as response:
                    status, headers = response.status, response.headers
                    if 200 <= status < 300:
                        raw = await read_body(response, target, opts.max_body)
                    else:
                        raw = await read_at_most(response, ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, target) from exc
            if 200 <= status < 300:
                return _object(raw, target, status)
            code, message = json_error(raw, "code")
            said = (
                f"{target} answered HTTP {status}"
                + (f" {code}" if code else "")
                + f": {message or '(no message)'}"
            )
            if status == 401 and not renewed:
                self.token.invalidate()
                renewed = True
                continue
            if status == 401:
                raise AuthError(f"{said} (a fresh token was refused too; client_id {opts.client_id})")
            error = status_error(status, said, headers, target)
            wait = error.retry_after if isinstance(error, TransientError) else None
            if wait is not None and wait <= opts.max_retry_wait and attempt < opts.retries:
                attempt += 1
                self.context.log.info("entra_id.retry_after", status=status, wait=wait)
                await asyncio.sleep(wait)
                continue
            raise error


def read_risky_user(user: Any) -> tuple[RiskRecord | None, str]:
    """A riskyUser as a record; None and "" for no record (none, deleted), None and why for the unreadable."""
    if not isinstance(user, dict):
        return None, "not an object"
    level, why = _level(user)
    if level is None:
        return None, why
    principal = _text(user.get("userPrincipalName")).lower()
    if not principal:
        return None, "no userPrincipalName"
    attributes = {
        field: text
        for field, text in (
            ("entra_id", _text(user.get("id"))),
            ("name", _text(user.get("userDisplayName"))),
            ("risk_state", _text(user.get("riskState"))),
            ("risk_detail", _text(user.get("riskDetail"))),
        )
        if text
    }
    return RiskRecord(
        entity="user",
        key=principal,
        label=level,
        seen=_timestamp(user.get("riskLastUpdatedDateTime")),
        attributes=attributes,
    ), ""


def _level(user: dict[str, Any]) -> tuple[str | None, str]:
    """A riskyUser's level (lower-cased), or None and why not ("" when there is simply no risk)."""
    level = user.get("riskLevel")
    if user.get("isDeleted") is True:
        return None, ""
    if not isinstance(level, str):
        return None, "no riskLevel"
    level = level.strip().lower()
    if level in LEVELS:
        return level, ""
    if level == "none":
        return None, ""
    if level == "hidden":
        return None, "riskLevel hidden (the tenant's licence hides it: Entra ID P2 is needed)"
    return None, f"unknown riskLevel {excerpt(level, 20)!r}"


def _timestamp(value: Any) -> float | None:
    """An ISO 8601 date-time (``2026-12-01T10:00:00.123Z``) as epoch seconds; None when unreadable."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _object(raw: bytes, target: str, status: int) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TransientError(
            f"{target} answered HTTP {status} with a body that is not JSON: {excerpt(raw) or '(empty)'}"
        ) from None
    if not isinstance(body, dict):
        raise TransientError(f"{target} answered JSON that is not an object: {excerpt(raw)}")
    return body


def _text(value: Any) -> str:
    return " ".join(value.split())[:_ATTRIBUTE_CHARS] if isinstance(value, str) else ""


def _what(user: Any) -> str:
    if isinstance(user, dict):
        for field in ("userPrincipalName", "id"):
            if _text(user.get(field)):
                return excerpt(_text(user.get(field)), 80)
    return excerpt(orjson.dumps(user, default=str), 80)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port
