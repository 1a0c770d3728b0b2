"""What a data-export answer may hold, read into records the spool can store without losing any.

This is the slow path: most pages take the fast one (`ce_daemon.netskope.rawpages`), which keeps each
record as the JSON text the tenant sent; it leaves here every page it cannot vouch for. A page is parsed
by orjson, which is fast and refuses nesting beyond 1,024 levels. A page orjson refuses
although a JSON reader can take it (a lone surrogate escape such as ``"\\ud800"``, ``NaN``, ``1e400``, a
byte-order mark) is read once more by the standard library, after a check that it nests no deeper than
:data:`FALLBACK_DEPTH_LIMIT` levels, within the interpreter's recursion limit. Such a page, and any record
the spool's encoder refuses, is *repaired* (:func:`repair_records`): each value the encoder cannot write is
replaced by a string holding its JSON text, so that nothing is lost and the record still ships.

What the encoder (orjson) refuses or would alter: containers nested deeper than
:data:`RECORD_DEPTH_LIMIT` levels in a record, integers beyond 64 bits, non-finite numbers (it writes
``null``), strings and keys holding a lone surrogate. orjson itself reads an integer beyond 64 bits as a
float (17 significant digits): finding those would mean scanning every page, which costs as much as
parsing it, so only pages that take the fallback keep their digits.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

RECORD_DEPTH_LIMIT = 253
"""Levels of nesting a record may have (the record itself is level 1). orjson writes 254 levels at most
and the spool's frame, an array of records, is one of them; deeper containers are stored as JSON text."""
FALLBACK_DEPTH_LIMIT = 512
"""Levels of nesting a page read by the standard library's parser may have (it recurses once per level)."""

_INT64_MIN, _UINT64_END = -(2**63), 2**64
_LONGEST_FAST_INT = 21  # characters: "-9223372036854775808" and every 64-bit value fit; longer ones do not
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class PageSyntaxError(ValueError):
    """The body is not a JSON text either parser takes (or nests deeper than the fallback allows)."""


@dataclass(frozen=True, slots=True)
class Repair:
    """A record stored with some values replaced by their JSON text: which one (``_id``, position) and why."""

    record_id: str | None
    position: int
    reasons: tuple[str, ...]


class _Verbatim:
    """A number the standard library parsed that the encoder cannot write (kept as its exact text)."""

    __slots__ = ("reason", "text")

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason


def parse_page(body: bytes) -> tuple[Any, bool]:
    """``(the parsed JSON, whether it took the fallback)``; raises PageSyntaxError.

    A page that took the fallback must go through :func:`repair_records` before it is stored.
    """
    try:
        return orjson.loads(body), False
    except orjson.JSONDecodeError as fast_error:
        try:
            text = body.decode("utf-8-sig")  # a BOM is legal to ignore (RFC 8259 §8.1)
        except UnicodeDecodeError:
            raise PageSyntaxError(str(fast_error)) from fast_error
        depth = nesting_depth(text.encode())
        if depth > FALLBACK_DEPTH_LIMIT:
            raise PageSyntaxError(f"nested {depth} levels deep (at most {FALLBACK_DEPTH_LIMIT})") from None
        try:
            return json.loads(text, parse_int=_integer, parse_float=_number, parse_constant=_constant), True
        except (ValueError, RecursionError):
            raise PageSyntaxError(str(fast_error)) from fast_error


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not count)."""
    brackets = _BRACKET.findall(_STRING.sub(b'""', body))
    steps = (1 if bracket in b"[{" else -1 for bracket in brackets)
    return max(itertools.accumulate(steps, initial=0))


def repair_records(records: list[Any]) -> list[Repair]:
    """Replace in place each value of ``records`` the encoder refuses by its JSON text; what was changed."""
    repairs: list[Repair] = []
    for position, record in enumerate(records):
        reasons: set[str] = set()
        repaired = _repaired(record, 1, reasons)
        if reasons:
            records[position] = repaired
            record_id = repaired.get("_id") if isinstance(repaired, dict) else None
            named = None if record_id is None else str(record_id)
            repairs.append(Repair(named, position, tuple(sorted(reasons))))
    return repairs


def _repaired(value: Any, depth: int, reasons: set[str]) -> Any:
    kind = type(value)
    if kind is not dict and kind is not list:
        return _repaired_scalar(value, reasons)
    if depth > RECORD_DEPTH_LIMIT:
        reasons.add(f"nested deeper than {RECORD_DEPTH_LIMIT} levels")
        return json_text(value)
    if kind is list:
        return [_repaired(item, depth + 1, reasons) for item in value]
    return {_key(key, reasons): _repaired(item, depth + 1, reasons) for key, item in value.items()}


def _repaired_scalar(value: Any, reasons: set[str]) -> Any:
    kind = type(value)
    if kind is str:
        if value.isascii() or _encodable(value):
            return value
        reasons.add("a lone surrogate in a string")
        return json_text(value)
    if kind is _Verbatim:
        reasons.add(value.reason)
        return value.text
    if kind is int and not _INT64_MIN <= value < _UINT64_END:
        reasons.add("an integer beyond 64 bits")
        return str(value)
    if kind is float and not math.isfinite(value):
        reasons.add("NaN or Infinity, which are not JSON numbers")
        return json_text(value)
    return value


def _key(key: str, reasons: set[str]) -> str:
    if key.isascii() or _encodable(key):
        return key
    reasons.add("a lone surrogate in a key")
    return json_text(key)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Close:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def json_text(value: Any) -> str:
    """Compact, ASCII-escaped JSON text of a parsed value, however deeply nested (no recursion).

    The escapes keep lone surrogates; numbers the fallback parser kept verbatim are written as they came.
    """
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is _Close or kind is _Verbatim:
            out.append(item.text)
        elif kind is dict:
            out.append("{")
            parts: list[Any] = []
            for index, (key, member) in enumerate(item.items()):
                parts += [_Close(("," if index else "") + json.dumps(key) + ":"), member]
            stack += [_Close("}"), *reversed(parts)]
        elif kind is list:
            out.append("[")
            parts = list(itertools.chain.from_iterable((_Close(","), member) for member in item))[1:]
            stack += [_Close("]"), *reversed(parts)]
        else:
            out.append(json.dumps(item))
    return "".join(out)


def _integer(text: str) -> int | _Verbatim:
    if len(text) <= _LONGEST_FAST_INT:
        number = int(text)
        if _INT64_MIN <= number < _UINT64_END:
            return number
    return _Verbatim(text, "an integer beyond 64 bits")


def _number(text: str) -> float | _Verbatim:
    number = float(text)
    return number if math.isfinite(number) else _Verbatim(text, "a number beyond the double range")


def _constant(text: str) -> _Verbatim:
    return _Verbatim(text, "NaN or Infinity, which are not JSON numbers")
