"""The ``proofpoint`` risk source: TAP's Very Attacked People, page by page, scored by attack index.

:func:`read_vap` reads one answer (pure): any JSON a peer sends is either read into records and
refusals or raises :class:`TransientError` (an answer without a ``users`` list), nothing else.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    basic,
    excerpt,
    make_session,
    read_at_most,
    read_body,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    Health,
    PluginContext,
    RiskPage,
    RiskRecord,
    RiskScale,
    RiskSource,
    Size,
    TransientError,
)

VAP = "/v2/people/vap"
DEFAULT_MAX_BODY = 64 * 1024**2


class ProofpointOptions(ConnectionOptions):
    """Options of the ``proofpoint`` risk source (see the package's docstring)."""

    principal: Annotated[str, Field(min_length=1)]
    secret: SecretStr
    url: Annotated[str, Field(pattern=r"^https?://")] = "https://tap-api-v2.proofpoint.com"
    window: Literal[14, 30, 90] = 30
    emails: Literal["all", "first"] = "all"
    page_size: Annotated[int, Field(ge=1, le=1000)] = 1000
    max_pages: Annotated[int, Field(ge=1)] = 100
    max_body: Annotated[Size, Field(ge=1024)] = DEFAULT_MAX_BODY


class ProofpointSource(RiskSource[ProofpointOptions]):
    """Scores users by Proofpoint TAP's attack index (unbounded, higher = more attacked)."""

    api_version = 1
    entities = frozenset({"user"})
    scale = RiskScale(population=True, higher_is_safer=False)

    def __init__(self, options: ProofpointOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use (with the basic credentials)."""
        if self._session is None:
            self._session = make_session(
                self.options,
                self.context.base_dir,
                Authorization=basic(self.options.principal, self.options.secret),
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
        # No call: the People API allows 50 requests a day, a health check must not spend them.
        return Health(ok=True, detail=f"Proofpoint TAP at {self.options.url} (not called: 50 requests a day)")

    async def pull(self) -> AsyncIterator[RiskPage]:
        opts = self.options
        seen: set[str] = set()
        read = 0
        for page in range(1, opts.max_pages + 1):
            params = {"window": str(opts.window), "size": str(opts.page_size), "page": str(page)}
            body = await self.get(params)
            result, count, total = read_vap(body, seen, first_only=opts.emails == "first")
            if count > opts.page_size:
                raise TransientError(
                    f"Proofpoint GET {VAP} answered {count} users for a page of {opts.page_size}"
                )
            read += count
            yield result
            if count < opts.page_size or (total is not None and read >= total):
                return
        raise TransientError(
            f"Proofpoint GET {VAP} had more than max_pages ({opts.max_pages}) pages; raise it"
        )

    async def get(self, params: dict[str, str]) -> Any:
        """GET the VAP list with ``params``: the parsed JSON answer, or the error for any other."""
        target = f"Proofpoint GET {VAP}"
        try:
            async with self.session().get(
                self.options.url.rstrip("/") + VAP, params=params, allow_redirects=False
            ) as response:
                status, headers = response.status, response.headers
                if 200 <= status < 300:
                    raw = await read_body(response, target, self.options.max_body)
                else:
                    raw = await read_at_most(response, ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        if not 200 <= status < 300:
            said = excerpt(raw) or "(empty body)"
            raise status_error(status, f"{target} answered HTTP {status}: {said}", headers, target)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TransientError(
                f"{target} answered HTTP {status} with a body that is not JSON: {excerpt(raw) or '(empty)'}"
            ) from None


def read_vap(body: Any, seen: set[str], *, first_only: bool = False) -> tuple[RiskPage, int, int | None]:
    """One VAP answer read: its page, how many users it listed, and ``totalVapUsers``.

    ``seen`` (emails already read this poll) is updated.
    """
    users = body.get("users") if isinstance(body, dict) else None
    if not isinstance(users, list):
        raise TransientError(f"Proofpoint GET {VAP} answered no {{users: [...]}}: {quote(body)}")
    total = body.get("totalVapUsers")
    records: list[RiskRecord] = []
    refused: list[tuple[str, str]] = []
    for user in users:
        identity = user.get("identity") if isinstance(user, dict) else None
        identity = identity if isinstance(identity, dict) else {}
        listed = identity.get("emails")
        emails = (
            [e.strip().lower() for e in listed if isinstance(e, str) and "@" in e]
            if isinstance(listed, list)
            else []
        )
        guid = identity.get("guid")
        what = f"user {emails[0]}" if emails else f"user {excerpt(str(guid), 64)}"
        if not emails:
            refused.append((what, "no email address in identity.emails"))
            continue
        statistics = user.get("threatStatistics") if isinstance(user, dict) else None
        raw = statistics.get("attackIndex") if isinstance(statistics, dict) else None
        score = number(raw)
        if score is None:
            reason = "no attackIndex" if raw is None else f"attackIndex is not a number: {quote(raw, 64)}"
            refused.append((what, reason))
            continue
        attributes = _attributes(identity)
        for email in emails[:1] if first_only else emails:
            if email in seen:
                refused.append((f"user {email}", "listed twice in one poll (the first one is kept)"))
                continue
            seen.add(email)
            records.append(RiskRecord(entity="user", key=email, score=score, attributes=attributes))
    count_total = total if isinstance(total, int) and not isinstance(total, bool) else None
    return RiskPage(records=records, refused=refused), len(users), count_total


def _attributes(identity: dict[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for field in ("name", "department", "title", "location"):
        value = identity.get(field)
        if isinstance(value, str) and value:
            attributes[field] = excerpt(value, 255)
    if isinstance(identity.get("vip"), bool):
        attributes["vip"] = "true" if identity["vip"] else "false"
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
