"""What the TAXII source and sink share: options, the session, finding the collection, bounded requests.

TAXII 2.1 (OASIS ``taxii-v2.1-os``) and 2.0 (``taxii-v2.0-cs01``) are both JSON over HTTPS: a
discovery resource lists API roots, an API root lists collections, a collection holds STIX objects.
The ``url`` option is either the discovery URL (its ``default`` API root is used, or its first one)
or an API root; the collection is named by id or title. An API root that a discovery document
puts on another origin is refused: the credentials would go along.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from pydantic import Field, SecretStr, model_validator

from ce_daemon.http import (
    ConnectionOptions,
    RequestTooLargeError,
    basic,
    bearer,
    excerpt,
    make_session,
    raise_for_status,
    read_body,
    read_excerpt,
    transport_error,
)
from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    Duration,
    Health,
    PermanentError,
    Size,
    TransientError,
    register_secret,
)

TAXII21 = "application/taxii+json;version=2.1"
TAXII20 = "application/vnd.oasis.taxii+json; version=2.0"
STIX20 = "application/vnd.oasis.stix+json; version=2.0"
_RETRIES = 2  # short Retry-After waits inside one call before the error goes to the core
_NAME_LIMIT = 200


class TaxiiOptions(ConnectionOptions):
    """Where the collection is and how to authenticate (basic or bearer), shared by source and sink."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    """The discovery URL (``…/taxii2/``) or an API root URL (``…/api1/``)."""
    collection: Annotated[str, Field(min_length=1, max_length=_NAME_LIMIT)]
    """The collection's id or title."""
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    """A bearer token instead of ``username``/``password``."""
    max_body: Size = 32 * 1024**2
    """The largest answer body read (a larger one fails the call, nothing of it is parsed)."""
    retry_within: Duration = 5.0
    """A 429/503 whose ``Retry-After`` is at most this is waited out inside the call (twice at most);
    a longer one fails the call with that delay for the core's own retry."""

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both `username` and `password` (basic authentication), or neither")
        if self.token is not None and self.username is not None:
            raise ValueError("give `token` (bearer) or `username`/`password` (basic), not both")
        return self


@dataclass(frozen=True, slots=True)
class Collection:
    """The collection the options name, as its API root describes it."""

    api_root: str
    id: str
    title: str
    can_read: bool
    can_write: bool
    max_content_length: int | None

    @property
    def objects_url(self) -> str:
        """``{api_root}/collections/{id}/objects/``."""
        return f"{self.api_root}collections/{self.id}/objects/"


@dataclass(frozen=True, slots=True)
class Answer:
    """A 2xx (or accepted) answer: its status, headers and body (read within ``max_body``)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def stix_time(moment: datetime) -> str:
    """A STIX/TAXII timestamp with microseconds (``2026-12-03T17:57:56.620060Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stix_time_ms(seconds: float) -> str:
    """A STIX timestamp with milliseconds, truncated (``created``/``modified`` precision)."""
    moment = datetime.fromtimestamp(int(seconds * 1000) / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(value: object) -> datetime | None:
    """A STIX/TAXII timestamp as an aware datetime; None when absent or not one."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def just_before(value: datetime) -> datetime:
    """One microsecond earlier: ``added_after`` is exclusive, this re-reads what was added at ``value``."""
    return value - timedelta(microseconds=1)


def json_document(body: bytes, target: str, what: str) -> dict[str, Any]:
    """``body`` as a JSON object, or a :class:`TransientError` quoting the start of what came instead."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransientError(f"{target} answered {what} that is not JSON: {excerpt(body)}") from exc
    if not isinstance(parsed, dict):
        raise TransientError(f"{target} answered {what} that is not a JSON object: {excerpt(body)}")
    return parsed


class TaxiiClient:
    """One session to one TAXII server, and the collection its options name (found once, then kept)."""

    def __init__(self, options: TaxiiOptions, version: str, base_dir: Any = None) -> None:
        self.options = options
        self.version = version
        self.base_dir = base_dir
        address = urlsplit(options.url)
        self.target = f"TAXII server {address.hostname}:{address.port or ''}".rstrip(":")
        self.taxii_media = TAXII21 if version == "2.1" else TAXII20
        self.objects_media = TAXII21 if version == "2.1" else STIX20
        self._session: aiohttp.ClientSession | None = None
        self._collection: Collection | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made now if there is none yet (credentials as a default header)."""
        if self._session is None:
            headers: dict[str, str] = {}
            if self.options.username is not None and self.options.password is not None:
                register_secret(self.options.password.get_secret_value())
                headers["Authorization"] = basic(self.options.username, self.options.password)
            elif self.options.token is not None:
                register_secret(self.options.token.get_secret_value())
                headers["Authorization"] = bearer(self.options.token)
            self._session = make_session(self.options, self.base_dir, **headers)
        return self._session

    async def close(self) -> None:
        """Close the session (a second call does nothing)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        accept: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        accepted: frozenset[int] = frozenset(),
    ) -> Answer:
        """Send one request; a 2xx (or a status in ``accepted``) is read within ``max_body``.

        A 413 to a POST raises :class:`RequestTooLargeError`; other failures map onto the error
        taxonomy (``raise_for_status``), a short ``Retry-After`` being waited out first.
        """
        sent = {"Accept": accept, **(headers or {})}
        if data is not None:
            sent["Content-Type"] = accept
        for attempt in range(_RETRIES + 1):
            try:
                async with self.session().request(
                    method, url, params=params, headers=sent, data=data, allow_redirects=False
                ) as response:
                    if 200 <= response.status < 300 or response.status in accepted:
                        body = await read_body(response, self.target, self.options.max_body)
                        return Answer(response.status, response.headers, body)
                    if response.status == 413 and method == "POST":
                        raise RequestTooLargeError(await read_excerpt(response))
                    try:
                        await raise_for_status(response, self.target)
                    except TransientError as exc:
                        wait = exc.retry_after
                        if attempt == _RETRIES or wait is None or wait > self.options.retry_within:
                            raise
                    else:  # a 1xx that aiohttp handed over: not an answer
                        raise TransientError(f"{self.target} answered HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, self.target) from exc
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_document(self, url: str, what: str, *, accept: str | None = None) -> dict[str, Any]:
        """GET ``url`` as a JSON object (``what`` names it in errors)."""
        answer = await self.request("GET", url, accept=accept or self.taxii_media)
        return json_document(answer.body, self.target, what)

    async def collection(self) -> Collection:
        """The collection the options name: discovery → API root → collections, once per instance."""
        if self._collection is None:
            self._collection = await self._find_collection()
        return self._collection

    async def _find_collection(self) -> Collection:
        url = self.options.url if self.options.url.endswith("/") else self.options.url + "/"
        document = await self.get_document(url, "a discovery or API root document")
        if "api_roots" in document:
            api_root = self._api_root_of(url, document)
            information = await self.get_document(api_root, "an API root document")
        else:
            api_root, information = url, document
        if not isinstance(information.get("title"), str):
            raise ComponentConfigError(
                f"{url} is neither a TAXII {self.version} discovery resource nor an API root (no title);"
                " set `url` to the server's discovery URL or an API root URL"
            )
        listing = await self.get_document(f"{api_root}collections/", "a collections document")
        entries = listing.get("collections", [])
        if not isinstance(entries, list):
            raise TransientError(f"{self.target} answered a collections document without a list")
        wanted = self.options.collection
        for entry in entries:
            if isinstance(entry, dict) and wanted in (entry.get("id"), entry.get("title")):
                maximum = information.get("max_content_length")
                return Collection(
                    api_root=api_root,
                    id=str(entry.get("id")),
                    title=str(entry.get("title", "")),
                    can_read=entry.get("can_read") is True,
                    can_write=entry.get("can_write") is True,
                    max_content_length=maximum if isinstance(maximum, int) and maximum > 0 else None,
                )
        names = ", ".join(
            excerpt(str(e.get("title") or e.get("id")), 60) for e in entries[:20] if isinstance(e, dict)
        )
        raise ComponentConfigError(
            f"{api_root} has no collection with id or title {wanted!r} (it lists: {names or 'none'})"
        )

    def _api_root_of(self, url: str, discovery: dict[str, Any]) -> str:
        roots = discovery.get("api_roots")
        candidates = [discovery.get("default"), *(roots if isinstance(roots, list) else [])]
        chosen = next((c for c in candidates if isinstance(c, str) and c), None)
        if chosen is None:
            raise ComponentConfigError(f"the discovery resource at {url} lists no API root")
        api_root = urljoin(url, chosen)
        api_root = api_root if api_root.endswith("/") else api_root + "/"
        here, there = urlsplit(url), urlsplit(api_root)
        if (here.scheme, here.netloc) != (there.scheme, there.netloc):
            raise ComponentConfigError(
                f"the discovery resource at {url} points at an API root on another origin"
                f" ({there.scheme}://{there.hostname}); the credentials would go along:"
                " set `url` to that API root if you trust it"
            )
        return api_root

    async def health(self, *, read: bool, write: bool) -> Health:
        """Healthy when the collection is found and allows what the component needs."""
        try:
            collection = await self.collection()
        except (AuthError, TransientError, PermanentError, ComponentConfigError) as exc:
            return Health(ok=False, detail=str(exc))
        if read and not collection.can_read:
            return Health(ok=False, detail=f"collection {collection.title or collection.id} is not readable")
        if write and not collection.can_write:
            return Health(ok=False, detail=f"collection {collection.title or collection.id} is not writable")
        return Health(
            ok=True, detail=f"collection {collection.title or collection.id} at {collection.api_root}"
        )
