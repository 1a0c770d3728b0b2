"""The ``bitsight`` risk source: the portfolio's companies and their security ratings, page by page."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    HttpOptions,
    HttpSession,
    basic,
    excerpt,
    make_session,
    read_at_most,
    read_body,
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

_COMPANIES = "/ratings/v1/companies"
_ATTRIBUTE_CHARS = 200


class BitSightOptions(HttpOptions):
    """Options of the ``bitsight`` risk source (see the package's docstring)."""

    url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.bitsighttech.com"
    token: SecretStr
    key: Literal["name", "domain"] = "name"
    page_size: Annotated[int, Field(ge=1, le=1000)] = 100
    max_pages: Annotated[int, Field(ge=1)] = 1000
    max_records: Annotated[int, Field(ge=1)] = 100_000
    max_body: Annotated[Size, Field(ge=1024)] = 16 * 1024**2
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_retry_wait: Duration = 60.0


class BitSightSource(HttpSession, RiskSource[BitSightOptions]):
    """Security ratings (250-900, higher = better) of the companies in a BitSight portfolio."""

    api_version = 1
    entities = frozenset({"application"})
    scale = RiskScale(low=250.0, high=900.0)

    def __init__(self, options: BitSightOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.base = options.url.rstrip("/")

    def new_session(self) -> aiohttp.ClientSession:
        """A session sending the token as the basic-authentication user name (no password)."""
        token = self.options.token.get_secret_value()
        register_secret(token)
        return make_session(
            self.options,
            self.context.base_dir,
            Authorization=basic(token, SecretStr("")),
            Accept="application/json",
        )

    async def health(self) -> Health:
        try:
            body = await self._get(f"{self.base}{_COMPANIES}?{urlencode({'limit': 1, 'offset': 0})}")
            _companies(body)
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"BitSight at {self.base}")

    async def pull(self) -> AsyncIterator[RiskPage]:
        opts = self.options
        url: str | None = f"{self.base}{_COMPANIES}?{urlencode({'limit': opts.page_size, 'offset': 0})}"
        visited: set[str] = set()
        seen_keys: set[str] = set()
        read = 0
        for _ in range(opts.max_pages):
            assert url is not None
            visited.add(url)
            body = await self._get(url)
            companies = _companies(body)
            records: list[RiskRecord] = []
            refused: list[tuple[str, str]] = []
            for company in companies:
                if read >= opts.max_records:
                    break
                read += 1
                record, reason = read_company(company, opts.key)
                if record is not None and record.key in seen_keys:
                    reason = f"{opts.key} {excerpt(record.key, 80)!r} seen twice in one poll"
                    record = None
                if record is None:
                    refused.append((_what(company), reason))
                else:
                    seen_keys.add(record.key)
                    records.append(record)
            yield RiskPage(records, refused)
            if read >= opts.max_records:
                self.context.log.warning("bitsight.max_records_reached", records=opts.max_records)
                return
            url = self._next(body, visited, url)
            if url is None:
                return
        self.context.log.warning("bitsight.max_pages_reached", pages=opts.max_pages)

    def _next(self, body: dict[str, Any], visited: set[str], current: str) -> str | None:
        """The next page's URL from ``links.next`` (None: this was the last page)."""
        links = body.get("links")
        following = links.get("next") if isinstance(links, dict) else None
        if following is None or following == "":
            return None
        if not isinstance(following, str):
            raise TransientError(f"BitSight GET {_COMPANIES} answered a links.next that is not a URL")
        try:
            url = urljoin(current, following)
            parts = urlsplit(url)
            origin = _origin(url)
        except ValueError:
            raise TransientError(f"BitSight GET {_COMPANIES} answered a links.next that is no URL") from None
        if origin != _origin(self.base) or parts.path != urlsplit(self.base).path + _COMPANIES:
            raise TransientError(
                f"BitSight GET {_COMPANIES} answered a links.next to another origin or path"
                f" ({excerpt(parts.netloc + parts.path, 80)}); the token only goes to {self.base}{_COMPANIES}"
            )
        if url in visited:
            raise TransientError(f"BitSight GET {_COMPANIES} answered a links.next it gave before")
        return url

    async def _get(self, url: str) -> dict[str, Any]:
        """``GET url`` as JSON object; a short ``Retry-After`` is waited for, ``retries`` times."""
        opts = self.options
        target = f"BitSight GET {urlsplit(url).path}"
        for attempt in range(opts.retries + 1):
            try:
                async with self.session().get(url, allow_redirects=False) as response:
                    status, headers = response.status, response.headers
                    if 200 <= status < 300:
                        raw = await read_body(response, target, opts.max_body)
                    else:
                        raw = await read_at_most(response, ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, target) from exc
            if 200 <= status < 300:
                return _object(raw, target, status)
            error = status_error(status, f"{target} answered HTTP {status}: {_message(raw)}", headers, target)
            wait = error.retry_after if isinstance(error, TransientError) else None
            if wait is not None and wait <= opts.max_retry_wait and attempt < opts.retries:
                self.context.log.info("bitsight.retry_after", status=status, wait=wait)
                await asyncio.sleep(wait)
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover


def read_company(company: Any, key: str) -> tuple[RiskRecord | None, str]:
    """One company of the portfolio as a record, or None and why it cannot be one."""
    if not isinstance(company, dict):
        return None, "not an object"
    rating = company.get("rating")
    if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
        return None, "no numeric rating"
    name, domain = _text(company.get("name")), _text(company.get("primary_domain")).lower()
    value = name if key == "name" else domain
    if not value:
        return None, f"no {'name' if key == 'name' else 'primary_domain'}"
    attributes = {
        field: text
        for field, text in (
            ("guid", _text(company.get("guid"))),
            ("name", name),
            ("domain", domain),
            ("industry", _text(company.get("industry"))),
        )
        if text
    }
    return RiskRecord(
        entity="application",
        key=value,
        score=float(rating),
        seen=_date(company.get("rating_date")),
        attributes=attributes,
    ), ""


def _companies(body: dict[str, Any]) -> list[Any]:
    """The companies of an answer (``companies``, or ``results`` on a paged answer)."""
    companies = body.get("companies", body.get("results"))
    if not isinstance(companies, list):
        raise TransientError(
            f"BitSight GET {_COMPANIES} answered no companies list: {excerpt(orjson.dumps(body))}"
        )
    return companies


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
    """BitSight's error message (``{"detail": …}``), or the start of the body."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return excerpt(raw) or "(empty body)"
    if isinstance(parsed, dict) and isinstance(parsed.get("detail"), str):
        return excerpt(parsed["detail"])
    return excerpt(raw) or "(empty body)"


def _text(value: Any) -> str:
    return " ".join(value.split())[:_ATTRIBUTE_CHARS] if isinstance(value, str) else ""


def _what(company: Any) -> str:
    """How a refused company is named in the count: its name, domain or guid, else its start."""
    if isinstance(company, dict):
        for field in ("name", "primary_domain", "guid"):
            if _text(company.get(field)):
                return excerpt(_text(company.get(field)), 80)
    return excerpt(orjson.dumps(company, default=str), 80)


def _date(value: Any) -> float | None:
    """``YYYY-MM-DD`` as epoch seconds (midnight UTC); None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        day = dt.date.fromisoformat(value[:10])
    except ValueError:
        return None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


__all__ = ["BitSightOptions", "BitSightSource", "read_company"]
