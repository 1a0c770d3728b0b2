"""The ``misp`` threat destination: one event holds what is shared, attributes added and soft-deleted.

A push finds its event (``POST /events/index`` by ``event_info``, kept only with exactly that info
and the push tag; the lowest id wins) or creates it (``POST /events/add``; when that answer is lost
the index is asked again before creating another). It then looks for what the event already holds
of the push's values (``POST /attributes/restSearch`` on the event, paged: bounded where viewing a
large event whole is not), adds the missing ones (``POST /attributes/add/{event}``, in batches,
``to_ids`` and the push tag on each) and soft-deletes the removed ones (``POST
/attributes/delete/{id}``; one already gone answers 404, which is fine). A push replayed after a lost
answer therefore doubles nothing. MISP refuses attributes one by one (403 ``{"saved": false}`` or
``errors`` beside what it saved): one refused and not found in the event afterwards is rejected
with MISP's reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import Field, field_validator

from ce_daemon.http import excerpt, status_error
from ce_daemon.plugin import (
    ComponentConfigError,
    Health,
    PluginContext,
    Push,
    PushResult,
    SharedIoc,
    ThreatSink,
    TransientError,
)
from ce_misp.client import Answer, MispClient, MispOptions, shape_error
from ce_misp.mapping import TO_MISP, to_attribute

T = TypeVar("T")
_MAX_LOOKUP_PAGES = 10_000
"""The most pages one look-up reads (a peer answering full pages for ever must not hold a push for ever)."""
Key = tuple[str, str]
"""An attribute as compared: its MISP type and value."""


class MispSinkOptions(MispOptions):
    """Options of the ``misp`` threat destination (see the package's docstring)."""

    event_info: Annotated[str, Field(min_length=1, max_length=1000)] = "ce-daemon shared indicators"
    distribution: Annotated[int, Field(ge=0, le=3)] = 0
    threat_level_id: Annotated[int, Field(ge=1, le=4)] = 4
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    page_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    sightings: bool = False
    sighting_source: Annotated[str, Field(max_length=255)] = "ce-daemon"

    @field_validator("event_info")
    @classmethod
    def _searchable(cls, value: str) -> str:
        if "|" in value or value.startswith("!") or value != value.strip():
            raise ValueError("event_info is searched for as it is: no '|', no leading '!' or spaces")
        return value


class _EventGoneError(Exception):
    """The event this sink wrote to was deleted in MISP: find or create it again."""


class MispSink(ThreatSink[MispSinkOptions]):
    """Shares IOCs as the attributes of one MISP event (``event_info``), tagged with the push tag."""

    api_version = 1
    types = frozenset(TO_MISP)
    incremental = True

    def __init__(self, options: MispSinkOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.client = MispClient(options, context)
        self._events: dict[str, int] = {}
        """The event found or made for each push tag."""

    async def open(self) -> None:
        self.client.session()

    async def health(self) -> Health:
        return await self.client.health()

    async def close(self) -> None:
        await self.client.close()

    async def push(self, push: Push) -> PushResult:
        if not push.add and not push.remove and not push.full:
            return PushResult()
        for attempt in (1, 2):
            event_id = await self._event(push.tag)
            try:
                return await self._apply(event_id, push)
            except _EventGoneError:
                self._events.pop(push.tag, None)
                self.context.log.warning("misp.event_gone", event_id=event_id, attempt=attempt)
        raise TransientError(f"MISP event {self.options.event_info!r} vanished twice during one push")

    # -- the event ---------------------------------------------------------------------------

    async def _event(self, tag: str) -> int:
        """The id of this destination's event for ``tag``: remembered, found, or created."""
        if tag in self._events:
            return self._events[tag]
        found = await self._find_event(tag)
        if found is None:
            try:
                found = await self._create_event(tag)
            except TransientError:
                # the event may have been made and only the answer lost: look before creating again
                found = await self._find_event(tag)
                if found is None:
                    raise
        self._events[tag] = found
        return found

    async def _find_event(self, tag: str) -> int | None:
        info = self.options.event_info
        answer = await self.client.call(
            "POST", "/events/index", {"eventinfo": info, "tags": [tag], "limit": 1000, "page": 1}
        )
        if not isinstance(answer.body, list):
            raise shape_error("MISP POST /events/index", "no list of events", answer.body)
        ids = [
            _id(event.get("id"))
            for event in answer.body
            if isinstance(event, dict) and event.get("info") == info and tag in _event_tags(event)
        ]
        return min((i for i in ids if i is not None), default=None)

    async def _create_event(self, tag: str) -> int:
        opts = self.options
        event = {
            "info": opts.event_info,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "distribution": str(opts.distribution),
            "threat_level_id": str(opts.threat_level_id),
            "analysis": "0",
            "Tag": [{"name": tag}],
        }
        answer = await self.client.call("POST", "/events/add", {"Event": event}, accept=(403,))
        body = answer.body if isinstance(answer.body, dict) else {}
        if answer.status == 403 and body.get("saved") is False:
            raise ComponentConfigError(
                f"MISP refused to create the event {opts.event_info!r}: {excerpt(orjson.dumps(body))}"
            )
        if answer.status == 403:
            raise status_error(
                403,
                f"MISP POST /events/add answered HTTP 403: {excerpt(orjson.dumps(body))}",
                answer.headers,
                "MISP POST /events/add",
            )
        created = body.get("Event")
        event_id = _id(created.get("id")) if isinstance(created, dict) else None
        if not isinstance(created, dict) or event_id is None:
            raise shape_error("MISP POST /events/add", "no Event with an id", answer.body)
        if tag not in _event_tags(created):
            # untagged, it would never be found again: every push would make one more event
            raise ComponentConfigError(
                f"MISP made event {event_id} without the tag {tag!r}: the key's user needs to tag"
                " (perm_tagger), or the tag must exist; delete that event once this is fixed"
            )
        self.context.log.info("misp.event_created", event_id=event_id, info=opts.event_info)
        return event_id

    # -- one push ----------------------------------------------------------------------------

    async def _apply(self, event_id: int, push: Push) -> PushResult:
        rejected: list[tuple[str, str]] = []
        wanted: dict[Key, SharedIoc] = {}
        for ioc in push.add:
            if ioc.type in TO_MISP:
                wanted.setdefault((TO_MISP[ioc.type], ioc.value), ioc)
            else:
                rejected.append((ioc.value, f"MISP takes no {ioc.type} indicators"))
        gone = {(TO_MISP[ioc.type], ioc.value) for ioc in push.remove if ioc.type in TO_MISP} - wanted.keys()
        held = await self._held(event_id, None if push.full else [*wanted, *gone])
        missing = [ioc for key, ioc in wanted.items() if key not in held]
        added, refused = await self._add(event_id, missing, push.tag)
        rejected += refused
        doomed = (held.keys() - wanted.keys()) if push.full else (gone & held.keys())
        for key in sorted(doomed):
            for attribute_id in held[key]:
                await self._delete(attribute_id)
        if self.options.sightings and added:
            await self._sight(added)
        return PushResult(rejected=rejected)

    async def _held(self, event_id: int, keys: Sequence[Key] | None) -> dict[Key, list[int]]:
        """The live attributes of the event with those ``keys`` (None: all of them): their ids."""
        held: dict[Key, list[int]] = defaultdict(list)
        chunks: Iterable[Sequence[Key] | None] = (
            [None] if keys is None else _chunks(keys, self.options.batch_size)
        )
        for chunk in chunks:
            filters: dict[str, Any] = {"returnFormat": "json", "eventid": str(event_id)}
            if chunk is not None:
                if not chunk:
                    continue
                filters["value"] = sorted({value for _, value in chunk})
                filters["type"] = sorted({kind for kind, _ in chunk})
            wanted = None if chunk is None else set(chunk)
            for key, attribute_id in await self._search(filters):
                if wanted is None or key in wanted:
                    held[key].append(attribute_id)
        return held

    async def _search(self, filters: dict[str, Any]) -> list[tuple[Key, int]]:
        """Every attribute restSearch finds for ``filters``, page by page: its key and id."""
        size = self.options.page_size
        found: list[tuple[Key, int]] = []
        for page in range(1, _MAX_LOOKUP_PAGES + 1):
            answer = await self.client.call(
                "POST", "/attributes/restSearch", {**filters, "limit": size, "page": page}
            )
            items = _attributes(answer.body)
            if items is None or len(items) > size:
                raise shape_error("MISP POST /attributes/restSearch", "no page of attributes", answer.body)
            for item in items:
                if not isinstance(item, dict):
                    continue
                attribute_id = _id(item.get("id"))
                kind, value = item.get("type"), item.get("value")
                if attribute_id is not None and isinstance(kind, str) and isinstance(value, str):
                    found.append(((kind, value), attribute_id))
            if len(items) < size:
                return found
        raise TransientError(f"MISP kept answering full pages of attributes past page {_MAX_LOOKUP_PAGES}")

    async def _add(
        self, event_id: int, iocs: Sequence[SharedIoc], tag: str
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Add ``iocs`` in batches: the values added, and those refused for good with MISP's reason."""
        added: list[str] = []
        failed: dict[Key, str] = {}
        for batch in _chunks(iocs, self.options.batch_size):
            answer = await self.client.call(
                "POST",
                f"/attributes/add/{event_id}",
                [to_attribute(ioc, tag) for ioc in batch],
                accept=(403, 404),
            )
            if answer.status == 404:
                raise _EventGoneError
            errors = _add_errors(answer, len(batch))
            for index, ioc in enumerate(batch):
                if index in errors:
                    failed[(TO_MISP[ioc.type], ioc.value)] = errors[index]
                else:
                    added.append(ioc.value)
        if not failed:
            return added, []
        # A refusal may be MISP's "already exists" (written meanwhile): what the event holds is added.
        held = await self._held(event_id, list(failed))
        rejected: list[tuple[str, str]] = []
        for key, reason in failed.items():
            if key in held:
                added.append(key[1])
            else:
                rejected.append((key[1], reason))
        return added, rejected

    async def _delete(self, attribute_id: int) -> None:
        answer = await self.client.call("POST", f"/attributes/delete/{attribute_id}", {}, accept=(404,))
        if answer.status == 404:
            self.context.log.debug("misp.attribute_already_gone", attribute_id=attribute_id)

    async def _sight(self, values: Sequence[str]) -> None:
        """One sighting of each value (MISP answers 200 ``saved: false`` when it found none to sight)."""
        for batch in _chunks(values, self.options.batch_size):
            body = {"values": list(batch), "type": "0", "source": self.options.sighting_source}
            answer = await self.client.call("POST", "/sightings/add", body)
            if isinstance(answer.body, dict) and answer.body.get("saved") is False:
                reason = excerpt(orjson.dumps(answer.body.get("errors")))
                self.context.log.warning("misp.sightings_not_saved", values=len(batch), reason=reason)


def _add_errors(answer: Answer, count: int) -> dict[int, str]:
    """Which attributes of a batch of ``count`` MISP refused (index → reason); raise for a bad answer."""
    body = answer.body
    if not isinstance(body, dict):
        raise shape_error("MISP POST /attributes/add", "no JSON object", body)
    if answer.status == 403 and body.get("saved") is not False:
        message = f"MISP POST /attributes/add answered HTTP 403: {excerpt(str(body.get('message', '')))}"
        raise status_error(403, message, answer.headers, "MISP POST /attributes/add")
    errors = body.get("errors")
    if not errors:
        if answer.status == 403:
            return dict.fromkeys(range(count), "refused by MISP (no reason given)")
        return {}
    indexed: dict[int, str] = {}
    if isinstance(errors, dict):
        for name, reason in errors.items():
            number = str(name).removeprefix("attribute_")
            if (
                str(name).startswith("attribute_")
                and number.isascii()
                and number.isdigit()
                and int(number) < count
            ):
                indexed[int(number)] = excerpt(orjson.dumps(reason))
    if not indexed and answer.status == 403:  # one attribute's errors, or errors we cannot place
        return dict.fromkeys(range(count), excerpt(orjson.dumps(errors)))
    return indexed


def _attributes(body: Any) -> list[Any] | None:
    """The attributes of a restSearch answer, None when it is not one."""
    response = body.get("response") if isinstance(body, dict) else None
    if response == []:  # what MISP answers when nothing matched
        return []
    attributes = response.get("Attribute") if isinstance(response, dict) else None
    return attributes if isinstance(attributes, list) else None


def _event_tags(event: dict[str, Any]) -> set[str]:
    """An indexed event's tag names (``EventTag[].Tag.name``, or a plain ``Tag`` list)."""
    links = event.get("EventTag")
    tags = [link.get("Tag") for link in links if isinstance(link, dict)] if isinstance(links, list) else []
    if isinstance(event.get("Tag"), list):
        tags += event["Tag"]
    return {tag["name"] for tag in tags if isinstance(tag, dict) and isinstance(tag.get("name"), str)}


def _id(value: Any) -> int | None:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    return (items[start : start + size] for start in range(0, len(items), size))
