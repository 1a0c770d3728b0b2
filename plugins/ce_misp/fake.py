"""A fake MISP server: the REST calls a threat exchange pulls attributes with and pushes them by.

Follows MISP's OpenAPI spec (``app/webroot/doc/openapi.yaml``) for the calls used:

- ``POST /attributes/restSearch`` (``returnFormat: json`` only): filters ``type``, ``value``,
  ``category``, ``eventid``, ``to_ids``, ``tags`` (``!tag`` excludes; matched on attribute and
  event tags), ``timestamp``/``attribute_timestamp`` (epoch seconds, ``"7d"``/``"12h"``/``"30m"``,
  or a ``[from, to]`` pair), ``from``/``to`` (event dates, ``YYYY-MM-DD``), ``page`` (from 1) and
  ``limit``. Answers ``{"response": {"Attribute": [...]}}`` in attribute-id order, each with its
  ``Event`` and ``Tag``, and ``X-Result-Count`` (the matches before paging).
- ``POST /events/add`` (``{"Event": {info, date, Attribute: [...], Tag: [...]}}``, or the bare
  event), ``POST /attributes/add/{event_id}`` (one attribute or a list), ``GET /events/view/{id}``.
  A second attribute with the same type and value in one event is refused, as MISP does.
- ``POST /sightings/add`` (``value`` or ``values``, ``type`` 0 sighting / 1 false positive /
  2 expiration, ``source``, ``timestamp``): one sighting per matching attribute; with none, MISP's
  HTTP 200 ``{"saved": false, "errors": ...}``.

Auth is the ``Authorization: <key>`` header; without a valid key MISP answers 403
``{"name", "message", "url"}``. Ids and timestamps are strings in answers, as MISP sends them.
Scripted failures (`FakeHttpServer.fail_next`, with ``Retry-After`` for a 429) apply before auth.
"""

from __future__ import annotations

import re
import ssl
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

AUTH_FAILED = (
    "Authentication failed. Please make sure you pass the API key of an API enabled user along in the"
    " Authorization header."
)
DEFAULT_KEY = "fake-misp-key-0000000000000000000000000"
"""The API key the fake accepts when none are given (MISP keys are 40 characters)."""
SIGHTING_TYPES = {"0": "sighting", "1": "false-positive", "2": "expiration"}
_CATEGORIES = {
    "md5": "Payload delivery",
    "sha1": "Payload delivery",
    "sha256": "Payload delivery",
    "filename|md5": "Payload delivery",
    "filename|sha256": "Payload delivery",
    "url": "Network activity",
    "domain": "Network activity",
    "hostname": "Network activity",
    "ip-src": "Network activity",
    "ip-dst": "Network activity",
    "ip-src|port": "Network activity",
    "ip-dst|port": "Network activity",
    "domain|ip": "Network activity",
    "hostname|port": "Network activity",
    "link": "External analysis",
    "comment": "Other",
    "text": "Other",
}
"""The attribute types the fake knows, with the category MISP defaults each to."""
_RELATIVE = re.compile(r"(\d+)([dhms])")
_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


class MispError(Exception):
    """An error answer in MISP's shape: ``{"name", "message", "url"}`` plus any ``extra`` fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra

    def response(self, path: str) -> web.Response:
        return json_response(
            {"name": self.message, "message": self.message, "url": path, **self.extra}, self.status
        )


@dataclass(slots=True)
class Attribute:
    """One attribute as the fake stores it."""

    id: int
    event_id: int
    type: str
    value: str
    category: str
    to_ids: bool
    timestamp: int
    comment: str = ""
    tags: list[str] = field(default_factory=list)
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    first_seen: str | None = None
    last_seen: str | None = None
    deleted: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "event_id": str(self.event_id),
            "object_id": "0",
            "uuid": self.uuid,
            "type": self.type,
            "category": self.category,
            "value": self.value,
            "to_ids": self.to_ids,
            "timestamp": str(self.timestamp),
            "distribution": "5",
            "sharing_group_id": "0",
            "comment": self.comment,
            "deleted": self.deleted,
            "disable_correlation": False,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "Tag": [{"name": tag} for tag in self.tags],
        }


@dataclass(slots=True)
class Event:
    """One event: its header and the ids of its attributes."""

    id: int
    info: str
    date: str
    timestamp: int
    tags: list[str] = field(default_factory=list)
    attribute_ids: list[int] = field(default_factory=list)
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    threat_level_id: str = "4"
    analysis: str = "0"
    published: bool = False

    def header(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "uuid": self.uuid,
            "info": self.info,
            "date": self.date,
            "org_id": "1",
            "orgc_id": "1",
            "distribution": "0",
        }


class FakeMisp(FakeHttpServer):
    """A MISP instance: ``events``, ``attributes`` and ``sightings`` hold what was pushed or seeded.

    ``keys`` are the API keys it accepts; ``clock`` stamps new attributes (epoch seconds).
    Tests seed data with :meth:`add_event` and read it back from the same dictionaries.
    """

    def __init__(
        self,
        *,
        keys: Collection[str] = (DEFAULT_KEY,),
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.keys = set(keys)
        self.clock = clock
        self.events: dict[int, Event] = {}
        self.attributes: dict[int, Attribute] = {}
        self.sightings: list[dict[str, Any]] = []
        self.searches: list[dict[str, Any]] = []
        """Every restSearch body, in order (what a puller asked for)."""

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/attributes/restSearch", self._guard(self._rest_search)),
            web.post("/events/add", self._guard(self._add_event)),
            web.post("/attributes/add/{event_id}", self._guard(self._add_attributes)),
            web.post("/sightings/add", self._guard(self._add_sighting)),
            web.get("/events/view/{event_id}", self._guard(self._view_event)),
        ]

    def refuse_credentials(self) -> None:
        """Every API key is revoked: requests get 403 "Authentication failed"."""
        self.keys.clear()

    def error_body(self, status: int) -> bytes:
        phrase = HTTPStatus(status).phrase
        return orjson.dumps({"name": phrase, "message": phrase, "url": ""})

    # -- seeding and reading back ------------------------------------------------------------

    def add_event(
        self,
        info: str,
        attributes: Iterable[dict[str, Any]] = (),
        *,
        tags: Iterable[str] = (),
        date: str | None = None,
    ) -> Event:
        """Create an event with ``attributes`` (each as MISP takes it: type, value, to_ids, Tag…)."""
        now = int(self.clock())
        event = Event(
            id=len(self.events) + 1,
            info=info,
            date=date or datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d"),
            timestamp=now,
            tags=list(tags),
        )
        attributes = list(attributes)
        self._check_attributes(event, attributes)
        self.events[event.id] = event
        for attribute in attributes:
            self._store(event, attribute)
        return event

    def values(self, event_id: int | None = None) -> list[str]:
        """The attribute values held (in ``event_id``, or in all events), in the order they came."""
        return [a.value for a in self.attributes.values() if event_id is None or a.event_id == event_id]

    # -- plumbing ----------------------------------------------------------------------------

    def _guard(
        self, handle: Callable[[web.Request, Any], dict[str, Any] | list[Any] | web.Response]
    ) -> Callable[[web.Request], Any]:
        """Script, auth, the JSON body, the handler, MISP's error shape; every request recorded."""

        async def guarded(request: web.Request) -> web.Response:
            scripted = await self.intercept(request)
            if scripted is not None:
                return scripted
            body = await request.read()
            try:
                self._authenticate(request)
                result = handle(request, _payload(body))
                answer = result if isinstance(result, web.Response) else json_response(result)
            except MispError as exc:
                answer = exc.response(request.path)
            await self.record(request, body, answer.status)
            return answer

        return guarded

    def _authenticate(self, request: web.Request) -> None:
        if request.headers.get("Authorization", "") not in self.keys:
            raise MispError(403, AUTH_FAILED)

    def _event(self, request: web.Request) -> Event:
        raw = request.match_info["event_id"]
        event = self.events.get(int(raw)) if raw.isdigit() else None
        if event is None:
            raise MispError(404, "Invalid event")
        return event

    def _check_attributes(self, event: Event, attributes: list[dict[str, Any]]) -> None:
        """Refuse the whole set if one attribute is malformed, of an unknown type, or a duplicate."""
        seen = {
            (a.type, a.value) for a in self.attributes.values() if a.event_id == event.id and not a.deleted
        }
        for number, attribute in enumerate(attributes):
            errors: dict[str, list[str]] = {}
            if not isinstance(attribute, dict):
                raise MispError(
                    403, "Could not add Attribute", saved=False, errors={"Attribute": ["not an object"]}
                )
            kind, value = attribute.get("type"), attribute.get("value")
            if kind not in _CATEGORIES:
                errors["type"] = [f"Options depend on the selected category ({kind!r} is not a known type)."]
            if not isinstance(value, str) or not value.strip():
                errors["value"] = ["Please fill in this field"]
            elif (kind, value) in seen:
                errors["value"] = ["A similar attribute already exists for this event."]
            if errors:
                raise MispError(403, "Could not add Attribute", saved=False, errors=errors, index=number)
            seen.add((str(kind), str(value)))

    def _store(self, event: Event, given: dict[str, Any]) -> Attribute:
        kind = str(given["type"])
        tags = [tag["name"] if isinstance(tag, dict) else str(tag) for tag in given.get("Tag", [])]
        timestamp = given.get("timestamp")
        attribute = Attribute(
            id=len(self.attributes) + 1,
            event_id=event.id,
            type=kind,
            value=str(given["value"]),
            category=str(given.get("category") or _CATEGORIES[kind]),
            to_ids=_flag(given.get("to_ids", True)),
            timestamp=int(timestamp) if timestamp is not None else int(self.clock()),
            comment=str(given.get("comment", "")),
            tags=tags,
            first_seen=given.get("first_seen"),
            last_seen=given.get("last_seen"),
        )
        self.attributes[attribute.id] = attribute
        event.attribute_ids.append(attribute.id)
        event.timestamp = max(event.timestamp, attribute.timestamp)
        return attribute

    def _event_view(self, event: Event) -> dict[str, Any]:
        attributes = [
            self.attributes[i].to_api() for i in event.attribute_ids if not self.attributes[i].deleted
        ]
        return {
            "Event": {
                **event.header(),
                "timestamp": str(event.timestamp),
                "threat_level_id": event.threat_level_id,
                "analysis": event.analysis,
                "published": event.published,
                "attribute_count": str(len(attributes)),
                "Attribute": attributes,
                "Tag": [{"name": tag} for tag in event.tags],
            }
        }

    # -- endpoints ---------------------------------------------------------------------------

    def _add_event(self, request: web.Request, payload: Any) -> dict[str, Any]:
        given = payload.get("Event", payload) if isinstance(payload, dict) else None
        if not isinstance(given, dict) or not given.get("info"):
            raise MispError(
                403, "Could not add Event", saved=False, errors={"Event": {"info": ["Info cannot be empty."]}}
            )
        tags = [tag["name"] if isinstance(tag, dict) else str(tag) for tag in given.get("Tag", [])]
        attributes = given.get("Attribute", [])
        if not isinstance(attributes, list):
            raise MispError(403, "Could not add Event", saved=False, errors={"Attribute": ["must be a list"]})
        event = self.add_event(str(given["info"]), attributes, tags=tags, date=given.get("date"))
        return self._event_view(event)

    def _add_attributes(self, request: web.Request, payload: Any) -> dict[str, Any] | list[Any]:
        event = self._event(request)
        single = not isinstance(payload, list)
        given = (
            [payload.get("Attribute", payload) if isinstance(payload, dict) else payload]
            if single
            else payload
        )
        self._check_attributes(event, given)
        stored = [self._store(event, attribute).to_api() for attribute in given]
        return {"Attribute": stored[0]} if single else [{"Attribute": attribute} for attribute in stored]

    def _view_event(self, request: web.Request, payload: Any) -> dict[str, Any]:
        return self._event_view(self._event(request))

    def _add_sighting(self, request: web.Request, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            return {"saved": False, "errors": "Invalid request body."}
        values = payload.get("values") or ([payload["value"]] if payload.get("value") else [])
        kind = str(payload.get("type", "0"))
        if kind not in SIGHTING_TYPES:
            return {"saved": False, "errors": f"Invalid sighting type {kind!r}."}
        matches = [a for a in self.attributes.values() if a.value in values and not a.deleted]
        if not matches:
            return {"saved": False, "errors": "No valid attributes found that match the criteria."}
        date = int(payload.get("timestamp") or self.clock())
        for attribute in matches:
            self.sightings.append(
                {
                    "id": str(len(self.sightings) + 1),
                    "attribute_id": str(attribute.id),
                    "event_id": str(attribute.event_id),
                    "value": attribute.value,
                    "type": kind,
                    "source": str(payload.get("source", "")),
                    "date_sighting": str(date),
                }
            )
        message = f"{len(matches)} sighting{'s' if len(matches) > 1 else ''} successfully added."
        return {"saved": True, "success": True, "name": message, "message": message, "url": request.path}

    def _rest_search(self, request: web.Request, payload: Any) -> web.Response:
        if not isinstance(payload, dict):
            raise MispError(400, "Invalid request body: expected a JSON object of filters")
        self.searches.append(payload)
        if payload.get("returnFormat", "json") != "json":
            raise MispError(400, f"The fake supports returnFormat json only, not {payload['returnFormat']!r}")
        matches = [a for a in self.attributes.values() if not a.deleted and self._matches(a, payload)]
        page, limit = _positive(payload, "page"), _positive(payload, "limit")
        shown = matches
        if limit is not None:
            start = ((page or 1) - 1) * limit
            shown = matches[start : start + limit]
        found = []
        for attribute in shown:
            item = attribute.to_api()
            item["Event"] = self.events[attribute.event_id].header()
            found.append(item)
        return json_response(
            {"response": {"Attribute": found}}, headers={"X-Result-Count": str(len(matches))}
        )

    def _matches(self, attribute: Attribute, filters: dict[str, Any]) -> bool:
        event = self.events[attribute.event_id]
        checks = (
            _one_of(filters.get("type"), attribute.type),
            _one_of(filters.get("value"), attribute.value),
            _one_of(filters.get("category"), attribute.category),
            _one_of(filters.get("eventid"), str(attribute.event_id)),
            "to_ids" not in filters or _flag(filters["to_ids"]) == attribute.to_ids,
            _tags_match(filters.get("tags"), set(attribute.tags) | set(event.tags)),
            _in_window(filters.get("timestamp"), attribute.timestamp, self.clock()),
            _in_window(filters.get("attribute_timestamp"), attribute.timestamp, self.clock()),
            not filters.get("from") or event.date >= str(filters["from"]),
            not filters.get("to") or event.date <= str(filters["to"]),
        )
        return all(checks)


def _payload(body: bytes) -> Any:
    """The decoded JSON body (an empty one is no filter); MISP's 400 when it is not JSON."""
    try:
        return orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise MispError(400, f"Invalid JSON input: {exc}") from exc


def _flag(value: Any) -> bool:
    """MISP's booleans: true/false, 1/0, "1"/"0"."""
    return value not in (False, 0, "0", "false", "False", None, "")


def _positive(filters: dict[str, Any], key: str) -> int | None:
    value = filters.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise MispError(400, f"Invalid {key} {value!r}: expected a positive integer") from None
    if number < 1:
        raise MispError(400, f"Invalid {key} {value!r}: expected a positive integer")
    return number


def _one_of(wanted: Any, actual: str) -> bool:
    """A filter that is absent, one value, or a list of values (any of them)."""
    if wanted is None or wanted == []:
        return True
    options = wanted if isinstance(wanted, list) else [wanted]
    return actual in {str(option) for option in options}


def _tags_match(wanted: Any, tags: set[str]) -> bool:
    """``tags``: any of the plain ones must be there (if any), none of the ``!`` ones may."""
    if not wanted:
        return True
    names = [str(tag) for tag in (wanted if isinstance(wanted, list) else [wanted])]
    excluded = {name[1:] for name in names if name.startswith("!")}
    included = {name for name in names if not name.startswith("!")}
    return not (tags & excluded) and (not included or bool(tags & included))


def _in_window(wanted: Any, timestamp: int, now: float) -> bool:
    """A timestamp filter: a bound (epoch or ``"7d"``), or a ``[from, to]`` pair."""
    if wanted is None or wanted == "":
        return True
    if isinstance(wanted, list):
        if len(wanted) != 2:  # a [from, to] pair
            raise MispError(400, f"Invalid timestamp range {wanted!r}: expected [from, to]")
        return _epoch(wanted[0], now) <= timestamp <= _epoch(wanted[1], now)
    return timestamp >= _epoch(wanted, now)


def _epoch(value: Any, now: float) -> int:
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    relative = _RELATIVE.fullmatch(text)
    if relative is None:
        raise MispError(400, f"Invalid timestamp {value!r}: expected epoch seconds or a duration like 7d")
    return int(now) - int(relative.group(1)) * _SECONDS[relative.group(2)]
