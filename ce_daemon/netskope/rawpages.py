"""The fast path for a data-export answer: its records kept as the JSON text the tenant sent.

Parsing a page into dicts and writing them out again for the spool was most of what ingestion cost
(about 8 µs of the 13 per record: orjson's parse, freeing 10,000 dicts, orjson's write). Most records are
only stored, and a route parses them again anyway, so :func:`split_page` does neither: it cuts the answer
into one text per record without building them, and reads only ``_id`` and ``timestamp`` of each. The
spool stores the texts as they are (`ce_daemon.spool.codec.encode_texts`).

Two implementations do that, and answer alike (``tests/test_netskope_rawpages.py`` runs every test on
both): ``_pages.c``, built when the package is installed (one pass of the strict JSON scanner the C writer
of log lines uses, ``ce_daemon/_jsonscan.h``: about 1 µs a record), and without it (or with
``CE_DAEMON_NATIVE=0``) msgspec, simdjson and two bracket counts (about 4 µs).

That is only right when orjson reads each text back to exactly the record the slow path
(`ce_daemon.netskope.pages`) would have stored, so :func:`split_page` answers None, and the page takes the
slow path, whenever it cannot vouch for that (the C splitter refuses the same, and a few rarer things
besides, listed in ``_pages.c``: ints between 2**63 and 2**64, floats written with over 400 characters,
names spelled with escapes):

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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
import orjson
import simdjson

from ce_daemon.accelerators import load
from ce_daemon.netskope.pages import RECORD_DEPTH_LIMIT, nesting_depth

__all__ = ["NATIVE_SPLITTER", "SPLITTER", "SPLITTER_STATE", "RecordTexts", "SplitPage", "split_page"]

ABI: Final = 1
"""The ``PAGES_ABI`` of the ``_pages.c`` this module is written for."""

Field = Literal["_id", "timestamp"]


_PAGES, SPLITTER_STATE = load("ce_daemon.netskope._pages", ABI)
NATIVE_SPLITTER: Final = "C (_pages.c)"
SPLITTER: Final = NATIVE_SPLITTER if _PAGES is not None else "msgspec and simdjson"
"""Which implementation splits pages in this process."""


class RecordTexts(ABC):
    """Records kept as the JSON text the tenant sent, each an object orjson reads back as the slow path's.

    Only ``_id`` and ``timestamp`` are read, each parsed by orjson when asked for (:meth:`field`).
    """

    __slots__ = ()

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def text(self, position: int) -> bytes:
        """The record's JSON text."""

    @abstractmethod
    def field(self, position: int, name: Field, default: Any = None) -> Any:
        """The record's ``_id`` or ``timestamp`` as orjson reads it, or ``default`` when it has none."""

    @abstractmethod
    def missing_fields(self) -> int:
        """How many records lack ``_id`` or ``timestamp``."""

    @abstractmethod
    def keep(self, wanted: Callable[[int], bool]) -> RecordTexts:
        """The records whose position ``wanted`` accepts, in order."""

    @abstractmethod
    def arrays(self, per: int) -> Iterator[bytes]:
        """The records as JSON arrays of ``per`` records (the last may hold fewer), as the spool stores
        its frames."""

    def parsed(self) -> list[dict[str, Any]]:
        """Every record as orjson reads it back from the spool."""
        return [orjson.loads(self.text(position)) for position in range(len(self))]


# -- in C ---------------------------------------------------------------------------------------------


class _SpannedTexts(RecordTexts):
    """The answer's body, and per record where its text, its ``_id`` and its ``timestamp`` lie in it."""

    __slots__ = ("_body", "_missing", "_rows", "_spans")

    def __init__(self, body: bytes, spans: bytes, missing: int) -> None:
        self._body = body
        self._spans = spans
        self._rows = memoryview(spans).cast("q")  # SPAN_WIDTH int64 per record (see _pages.c)
        self._missing = missing

    def __len__(self) -> int:
        return len(self._rows) // _WIDTH

    def _row(self, position: int) -> int:
        """Where the record's row starts in ``_rows`` (a negative position counts from the end)."""
        count = len(self)
        if not -count <= position < count:
            raise IndexError(f"record {position} of {count}")
        return _WIDTH * (position % count)

    def text(self, position: int) -> bytes:
        row = self._row(position)
        return self._body[self._rows[row] : self._rows[row + 1]]

    def field(self, position: int, name: Field, default: Any = None) -> Any:
        at = self._row(position) + (_ID_AT if name == "_id" else _STAMP_AT)
        start = self._rows[at]
        return default if start < 0 else orjson.loads(memoryview(self._body)[start : self._rows[at + 1]])

    def missing_fields(self) -> int:
        return self._missing

    def keep(self, wanted: Callable[[int], bool]) -> RecordTexts:
        kept = [position for position in range(len(self)) if wanted(position)]
        row = _WIDTH * 8  # bytes
        spans = b"".join(self._spans[p * row : (p + 1) * row] for p in kept)
        rows = self._rows
        missing = sum(1 for p in kept if min(rows[_WIDTH * p + _ID_AT], rows[_WIDTH * p + _STAMP_AT]) < 0)
        return _SpannedTexts(self._body, spans, missing)

    def arrays(self, per: int) -> Iterator[bytes]:
        assert _PAGES is not None  # only made by the C splitter
        for start in range(0, len(self), per):
            yield _PAGES.join(self._body, self._spans, start, min(start + per, len(self)))


_WIDTH: Final = 6 if _PAGES is None else int(_PAGES.SPAN_WIDTH)
_ID_AT: Final = 2  # SPAN_ID_START in _pages.c: where the _id's text starts (the next int64: ends)
_STAMP_AT: Final = 4  # SPAN_STAMP_START


def _split_in_c(body: bytes) -> SplitPage | None:
    assert _PAGES is not None
    answer = _PAGES.split(body, RECORD_DEPTH_LIMIT)
    if answer is None:
        return None
    texts, spans, missing = answer
    # The scanner took the whole answer, so orjson reads each field's text.
    fields = {name: orjson.loads(text) for name, text in texts.items()}
    return SplitPage(fields, _SpannedTexts(body, spans, missing))


# -- msgspec and simdjson ------------------------------------------------------------------------------


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


class _RawTexts(RecordTexts):
    """msgspec's slices of the answer, one per record, and the record's two fields it read."""

    __slots__ = ("_heads", "_texts")

    def __init__(self, texts: list[msgspec.Raw], heads: list[_Head]) -> None:
        self._texts = texts
        self._heads = heads

    def __len__(self) -> int:
        return len(self._texts)

    def text(self, position: int) -> bytes:
        return bytes(self._texts[position])

    def field(self, position: int, name: Field, default: Any = None) -> Any:
        head = self._heads[position]
        text = head.record_id if name == "_id" else head.timestamp
        return default if text is msgspec.UNSET else orjson.loads(memoryview(text))

    def missing_fields(self) -> int:
        unset = msgspec.UNSET
        return sum(1 for head in self._heads if head.record_id is unset or head.timestamp is unset)

    def keep(self, wanted: Callable[[int], bool]) -> RecordTexts:
        positions = [position for position in range(len(self._texts)) if wanted(position)]
        return _RawTexts([self._texts[p] for p in positions], [self._heads[p] for p in positions])

    def arrays(self, per: int) -> Iterator[bytes]:
        for start in range(0, len(self._texts), per):
            yield b"[" + b",".join(self._texts[start : start + per]) + b"]"


def _split_in_python(body: bytes) -> SplitPage | None:
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
    return SplitPage(fields, _RawTexts(answer.result, heads))


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


# -- either ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SplitPage:
    """A page the fast path took: its records, and its other fields as orjson reads them (if present)."""

    fields: dict[str, Any]
    records: RecordTexts


def split_page(body: bytes) -> SplitPage | None:
    """The page with its records kept as text, or None when it must take the slow path (see the module)."""
    return _split_in_c(body) if _PAGES is not None else _split_in_python(body)
