"""A fake MISP server: the REST calls a threat exchange pulls attributes with and pushes them by.

Follows MISP's OpenAPI spec (``app/webroot/doc/openapi.yaml``) for the calls used:

- ``POST /attributes/restSearch`` (``returnFormat: json`` only): filters ``type``, ``value``,
  ``category``, ``eventid``, ``to_ids``, ``tags`` (``!tag`` excludes; matched on attribute and
  event tags), ``timestamp``/``attribute_timestamp`` (epoch seconds, ``"7d"``/``"12h"``/``"30m"``,
  or a ``[from, to]`` pair), ``from``/``to`` (event dates, ``YYYY-MM-DD``), ``deleted`` (0, the
  default: live attributes; 1: soft-deleted ones only; ``[0, 1]``: both), ``page`` (from 1) and
  ``limit``; ``order`` (``"timestamp asc, id asc"``, MISP's ``Attribute.`` prefix allowed).
  Answers ``{"response": {"Attribute": [...]}}`` in attribute-id order unless ordered, each with
  its ``Event`` (``id, info, org_id, orgc_id, uuid`` as MISP sends; with ``includeContext`` the
  event's metadata too: ``threat_level_id``, ``date``, ``timestamp``, its ``Tag`` list…) and
  ``Tag`` (with ``includeEventTags``, the event's tags follow, marked ``inherited``), and
  ``X-Result-Count`` (the matches before paging).
- ``POST /events/index``: filters ``eventinfo`` (case-insensitive substring; ``|`` between
  alternatives, ``!`` negates), ``tags``/``tag`` (event tags, ``!`` excludes), ``eventid``,
  ``page``/``limit``. Answers a JSON list of events, each with ``EventTag: [{"Tag": {...}}]``.
- ``POST /events/add`` (``{"Event": {info, date, threat_level_id, Attribute: [...], Tag: [...]}}``,
  or the bare event; all or nothing), ``GET /events/view/{id}`` (soft-deleted attributes left out).
- ``POST /attributes/add/{event_id}`` (one attribute or a list): as MISP, each attribute is saved
  or refused on its own; a second attribute with the same type and value in one event is refused.
  With some saved: 200 ``{"Attribute": ...}`` (one object, or a list when several were saved) and
  ``errors: {"attribute_N": {...}}`` for the refused; with none: MISP's 403
  ``{"saved": false, "errors": ...}`` (keyed ``attribute_N`` when a list was sent).
- ``POST`` or ``DELETE /attributes/delete/{id}``: a soft delete (``deleted`` set, timestamp bumped),
  ``{"message": "Attribute deleted."}``; an unknown or already deleted attribute: 404
  ``Invalid attribute``, as MISP answers.
- ``GET /servers/getVersion``: ``{"version": ...}`` (what a health check reads).
- ``POST /sightings/add`` (``value`` or ``values``, ``type`` 0 sighting / 1 false positive /
  2 expiration, ``source``, ``timestamp``): one sighting per matching attribute; with none, MISP's
  HTTP 200 ``{"saved": false, "errors": ...}``.

Auth is the ``Authorization: <key>`` header; without a valid key MISP answers 403
``{"name", "message", "url"}``. Ids and timestamps are strings in answers, as MISP sends them.
Scripted failures (`FakeHttpServer.fail_next`, with ``Retry-After`` for a 429) apply before auth;
:meth:`FakeMisp.drop_after_apply` makes the next requests take effect and then drops the
connection unanswered (an answer lost on the way back).
"""

from __future__ import annotations

import itertools
import re
import ssl
import time
import uuid
from collections import deque
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
        """The event as restSearch attaches it to an attribute (MISP's ``Event`` fields there)."""
        return {"id": str(self.id), "info": self.info, "org_id": "1", "orgc_id": "1", "uuid": self.uuid}

    def metadata(self) -> dict[str, Any]:
        """The event without its attributes (``includeContext``, ``/events/index``, ``/events/view``)."""
        return {
            **self.header(),
            "date": self.date,
            "threat_level_id": self.threat_level_id,
            "analysis": self.analysis,
            "published": self.published,
            "timestamp": str(self.timestamp),
            "distribution": "0",
            "sharing_group_id": "0",
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
        self._event_ids = itertools.count(1)  # MISP never gives an id out twice
        self._drops: deque[bool] = deque()  # True: drop that request's answer

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/attributes/restSearch", self._guard(self._rest_search)),
            web.post("/events/add", self._guard(self._add_event)),
            web.post("/attributes/add/{event_id}", self._guard(self._add_attributes)),
            web.post("/sightings/add", self._guard(self._add_sighting)),
            web.get("/events/view/{event_id}", self._guard(self._view_event)),
            web.post("/events/index", self._guard(self._index_events)),
            web.post("/attributes/delete/{attribute_id}", self._guard(self._delete_attribute)),
            web.delete("/attributes/delete/{attribute_id}", self._guard(self._delete_attribute)),
            web.get("/servers/getVersion", self._guard(self._version)),
        ]

    def drop_after_apply(self, count: int = 1, *, after: int = 0) -> None:
        """The next ``count`` requests (once ``after`` more passed) take effect, then go unanswered.

        Their connection is closed instead of answering: the client sees a server that disconnected.
        """
        self._drops.extend([False] * after + [True] * count)

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
        threat_level_id: str = "4",
    ) -> Event:
        """Create an event with ``attributes`` (each as MISP takes it: type, value, to_ids, Tag…)."""
        now = int(self.clock())
        event = Event(
            id=next(self._event_ids),
            info=info,
            date=date or datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d"),
            timestamp=now,
            tags=list(tags),
            threat_level_id=threat_level_id,
        )
        attributes = list(attributes)
        self._check_attributes(event, attributes)
        self.events[event.id] = event
        for attribute in attributes:
            self._store(event, attribute)
        return event

    def values(self, event_id: int | None = None) -> list[str]:
        """The live attribute values (in ``event_id``, or in all events), in the order they came."""
        return [
            a.value
            for a in self.attributes.values()
            if (event_id is None or a.event_id == event_id) and not a.deleted
        ]

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
            if self._drops and self._drops.popleft() and request.transport is not None:
                request.transport.abort()  # applied, but the answer never leaves
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
        seen = self._live_keys(event)
        for number, attribute in enumerate(attributes):
            errors = _attribute_errors(attribute, seen)
            if errors:
                raise MispError(403, "Could not add Attribute", saved=False, errors=errors, index=number)
            seen.add((str(attribute["type"]), str(attribute["value"])))

    def _live_keys(self, event: Event) -> set[tuple[str, str]]:
        return {
            (a.type, a.value) for a in self.attributes.values() if a.event_id == event.id and not a.deleted
        }

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
                **event.metadata(),
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
        event = self.add_event(
            str(given["info"]),
            attributes,
            tags=tags,
            date=given.get("date"),
            threat_level_id=str(given.get("threat_level_id", "4")),
        )
        return self._event_view(event)

    def _add_attributes(self, request: web.Request, payload: Any) -> dict[str, Any]:
        """Each attribute saved or refused on its own (MISP's ``captureAttribute`` loop)."""
        event = self._event(request)
        given = payload.get("Attribute", payload) if isinstance(payload, dict) else payload
        attributes = given if isinstance(given, list) else [given]
        seen = self._live_keys(event)
        stored: list[dict[str, Any]] = []
        errors: dict[str, Any] = {}
        for number, attribute in enumerate(attributes):
            refused = _attribute_errors(attribute, seen)
            if refused:
                errors[f"attribute_{number}"] = refused
                continue
            seen.add((str(attribute["type"]), str(attribute["value"])))
            stored.append(self._store(event, attribute).to_api())
        if not stored:
            raise MispError(
                403,
                "Could not add Attribute",
                saved=False,
                errors=errors["attribute_0"] if len(attributes) == 1 else errors,
            )
        answer: dict[str, Any] = {"Attribute": stored[0] if len(stored) == 1 else stored}
        if errors:
            answer["errors"] = errors
        return answer

    def _delete_attribute(self, request: web.Request, payload: Any) -> dict[str, Any]:
        raw = request.match_info["attribute_id"]
        attribute = self.attributes.get(int(raw)) if raw.isdigit() else None
        if attribute is None or attribute.deleted:
            raise MispError(404, "Invalid attribute")
        attribute.deleted = True
        attribute.timestamp = int(self.clock())
        return {"message": "Attribute deleted."}

    def _version(self, request: web.Request, payload: Any) -> dict[str, Any]:
        return {"version": "2.5.2", "perm_sync": False, "perm_sighting": True, "perm_galaxy_editor": False}

    def _index_events(self, request: web.Request, payload: Any) -> list[dict[str, Any]]:
        if not isinstance(payload, dict):
            raise MispError(400, "Invalid request body: expected a JSON object of filters")
        found = [
            event
            for event in self.events.values()
            if _info_matches(payload.get("eventinfo"), event.info)
            and _tags_match(payload.get("tags") or payload.get("tag"), set(event.tags))
            and _one_of(payload.get("eventid"), str(event.id))
        ]
        page, limit = _positive(payload, "page"), _positive(payload, "limit")
        if limit is not None:
            start = ((page or 1) - 1) * limit
            found = found[start : start + limit]
        return [
            {
                **event.metadata(),
                "attribute_count": str(sum(not self.attributes[i].deleted for i in event.attribute_ids)),
                "EventTag": [
                    {"event_id": str(event.id), "tag_id": str(n + 1), "local": False, "Tag": {"name": tag}}
                    for n, tag in enumerate(event.tags)
                ],
            }
            for event in found
        ]

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
        deleted = _deleted_filter(payload.get("deleted"))
        matches = [a for a in self.attributes.values() if a.deleted in deleted and self._matches(a, payload)]
        if payload.get("order"):
            matches = _ordered(matches, payload["order"])
        page, limit = _positive(payload, "page"), _positive(payload, "limit")
        shown = matches
        if limit is not None:
            start = ((page or 1) - 1) * limit
            shown = matches[start : start + limit]
        found = []
        for attribute in shown:
            item = attribute.to_api()
            event = self.events[attribute.event_id]
            if _flag(payload.get("includeContext")):
                item["Event"] = {**event.metadata(), "Tag": [{"name": tag} for tag in event.tags]}
            else:
                item["Event"] = event.header()
            if _flag(payload.get("includeEventTags")):
                item["Tag"] += [{"name": tag, "inherited": 1} for tag in event.tags]
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


def _attribute_errors(attribute: Any, seen: set[tuple[str, str]]) -> dict[str, list[str]]:
    """MISP's validation errors for one attribute to add (none: it can be saved)."""
    if not isinstance(attribute, dict):
        return {"Attribute": ["not an object"]}
    errors: dict[str, list[str]] = {}
    kind, value = attribute.get("type"), attribute.get("value")
    if kind not in _CATEGORIES:
        errors["type"] = [f"Options depend on the selected category ({kind!r} is not a known type)."]
    if not isinstance(value, str) or not value.strip():
        errors["value"] = ["Please fill in this field"]
    elif (kind, value) in seen:
        errors["value"] = ["A similar attribute already exists for this event."]
    return errors


def _deleted_filter(wanted: Any) -> set[bool]:
    """restSearch's ``deleted``: 0 (default) live ones, 1 the soft-deleted only, ``[0, 1]`` both."""
    if isinstance(wanted, list):
        return {_flag(value) for value in wanted} or {False}
    return {_flag(wanted)} if wanted is not None else {False}


_ORDER_FIELDS = {"id", "event_id", "type", "value", "timestamp"}


def _ordered(attributes: list[Attribute], order: Any) -> list[Attribute]:
    """restSearch's ``order`` (``"Attribute.timestamp asc, id desc"``), as MISP's ``findOrder`` reads it."""
    rules = order.split(",") if isinstance(order, str) else order
    if not isinstance(rules, list):
        raise MispError(400, f"Invalid order {order!r}")
    keys: list[tuple[str, bool]] = []
    for rule in rules:
        name, _, direction = str(rule).strip().partition(" ")
        name = name.removeprefix("Attribute.").lower()
        if name not in _ORDER_FIELDS:
            raise MispError(400, f"Invalid order field {name!r}")
        keys.append((name, direction.strip().lower() == "desc"))
    ordered = list(attributes)
    for name, descending in reversed(keys):  # stable sorts, the last key first
        ordered.sort(key=lambda attribute: getattr(attribute, name), reverse=descending)
    return ordered


def _info_matches(wanted: Any, info: str) -> bool:
    """``eventinfo`` as MISP's event index reads it: case-insensitive substrings, ``|``, ``!``."""
    if wanted is None or wanted == "":
        return True
    pieces = [piece for piece in str(wanted).split("|") if piece]
    lowered = info.lower()
    excluded = [p[1:].lower() for p in pieces if p.startswith("!")]
    included = [p.lower() for p in pieces if not p.startswith("!")]
    if any(piece in lowered for piece in excluded):
        return False
    return not included or any(piece in lowered for piece in included)


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
