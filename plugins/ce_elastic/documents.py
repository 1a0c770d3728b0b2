"""Bulk entries: the index a record goes to, and the document it becomes.

A JSON record is parsed once here, unlike in the other sinks: a raw Netskope record carries
``_id``, which Elasticsearch refuses inside a document (it is a metadata field), so it has to be
taken out; it becomes ``id`` (and the document ``_id``). A CEF or LEEF line is wrapped as
``{"message", "id", "timestamp", "kind", "subtype"}``. Both get ``@timestamp`` (ISO 8601, from
the record timestamp) unless ``timestamp_field`` is off, so Kibana has a time field.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from ce_daemon.plugin import OutRecord

_PLACEHOLDERS = re.compile(r"\{(\w*)\}")
_DATE_ONLY = re.compile(r"%[YmdyjGVUWbB%-]")
_INVALID_INDEX = re.compile(r'[\\/*?"<>| ,#:A-Z]')


class NotADocumentError(ValueError):
    """A JSON record that is not a JSON object."""


class IndexNamer:
    """Index names from a pattern: ``{kind}``, ``{subtype}`` and strftime codes of the record's UTC time."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._by_day = all(_DATE_ONLY.fullmatch(code) for code in re.findall(r"%-?.", pattern))
        self._cache: dict[tuple[str, str, int], str] = {}

    @staticmethod
    def check(pattern: str) -> str:
        """``pattern`` if it can only produce valid index names; else a ValueError saying why."""
        unknown = {name for name in _PLACEHOLDERS.findall(pattern) if name not in ("kind", "subtype")}
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join(sorted(unknown))}: use {{kind}} and {{subtype}}"
            )
        sample = IndexNamer(pattern).name("alerts", "dlp", 1_700_000_000)
        if not sample or sample in (".", "..") or sample[0] in "-_+" or _INVALID_INDEX.search(sample):
            raise ValueError(
                f'gives the index name {sample!r}: names are lowercase, without \\ / * ? " < > | , # : '
                "or spaces, and do not start with - _ +"
            )
        if len(sample.encode()) > 255:
            raise ValueError("gives index names longer than 255 bytes")
        return pattern

    def name(self, kind: str, subtype: str, timestamp: int) -> str:
        """The index of a ``kind``/``subtype`` record stamped ``timestamp`` (epoch seconds; 0: now)."""
        moment = timestamp if timestamp > 0 else int(time.time())
        key = (kind, subtype, moment // 86400 if self._by_day else moment)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            dated = time.strftime(self.pattern, time.gmtime(moment))
            found = dated.replace("{kind}", kind).replace("{subtype}", subtype)
            self._cache[key] = found
        return found


@functools.lru_cache(maxsize=8192)
def iso_time(timestamp: int) -> str:
    """Epoch seconds as ISO 8601 in UTC (``2026-01-31T12:00:00Z``); cached, records share seconds."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def document(record: OutRecord, timestamp_field: str | None) -> bytes:
    """The ``_source`` of ``record``; raises ValueError when a JSON record is not a JSON object."""
    stamp = iso_time(record.timestamp) if timestamp_field and record.timestamp > 0 else None
    if record.format != "json":
        wrapped: dict[str, Any] = {
            "message": record.data.decode("utf-8", "replace"),
            "id": record.id,
            "timestamp": record.timestamp,
            "kind": record.kind,
            "subtype": record.subtype,
        }
        if stamp is not None and timestamp_field:
            wrapped[timestamp_field] = stamp
        return orjson.dumps(wrapped)
    parsed = orjson.loads(record.data)
    if not isinstance(parsed, dict):
        raise NotADocumentError(f"a JSON {type(parsed).__name__}, not an object")
    if "_id" in parsed:
        netskope_id = parsed.pop("_id")
        parsed.setdefault("id", netskope_id)
    if stamp is not None and timestamp_field:
        parsed.setdefault(timestamp_field, stamp)
    return orjson.dumps(parsed)
