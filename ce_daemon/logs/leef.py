"""IBM QRadar LEEF 2.0 output, driven by the same CE mapping file as CEF.

Line shape: ``LEEF:2.0|Vendor|Product|Version|EventID|DelimiterChar|key=value<delim>key=value...``.
The delimiter field is written as ``x09`` for the default tab, as the character itself when it is
printable ASCII punctuation, and as ``x`` + hex otherwise (IBM: "a single character or the hex value
prefixed by 0x or x").

Escaping, as chosen here: IBM's LEEF guide defines no escape sequence for attribute values. It asks
producers to keep the delimiter out of keys and values, and QRadar extracts a value as everything up
to the next delimiter (``key=([^\\t]+)``), so a backslash in front of a delimiter would not protect it.
A delimiter character inside a value therefore becomes a space unless it is a control character, and every
control character (the default tab delimiter, CR, LF, NUL, ESC... and DEL) becomes its Unicode
Control Picture (``␉ ␍ ␊ ␀ ␛ ␡``), as in CEF: the line stays parseable by QRadar and by any strict
parser, and the reader still sees which character was there. ``=`` needs nothing (a value runs from
the first ``=`` after its key to the next delimiter) and neither does ``|`` (only the header is
pipe-delimited). Header fields escape ``\\`` and ``|`` with a backslash and write control characters
as pictures, as in CEF; EventID is cut to IBM's 255-character limit.

From the mapping: the header's Vendor, Product, Version and Event Class ID fill the LEEF header.
Extension keys with a LEEF predefined equivalent are renamed (``suser`` → ``usrName``, ``spt`` →
``srcPort``, ``dpt`` → ``dstPort``, ``smac`` → ``srcMAC``, ``dmac`` → ``dstMAC``, ``rt`` → ``devTime``);
``src``, ``dst``, ``proto`` and every other key stay as they are. ``devTime`` is written as
``yyyy-MM-dd'T'HH:mm:ss.SSSZ`` in UTC followed by the matching ``devTimeFormat``. ``sev`` (1-10) comes
from the CEF severity word (Info 1, Low 3, Medium 6, High 8, Very-High 10; Unknown omits it) and ``cat`` from
the header's Name when Name reads a record field, unless the mapping already defines those keys.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from ce_daemon.logs.cef import (
    CONTROL_BYTES,
    CONTROL_PICTURES,
    NATIVE_SHORTCUTS,
    TIME_KEYS,
    FieldPlan,
    RecordWriter,
    TextConverter,
    cut_text,
    epoch_ms,
    epoch_ms_text,
    header_part,
    header_text,
    header_text_unchecked,
    render_text,
    severity_reader,
    value_text,
)
from ce_daemon.logs.mapping import FieldRule, Record, SubtypeRules
from ce_daemon.logs.native import LEEF as NATIVE_LEEF
from ce_daemon.logs.native import HeadPart
from ce_daemon.logs.native import line_writer as native_writer

LEEF_KEYS: Final = {
    "suser": "usrName",
    "spt": "srcPort",
    "dpt": "dstPort",
    "smac": "srcMAC",
    "dmac": "dstMAC",
    "rt": "devTime",
}
DEVTIME_FORMAT: Final = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"
SEVERITY_NUMBERS: Final = {"Info": "1", "Low": "3", "Medium": "6", "High": "8", "Very-High": "10"}
EVENT_ID_LIMIT: Final = 255

HeaderField = Callable[[Record], "str | None"] | str
T = TypeVar("T")


def delimiter_field(delimiter: str) -> str:
    """The LEEF 2.0 header's delimiter field for ``delimiter``; raises ValueError for unusable ones."""
    if len(delimiter) != 1:
        raise ValueError(f"LEEF delimiter must be a single character, not {delimiter!r}")
    code = ord(delimiter)
    if delimiter.isalnum() or delimiter in "= " or (code in CONTROL_PICTURES and delimiter != "\t"):
        raise ValueError(f"LEEF delimiter {delimiter!r} would break keys or values; use a tab or '^'")
    if code > 0xFFFF:
        raise ValueError("LEEF delimiter must be in the Basic Multilingual Plane (at most 4 hex digits)")
    if 0x21 <= code <= 0x7E and delimiter not in "|\\":
        return delimiter
    return f"x{code:02X}"


class _DevTimeText:
    """``devTime`` text from epoch seconds/ms; the date part is cached since records share seconds.

    The last value and its text are kept too: the ``devTimeFormat`` step asks again for the same value
    right after, to know whether devTime was written (the same object from a dict; an equal int from the
    C writer reading JSON text, which makes a new one for each call).
    """

    __slots__ = ("_last", "_seconds")

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}
        self._last: tuple[Any, str | None] = (None, None)

    def __call__(self, value: Any) -> str | None:
        last_value, last_text = self._last
        if value is last_value or (
            value.__class__ is int and last_value.__class__ is int and value == last_value
        ):
            return last_text
        text: str | None = None
        ms = epoch_ms(value)
        if ms is not None:
            second, millis = divmod(ms, 1000)
            base = self._seconds.get(second)
            if base is None:
                base = self._date(second)
            if base is not None:
                text = f"{base}.{millis:03d}+0000"
        self._last = (value, text)
        return text

    def _date(self, second: int) -> str | None:
        try:
            base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        except (OverflowError, OSError, ValueError):
            return None
        if len(self._seconds) >= 4096:
            self._seconds.clear()
        self._seconds[second] = base
        return base


def _attributes(rules: SubtypeRules, sort_keys: bool) -> list[tuple[str, FieldRule]]:
    """The (LEEF key, rule) pairs: extensions renamed to predefined keys, plus derived cat and sev."""
    entries: list[tuple[str, FieldRule]] = []
    explicit = set(rules.extension)
    for key, rule in rules.extension.items():
        leef_key = LEEF_KEYS.get(key, key)
        if leef_key != key and leef_key in explicit:
            continue  # the mapping names the LEEF attribute itself; that one wins
        entries.append((leef_key, rule))
    taken = {key for key, _ in entries}
    name_rule = rules.header.get("Name")
    if "cat" not in taken and name_rule is not None and name_rule.mapping_field:
        entries.append(("cat", name_rule))
    severity_rule = rules.header.get("Severity")
    if "sev" not in taken and severity_rule is not None:
        entries.append(("sev", severity_rule))
    if sort_keys:
        entries.sort(key=operator.itemgetter(0))
    return entries


def _header_fields(
    rules: SubtypeRules, tenant_name: str, read: Callable[[FieldRule, int | None], T]
) -> list[str | T]:
    """Vendor, Product, Version and EventID: escaped constants, or what ``read(rule, limit)`` makes of
    a rule that reads the record (EventID's ``limit`` is IBM's 255 characters, the others' None)."""
    fields: list[str | T] = []
    for name in ("Device Vendor", "Device Product", "Device Version", "Device Event Class ID"):
        rule = rules.header.get(name)
        limit = EVENT_ID_LIMIT if name == "Device Event Class ID" else None
        if rule is None:
            fields.append("")
        elif not rule.mapping_field:
            fields.append(header_text((value_text(rule, tenant_name)({}) or "")[:limit]))
        else:
            fields.append(read(rule, limit))
    return fields


def _text_of(field: HeaderField, record: Record, careful: bool) -> str:
    """A header field's text; control characters are left to the writer's check unless ``careful``."""
    return field if isinstance(field, str) else header_text_unchecked(field(record), careful)


def leef_plan(
    rules: SubtypeRules, *, tenant_name: str, sort_keys: bool = True, audit: bool = False
) -> FieldPlan:
    """The field plan of one subtype's LEEF attributes (renamed keys, devTime, derived cat and sev)."""
    entries = _attributes(rules, sort_keys)
    converters: dict[str, TextConverter] = {key: epoch_ms_text for key, _ in entries if key in TIME_KEYS}
    converters["devTime"] = _DevTimeText()
    converters["sev"] = SEVERITY_NUMBERS.get
    # sev is read as the CEF severity word, default included, so that a value the CEF line shows as
    # Unknown omits sev instead of falling back to the default.
    getters = {key: severity_reader(rule, tenant_name, audit=audit) for key, rule in entries if key == "sev"}
    return FieldPlan(
        entries,
        tenant_name,
        converters=converters,
        companions={"devTime": ("devTimeFormat", DEVTIME_FORMAT)},
        getters=getters,
    )


def compile_leef(
    rules: SubtypeRules,
    *,
    tenant_name: str,
    delimiter: str = "\t",
    sort_keys: bool = True,
    audit: bool = False,
    generated: bool = True,
    native: bool = True,
) -> RecordWriter:
    """Compile one subtype's rules into ``record -> LEEF 2.0 line`` (UTF-8 bytes, no newline).

    ``generated`` and ``native``: as in `compile_cef` (the reference loop, generated Python or the C
    writer: the same bytes at three speeds).
    """
    tail = f"|{delimiter_field(delimiter)}|"
    vendor, product, version, event_id = _header_fields(
        rules, tenant_name, lambda rule, limit: cut_text(value_text(rule, tenant_name), limit)
    )
    plan = leef_plan(rules, tenant_name=tenant_name, sort_keys=sort_keys, audit=audit)
    lead = (vendor, product, version)
    fixed_head = (
        f"LEEF:2.0|{vendor}|{product}|{version}|" if all(isinstance(field, str) for field in lead) else None
    )

    def head_of(record: Record, careful: bool) -> str:
        """``LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|``."""
        head = fixed_head or "LEEF:2.0|" + "|".join(_text_of(field, record, careful) for field in lead) + "|"
        return head + _text_of(event_id, record, careful) + tail

    if generated and native:
        head: list[HeadPart] = ["LEEF:2.0|"]
        for part in _header_fields(
            rules, tenant_name, lambda rule, limit: header_part(rule, tenant_name, limit)
        ):
            head += [part, "|"]
        head[-1] = tail
        in_c = native_writer(
            head,
            plan.steps,
            mode=NATIVE_LEEF,
            separator="=",
            joint=delimiter,
            escape=lambda text: _flatten(text, delimiter),
            render_text=render_text,
            shortcuts=NATIVE_SHORTCUTS,
            delimiter=delimiter,
        )
        if in_c is not None:
            return in_c  # every value and header field made safe on its own, as the careful path does
    collect = plan.generated().function if generated else plan.collect

    def careful(record: Record) -> bytes:
        """Every field made safe on its own: the rare record with a control character or a delimiter."""
        body = delimiter.join([_flatten(field, delimiter) for field in collect(record)])
        return (head_of(record, careful=True) + body).encode("utf-8", "replace")

    if ord(delimiter) in CONTROL_PICTURES:
        # A tab delimiter is a control character itself: the one pass that looks for control characters
        # also finds a tab inside a value, as one more than the joints between fields. The common case
        # (a constant head) is written out here: it is the path every record of a route takes.
        def write(record: Record) -> bytes:
            fields = collect(record)
            head = (
                fixed_head + _text_of(event_id, record, False) + tail
                if fixed_head
                else head_of(record, False)
            )
            data = (head + delimiter.join(fields)).encode("utf-8", "replace")
            if len(data) - len(data.translate(None, CONTROL_BYTES)) == len(fields) - 1:
                return data
            return careful(record)

    else:

        def write(record: Record) -> bytes:
            fields = collect(record)
            body = delimiter.join(fields)
            data = (head_of(record, careful=False) + body).encode("utf-8", "replace")
            # Keys never hold the delimiter, so a delimiter beyond the joints sits in a value.
            if body.count(delimiter) < len(fields) and len(data.translate(None, CONTROL_BYTES)) == len(data):
                return data
            return careful(record)

    return write


def _flatten(text: str, delimiter: str) -> str:
    """Make a value LEEF can carry: the delimiter becomes a space, control characters (a tab delimiter
    among them) their pictures."""
    if delimiter in text and ord(delimiter) not in CONTROL_PICTURES:
        text = text.replace(delimiter, " ")
    if not text.isprintable():
        text = text.translate(CONTROL_PICTURES)
    return text
