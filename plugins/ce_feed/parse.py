"""A feed body read line by line: bounded lines, text or CSV values, one refusal per bad line.

Nothing here does I/O: :class:`LineSplitter` cuts a byte stream into lines (a line longer than the
cap is reported by its number and never held whole), and :class:`FeedParser` makes each line an
indicator, a refusal, or nothing (a blank or comment line). Neither raises for what a feed holds,
except a CSV header without the configured column (a feed and a configuration that do not match).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ce_daemon.http import excerpt
from ce_daemon.plugin import ComponentConfigError, IocRecord

IocType = Literal["url", "domain", "hostname", "ipv4", "ipv6", "md5", "sha1", "sha256"]
IOC_TYPES: tuple[IocType, ...] = ("url", "domain", "hostname", "ipv4", "ipv6", "md5", "sha1", "sha256")

_GUESS = ""
"""A type column value that says "an IP" without a family: the core guesses it from the value."""
_TYPE_NAMES: dict[str, str] = {
    **{name: name for name in IOC_TYPES},
    "uri": "url",
    "link": "url",
    "domain-name": "domain",
    "domainname": "domain",
    "host": "hostname",
    "fqdn": "hostname",
    "ip": _GUESS,
    "ip-src": _GUESS,
    "ip-dst": _GUESS,
    "ip-address": _GUESS,
    "ipaddress": _GUESS,
    "ipv4-addr": "ipv4",
    "ip4": "ipv4",
    "ipv6-addr": "ipv6",
    "ip6": "ipv6",
    "md-5": "md5",
    "sha-1": "sha1",
    "sha-256": "sha256",
}
"""Type names feeds use (MISP's, STIX's), lower-cased, mapped onto ours."""
_TAG_SEPARATORS = re.compile(r"[,;|]")
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a body: its number (from 1) and its bytes without the line end (None: too long)."""

    number: int
    data: bytes | None


class LineSplitter:
    """Cuts a byte stream into lines of at most ``max_line`` bytes (``\\n`` or ``\\r\\n`` ended).

    A longer line is given as ``Line(number, None)`` once it ends; its bytes past the cap are
    dropped as they come, so that memory stays within one chunk and ``max_line`` however long it is.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._tail = b""
        self._skipping = False
        self.number = 0

    def feed(self, chunk: bytes) -> Iterator[Line]:
        """The lines ``chunk`` completes."""
        if not chunk:
            return
        *complete, tail = (self._tail + chunk).split(b"\n")
        for data in complete:
            yield self._line(data)
        if self._skipping or len(tail) > self.max_line + 1:  # +1: a "\r" may be waiting for its "\n"
            self._skipping, self._tail = True, b""
        else:
            self._tail = tail

    def end(self) -> Iterator[Line]:
        """The last line, when the stream does not end with a line end."""
        if self._skipping or self._tail:
            yield self._line(self._tail)
        self._tail = b""

    def _line(self, data: bytes) -> Line:
        self.number += 1
        if data.endswith(b"\r"):
            data = data[:-1]
        if self._skipping or len(data) > self.max_line:
            self._skipping = False
            return Line(self.number, None)
        return Line(self.number, data)


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """Where a CSV feed keeps what: each column a name (from the header) or a 0-based index."""

    column: int | str
    type_column: int | str | None = None
    tags_column: int | str | None = None
    delimiter: str = ","
    header: bool = True


class FeedParser:
    """Makes each line of a feed an indicator, a refusal ``(what, reason)``, or nothing.

    Text feeds: one value a line, the first whitespace-separated token (feeds append comments);
    lines starting with ``#`` or ``;`` and blank lines are skipped. CSV feeds: one row a line (no
    line break inside a quoted field), the value from ``column``, the type and tags from their
    columns; comment and blank lines are skipped, and the first other line is the header when
    there is one. ``ioc_type`` forces every value's type, ``tags`` are added to every record.
    """

    def __init__(
        self,
        *,
        max_line: int,
        csv_layout: CsvLayout | None = None,
        ioc_type: str | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        self.max_line = max_line
        self.layout = csv_layout
        self.ioc_type = ioc_type
        self.tags = tuple(dict.fromkeys(tags))
        self.skipped = 0
        """Blank and comment lines (and the header) so far."""
        self._columns: tuple[int, int | None, int | None] | None = None
        if csv_layout is not None and not csv_layout.header:
            value_at = _index(csv_layout.column)
            assert value_at is not None
            self._columns = (value_at, _index(csv_layout.type_column), _index(csv_layout.tags_column))

    def parse(self, line: Line) -> IocRecord | tuple[str, str] | None:
        """The indicator on ``line``, why it has none, or None for a line that holds none by design."""
        where = f"line {line.number}"
        if line.data is None:
            return where, f"longer than {self.max_line:,} bytes; skipped"
        try:
            text = line.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return where, f"not UTF-8 text (byte {exc.start + 1})"
        if line.number == 1:
            text = text.removeprefix(_BOM)
        if "\x00" in text:
            return where, "not text (holds a NUL byte)"
        stripped = text.strip()
        if not stripped or stripped[0] in "#;":
            self.skipped += 1
            return None
        if self.layout is None:
            return IocRecord(stripped.split(maxsplit=1)[0], type=self.ioc_type, tags=self.tags)
        return self._row(where, text)

    def _row(self, where: str, text: str) -> IocRecord | tuple[str, str] | None:
        assert self.layout is not None
        try:
            row = next(csv.reader([text], delimiter=self.layout.delimiter), [])
        except csv.Error as exc:
            return where, f"not a CSV row: {exc}"
        if self._columns is None:
            self._columns = _header_columns(self.layout, row)
            self.skipped += 1
            return None
        value_at, type_at, tags_at = self._columns
        if value_at >= len(row):
            return where, f"no column {self.layout.column!r} (the row has {len(row)})"
        value = row[value_at].strip()
        if not value:
            return where, "the value column is empty"
        kind = self.ioc_type
        if kind is None and type_at is not None and type_at < len(row):
            named = row[type_at].strip().lower()
            kind = _TYPE_NAMES.get(named.replace("_", "-"))
            if kind is None and named:
                return where, f"unknown indicator type {excerpt(named, 40)!r}"
            kind = kind or None
        tags = self.tags
        if tags_at is not None and tags_at < len(row):
            found = (tag.strip() for tag in _TAG_SEPARATORS.split(row[tags_at]))
            tags = tuple(dict.fromkeys([*tags, *(tag for tag in found if tag)]))
        return IocRecord(value, type=kind, tags=tags)


def _index(column: int | str | None) -> int | None:
    assert column is None or isinstance(column, int), "a column name needs a header (checked by the options)"
    return column


def _header_columns(layout: CsvLayout, header: Sequence[str]) -> tuple[int, int | None, int | None]:
    """The index of each configured column in ``header``; a name the header lacks is a configuration error."""
    names = [name.strip().lstrip(_BOM) for name in header]

    def find(column: int | str | None, option: str) -> int | None:
        if column is None or isinstance(column, int):
            return column
        if column in names:
            return names.index(column)
        shown = ", ".join(repr(excerpt(name, 40)) for name in names[:20])
        raise ComponentConfigError(f"{option}: the feed's header has no column {column!r} (it has {shown})")

    value = find(layout.column, "column")
    assert value is not None
    return value, find(layout.type_column, "type_column"), find(layout.tags_column, "tags_column")


def parse_all(parser: FeedParser, chunks: Iterable[bytes]) -> Iterator[IocRecord | tuple[str, str]]:
    """Every indicator and refusal of a whole body given as chunks (for tests and small bodies)."""
    splitter = LineSplitter(parser.max_line)
    for chunk in chunks:
        for line in splitter.feed(chunk):
            if (item := parser.parse(line)) is not None:
                yield item
    for line in splitter.end():
        if (item := parser.parse(line)) is not None:
            yield item
