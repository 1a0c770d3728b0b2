"""ArcSight CEF output, and the value plan that CEF and LEEF share.

Line shape: ``CEF:0|Vendor|Product|Version|Class ID|Name|Severity|key=value key=value ...``.

Escaping (ArcSight CEF guide, as parsed by Elastic's CEF decoder): header fields escape ``\\`` and
``|``; extension values escape ``\\`` and ``=``, and write LF/CR as ``\\n``/``\\r``; pipes are left
alone in extensions. Extension keys are validated when the mapping is loaded, never per record.

Control characters: CEF defines no escape for any control character but LF and CR in an extension
value, and a raw one breaks receivers (a NUL ends the extension for syslog-ng, rsyslog rewrites
control characters as ``#ooo``). Every other C0 character (NUL, TAB, ESC...) and DEL, and LF/CR in a
header field, is written as its Unicode Control Picture (U+2400 + code, DEL as U+2421: ``␀ ␉ ␛ ␡``):
one visible character that no parser takes for syntax. The same rule applies to LEEF.

Values: None, missing, empty strings and empty containers omit the field (or use its default);
booleans are ``true``/``false``; lists and dicts are compact JSON; CEF time keys (``rt``, ``start``,
``end``, ...) holding epoch seconds are written as epoch milliseconds.

Severity follows Cloud Exchange: low/0-3 → Low, med/medium/4-6 → Medium, high/7-8 → High,
very-high/critical/9-10 → Very-High, anything else → Unknown. Audit events carry ``severity_level``
and use CE's audit table, exactly as its CLS plugins (syslog, QRadar, ArcSight, LogRhythm) apply it to
``str(value).lower()``: 1 → High, 2 → Medium, 4 → Low, 6 → Info, every other level → Unknown; the words
low → Low, med/medium → Medium, high/very-high/critical → High. ``Info`` is not one of the CEF
specification's severity words; CE writes it, so ce-daemon does too.
"""

from __future__ import annotations

import ipaddress
import json
import math
import operator
import re
from collections.abc import Callable, Iterable
from collections.abc import Mapping as MappingABC
from typing import Any, Final

import orjson

from ce_daemon.logs.generated import GeneratedCollect, PlanStep, generate_collect
from ce_daemon.logs.mapping import (
    HEADER_FIELDS,
    FieldRule,
    Getter,
    Record,
    SubtypeRules,
    make_getter,
    reads,
    reads_of,
)
from ce_daemon.logs.native import CEF as NATIVE_CEF
from ce_daemon.logs.native import EPOCH_MS_TEXT, INT_TEXT, HeadPart
from ce_daemon.logs.native import line_writer as native_writer

TextConverter = Callable[[Any], "str | None"]
RecordWriter = Callable[[Record], bytes]

TENANT_PLACEHOLDER: Final = "$tenant_name"
# CEF keys whose value is a timestamp; Netskope gives epoch seconds, CEF wants epoch milliseconds.
TIME_KEYS: Final = frozenset(
    {
        "rt",
        "start",
        "end",
        "art",
        "deviceCustomDate1",
        "deviceCustomDate2",
        "flexDate1",
        "fileCreateTime",
        "fileModificationTime",
        "oldFileCreateTime",
        "oldFileModificationTime",
    }
)
# Below this an epoch number is taken as seconds (1e11 s is the year 5138; 1e11 ms is 1973).
_SECONDS_LIMIT: Final = 100_000_000_000

_SEVERITY_WORDS: Final = {
    "low": "Low",
    "med": "Medium",
    "medium": "Medium",
    "high": "High",
    "very-high": "Very-High",
    "critical": "Very-High",
}
_SEVERITY_BANDS: Final = ("Low",) * 4 + ("Medium",) * 3 + ("High",) * 2 + ("Very-High",) * 2


def _severity_table(bands: tuple[str, ...], words: MappingABC[str, str]) -> dict[object, str]:
    table: dict[object, str] = {}
    table.update(words)
    for number, label in enumerate(bands):
        table[number] = label
        table[str(number)] = label
    return table


_SEVERITY: Final = _severity_table(_SEVERITY_BANDS, _SEVERITY_WORDS)
# CE's AUDIT_SEVERITY_MAP; a level it does not list (0, 3, 5, 7 and above) is Unknown.
_AUDIT_SEVERITY: Final = {
    "low": "Low",
    "med": "Medium",
    "medium": "Medium",
    "high": "High",
    "very-high": "High",
    "critical": "High",
    "1": "High",
    "2": "Medium",
    "4": "Low",
    "6": "Info",
}


def normalize_severity(value: object) -> str:
    """A Netskope severity as a CEF severity word, exactly as Cloud Exchange does it."""
    if value.__class__ is bool or value is None:
        return "Unknown"
    try:
        found = _SEVERITY.get(value)
    except TypeError:  # unhashable: a list or dict is no severity
        return "Unknown"
    if found is not None:
        return found
    if isinstance(value, str):
        return _SEVERITY.get(value.strip().lower(), "Unknown")
    return "Unknown"


def normalize_audit_severity(value: object) -> str:
    """An audit event's ``severity_level`` as the CEF severity word CE writes for it (see the module doc)."""
    if value is None:
        return "Unknown"
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a value whose str() fails is no severity, and must not stop the route
        return "Unknown"
    return _AUDIT_SEVERITY.get(text.lower(), "Unknown")


# C0 control characters and DEL → their Unicode Control Pictures, for str.translate.
CONTROL_PICTURES: Final = {code: 0x2400 + code for code in range(0x20)} | {0x7F: 0x2421}
# The same characters as UTF-8 bytes (no multi-byte sequence contains them). Deleting them from an
# encoded line and comparing lengths is the cheapest whole-line test we measured (~1 ns a byte;
# str.isprintable takes two to three times as long, a regular expression five to ten times).
CONTROL_BYTES: Final = bytes(CONTROL_PICTURES)


def escape_header(text: str) -> str:
    """Escape a CEF header field: ``\\`` and ``|`` get a backslash, control characters become pictures."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "|" in text:
        text = text.replace("|", "\\|")
    if not text.isprintable():
        text = text.translate(CONTROL_PICTURES)
    return text


def _escape_syntax(text: str) -> str:
    """CEF's own escapes of an extension value: ``\\``, ``=``, LF (``\\n``) and CR (``\\r``)."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "=" in text:
        text = text.replace("=", "\\=")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def escape_extension(text: str) -> str:
    """Escape a CEF extension value: the CEF escapes, then other control characters become pictures."""
    text = _escape_syntax(text)
    if not text.isprintable():
        text = text.translate(CONTROL_PICTURES)
    return text


def header_text(text: str | None) -> str:
    """A header field ready to write: empty for None, escaped only when it needs to be."""
    if not text:
        return ""
    if "\\" in text or "|" in text or not text.isprintable():
        return escape_header(text)
    return text


def header_text_unchecked(text: str | None, careful: bool) -> str:
    """`header_text` for a writer that checks the whole line for control characters afterwards: unless
    ``careful``, only ``\\`` and ``|`` are looked for here."""
    if text and (careful or "\\" in text or "|" in text):
        return escape_header(text)
    return text or ""


# --- values ----------------------------------------------------------------------------------------


def render_text(value: Any) -> str | None:  # noqa: PLR0911  - one return per value type reads clearest
    """A record value as CEF/LEEF text: None/empty → None, bools → true/false, containers → compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, list | dict | tuple):
        return json_text(value)
    return str(value)


def json_text(value: list[Any] | dict[str, Any] | tuple[Any, ...]) -> str | None:
    """Compact JSON of a container; None when empty."""
    if not value:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # orjson refuses ints beyond 64 bits and non-str keys; the stdlib copes with both.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _as_number(value: Any) -> int | float | None:
    """A finite number from a number or numeric string; None for anything else (booleans included)."""
    if value.__class__ is bool:
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return float(value)
    return None


def _to_int_text(value: Any) -> str | None:
    if value.__class__ is int:
        return str(value)
    number = _as_number(value)
    return None if number is None else str(int(number))


def _to_timestamp_text(value: Any) -> str | None:
    number = _as_number(value)
    return render_text(value) if number is None else str(int(number))


def _to_float_text(value: Any) -> str | None:
    number = _as_number(value)
    return None if number is None else repr(float(number))


class _ValidatedCache:
    """Memoises a validating converter: addresses repeat a lot in a stream, parsing them does not need to."""

    __slots__ = ("_check", "_limit", "_seen")

    def __init__(self, check: Callable[[str], str | None], limit: int = 8192) -> None:
        self._check = check
        self._seen: dict[str, str | None] = {}
        self._limit = limit

    def __call__(self, value: Any) -> str | None:
        if value.__class__ is not str:
            if value.__class__ is bool or not isinstance(value, int | str):
                return None
            value = str(value)
        seen = self._seen
        try:
            return seen[value]
        except KeyError:
            pass
        result = self._check(value)
        if len(seen) >= self._limit:
            seen.clear()
        seen[value] = result
        return result


def _check_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


_MAC = re.compile(r"[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}|(?:[0-9A-Fa-f]{2}){5})")
_MAC_DOTTED = re.compile(r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}")


def _check_mac(text: str) -> str | None:
    text = text.strip()
    if _MAC.fullmatch(text) is None and _MAC_DOTTED.fullmatch(text) is None:
        return None
    digits = "".join(ch for ch in text if ch not in ":-.").upper()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def text_converter(transformation: str) -> TextConverter | None:
    """The converter of a CE transformation, or None for ``String`` (values rendered as they are).

    Integer → whole number text (floats truncated, numeric strings parsed; anything else omitted);
    Floating Point → shortest float text; IP Address → canonical address text;
    MAC Address → ``AA:BB:CC:DD:EE:FF``; Time Stamp → a number as a whole number, anything else as it
    is (CE's QRadar plugin: ``int(value)`` when that works). Invalid values give None, so the field falls
    back to its default or is omitted.
    """
    if transformation == "Integer":
        return _to_int_text
    if transformation == "Floating Point":
        return _to_float_text
    if transformation == "IP Address":
        return _ValidatedCache(_check_ip)
    if transformation == "MAC Address":
        return _ValidatedCache(_check_mac)
    if transformation == "Time Stamp":
        return _to_timestamp_text
    return None


def default_text(rule: FieldRule, tenant_name: str, converter: TextConverter | None) -> str | None:
    """The rule's default as text: ``$tenant_name`` substituted, then converted like a record value."""
    value = rule.default_value
    if value is None:
        return None
    if isinstance(value, str):
        value = value.replace(TENANT_PLACEHOLDER, tenant_name)
    if converter is not None:
        return converter(value)
    return render_text(value)


def value_text(
    rule: FieldRule, tenant_name: str, converter: TextConverter | None = None
) -> Callable[[Record], str | None]:
    """A closure giving one rule's text for a record (header fields and other one-off values)."""
    name, getter = make_getter(rule) if rule.mapping_field else ("", None)
    convert = converter if converter is not None else text_converter(rule.transformation)
    fallback = default_text(rule, tenant_name, convert)
    if not rule.mapping_field:
        return reads((), lambda _record: fallback)
    render = convert if convert is not None else render_text

    def text(record: Record) -> str | None:
        value = record.get(name) if getter is None else getter(record)
        if value is None:
            return fallback
        result = render(value)
        return fallback if result is None else result

    declared = (name,) if getter is None else reads_of(getter)
    return text if declared is None else reads(declared, text)


def header_part(rule: FieldRule, tenant_name: str, limit: int | None = None) -> HeadPart:
    """A header field read from the record, as the C writer takes it: ``(field, fallback, limit)`` for a
    top-level field rendered as it is (a String rule, the common case: read in C), else the reader
    `value_text` makes (cut to ``limit`` characters). Either gives the text `value_text` gives."""
    field, getter = make_getter(rule)
    convert = text_converter(rule.transformation)
    if getter is None and convert is None:
        fallback = default_text(rule, tenant_name, None)
        return (
            field,
            fallback if fallback is None or limit is None else fallback[:limit],
            -1 if limit is None else limit,
        )
    return cut_text(value_text(rule, tenant_name, convert), limit)


def cut_text(text_of: Callable[[Record], str | None], limit: int | None) -> Callable[[Record], str | None]:
    """``text_of`` cut to ``limit`` characters (before it is escaped, so no escape sequence is split);
    ``text_of`` itself when there is no limit."""
    if limit is None:
        return text_of

    def cut(record: Record) -> str | None:
        text = text_of(record)
        return text[:limit] if text else text

    declared = reads_of(text_of)
    return cut if declared is None else reads(declared, cut)


def _absent(_record: Record) -> None:
    """The getter of a constant field: there is nothing to read, so its default always applies."""


class FieldPlan:
    """A compiled list of (output key ← rule) pairs; `collect` runs it over one record.

    The loop is written out flat on purpose: one Python call per record instead of one per field is
    what keeps a 30-field record within a few microseconds.
    """

    __slots__ = ("_generated", "_plan", "_steps")

    def __init__(
        self,
        entries: Iterable[tuple[str, FieldRule]],
        tenant_name: str,
        *,
        converters: MappingABC[str, TextConverter] | None = None,
        companions: MappingABC[str, tuple[str, str]] | None = None,
        getters: MappingABC[str, Getter] | None = None,
        separator: str = "=",
    ) -> None:
        """``converters`` override the transformation of some output keys (timestamps);
        ``companions`` add a constant ``(key, text)`` written right after a key whenever it has a value;
        ``getters`` read some keys' values themselves, defaults included (the rule's default is then
        not used: a value the converter refuses omits the key); ``separator`` joins key and text
        (``=``, or a placeholder the writer swaps in later).
        """
        converters = converters or {}
        companions = companions or {}
        getters = getters or {}
        steps: list[tuple[str, str, Getter | None, TextConverter | None, str | None]] = []
        plan: list[PlanStep] = []
        for key, rule in entries:
            converter = converters.get(key) or text_converter(rule.transformation)
            field, getter = make_getter(rule) if rule.mapping_field else ("", _absent)
            getter = getters.get(key, getter)
            default = None if key in getters else default_text(rule, tenant_name, converter)
            steps.append((f"{key}{separator}", field, getter, converter, default))
            follower = (f"{key}Label", rule.label) if rule.label else companions.get(key)
            plan.append(
                PlanStep(
                    key_eq=f"{key}{separator}",
                    field=field,
                    getter=getter,
                    converter=converter,
                    default=default,
                    follower=None if follower is None else f"{follower[0]}{separator}{follower[1]}",
                    constant=getter is _absent,
                    source=_described(rule, overridden=key in getters),
                )
            )
            if follower is not None:
                # A step of its own that reads the same value and writes the constant whenever the
                # key above was written: the loop then needs no per-field test for followers.
                follower_key, follower_text = follower
                steps.append(
                    (
                        f"{follower_key}{separator}",
                        field,
                        getter,
                        _written_with(converter, default is not None, follower_text),
                        follower_text if default is not None else None,
                    )
                )
        self._steps = tuple(steps)
        self._plan = tuple(plan)
        self._generated: GeneratedCollect | None = None

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> tuple[PlanStep, ...]:
        """The plan, one step per output key (the generated and the C writers are built from it)."""
        return self._plan

    def generated(self) -> GeneratedCollect:
        """The plan written out as one Python function (:mod:`ce_daemon.logs.generated`), same output
        as :meth:`collect`; generated on first use."""
        if self._generated is None:
            self._generated = generate_collect(self._plan, render_text)
        return self._generated

    def collect(self, record: Record) -> list[str]:
        """``key<separator>text`` for every field that has a value, unescaped, in plan order."""
        get = record.get
        parts: list[str] = []
        add = parts.append
        for key_eq, field, getter, converter, default in self._steps:
            value = get(field) if getter is None else getter(record)
            if value is None:
                text = default
            elif converter is not None:
                text = converter(value)
                if text is None:
                    text = default
            else:
                cls = value.__class__
                if cls is str:
                    text = value or default
                elif cls is int:
                    text = str(value)
                elif cls is bool:
                    text = "true" if value else "false"
                elif cls is float:
                    text = repr(value)
                else:
                    text = render_text(value) or default
            if text is not None:
                add(key_eq + text)
        return parts


def _described(rule: FieldRule, *, overridden: bool) -> str:
    """Where a plan step's value comes from, for the generated source's comments."""
    if overridden:
        return f"{rule.mapping_field or 'its default'} (read by the format's own getter)"
    if not rule.mapping_field:
        return f"the constant {rule.default_value!r}"
    transformation = "" if rule.transformation == "String" else f", as {rule.transformation}"
    return f"{rule.mapping_field}{transformation}"


def _written_with(converter: TextConverter | None, has_default: bool, text: str) -> TextConverter:
    """The converter of a follower: ``text`` whenever the key it follows gets a text from ``value``."""
    render = converter if converter is not None else render_text

    def follow(value: Any) -> str | None:
        return text if has_default or render(value) is not None else None

    return follow


# --- time ------------------------------------------------------------------------------------------


def epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds from epoch seconds or milliseconds (number or numeric string); else None."""
    number = _as_number(value)
    if number is None:
        return None
    if -_SECONDS_LIMIT < number < _SECONDS_LIMIT:
        return number * 1000 if isinstance(number, int) else round(number * 1000)
    return round(number)


def epoch_ms_text(value: Any) -> str | None:
    """A CEF time value: epoch milliseconds; a non-numeric string (a formatted date) passes through."""
    ms = epoch_ms(value)
    if ms is not None:
        return str(ms)
    if value.__class__ is str:
        return str(value) or None
    return None


# The converters whose effect on an int the C writer applies itself (ce_daemon/logs/native.py).
NATIVE_SHORTCUTS: Final[dict[TextConverter, int]] = {_to_int_text: INT_TEXT, epoch_ms_text: EPOCH_MS_TEXT}

_EMPTY: Final[Record] = {}
# Ends each key while the extension is assembled; becomes "=" once the values are escaped.
_KEY_END: Final = "\x00"
_KEY_END_BYTE: Final = _KEY_END.encode()


def _escape_field(field: str) -> str:
    key, _, text = field.partition(_KEY_END)
    return f"{key}={escape_extension(text)}"


# --- the CEF writer --------------------------------------------------------------------------------


HeaderPart = tuple[str | None, Callable[[Record], "str | None"] | None, FieldRule | None]


def _header_plan(rules: SubtypeRules, tenant_name: str, cef_version: str) -> tuple[str, list[HeaderPart]]:
    """The header's constant start (``CEF:0|Vendor|...|``, escaped) and its other fields up to Name:
    ``(constant, None, None)`` or ``(None, record -> text, the rule it reads)``."""
    leading = [f"CEF:{cef_version}"]
    dynamic: list[HeaderPart] = []
    for field in HEADER_FIELDS[:5]:
        rule = rules.header.get(field)
        getter = value_text(rule, tenant_name) if rule is not None else None
        if rule is None or not rule.mapping_field:
            constant = header_text(getter(_EMPTY) if getter is not None else None)
            if not dynamic:
                leading.append(constant)
            else:
                dynamic.append((constant, None, None))
        else:
            dynamic.append((None, getter, rule))
    return "|".join(leading) + "|", dynamic


def cef_plan(rules: SubtypeRules, *, tenant_name: str, sort_keys: bool = True) -> FieldPlan:
    """The field plan of one subtype's CEF extension (keys end in a NUL placeholder, not ``=``)."""
    items = list(rules.extension.items())
    if sort_keys:
        items.sort(key=operator.itemgetter(0))
    converters = {key: epoch_ms_text for key, _ in items if key in TIME_KEYS}
    # Keys end in a NUL placeholder instead of "=": the whole extension can then be escaped in a few
    # C-level passes (URLs make escaping the common case) and the placeholders turned into "=" after,
    # once the pass that looks for control characters has counted them.
    return FieldPlan(items, tenant_name, converters=converters, separator=_KEY_END)


def compile_cef(
    rules: SubtypeRules,
    *,
    tenant_name: str,
    cef_version: str = "0",
    sort_keys: bool = True,
    audit: bool = False,
    generated: bool = True,
    native: bool = True,
) -> RecordWriter:
    """Compile one subtype's rules into ``record -> CEF line`` (UTF-8 bytes, no newline).

    ``sort_keys`` writes extensions sorted by key as CE does; False keeps the mapping file's order.
    ``audit`` selects the audit severity table. ``generated`` collects the extension with the plan's
    generated function; False with the reference loop (`FieldPlan.collect`: same bytes, slower).
    ``native`` (with ``generated``) writes the line with the C writer when it is built
    (:mod:`ce_daemon.logs.native`: same bytes again, faster still).
    """
    prefix, dynamic = _header_plan(rules, tenant_name, cef_version)
    severity_of = severity_reader(rules.header.get("Severity"), tenant_name, audit=audit)
    plan = cef_plan(rules, tenant_name=tenant_name, sort_keys=sort_keys)
    if generated and native:
        head: list[HeadPart] = [prefix]
        for constant, _, rule in dynamic:
            head += [constant if rule is None else header_part(rule, tenant_name), "|"]  # type: ignore[list-item]  # set when rule is None
        head += [severity_of, "|"]
        in_c = native_writer(
            head,
            plan.steps,
            mode=NATIVE_CEF,
            separator=_KEY_END,
            joint=" ",
            escape=escape_extension,
            render_text=render_text,
            shortcuts=NATIVE_SHORTCUTS,
        )
        if in_c is not None:
            return in_c
    collect = plan.generated().function if generated else plan.collect

    def careful(record: Record) -> bytes:
        """Every field escaped on its own, pictures included: the rare record with a control character."""
        parts = [prefix]
        for constant, getter, _ in dynamic:
            text = constant if constant is not None else header_text(getter(record))  # type: ignore[misc]  # see write
            parts.append(text)
            parts.append("|")
        parts.append(severity_of(record))
        parts.append("|")
        parts.append(" ".join([_escape_field(field) for field in collect(record)]))
        return "".join(parts).encode("utf-8", "replace")

    def write(record: Record) -> bytes:
        parts = [prefix]
        for constant, getter, _ in dynamic:
            if constant is not None:
                parts.append(constant)
            else:
                text = getter(record)  # type: ignore[misc]  # set when constant is None
                parts.append(header_text_unchecked(text, False))  # control characters: the check below
            parts.append("|")
        parts.append(severity_of(record))
        parts.append("|")
        fields = collect(record)
        extension = " ".join(fields)
        if "\\" in extension or "=" in extension or "\n" in extension or "\r" in extension:
            extension = _escape_syntax(extension)
        parts.append(extension)
        data = "".join(parts).encode("utf-8", "replace")
        # One pass finds every control character: if the key placeholders are the only ones, they become
        # "="; any other (in a value or a header field, a NUL among them) means the careful path.
        if len(data) - len(data.translate(None, CONTROL_BYTES)) == len(fields):
            return data.replace(_KEY_END_BYTE, b"=")
        return careful(record)

    return write


def severity_reader(rule: FieldRule | None, tenant_name: str, *, audit: bool) -> Callable[[Record], str]:
    """``record -> CEF severity word`` for a Severity rule: the record's value, or the rule's default
    when the record has none, normalised with the general or the audit table."""
    normalize = normalize_audit_severity if audit else normalize_severity
    if rule is None:
        return reads((), lambda _record: "Unknown")
    fallback = rule.default_value
    if isinstance(fallback, str):
        fallback = fallback.replace(TENANT_PLACEHOLDER, tenant_name)
    fallback_word = normalize(fallback) if fallback not in (None, "") else "Unknown"
    if not rule.mapping_field:
        return reads((), lambda _record: fallback_word)
    name, getter = make_getter(rule)

    def severity(record: Record) -> str:
        value = record.get(name) if getter is None else getter(record)
        if value is None or value == "":
            return fallback_word
        return normalize(value)

    declared = (name,) if getter is None else reads_of(getter)
    return severity if declared is None else reads(declared, severity)
