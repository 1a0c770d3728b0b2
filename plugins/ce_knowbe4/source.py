"""The ``knowbe4`` risk source: the Reporting API's users, page by page, scored by ``current_risk_score``.

:func:`read_users` reads one answer (pure): any JSON a peer sends is either read into records and
refusals or raises :class:`TransientError` (an answer that is not a list of users), nothing else.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    bearer,
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
)

USERS = "/v1/users"
DEFAULT_MAX_BODY = 64 * 1024**2
RATE_LIMIT_RETRIES = 3


class RateLimitedError(TransientError):
    """A 429: waited out inside the poll when short (``retry_after``), else the poll fails."""


class KnowBe4Options(ConnectionOptions):
    """Options of the ``knowbe4`` risk source (see the package's docstring)."""

    token: SecretStr
    region: Literal["us", "eu", "ca", "uk", "de"] = "us"
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    active_only: bool = True
    per_page: Annotated[int, Field(ge=1, le=500)] = 500
    max_pages: Annotated[int, Field(ge=1)] = 10_000
    max_body: Annotated[Size, Field(ge=1024)] = DEFAULT_MAX_BODY
    rate_limit_wait: Annotated[Duration, Field(le=300)] = 10.0

    @property
    def base(self) -> str:
        """The API's base URL, without a trailing slash."""
        return (self.url or f"https://{self.region}.api.knowbe4.com").rstrip("/")


class KnowBe4Source(RiskSource[KnowBe4Options]):
    """Scores users by KnowBe4's ``current_risk_score`` (0-100, higher = riskier)."""

    api_version = 1
    entities = frozenset({"user"})
    scale = RiskScale(low=0, high=100, higher_is_safer=False)

    def __init__(self, options: KnowBe4Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use (with the token)."""
        if self._session is None:
            self._session = make_session(
                self.options,
                self.context.base_dir,
                Authorization=bearer(self.options.token),
                Accept="application/json",
            )
        return self._session

    async def open(self) -> None:
        self.session()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def health(self) -> Health:
        try:
            await self.get({"page": "1", "per_page": "1"})
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"KnowBe4 Reporting API at {self.options.base}")

    async def pull(self) -> AsyncIterator[RiskPage]:
        opts = self.options
        seen: set[str] = set()
        for page in range(1, opts.max_pages + 1):
            params = {"page": str(page), "per_page": str(opts.per_page)}
            if opts.active_only:
                params["status"] = "active"
            body = await self.get(params)
            if isinstance(body, list) and len(body) > opts.per_page:
                raise TransientError(
                    f"KnowBe4 GET {USERS} answered {len(body)} users for a page of {opts.per_page}"
                )
            yield read_users(body, seen, active_only=opts.active_only)
            if len(body) < opts.per_page:
                return
        raise TransientError(
            f"KnowBe4 GET {USERS} had more than max_pages ({opts.max_pages:,}) pages; raise it"
        )

    async def get(self, params: dict[str, str]) -> Any:
        """GET the users with ``params``: the parsed JSON answer, or the error for any other.

        A 429 whose ``Retry-After`` is at most ``rate_limit_wait`` is waited out here, up to three
        times (KnowBe4 allows a few requests a second); a longer one fails the poll.
        """
        for attempt in range(1, RATE_LIMIT_RETRIES + 2):
            try:
                return await self._get(params)
            except RateLimitedError as exc:
                wait = exc.retry_after
                if wait is None or wait > self.options.rate_limit_wait or attempt > RATE_LIMIT_RETRIES:
                    raise
                self.context.log.info("knowbe4.rate_limited", page=params.get("page"), wait=wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(self, params: dict[str, str]) -> Any:
        target = f"KnowBe4 GET {USERS}"
        try:
            async with self.session().get(
                self.options.base + USERS, params=params, allow_redirects=False
            ) as response:
                status, headers = response.status, response.headers
                if 200 <= status < 300:
                    raw = await read_body(response, target, self.options.max_body)
                else:
                    raw = await read_at_most(response, ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        if not 200 <= status < 300:
            message = f"{target} answered HTTP {status}: {_message(raw)}"
            if status == 429:
                raise RateLimitedError(message, retry_after=retry_after(headers))
            raise status_error(status, message, headers, target)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TransientError(
                f"{target} answered HTTP {status} with a body that is not JSON: {excerpt(raw) or '(empty)'}"
            ) from None


def _message(raw: bytes) -> str:
    """KnowBe4's ``message`` (or ``error``), or the start of the body."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return excerpt(raw) or "(empty body)"
    if isinstance(parsed, dict):
        said = parsed.get("message") or parsed.get("error")
        if isinstance(said, str) and said:
            return excerpt(said)
    return excerpt(raw) or "(empty body)"


def read_users(body: Any, seen: set[str], *, active_only: bool = True) -> RiskPage:
    """One page of users read into records; ``seen`` (emails already read this poll) is updated."""
    if not isinstance(body, list):
        raise TransientError(f"KnowBe4 GET {USERS} answered no list of users: {quote(body)}")
    records: list[RiskRecord] = []
    refused: list[tuple[str, str]] = []
    for user in body:
        if not isinstance(user, dict):
            refused.append(("a user", f"not an object: {quote(user, 64)}"))
            continue
        email = user.get("email")
        what = (
            f"user {excerpt(email, 128)}"
            if isinstance(email, str)
            else f"user id {excerpt(str(user.get('id')), 32)}"
        )
        if not isinstance(email, str) or "@" not in email.strip():
            refused.append((what, "no email address"))
            continue
        if active_only and user.get("status") not in (None, "active"):
            continue  # the API was asked for active users only; one that is not is not ours to score
        key = email.strip().lower()
        if key in seen:
            refused.append((what, "listed twice in one poll (the first one is kept)"))
            continue
        raw = user.get("current_risk_score")
        score = number(raw)
        if score is None:
            reason = (
                "no current_risk_score"
                if raw is None
                else f"current_risk_score is not a number: {quote(raw, 64)}"
            )
            refused.append((what, reason))
            continue
        seen.add(key)
        records.append(RiskRecord(entity="user", key=key, score=score, attributes=_attributes(user)))
    return RiskPage(records=records, refused=refused)


def _attributes(user: dict[str, Any]) -> dict[str, str]:
    name = " ".join(p for p in (user.get("first_name"), user.get("last_name")) if isinstance(p, str) and p)
    attributes = {"name": excerpt(name, 255)} if name else {}
    for field in ("department", "job_title", "location", "division"):
        value = user.get(field)
        if isinstance(value, str) and value:
            attributes[field] = excerpt(value, 255)
    return attributes


def number(value: Any) -> float | None:
    """``value`` as a finite float when it is a JSON number (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def quote(value: Any, limit: int = 200) -> str:
    """A value from the peer quoted in a reason: JSON, scrubbed and cut (``repr`` if not JSON-able)."""
    try:
        return excerpt(orjson.dumps(value), limit)
    except TypeError:  # an integer past 64 bits
        return excerpt(repr(value), limit)
