"""The fast path for a data-export answer: its records kept as the JSON text the tenant sent.

Parsing a page into dicts and writing them out again for the spool was most of what ingestion cost
(about 8 µs of the 13 per record: orjson's parse, freeing 10,000 dicts, orjson's write). Most records are
only stored, and a route parses them again anyway, so :func:`split_page` does neither: msgspec cuts the
answer into one text per record without building them (``msgspec.Raw``), and reads only ``_id`` and
``timestamp`` of each. The spool stores the texts as they are (`ce_daemon.spool.codec.encode_texts`).

That is only right when orjson reads each text back to exactly the record the slow path
(`ce_daemon.netskope.pages`) would have stored, so :func:`split_page` answers None, and the page takes the
slow path, whenever it cannot vouch for that:

- msgspec refuses the answer (bad syntax, a lone surrogate escape, a control character in a string, nesting
  beyond the interpreter's recursion limit), it is not an object whose ``result`` is a list of objects, or
  it has a field besides ``ok``, ``result``, ``wait_time`` and ``timestamp_hwm``;
- simdjson refuses it: msgspec skips the records without looking into their strings and numbers, while
  simdjson validates the whole text in one SIMD pass (about 0.6 µs a record) and refuses all orjson refuses
  there (invalid UTF-8, a number beyond the double range), and integers beyond 64 bits besides, which orjson
  would read as floats: those pages keep what the slow path makes of them;
- a record nests deeper than :data:`~ce_daemon.netskope.pages.RECORD_DEPTH_LIMIT` levels, which the slow
  path stores as text (a record cannot nest deeper than it has opening brackets, so only pages with many
  of them are looked at closely).

What the texts keep that the slow path would have rewritten: whitespace, escapes (``\\u00e9`` for ``é``),
the digits of a float, a key given twice (orjson keeps the last, as it did before). orjson reads them all
back to the same values, and every reader of the spool parses with orjson.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import orjson
import simdjson

from ce_daemon.netskope.pages import RECORD_DEPTH_LIMIT, nesting_depth

__all__ = ["RecordTexts", "SplitPage", "split_page"]


class _Answer(msgspec.Struct, forbid_unknown_fields=True):
    """A data-export answer as the fast path reads it: any other field sends the page the slow way."""

    result: list[msgspec.Raw]
    ok: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    wait_time: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    timestamp_hwm: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _Head(msgspec.Struct, rename={"record_id": "_id"}):
    """The two fields of a record the poller reads; the rest is skipped, not built."""

    record_id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    timestamp: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_ANSWER = msgspec.json.Decoder(_Answer)
_HEAD = msgspec.json.Decoder(_Head)
# A simdjson parser reuses its buffers and must not parse in two threads at once: one per thread.
_validators = threading.local()


@dataclass(frozen=True, slots=True)
class RecordTexts:
    """Records kept as the JSON text the tenant sent, each an object orjson reads back as the slow path's.

    Only ``_id`` and ``timestamp`` are read, each parsed by orjson when asked for (:meth:`field`).
    """

    texts: list[msgspec.Raw]
    heads: list[_Head]

    def __len__(self) -> int:
        return len(self.texts)

    def field(self, position: int, name: Literal["_id", "timestamp"], default: Any = None) -> Any:
        """The record's ``_id`` or ``timestamp`` as orjson reads it, or ``default`` when it has none."""
        head = self.heads[position]
        text = head.record_id if name == "_id" else head.timestamp
        return default if text is msgspec.UNSET else orjson.loads(memoryview(text))

    def parsed(self) -> list[dict[str, Any]]:
        """Every record as orjson reads it back from the spool."""
        return [orjson.loads(memoryview(text)) for text in self.texts]

    def missing_fields(self) -> int:
        """How many records lack ``_id`` or ``timestamp``."""
        unset = msgspec.UNSET
        return sum(1 for head in self.heads if head.record_id is unset or head.timestamp is unset)

    def keep(self, wanted: Callable[[int], bool]) -> RecordTexts:
        """The records whose position ``wanted`` accepts, in order."""
        positions = [position for position in range(len(self.texts)) if wanted(position)]
        return RecordTexts([self.texts[p] for p in positions], [self.heads[p] for p in positions])


@dataclass(frozen=True, slots=True)
class SplitPage:
    """A page the fast path took: its records, and its other fields as orjson reads them (if present)."""

    fields: dict[str, Any]
    records: RecordTexts


def split_page(body: bytes) -> SplitPage | None:
    """The page with its records kept as text, or None when it must take the slow path (see the module)."""
    try:
        answer = _ANSWER.decode(body)
        heads = [_HEAD.decode(text) for text in answer.result]
    except (msgspec.DecodeError, RecursionError):  # ValidationError (a record not an object) included
        return None
    if not _valid(body) or not _shallow(body, answer.result):
        return None
    fields: dict[str, Any] = {}
    for name in ("ok", "wait_time", "timestamp_hwm"):
        text = getattr(answer, name)
        if text is not msgspec.UNSET:
            # simdjson took it, so orjson reads it: both refuse the same nesting (over 1,024 levels)
            fields[name] = orjson.loads(memoryview(text))
    return SplitPage(fields, RecordTexts(answer.result, heads))


def _valid(body: bytes) -> bool:
    """Whether simdjson takes the whole body (it refuses all orjson refuses, and big integers too)."""
    parser = getattr(_validators, "parser", None)
    if parser is None:
        parser = _validators.parser = simdjson.Parser()
    try:
        parser.parse(body)
    except (ValueError, RuntimeError):  # simdjson's errors (UnicodeDecodeError is a ValueError)
        return False
    return True


def _shallow(body: bytes, texts: list[msgspec.Raw]) -> bool:
    """Whether every record nests at most RECORD_DEPTH_LIMIT levels.

    A record nests no deeper than it has opening brackets (some may be in strings): when the whole page has
    fewer than the limit besides the one of each record, no record needs a closer look.
    """
    spare = body.count(b"{") + body.count(b"[") - len(texts) - 2  # the answer's object, the result array
    if spare < RECORD_DEPTH_LIMIT:
        return True
    for text in texts:
        record = bytes(text)
        if record.count(b"{") + record.count(b"[") > RECORD_DEPTH_LIMIT and (
            nesting_depth(record) > RECORD_DEPTH_LIMIT
        ):
            return False
    return True
