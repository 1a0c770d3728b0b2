"""The ``taxii`` threat destination: STIX 2.1 indicators added to (and revoked in) a TAXII 2.1 collection.

Each indicator is ``POST``-ed to ``{api_root}/collections/{id}/objects/`` in an envelope
``{"objects": [...]}``, as a STIX 2.1 indicator whose id is derived from what it names
(``indicator--uuid5(namespace, "<object path>|<value>")``): the same value always has the same id,
in every push and from every daemon sharing the namespace. Its ``pattern`` is written with the value
escaped (``\\`` and ``'``), ``labels`` carry ``Push.tag`` and the indicator's own tags, ``confidence``
and ``description`` (the comment) go along. Hostnames are written as ``domain-name`` objects.

Removal is STIX's own retraction: a new version of the indicator (same id, same ``created``, a later
``modified``) with ``revoked: true``. TAXII keeps every version; readers take the latest.

Idempotence: before posting, the sink reads the collection's latest version of each indicator it is
about to write (``match[id]``, in groups): an indicator already there with the same content is not
posted again, one already revoked (or absent) is not revoked again, so a push replayed after a lost
answer posts nothing twice. A collection it may not read (``can_read: false``) is written blind: a
new indicator's ``created``/``modified`` then come from the IOC's first and last sighting (a replay
posts the very same version, which the server keeps once), and a revocation is dated one
millisecond after the last sighting (a value revoked and shared again with no new sighting stays
revoked there).

Envelopes stay within the API root's ``max_content_length`` (and ``max_request_bytes``); a 413
halves the envelope; an indicator too large on its own is rejected. A ``pending`` status is polled
(``status_polls`` times at most, backing off) until it is ``complete``; the objects it lists as
failed are rejected with the server's message. TAXII 2.1 only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from pydantic import Field

from ce_daemon.http import excerpt, send_halving, split_by_size
from ce_daemon.plugin import (
    ComponentConfigError,
    Duration,
    Health,
    PluginContext,
    Push,
    PushResult,
    SharedIoc,
    Size,
    ThreatSink,
    TransientError,
)
from ce_taxii.client import (
    TAXII21,
    Collection,
    TaxiiClient,
    TaxiiOptions,
    json_document,
    parse_time,
    stix_time_ms,
)
from ce_taxii.patterns import SUPPORTED_TYPES, object_path, pattern_for

NAMESPACE = uuid.UUID("5d3c6a57-9a4e-5b1e-9c43-7a1f0c2f7e51")
"""The uuid5 namespace of the indicator ids this sink writes (fixed: ids must not change between releases)."""
_ENVELOPE_OVERHEAD = len(b'{"objects":[]}')
_LOOKUP_IDS = 40  # ids per lookup request: ~2 KB of query string
_COMPARED = ("pattern", "labels", "confidence", "description", "name", "indicator_types")


class TaxiiSinkOptions(TaxiiOptions):
    """Options of the ``taxii`` threat destination (TAXII 2.1)."""

    max_request_bytes: Size = 1024**2
    """The largest envelope one POST carries (the API root's ``max_content_length`` lowers it)."""
    status_polls: Annotated[int, Field(ge=0, le=100)] = 10
    """How many times a ``pending`` status is polled before the push is retried later (0: never)."""
    status_interval: Annotated[Duration, Field(gt=0, le=60)] = 1.0
    """The wait before the first poll of a ``pending`` status; it doubles each time, up to 10 times it."""


def indicator_id(ioc_type: str, value: str) -> str:
    """The STIX id the sink gives the indicator of ``value`` (the same for hostnames and domains)."""
    return f"indicator--{uuid.uuid5(NAMESPACE, f'{object_path(ioc_type)}|{value}')}"


class TaxiiSink(ThreatSink[TaxiiSinkOptions]):
    """The ``taxii`` threat destination: STIX 2.1 indicators in a TAXII 2.1 collection; removal revokes."""

    api_version = 1

    def __init__(self, options: TaxiiSinkOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self.client = TaxiiClient(options, "2.1", context.base_dir)
        self.types = SUPPORTED_TYPES
        self.incremental = True

    async def open(self) -> None:
        self.client.session()

    async def health(self) -> Health:
        return await self.client.health(read=False, write=True)

    async def close(self) -> None:
        await self.client.close()

    async def push(self, push: Push) -> PushResult:
        """Post what ``push`` adds and revoke what it removes, skipping what the collection already says."""
        collection = await self.client.collection()
        if not collection.can_write:
            raise ComponentConfigError(
                f"collection {collection.title or collection.id} is not writable (can_write is false):"
                " name a collection this user may write to"
            )
        wanted: dict[str, tuple[SharedIoc, bool]] = {}
        for ioc in push.remove:
            if ioc.type in SUPPORTED_TYPES:
                wanted[indicator_id(ioc.type, ioc.value)] = (ioc, True)
        for ioc in push.add:
            if ioc.type in SUPPORTED_TYPES:
                wanted[indicator_id(ioc.type, ioc.value)] = (ioc, False)
        current = await self._latest(collection, list(wanted)) if collection.can_read else None
        now = datetime.now(UTC)
        objects: list[dict[str, Any]] = []
        for object_id, (ioc, revoke) in wanted.items():
            prior = current.get(object_id) if current is not None else None
            if current is not None and revoke and (prior is None or prior.get("revoked") is True):
                continue  # already gone
            version = _indicator(object_id, ioc, push.tag, prior, now, revoke=revoke)
            if not revoke and prior is not None and _same(prior, version):
                continue  # already there
            objects.append(version)
        values = {obj["id"]: wanted[obj["id"]][0].value for obj in objects}
        rejected = await self._post(collection, objects, values)
        return PushResult(rejected=rejected)

    # -- looking before writing -----------------------------------------------------------------

    async def _latest(self, collection: Collection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The latest version the collection holds of each of ``ids`` (absent ids are not in it)."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _LOOKUP_IDS):
            group = ids[start : start + _LOOKUP_IDS]
            query = {"match[id]": ",".join(group), "limit": str(len(group))}
            token: str | None = None
            for _ in range(len(group) + 1):  # bounded: each page holds at least one object
                params = {**query, "next": token} if token else query
                answer = await self.client.request(
                    "GET", collection.objects_url, accept=TAXII21, params=params
                )
                envelope = json_document(answer.body, self.client.target, "an envelope")
                objects = envelope.get("objects", [])
                if not isinstance(objects, list):
                    raise TransientError(f"{self.client.target} answered `objects` that is not a list")
                for item in objects:
                    if isinstance(item, dict) and item.get("id") in group:
                        _keep_latest(found, item)
                following = envelope.get("next")
                token = following if isinstance(following, str) and following else None
                if envelope.get("more") is not True or token is None or not objects:
                    break
        return found

    # -- posting ---------------------------------------------------------------------------------

    async def _post(
        self, collection: Collection, objects: list[dict[str, Any]], values: dict[str, str]
    ) -> list[tuple[str, str]]:
        limit = self.options.max_request_bytes
        if collection.max_content_length is not None:
            limit = min(limit, collection.max_content_length)
        encoded = [orjson.dumps(obj) for obj in objects]
        rejected: list[tuple[str, str]] = []
        fitting: list[int] = []
        for position, item in enumerate(encoded):
            if _ENVELOPE_OVERHEAD + len(item) > limit:
                reason = (
                    f"indicator of {len(item):,} bytes: the collection takes envelopes of {limit:,} at most"
                )
                rejected.append((values[objects[position]["id"]], reason))
            else:
                fitting.append(position)

        async def post(part: range) -> range | None:
            chosen = [fitting[p] for p in part]
            body = b'{"objects":[' + b",".join(encoded[i] for i in chosen) + b"]}"
            answer = await self.client.request("POST", collection.objects_url, accept=TAXII21, data=body)
            status = json_document(answer.body, self.client.target, "a status resource")
            status = await self._settled(collection, status)
            for failure in status.get("failures", []) if isinstance(status.get("failures"), list) else []:
                if isinstance(failure, dict) and failure.get("id") in values:
                    message = excerpt(str(failure.get("message") or "refused by the server"))
                    rejected.append((values[failure["id"]], message))
            return None

        parts = split_by_size(
            [len(encoded[i]) for i in fitting], limit, overhead=_ENVELOPE_OVERHEAD, separator=1
        )
        refused = await send_halving(parts, post, on_split=self._split)
        rejected += [(values[objects[fitting[p]]["id"]], reason) for p, reason in refused]
        return rejected

    async def _settled(self, collection: Collection, status: dict[str, Any]) -> dict[str, Any]:
        """``status`` once it is no longer ``pending`` (polled, bounded), or a :class:`TransientError`."""
        delay = self.options.status_interval
        for _ in range(self.options.status_polls):
            if status.get("status") != "pending":
                return status
            status_id = status.get("id")
            if not isinstance(status_id, str) or "/" in status_id:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.status_interval * 10)
            url = f"{collection.api_root}status/{status_id}/"
            status = await self.client.get_document(url, "a status resource", accept=TAXII21)
        if status.get("status") == "pending":
            raise TransientError(
                f"{self.client.target} still has the objects pending; the push is tried again"
            )
        return status

    def _split(self, part: range) -> None:
        self.log.info("taxii.envelope_split", objects=len(part))


def _keep_latest(found: dict[str, dict[str, Any]], item: dict[str, Any]) -> None:
    known = found.get(item["id"])
    mine, theirs = parse_time(item.get("modified")), parse_time(known.get("modified")) if known else None
    if known is None or (mine is not None and (theirs is None or mine > theirs)):
        found[item["id"]] = item


def _indicator(
    object_id: str, ioc: SharedIoc, tag: str, prior: dict[str, Any] | None, now: datetime, *, revoke: bool
) -> dict[str, Any]:
    """The version of the indicator to post: a new one, or one later than ``prior``."""
    created = stix_time_ms(ioc.first_seen)
    modified = stix_time_ms(max(ioc.last_seen, ioc.first_seen) + (0.001 if revoke else 0.0))
    valid_from = created
    if prior is not None:
        created = str(prior.get("created") or created)
        valid_from = str(prior.get("valid_from") or valid_from)
        before = parse_time(prior.get("modified")) or now
        modified = stix_time_ms(max(now, before + timedelta(milliseconds=1)).timestamp())
    indicator: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": object_id,
        "created": created,
        "modified": modified,
        "name": ioc.value[:256],
        "indicator_types": ["malicious-activity"],
        "pattern": pattern_for(ioc.type, ioc.value),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": valid_from,
        "labels": sorted({tag, *ioc.tags}),
        "confidence": min(100, max(0, ioc.confidence)),
    }
    if ioc.comment:
        indicator["description"] = ioc.comment
    if revoke:
        indicator["revoked"] = True
    return indicator


def _same(prior: dict[str, Any], version: dict[str, Any]) -> bool:
    """Whether ``prior`` already says what ``version`` says (and is not revoked)."""
    if prior.get("revoked") is True:
        return False
    return all(prior.get(key) == version.get(key) for key in _COMPARED)
