"""MISP attributes to indicators and back: types, the part of a composite value, severity, tags, times.

Reading never raises: an attribute is a record, a refusal ``(what, reason)``, or skipped (it carries
an excluded tag); its ``timestamp`` counts for the checkpoint whichever it is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ce_daemon.http import excerpt
from ce_daemon.plugin import IocRecord, SharedIoc

PLAIN_TYPES = {
    "url": "url",
    "link": "url",
    "domain": "domain",
    "hostname": "hostname",
    "ip-src": "ip",
    "ip-dst": "ip",
    "md5": "md5",
    "sha1": "sha1",
    "sha256": "sha256",
}
"""MISP types whose value is the indicator (``ip``: ipv4 or ipv6, by parsing)."""
COMPOSITE_TYPES = {
    "ip-src|port": ("ip", 0),
    "ip-dst|port": ("ip", 0),
    "domain|ip": ("domain", 0),
    "hostname|port": ("hostname", 0),
    "filename|md5": ("md5", 1),
    "filename|sha1": ("sha1", 1),
    "filename|sha256": ("sha256", 1),
}
"""MISP types whose value is ``a|b``: the indicator's type and which part holds it."""
SUPPORTED_TYPES = frozenset(PLAIN_TYPES) | frozenset(COMPOSITE_TYPES)
SEVERITIES = {"1": "high", "2": "medium", "3": "low", "4": "unknown"}
"""An event's ``threat_level_id`` as a severity."""
TO_MISP = {
    "url": "url",
    "domain": "domain",
    "hostname": "hostname",
    "ipv4": "ip-dst",
    "ipv6": "ip-dst",
    "md5": "md5",
    "sha1": "sha1",
    "sha256": "sha256",
}
"""An indicator's type as the MISP attribute type a destination writes."""
CATEGORIES = {"ip-dst": "Network activity", "url": "Network activity", "domain": "Network activity"}
CATEGORIES |= {"hostname": "Network activity", "md5": "Payload delivery", "sha1": "Payload delivery"}
CATEGORIES |= {"sha256": "Payload delivery"}
_WHAT = 120
"""How much of a refused attribute's type and value is quoted."""
_MICROSECONDS = 10**14
"""An epoch number above this is in microseconds (MISP's ``first_seen``/``last_seen`` storage)."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What one attribute gave: a ``record``, a ``refused`` pair, or neither (skipped for a tag)."""

    record: IocRecord | None = None
    refused: tuple[str, str] | None = None
    timestamp: int | None = None


def read_attribute(item: Any, excluded: frozenset[str]) -> Reading:
    """One restSearch attribute (with its ``Event``) as an indicator; never raises."""
    if not isinstance(item, dict):
        return Reading(refused=("attribute", f"not an object but {type(item).__name__}"))
    kind, value = item.get("type"), item.get("value")
    timestamp = epoch(item.get("timestamp"))
    if not isinstance(kind, str) or not isinstance(value, str):
        return Reading(refused=(_what(kind, value), "no type or value"), timestamp=timestamp)
    what = _what(kind, value)
    if timestamp is None:
        return Reading(refused=(what, "no readable timestamp"))
    given = item.get("Event")
    event: dict[str, Any] = given if isinstance(given, dict) else {}
    tags = _tag_names(item.get("Tag")) + _tag_names(event.get("Tag"))
    if excluded.intersection(tags):
        return Reading(timestamp=timestamp)
    found = indicator(kind, value)
    if isinstance(found, str):
        return Reading(refused=(what, found), timestamp=timestamp)
    ioc_type, ioc_value = found
    last_seen = epoch(item.get("last_seen"))
    record = IocRecord(
        value=ioc_value,
        type=ioc_type,
        seen=float(last_seen if last_seen is not None else timestamp),
        severity=SEVERITIES.get(str(event.get("threat_level_id")), "unknown"),
        tags=tuple(dict.fromkeys(tags)),
        comment=item["comment"] if isinstance(item.get("comment"), str) else "",
    )
    return Reading(record=record, timestamp=timestamp)


def indicator(kind: str, value: str) -> tuple[str, str] | str:
    """``(indicator type, value)`` for a MISP attribute, or why it is not one."""
    if kind in PLAIN_TYPES:
        ioc_type, part = PLAIN_TYPES[kind], value.strip()
    elif kind in COMPOSITE_TYPES:
        ioc_type, index = COMPOSITE_TYPES[kind]
        first, separator, second = value.partition("|") if index == 0 else value.rpartition("|")
        if not separator:
            return f"a {kind} value is two parts separated by |"
        part = (first if index == 0 else second).strip()
    else:
        return f"unsupported MISP type {excerpt(kind, 40)!r}"
    if not part:
        return "empty value"
    if ioc_type != "ip":
        return ioc_type, part
    try:
        address = ipaddress.ip_address(part)
    except ValueError:
        return f"not an IP address: {excerpt(part, 60)!r}"
    return ("ipv4" if address.version == 4 else "ipv6"), str(address)


def to_attribute(ioc: SharedIoc, tag: str) -> dict[str, Any]:
    """The attribute a destination adds for ``ioc`` (its type must be one of :data:`TO_MISP`)."""
    kind = TO_MISP[ioc.type]
    attribute: dict[str, Any] = {
        "type": kind,
        "category": CATEGORIES[kind],
        "value": ioc.value,
        "to_ids": True,
        "distribution": "5",  # as the event
        "comment": ioc.comment,
        "Tag": [{"name": tag}],
    }
    if 0 < ioc.first_seen <= ioc.last_seen:
        attribute["first_seen"] = _iso(ioc.first_seen)
        attribute["last_seen"] = _iso(ioc.last_seen)
    return attribute


def epoch(value: Any) -> int | None:
    """Epoch seconds from MISP's ways of writing a time: ``"1700000000"``, microseconds, ISO 8601."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        try:
            number = int(value)
        except (ValueError, OverflowError):
            return None
        number = number // 1_000_000 if number > _MICROSECONDS else number
        return number if 0 <= number < 2**40 else None
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.strip())
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            number = int(moment.timestamp())
        except (ValueError, OverflowError, OSError):
            return None
        return number if 0 <= number < 2**40 else None
    return None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _tag_names(tags: Any) -> list[str]:
    if not isinstance(tags, list):
        return []
    return [tag["name"] for tag in tags if isinstance(tag, dict) and isinstance(tag.get("name"), str)]


def _what(kind: Any, value: Any) -> str:
    """How a refused attribute is named: its type and value, quoted within bounds."""
    return excerpt(f"{kind} {value}", _WHAT)
