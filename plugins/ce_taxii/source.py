"""The ``taxii`` threat source: indicators added to a TAXII 2.1 or 2.0 collection since the last poll.

TAXII 2.1: ``GET {api_root}/collections/{id}/objects/?added_after=…&limit=…&match[type]=indicator``,
following ``next`` while ``more`` is true (each request repeats the query, as the spec asks); when
``more`` comes without ``next``, the walk goes on from ``added_after`` = the page's
``X-TAXII-Date-Added-Last``. TAXII 2.0: the same query with ``Range: items N-M`` paging, until
``Content-Range`` says the last item was sent (or the server sent everything with a 200).

The checkpoint is the server's own clock: ``X-TAXII-Date-Added-Last`` of the last page read (objects
carrying a non-standard ``date_added`` stand in when the header is missing; with neither, the
checkpoint stays where it was). A page followed by more pages checkpoints one microsecond *before*
its last ``date_added``: objects added in the same instant may sit on the next page, and
``added_after`` is exclusive, so a pull that fails there re-reads them rather than skipping them.
The first poll starts ``initial_lookback`` before now.

Each indicator's pattern is read with ``stix2-patterns`` (:mod:`ce_taxii.patterns`): one record per
observable, a compound pattern's observables tagged ``stix-compound``. Revoked indicators and those
whose ``valid_until`` has passed are skipped, like Netskope CE's own STIX/TAXII plugin does (a
retraction is not a verdict: the core ages such indicators out). Objects that are not indicators
are skipped; an indicator whose pattern cannot be read is refused with the reason. ``labels`` and
``indicator_types`` become tags, and an indicator carrying any ``Pull.exclude_tags`` is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from ce_daemon.plugin import (
    ComponentConfigError,
    Duration,
    Health,
    IocPage,
    IocRecord,
    PluginContext,
    Pull,
    ThreatSource,
    TransientError,
)
from ce_taxii.client import TaxiiClient, TaxiiOptions, json_document, just_before, parse_time, stix_time
from ce_taxii.patterns import PatternError, observables

COMPOUND_TAG = "stix-compound"
"""The tag of observables taken from a pattern whose parts must hold together (``AND``, ``WITHIN``…)."""
MAX_OBJECTS = 100_000
"""The most objects one page may hold (beyond, the page is refused as a whole)."""
_MAX_TAGS = 50
_MAX_TAG = 128
_MAX_COMMENT = 500
_CONTENT_RANGE = re.compile(r"^\s*items\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class TaxiiSourceOptions(TaxiiOptions):
    """Options of the ``taxii`` threat source."""

    version: Literal["2.1", "2.0"] = "2.1"
    page_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    """Objects asked for per request (``limit`` in 2.1, the ``Range`` width in 2.0)."""
    initial_lookback: Duration = 7 * 86_400.0
    """How far back the first poll reads."""
    max_pages: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """The most pages one poll reads; the next poll goes on from the last checkpoint."""


class TaxiiSource(ThreatSource[TaxiiSourceOptions]):
    """The ``taxii`` threat source: STIX indicators from a TAXII 2.1 or 2.0 collection, incrementally."""

    api_version = 1

    def __init__(self, options: TaxiiSourceOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self.client = TaxiiClient(options, options.version, context.base_dir)

    async def health(self) -> Health:
        return await self.client.health(read=True, write=False)

    async def close(self) -> None:
        await self.client.close()

    async def pull(self, request: Pull) -> AsyncIterator[IocPage]:
        """The pages of indicators added since ``request.checkpoint`` (or ``initial_lookback`` ago)."""
        collection = await self.client.collection()
        if not collection.can_read:
            raise ComponentConfigError(
                f"collection {collection.title or collection.id} is not readable (can_read is false):"
                " name a collection this user may read"
            )
        since = parse_time(request.checkpoint)
        if since is None:
            since = datetime.fromtimestamp(request.now - self.options.initial_lookback, UTC)
        walk = self._pages_21 if self.options.version == "2.1" else self._pages_20
        async with contextlib.aclosing(walk(collection.objects_url, stix_time(since))) as pages:
            async for objects, header, more in pages:
                records, refused = await asyncio.to_thread(self.read_objects, objects, request)
                last = header or _latest_date_added(objects)
                checkpoint = None if last is None else stix_time(just_before(last) if more else last)
                if not (records or refused or checkpoint):
                    continue  # nothing new (medallion answers `{}`)
                yield IocPage(records=records, refused=refused, checkpoint=checkpoint)

    # -- the two ways of paging ----------------------------------------------------------------

    async def _pages_21(
        self, url: str, added_after: str
    ) -> AsyncGenerator[tuple[list[Any], datetime | None, bool], None]:
        query = {"added_after": added_after, "limit": str(self.options.page_size), "match[type]": "indicator"}
        token: str | None = None
        for _ in range(self.options.max_pages):
            params = {**query, "next": token} if token else query
            answer = await self.client.request("GET", url, accept=self.client.objects_media, params=params)
            envelope = json_document(answer.body, self.client.target, "an envelope")
            objects = _objects(envelope, self.client.target)
            last = parse_time(answer.headers.get("X-TAXII-Date-Added-Last"))
            more = envelope.get("more") is True
            following = envelope.get("next")
            token = following if isinstance(following, str) and following else None
            if more and token is None and last is not None:
                query = {**query, "added_after": stix_time(last)}
            elif more and token is None:
                self.log.warning(
                    "taxii.paging_stopped", reason="more without next nor X-TAXII-Date-Added-Last"
                )
                more = False
            yield objects, last, more
            if not more:
                return
        self.log.info("taxii.page_limit", pages=self.options.max_pages)

    async def _pages_20(
        self, url: str, added_after: str
    ) -> AsyncGenerator[tuple[list[Any], datetime | None, bool], None]:
        query = {"added_after": added_after, "match[type]": "indicator"}
        start, width = 0, self.options.page_size
        for _ in range(self.options.max_pages):
            answer = await self.client.request(
                "GET",
                url,
                accept=self.client.objects_media,
                params=query,
                headers={"Range": f"items {start}-{start + width - 1}"},
                accepted=frozenset({416}),
            )
            if answer.status == 416:  # Range Not Satisfiable: nothing at or past `start`
                return
            bundle = json_document(answer.body, self.client.target, "a bundle")
            objects = _objects(bundle, self.client.target)
            last = parse_time(answer.headers.get("X-TAXII-Date-Added-Last"))
            sent = _CONTENT_RANGE.match(answer.headers.get("Content-Range", ""))
            more = answer.status == 206 and sent is not None and bool(objects)
            if sent is not None:
                end, total = int(sent.group(2)), sent.group(3)
                more = more and (total == "*" or end + 1 < int(total))
                start = end + 1
            yield objects, last, more
            if not more:
                return
        self.log.info("taxii.page_limit", pages=self.options.max_pages)

    # -- objects to records ----------------------------------------------------------------------

    def read_objects(
        self, objects: Sequence[Any], request: Pull
    ) -> tuple[list[IocRecord], list[tuple[str, str]]]:
        """The records of one page's indicators, and the indicators refused with why (runs in a thread)."""
        records: list[IocRecord] = []
        refused: list[tuple[str, str]] = []
        default_spec = "2.1" if self.options.version == "2.1" else "2.0"
        for item in objects:
            if not isinstance(item, dict):
                refused.append(("object", "not a JSON object"))
                continue
            if item.get("type") != "indicator" or not _current(item, request.now):
                continue
            tags = _tags(item)
            if request.exclude_tags.intersection(tags):
                continue
            what = str(item.get("id"))[:_MAX_TAG]
            pattern, pattern_type = item.get("pattern"), item.get("pattern_type", "stix")
            if pattern_type != "stix":
                refused.append((what, f"pattern_type {str(pattern_type)[:40]!r} is not a STIX pattern"))
                continue
            if not isinstance(pattern, str):
                refused.append((what, "indicator without a pattern"))
                continue
            spec = item.get("spec_version", default_spec)
            try:
                found = observables(pattern, "2.1" if spec == "2.1" else "2.0")
            except PatternError as exc:
                refused.append((what, str(exc)))
                continue
            if not found.values:
                refused.append((what, "pattern names no url, domain, IP address or file hash by `=`"))
                continue
            if found.compound:
                tags = (*tags, COMPOUND_TAG)
            records.extend(_record(item, kind, value, tags) for kind, value in found.values)
        return records, refused

    async def open(self) -> None:
        self.client.session()


def _objects(document: dict[str, Any], target: str) -> list[Any]:
    objects = document.get("objects", [])
    if not isinstance(objects, list):
        raise TransientError(f"{target} answered `objects` that is not a list")
    if len(objects) > MAX_OBJECTS:
        raise TransientError(
            f"{target} answered {len(objects):,} objects in one page (at most {MAX_OBJECTS:,})"
        )
    return objects


def _latest_date_added(objects: Sequence[Any]) -> datetime | None:
    """The latest ``date_added`` objects carry themselves (not standard; some servers add it)."""
    moments = [parse_time(o.get("date_added")) for o in objects if isinstance(o, dict)]
    return max((m for m in moments if m is not None), default=None)


def _current(item: dict[str, Any], now: float) -> bool:
    """Not revoked and not expired (``valid_until`` passed)."""
    if item.get("revoked") is True:
        return False
    until = parse_time(item.get("valid_until"))
    return until is None or until.timestamp() > now


def _tags(item: dict[str, Any]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for key in ("labels", "indicator_types"):
        values = item.get(key)
        if isinstance(values, list):
            found.update((v[:_MAX_TAG], None) for v in values[:_MAX_TAGS] if isinstance(v, str) and v)
    return tuple(found)


def _record(item: dict[str, Any], kind: str, value: str, tags: tuple[str, ...]) -> IocRecord:
    modified = parse_time(item.get("modified")) or parse_time(item.get("created"))
    confidence = item.get("confidence")
    comment = item.get("description") or item.get("name") or ""
    if isinstance(confidence, int) and not isinstance(confidence, bool):
        scored = min(100, max(0, confidence))
        return IocRecord(
            value=value,
            type=kind,
            seen=modified.timestamp() if modified else None,
            confidence=scored,
            reputation=max(1, min(10, round(scored / 10))),
            tags=tags,
            comment=str(comment)[:_MAX_COMMENT],
        )
    return IocRecord(
        value=value,
        type=kind,
        seen=modified.timestamp() if modified else None,
        tags=tags,
        comment=str(comment)[:_MAX_COMMENT],
    )
