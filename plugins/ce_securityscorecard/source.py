"""The ``securityscorecard`` risk source: the companies of some portfolios, with their scores or grades."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

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
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    ComponentConfigError,
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

GRADE_SCORES: Final = {"A": 875.0, "B": 625.0, "C": 375.0, "D": 125.0, "F": 125.0}
"""Each grade at the median of a Netskope band (D and F both Critical; see the package's docstring)."""
_ATTRIBUTE_CHARS = 200


class SecurityScorecardOptions(HttpOptions):
    """Options of the ``securityscorecard`` risk source (see the package's docstring)."""

    url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.securityscorecard.io"
    token: SecretStr
    portfolios: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=1)]
    key: Literal["domain", "name"] = "domain"
    use_grade: bool = False
    max_records: Annotated[int, Field(ge=1)] = 100_000
    max_body: Annotated[Size, Field(ge=1024)] = 32 * 1024**2
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_retry_wait: Duration = 60.0


class SecurityScorecardSource(HttpSession, RiskSource[SecurityScorecardOptions]):
    """Scores (0-100) or grades (A-F) of the companies in SecurityScorecard portfolios."""

    api_version = 1
    entities = frozenset({"application"})
    scale = RiskScale(low=0.0, high=100.0)

    def __init__(self, options: SecurityScorecardOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.base = options.url.rstrip("/")
        if options.use_grade:
            self.scale = RiskScale(labels=dict(GRADE_SCORES))

    def new_session(self) -> aiohttp.ClientSession:
        """A session sending ``Authorization: Token <key>``."""
        token = self.options.token.get_secret_value()
        register_secret(token)
        return make_session(
            self.options, self.context.base_dir, Authorization=f"Token {token}", Accept="application/json"
        )

    async def health(self) -> Health:
        """``GET /portfolios`` answers with our key, and lists every configured portfolio."""
        try:
            body = await self._get("/portfolios")
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        entries = body.get("entries")
        if not isinstance(entries, list):
            return Health(ok=False, detail="SecurityScorecard GET /portfolios answered no entries list")
        known = {str(entry.get("id")) for entry in entries if isinstance(entry, dict)}
        missing = [portfolio for portfolio in self.options.portfolios if portfolio not in known]
        if missing:
            return Health(ok=False, detail=f"SecurityScorecard has no portfolio {', '.join(missing)}")
        return Health(ok=True, detail=f"SecurityScorecard at {self.base}")

    async def pull(self) -> AsyncIterator[RiskPage]:
        opts = self.options
        seen_keys: set[str] = set()
        read = 0
        for portfolio in opts.portfolios:
            path = f"/portfolios/{quote(portfolio, safe='')}/companies"
            body = await self._get(path, portfolio=portfolio)
            entries = body.get("entries")
            if not isinstance(entries, list):
                raise TransientError(
                    f"SecurityScorecard GET {path} answered no entries list: {excerpt(orjson.dumps(body))}"
                )
            records: list[RiskRecord] = []
            refused: list[tuple[str, str]] = []
            for entry in entries:
                if read >= opts.max_records:
                    break
                read += 1
                record, reason = read_company(entry, opts.key, use_grade=opts.use_grade, portfolio=portfolio)
                if record is not None and record.key in seen_keys:
                    continue  # the same company in an earlier portfolio
                if record is None:
                    refused.append((_what(entry), reason))
                else:
                    seen_keys.add(record.key)
                    records.append(record)
            yield RiskPage(records, refused)
            if read >= opts.max_records:
                self.context.log.warning("securityscorecard.max_records_reached", records=opts.max_records)
                return

    async def _get(self, path: str, *, portfolio: str | None = None) -> dict[str, Any]:
        """``GET path`` as a JSON object; a short ``Retry-After`` is waited for, ``retries`` times."""
        opts = self.options
        target = f"SecurityScorecard GET {path}"
        for attempt in range(opts.retries + 1):
            try:
                async with self.session().get(f"{self.base}{path}", allow_redirects=False) as response:
                    status, headers = response.status, response.headers
                    if 200 <= status < 300:
                        raw = await read_body(response, target, opts.max_body)
                    else:
                        raw = await read_at_most(response, ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, target) from exc
            if 200 <= status < 300:
                return _object(raw, target, status)
            message = f"{target} answered HTTP {status}: {_message(raw)}"
            if status == 404 and portfolio is not None:
                raise ComponentConfigError(f"{message}; is portfolio {portfolio!r} right?")
            error = status_error(status, message, headers, target)
            wait = error.retry_after if isinstance(error, TransientError) else None
            if wait is not None and wait <= opts.max_retry_wait and attempt < opts.retries:
                self.context.log.info("securityscorecard.retry_after", status=status, wait=wait)
                await asyncio.sleep(wait)
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover


def read_company(
    entry: Any, key: str, *, use_grade: bool = False, portfolio: str = ""
) -> tuple[RiskRecord | None, str]:
    """One company of a portfolio as a record, or None and why it cannot be one."""
    if not isinstance(entry, dict):
        return None, "not an object"
    score = entry.get("score")
    has_score = isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score)
    grade = _text(entry.get("grade")).upper()
    if use_grade and grade not in GRADE_SCORES:
        return None, "no grade A-F"
    if not use_grade and not has_score:
        return None, "no numeric score"
    name, domain = _text(entry.get("name")), _text(entry.get("domain")).lower()
    value = domain if key == "domain" else name
    if not value:
        return None, f"no {key}"
    attributes = {
        field: text
        for field, text in (
            ("name", name),
            ("domain", domain),
            ("grade", grade),
            ("industry", _text(entry.get("industry"))),
            ("portfolio", portfolio),
        )
        if text
    }
    if use_grade:
        return RiskRecord(entity="application", key=value, label=grade, attributes=attributes), ""
    assert isinstance(score, int | float)
    return RiskRecord(entity="application", key=value, score=float(score), attributes=attributes), ""


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


def _message(raw: bytes) -> str:
    """SecurityScorecard's error message (``{"error": {"message"}}``), or the start of the body."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return excerpt(raw) or "(empty body)"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return excerpt(error["message"])
    return excerpt(raw) or "(empty body)"


def _text(value: Any) -> str:
    return " ".join(value.split())[:_ATTRIBUTE_CHARS] if isinstance(value, str) else ""


def _what(entry: Any) -> str:
    if isinstance(entry, dict):
        for field in ("domain", "name"):
            if _text(entry.get(field)):
                return excerpt(_text(entry.get(field)), 80)
    return excerpt(orjson.dumps(entry, default=str), 80)


__all__ = ["GRADE_SCORES", "SecurityScorecardOptions", "SecurityScorecardSource", "read_company"]
