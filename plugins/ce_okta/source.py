"""The ``okta`` risk source: the org's users, and each one's risk level (bounded, rate-limited)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote, urlencode, urljoin, urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    HttpOptions,
    HttpSession,
    excerpt,
    make_session,
    read_at_most,
    read_body,
    retry_after,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    Duration,
    Health,
    PluginContext,
    RiskPage,
    RiskRecord,
    RiskScale,
    RiskSource,
    Size,
    TransientError,
    register_secret,
)

LEVELS: Final = {"LOW": 875.0, "MEDIUM": 625.0, "HIGH": 375.0}
"""Okta's risk levels at the medians of Netskope's bands (as CE's okta_ztre)."""
_USERS = "/api/v1/users"
_ATTRIBUTE_CHARS = 200


class OktaOptions(HttpOptions):
    """Options of the ``okta`` risk source (see the package's docstring)."""

    token: SecretStr
    key: Literal["email", "login"] = "email"
    filter: Annotated[str, Field(min_length=1, max_length=1000)] | None = 'status eq "ACTIVE"'
    page_size: Annotated[int, Field(ge=1, le=200)] = 200
    max_users: Annotated[int, Field(ge=1)] = 10_000
    concurrency: Annotated[int, Field(ge=1, le=4)] = 4
    min_remaining: Annotated[int, Field(ge=0)] = 1
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    max_retry_wait: Duration = 60.0
    max_body: Annotated[Size, Field(ge=1024)] = 8 * 1024**2


class _Answer:
    __slots__ = ("body", "next", "status")

    def __init__(self, status: int, body: Any, following: str | None) -> None:
        self.status, self.body, self.next = status, body, following


class OktaSource(HttpSession, RiskSource[OktaOptions]):
    """Risk levels (LOW/MEDIUM/HIGH) of an Okta org's users, from Identity Threat Protection."""

    api_version = 1
    entities = frozenset({"user"})
    scale = RiskScale(labels=dict(LEVELS))

    def __init__(self, options: OktaOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.base = options.url.rstrip("/")
        self._not_before = 0.0  # monotonic time before which no request leaves (rate limit)

    def new_session(self) -> aiohttp.ClientSession:
        """A session sending ``Authorization: SSWS <token>``."""
        token = self.options.token.get_secret_value()
        register_secret(token)
        return make_session(
            self.options, self.context.base_dir, Authorization=f"SSWS {token}", Accept="application/json"
        )

    async def health(self) -> Health:
        try:
            answer = await self._get(f"{self.base}{_USERS}?limit=1")
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        if not isinstance(answer.body, list):
            return Health(ok=False, detail=f"Okta GET {_USERS} answered no list of users")
        return Health(ok=True, detail=f"Okta org {self.base}")

    async def pull(self) -> AsyncIterator[RiskPage]:
        opts = self.options
        query: dict[str, Any] = {"limit": opts.page_size}
        if opts.filter is not None:
            query["filter"] = opts.filter
        url: str | None = f"{self.base}{_USERS}?{urlencode(query, quote_via=quote)}"
        visited: set[str] = set()
        seen: set[str] = set()
        listed = 0
        while url is not None:
            visited.add(url)
            answer = await self._get(url)
            if not isinstance(answer.body, list):
                raise TransientError(
                    f"Okta GET {_USERS} answered no list of users: {excerpt(orjson.dumps(answer.body))}"
                )
            users = answer.body[: opts.max_users - listed]
            listed += len(users)
            yield await self._page(users, seen)
            url = self._next(answer.next, visited, url)
            if url is not None and listed >= opts.max_users:
                self.context.log.warning("okta.max_users_reached", users=opts.max_users)
                return

    async def _page(self, users: Sequence[Any], seen: set[str]) -> RiskPage:
        """The records of one page of users: their risks asked ``concurrency`` at a time."""
        gate = asyncio.Semaphore(self.options.concurrency)

        async def one(user: Any) -> tuple[RiskRecord | None, tuple[str, str] | None]:
            identity, why = read_user(user, self.options.key)
            if identity is None:
                return None, (_what(user), why)
            async with gate:
                answer = await self._get(
                    f"{self.base}{_USERS}/{quote(identity.user_id, safe='')}/risk", accept=(404,)
                )
            if answer.status == 404:
                return None, (identity.key, "user gone (404) before its risk was read")
            record, why = read_risk(answer.body, identity)
            if record is None and why:
                return None, (identity.key, why)
            return record, None

        tasks = [asyncio.ensure_future(one(user)) for user in users]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        records: list[RiskRecord] = []
        refused: list[tuple[str, str]] = []
        for record, refusal in results:
            if record is not None and record.key in seen:
                refused.append((record.key, f"{self.options.key} seen twice in one poll"))
            elif record is not None:
                seen.add(record.key)
                records.append(record)
            elif refusal is not None:
                refused.append(refusal)
        return RiskPage(records, refused)

    def _next(self, following: str | None, visited: set[str], current: str) -> str | None:
        if following is None:
            return None
        try:
            url = urljoin(current, following)
            parts = urlsplit(url)
            origin = _origin(url)
        except ValueError:
            raise TransientError(f"Okta GET {_USERS} answered a next link that is no URL") from None
        if origin != _origin(self.base) or parts.path != urlsplit(self.base).path + _USERS:
            raise TransientError(
                f"Okta GET {_USERS} answered a next link to another origin or path"
                f" ({excerpt(parts.netloc + parts.path, 80)}); the token is only sent to {self.base}{_USERS}"
            )
        if url in visited:
            raise TransientError(f"Okta GET {_USERS} answered a next link it gave before")
        return url

    async def _wait_for_gate(self, target: str) -> None:
        delay = self._not_before - time.monotonic()
        if delay > self.options.max_retry_wait:
            raise TransientError(
                f"{target}: Okta's rate limit is spent for {delay:.0f} s more", retry_after=delay
            )
        if delay > 0:
            await asyncio.sleep(delay)

    def _hold_until(self, wait: float) -> None:
        self._not_before = max(self._not_before, time.monotonic() + wait)

    async def _get(self, url: str, *, accept: Sequence[int] = ()) -> _Answer:
        """``GET url`` parsed as JSON, with the rate limits honoured (see the package's docstring)."""
        opts = self.options
        path = urlsplit(url).path
        target = f"Okta GET {_USERS}/{{id}}/risk" if path.endswith("/risk") else f"Okta GET {path}"
        for attempt in range(opts.retries + 1):
            await self._wait_for_gate(target)
            try:
                async with self.session().get(url, allow_redirects=False) as response:
                    status, headers = response.status, response.headers
                    following = next_link(response.headers.getall("Link", []))
                    if 200 <= status < 300 or status in accept:
                        raw = await read_body(response, target, opts.max_body)
                    else:
                        raw = await read_at_most(response, ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, target) from exc
            reset = _reset_in(headers)
            remaining = _int(headers.get("X-Rate-Limit-Remaining"))
            if remaining is not None and remaining <= opts.min_remaining and reset is not None:
                self._hold_until(reset)
            if status in accept:
                return _Answer(status, None, None)
            if 200 <= status < 300:
                return _Answer(status, _json(raw, target, status), following)
            message = f"{target} answered HTTP {status}: {_message(raw)}"
            if status == 429:
                wait = retry_after(headers)
                wait = wait if wait is not None else reset
                if wait is not None and wait <= opts.max_retry_wait and attempt < opts.retries:
                    self.context.log.info("okta.rate_limited", wait=wait)
                    self._hold_until(wait)
                    continue
                raise TransientError(message, retry_after=wait)
            error = status_error(status, message, headers, target)
            wait = error.retry_after if isinstance(error, TransientError) else None
            if wait is not None and wait <= opts.max_retry_wait and attempt < opts.retries:
                self._hold_until(wait)
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover


class Identity:
    """A listed user: Okta's id and the entity key, and what the record will carry."""

    __slots__ = ("attributes", "key", "user_id")

    def __init__(self, user_id: str, key: str, attributes: Mapping[str, str]) -> None:
        self.user_id, self.key, self.attributes = user_id, key, attributes


def read_user(user: Any, key: str) -> tuple[Identity | None, str]:
    """A user of the list as an :class:`Identity`, or None and why it cannot be one."""
    if not isinstance(user, dict):
        return None, "not an object"
    user_id = user.get("id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > 100:
        return None, "no id"
    profile = user.get("profile")
    profile = profile if isinstance(profile, dict) else {}
    value = _text(profile.get(key)).lower()
    if not value:
        return None, f"no {key} in the profile"
    name = " ".join(
        part for part in (_text(profile.get("firstName")), _text(profile.get("lastName"))) if part
    )
    attributes = {
        field: text
        for field, text in (
            ("okta_id", _text(user_id)),
            ("login", _text(profile.get("login"))),
            ("name", name),
            ("status", _text(user.get("status"))),
        )
        if text
    }
    return Identity(user_id, value, attributes), ""


def read_risk(body: Any, identity: Identity) -> tuple[RiskRecord | None, str]:
    """A user's risk answer as a record; None and "" for NONE (no record), None and why for the unreadable."""
    if not isinstance(body, dict):
        return None, "risk answer not an object"
    level = body.get("riskLevel")
    if level is None:
        return None, "no riskLevel"
    if not isinstance(level, str):
        return None, "riskLevel not text"
    level = level.strip().upper()
    if level == "NONE":
        return None, ""
    if level not in LEVELS:
        return None, f"unknown riskLevel {excerpt(level, 20)!r}"
    attributes = dict(identity.attributes)
    reason = _text(body.get("reason"))
    if reason:
        attributes["reason"] = excerpt(reason, _ATTRIBUTE_CHARS)
    return RiskRecord(entity="user", key=identity.key, label=level, attributes=attributes), ""


_LINK = re.compile(r"<([^<>]*)>\s*((?:;\s*[^;,]*)*)")
_REL_NEXT = re.compile(r'(?:^|;)\s*rel\s*=\s*"?([^";,]*)"?', re.IGNORECASE)


def next_link(values: Sequence[str]) -> str | None:
    """The ``rel="next"`` target of an answer's ``Link`` headers (RFC 8288), None when there is none."""
    for value in values:
        for match in _LINK.finditer(value[:16_384]):
            rel = _REL_NEXT.search(match.group(2))
            if rel is not None and "next" in rel.group(1).lower().split():
                return match.group(1).strip()
    return None


def _reset_in(headers: Mapping[str, str]) -> float | None:
    """Seconds until ``X-Rate-Limit-Reset`` (epoch seconds), measured against the answer's ``Date``."""
    reset = _int(headers.get("X-Rate-Limit-Reset"))
    if reset is None:
        return None
    now = time.time()
    date = headers.get("Date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            now = email.utils.parsedate_to_datetime(date).timestamp()
    return max(0.0, reset - now)


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip()[:15])


def _json(raw: bytes, target: str, status: int) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TransientError(
            f"{target} answered HTTP {status} with a body that is not JSON: {excerpt(raw) or '(empty)'}"
        ) from None


def _message(raw: bytes) -> str:
    """Okta's error (``errorCode: errorSummary``), or the start of the body."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return excerpt(raw) or "(empty body)"
    if isinstance(parsed, dict) and isinstance(parsed.get("errorSummary"), str):
        code = parsed.get("errorCode")
        return excerpt(
            f"{code}: {parsed['errorSummary']}" if isinstance(code, str) else parsed["errorSummary"]
        )
    return excerpt(raw) or "(empty body)"


def _text(value: Any) -> str:
    return " ".join(value.split())[:_ATTRIBUTE_CHARS] if isinstance(value, str) else ""


def _what(user: Any) -> str:
    if isinstance(user, dict) and isinstance(user.get("id"), str):
        return excerpt(user["id"], 80)
    return excerpt(orjson.dumps(user, default=str), 80)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port
