"""The ``crowdstrike_zta`` risk source: hosts listed by scroll, scored by their Zero Trust Assessment.

One poll: scroll the host ids, and for each batch read the assessments and the host details; each
batch is one :class:`RiskPage`. The reading of answers (:func:`scroll_page`, :func:`assessments`,
:func:`details`, :func:`records`) is pure, so that any JSON a peer sends is either read or raises
:class:`TransientError` (a page whose shape is not CrowdStrike's), never anything else.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    OAuth2Token,
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

CLOUDS = {
    "us-1": "https://api.crowdstrike.com",
    "us-2": "https://api.us-2.crowdstrike.com",
    "eu-1": "https://api.eu-1.crowdstrike.com",
    "us-gov-1": "https://api.laggar.gcw.crowdstrike.com",
}
SCROLL = "/devices/queries/devices-scroll/v1"
ASSESSMENTS = "/zero-trust-assessment/entities/assessments/v1"
DEVICES = "/devices/entities/devices/v2"
TOKEN = "/oauth2/token"  # noqa: S105 -- a path, not a password
DEFAULT_MAX_BODY = 64 * 1024**2
RATE_LIMIT_RETRIES = 3


class RateLimitedError(TransientError):
    """A 429: waited out inside the poll when short (``retry_after``), else the poll fails."""


class CrowdStrikeZtaOptions(ConnectionOptions):
    """Options of the ``crowdstrike_zta`` risk source (see the package's docstring)."""

    client_id: Annotated[str, Field(min_length=1)]
    client_secret: SecretStr
    cloud: Literal["us-1", "us-2", "eu-1", "us-gov-1"] = "us-1"
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    member_cid: str | None = None
    key: Literal["aid", "hostname"] = "aid"
    filter: str | None = None
    page_size: Annotated[int, Field(ge=1, le=5000)] = 5000
    batch_size: Annotated[int, Field(ge=1, le=100)] = 100
    max_devices: Annotated[int, Field(ge=1)] = 1_000_000
    max_body: Annotated[Size, Field(ge=1024)] = DEFAULT_MAX_BODY
    rate_limit_wait: Annotated[Duration, Field(le=300)] = 10.0

    @property
    def base(self) -> str:
        """The API's base URL, without a trailing slash."""
        return (self.url or CLOUDS[self.cloud]).rstrip("/")


class FalconToken(OAuth2Token):
    """An access token for one API client (client credentials; ``member_cid`` for a child CID)."""

    def __init__(self, options: CrowdStrikeZtaOptions) -> None:
        url = options.base + TOKEN
        super().__init__(url, target=f"CrowdStrike POST {url}", principal=f"client_id {options.client_id}")
        self._options = options

    def grant(self) -> Mapping[str, str]:
        form = {
            "client_id": self._options.client_id,
            "client_secret": self._options.client_secret.get_secret_value(),
        }
        if self._options.member_cid:
            form["member_cid"] = self._options.member_cid
        return form


class CrowdStrikeZtaSource(RiskSource[CrowdStrikeZtaOptions]):
    """Scores devices by CrowdStrike Falcon's Zero Trust Assessment (``overall``, 1-100, higher = safer)."""

    api_version = 1
    entities = frozenset({"device"})
    scale = RiskScale(low=0, high=100, higher_is_safer=True)  # linear: CE's score * 10 exactly

    def __init__(self, options: CrowdStrikeZtaOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.token = FalconToken(options)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use."""
        if self._session is None:
            self._session = make_session(self.options, self.context.base_dir, Accept="application/json")
        return self._session

    async def open(self) -> None:
        self.session()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def health(self) -> Health:
        try:
            await self.get(SCROLL, [("limit", "1")])
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"CrowdStrike API at {self.options.base}")

    async def pull(self) -> AsyncIterator[RiskPage]:
        opts = self.options
        offset: str | None = None
        read = 0
        while True:
            params = [("limit", str(opts.page_size))]
            if offset:
                params.append(("offset", offset))
            if opts.filter:
                params.append(("filter", opts.filter))
            answer = await self.get(SCROLL, params)
            ids, next_offset, total = scroll_page(answer, opts.page_size)
            unreadable = unreadable_ids(answer)
            if unreadable:
                yield RiskPage(records=(), refused=unreadable)
            read += len(ids) + len(unreadable)
            if read > opts.max_devices:
                raise TransientError(
                    f"CrowdStrike listed more than max_devices ({opts.max_devices:,}) hosts; raise it"
                )
            for start in range(0, len(ids), opts.batch_size):
                yield await self.batch(ids[start : start + opts.batch_size])
            if (
                not (ids or unreadable)
                or not next_offset
                or next_offset == offset
                or (total is not None and read >= total)
            ):
                return
            offset = next_offset

    async def batch(self, ids: Sequence[str]) -> RiskPage:
        """The page of one batch of host ids: their assessments and details, read into records."""
        params = [("ids", aid) for aid in ids]
        found = assessments(await self.get(ASSESSMENTS, params, missing_ok=True))
        hosts = details(await self.get(DEVICES, params, missing_ok=True))
        return records(ids, found, hosts, key=self.options.key)

    async def get(self, path: str, params: Sequence[tuple[str, str]], *, missing_ok: bool = False) -> Any:
        """GET ``path`` with the bearer token (renewed once on 401); the parsed JSON answer.

        ``missing_ok``: a 404 that still carries CrowdStrike's JSON (some ids unknown, the others
        answered) is read like a 200. A 429 that asks to wait at most ``rate_limit_wait`` is waited
        out here, up to three times; a longer one fails the poll.
        """
        for attempt in range(1, RATE_LIMIT_RETRIES + 2):
            try:
                return await self._get(path, params, missing_ok=missing_ok)
            except RateLimitedError as exc:
                wait = exc.retry_after
                if wait is None or wait > self.options.rate_limit_wait or attempt > RATE_LIMIT_RETRIES:
                    raise
                self.context.log.info("crowdstrike.rate_limited", path=path, wait=wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(self, path: str, params: Sequence[tuple[str, str]], *, missing_ok: bool) -> Any:
        target = f"CrowdStrike GET {path}"
        session = self.session()
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {await self.token.get(session)}"}
            try:
                async with session.get(
                    self.options.base + path, params=params, headers=headers, allow_redirects=False
                ) as response:
                    status, answer_headers = response.status, response.headers
                    if status == 401 and attempt == 1:
                        self.token.invalidate()
                        continue
                    if 200 <= status < 300 or (status == 404 and missing_ok):
                        raw = await read_body(response, target, self.options.max_body)
                    else:
                        raw = await read_at_most(response, ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, target) from exc
            break
        body = _json(raw)
        if 200 <= status < 300 or (status == 404 and missing_ok and isinstance(body, dict)):
            if body is None:
                said = excerpt(raw) or "(empty)"
                raise TransientError(f"{target} answered HTTP {status} with a body that is not JSON: {said}")
            return body
        message = f"{target} answered HTTP {status}: {error_message(body, raw)}"
        if status == 429:
            raise RateLimitedError(message, retry_after=rate_limit_wait(answer_headers))
        raise status_error(status, message, answer_headers, target)


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return None


def error_message(body: Any, raw: bytes) -> str:
    """CrowdStrike's ``errors[].code``/``message`` (and the trace id), or the start of the body."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        said = [
            f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors[:5] if isinstance(e, dict)
        ]
        meta = body.get("meta")
        trace = meta.get("trace_id") if isinstance(meta, dict) else None
        return excerpt("; ".join(said) + (f" (trace_id {trace})" if isinstance(trace, str) else ""))
    return excerpt(raw) or "(empty body)"


def rate_limit_wait(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long a 429 says to wait: ``X-RateLimit-RetryAfter`` (epoch seconds), else ``Retry-After``."""
    value = headers.get("X-RateLimit-RetryAfter")
    if value:
        try:
            moment = float(value)
        except ValueError:
            moment = math.nan
        if math.isfinite(moment):
            return max(0.0, moment - (now if now is not None else time.time()))
    return retry_after(headers, now)


def _shape(target: str, body: Any) -> TransientError:
    return TransientError(f"CrowdStrike {target} answered no {{resources: [...]}}: {quote(body)}")


def _resources(body: Any, target: str) -> list[Any]:
    resources = body.get("resources") if isinstance(body, dict) else None
    if resources is None and isinstance(body, dict) and "resources" in body:
        return []  # CrowdStrike answers null for "none"
    if not isinstance(resources, list):
        raise _shape(target, body)
    return resources


def scroll_page(body: Any, limit: int) -> tuple[list[str], str | None, int | None]:
    """The host ids of a scroll answer, the next ``offset`` token and the ``total``.

    An entry that is not an id is left out (:func:`unreadable_ids` says which, for ``refused``).
    """
    resources = _resources(body, SCROLL)
    if len(resources) > limit:
        raise TransientError(f"CrowdStrike {SCROLL} answered {len(resources)} ids for a page of {limit}")
    ids = [r for r in resources if isinstance(r, str) and r]
    meta = body.get("meta")
    pagination = meta.get("pagination") if isinstance(meta, dict) else None
    pagination = pagination if isinstance(pagination, dict) else {}
    offset = pagination.get("offset")
    total = pagination.get("total")
    return (
        ids,
        offset if isinstance(offset, str) else None,
        total if isinstance(total, int) and not isinstance(total, bool) else None,
    )


def unreadable_ids(body: Any) -> list[tuple[str, str]]:
    """The entries of a scroll answer's ``resources`` that are not host ids, as refusals."""
    resources = body.get("resources") if isinstance(body, dict) else None
    if not isinstance(resources, list):
        return []
    return [
        ("a host id", f"not a string: {quote(r, 64)}") for r in resources if not (isinstance(r, str) and r)
    ]


def assessments(body: Any) -> dict[str, dict[str, Any]]:
    """The assessments of an answer, by host id (entries without an ``aid`` are left out)."""
    return {
        r["aid"]: r
        for r in _resources(body, ASSESSMENTS)
        if isinstance(r, dict) and isinstance(r.get("aid"), str)
    }


def details(body: Any) -> dict[str, dict[str, Any]]:
    """The host details of an answer, by host id (``device_id``)."""
    return {
        r["device_id"]: r
        for r in _resources(body, DEVICES)
        if isinstance(r, dict) and isinstance(r.get("device_id"), str)
    }


def records(ids: Sequence[str], found: Mapping[str, Any], hosts: Mapping[str, Any], *, key: str) -> RiskPage:
    """The records of one batch: a host without an assessment or without a number is refused."""
    out: list[RiskRecord] = []
    refused: list[tuple[str, str]] = []
    for aid in ids:
        what = f"host {excerpt(aid, 64)}"
        entry = found.get(aid)
        if entry is None:
            refused.append((what, "no Zero Trust Assessment for this host"))
            continue
        assessment = entry.get("assessment")
        overall = assessment.get("overall") if isinstance(assessment, dict) else None
        score = number(overall)
        if score is None:
            refused.append((what, f"its assessment has no number as overall score: {quote(overall, 64)}"))
            continue
        host = hosts.get(aid) or {}
        hostname = host.get("hostname")
        hostname = hostname if isinstance(hostname, str) and hostname else None
        platform = host.get("platform_name") or entry.get("event_platform")
        attributes = {"aid": aid}
        if hostname:
            attributes["hostname"] = excerpt(hostname, 255)
        if isinstance(platform, str) and platform:
            attributes["platform"] = excerpt(platform, 64)
        if key == "hostname" and hostname is None:
            refused.append((what, "the host has no hostname (key: hostname)"))
            continue
        out.append(
            RiskRecord(
                entity="device",
                key=hostname.lower() if key == "hostname" and hostname else aid,
                score=score,
                seen=_epoch(entry.get("modified_time")),
                attributes=attributes,
            )
        )
    return RiskPage(records=out, refused=refused)


def number(value: Any) -> float | None:
    """``value`` as a finite float when it is a JSON number (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def quote(value: Any, limit: int = 200) -> str:
    """A value from the peer quoted in a reason: JSON, scrubbed and cut (``repr`` if not JSON-able)."""
    try:
        return excerpt(orjson.dumps(value), limit)
    except TypeError:  # an integer past 64 bits
        return excerpt(repr(value), limit)
