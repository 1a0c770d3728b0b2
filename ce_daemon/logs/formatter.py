"""Record → bytes for a log route: CEF, LEEF 2.0 or JSON, compiled once per (kind, subtype).

A `RecordFormatter` belongs to one route (one tenant, one mapping, one output format). The first
record of each (kind, subtype) compiles that subtype's mapping into a closure; every later record of it
is one dictionary lookup away from that closure.

JSON output: the raw record, byte for byte as orjson writes it, unless a field list applies — the
route's ``json_fields`` if given, else the mapping's ``taxonomy.json.<kind>.<subtype>``. An empty or
absent list means the raw record. Each list entry is a field name (dotted paths allowed; the output key
is the name as written) or ``{"name": "out", "mapping_field": "a.b", "default_value": ...,
"transformation": ...}``; transformations give native JSON types (Integer → number, IP Address →
canonical text). Fields without a value are left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import orjson
import structlog

from ce_daemon.logs import native
from ce_daemon.logs.cef import RecordWriter, cef_plan, compile_cef, text_converter
from ce_daemon.logs.leef import compile_leef, delimiter_field, leef_plan
from ce_daemon.logs.mapping import (
    JsonField,
    Mapping,
    Record,
    UnmappedSubtypeError,
    make_getter,
    parse_json_fields,
    subtype_key,
)

log = structlog.get_logger(__name__)

OutputFormat = Literal["cef", "leef", "json"]
_TENANT_PLACEHOLDER: Final = "$tenant_name"
_CACHE_LIMIT: Final = 512


class RecordFormatter:
    """Formats raw Netskope records for one route.

    ``subtype_from_record``: the route reads ``events/alert`` (every alert type in one stream), so the
    mapping entry is chosen per record from its ``alert_type`` under ``alerts``, as CE groups alerts.
    Records without an ``alert_type``, or whose alert type the mapping lacks, use the (kind, subtype)
    given to `format` (the mapping's ``events/alert`` entry).
    """

    __slots__ = (
        "_cache",
        "_generated",
        "_json_fields",
        "_leef_delimiter",
        "_sort_extensions",
        "_subtype_from_record",
        "_use_native",
        "mapping",
        "output",
        "tenant_name",
    )

    def __init__(
        self,
        format: OutputFormat,  # noqa: A002  - named after the route's `format:` key
        mapping: Mapping,
        tenant_name: str,
        *,
        json_fields: Sequence[str | dict[str, Any]] | None = None,
        subtype_from_record: bool = False,
        sort_extensions: bool = True,
        leef_delimiter: str = "\t",
        generated: bool = True,
        native: bool = True,
    ) -> None:
        """``generated``: CEF and LEEF writers collect their fields with generated code (see
        :mod:`ce_daemon.logs.generated`); False keeps the reference loop, which writes the same bytes
        (the benchmarks compare the two, the tests check that they agree). ``native`` (with
        ``generated``): the C writer of :mod:`ce_daemon.logs.native` when it is built."""
        if format not in ("cef", "leef", "json"):
            raise ValueError(f"unknown log format {format!r} (expected cef, leef or json)")
        if format == "leef":
            delimiter_field(leef_delimiter)  # refuse a bad delimiter now, not at the first record
            clashing = sorted(key for key in mapping.extension_keys() if leef_delimiter in key)
            if clashing:
                raise ValueError(f"LEEF delimiter {leef_delimiter!r} appears in extension keys {clashing}")
        self.output: OutputFormat = format
        self.mapping = mapping
        self.tenant_name = tenant_name
        self._json_fields = None if json_fields is None else parse_json_fields(list(json_fields))
        self._subtype_from_record = subtype_from_record
        self._sort_extensions = sort_extensions
        self._leef_delimiter = leef_delimiter
        self._generated = generated
        self._use_native = native
        self._cache: dict[tuple[str, str], RecordWriter] = {}

    @property
    def reads_json(self) -> bool:
        """True when its writers are C writers that read records as JSON text (see
        `ce_daemon.logs.route.decide_texts`): CEF or LEEF, generated; JSON of the raw record."""
        if not native.AVAILABLE or not native.READS_TEXT or self._subtype_from_record:
            return False
        if self.output == "json":
            return not self._json_fields and not self.mapping.has_json_fields()
        return self._generated and self._use_native

    def covers(self, kind: str, subtype: str) -> bool:
        """True when `format` can write (kind, subtype): always for JSON, else when the mapping has it."""
        return self.output == "json" or self.mapping.covers(kind, subtype)

    def format(self, record: Record, kind: str, subtype: str) -> bytes:
        """One record as UTF-8 bytes without a trailing newline.

        Raises `UnmappedSubtypeError` for CEF/LEEF when the mapping has no entry for the subtype.
        """
        if self._subtype_from_record:
            alert_type = record.get("alert_type")
            if alert_type.__class__ is str and alert_type:
                writer = self._cache.get(("alerts", alert_type))
                if writer is None:
                    writer = self._compile("alerts", alert_type, fallback=(kind, subtype))
                return writer(record)
        writer = self._cache.get((kind, subtype))
        if writer is None:
            writer = self._compile(kind, subtype)
        return writer(record)

    def writer_for(self, kind: str, subtype: str) -> RecordWriter:
        """``record -> bytes`` for one stream, resolved once (a consumer calls it per page, not per record).

        Same output as :meth:`format`; a subtype the mapping lacks yields a writer that raises
        `UnmappedSubtypeError` per record, as `format` would.
        """
        if self._subtype_from_record:
            return lambda record: self.format(record, kind, subtype)
        try:
            return self._cache.get((kind, subtype)) or self._compile(kind, subtype)
        except UnmappedSubtypeError as exc:
            error = exc

            def refuse(record: Record) -> bytes:
                raise error

            return refuse

    def source(self, kind: str, subtype: str) -> str:
        """What the writer of (kind, subtype) runs per record, for a person to read: for CEF and LEEF the
        generated source of its field collection and what runs it (the C writer runs the same plan),
        for JSON the fields it selects."""
        if self.output == "json":
            fields = self._json_fields or self.mapping.json_fields(kind, subtype)
            if not fields:
                return f"# {kind}/{subtype}: JSON, the raw record as orjson writes it\n"
            listed = "".join(
                f"#   {field.name} <- {field.rule.mapping_field or 'a constant'}\n" for field in fields
            )
            return f"# {kind}/{subtype}: JSON with these fields, in this order\n{listed}"
        rules = self.mapping.rules(kind, subtype)
        if rules is None:
            raise UnmappedSubtypeError(
                f"mapping {self.mapping.name or self.mapping.source!r} has no {kind}/{subtype}"
            )
        audit = kind == "events" and subtype_key(subtype) == "audit"
        if self.output == "cef":
            plan = cef_plan(rules, tenant_name=self.tenant_name, sort_keys=self._sort_extensions)
            shape = (
                "CEF: the header, then these extension fields joined by spaces, escaped as one\n"
                "# (a key ends in \\x00 until then, and the escaped line turns each into '=')"
            )
        else:
            plan = leef_plan(
                rules, tenant_name=self.tenant_name, sort_keys=self._sort_extensions, audit=audit
            )
            shape = "LEEF 2.0: the header, then these attributes joined by the delimiter"
        if not self._generated:
            runs = "the reference loop (FieldPlan.collect) runs this plan"
        elif self._use_native and native.AVAILABLE:
            runs = "the C writer (logs/_native.c) runs this plan, the same bytes as this Python"
        else:
            runs = f"this Python runs per record (the C writer: {native.STATE})"
        return f"# {kind}/{subtype} as {shape}\n# {runs}\n{plan.generated().source}"

    def _compile(self, kind: str, subtype: str, *, fallback: tuple[str, str] | None = None) -> RecordWriter:
        """Build the writer of (kind, subtype), or of ``fallback`` when the mapping lacks the first."""
        writer: RecordWriter
        if self.output == "json":
            fields = self._json_fields
            if fields is None:
                fields = self.mapping.json_fields(kind, subtype)
                if fields is None and fallback is not None:
                    fields = self.mapping.json_fields(*fallback)
            writer = compile_json(fields or (), self.tenant_name)
        else:
            source_kind, source_subtype = kind, subtype
            rules = self.mapping.rules(kind, subtype)
            if rules is None and fallback is not None:
                source_kind, source_subtype = fallback
                rules = self.mapping.rules(*fallback)
            if rules is None:
                raise UnmappedSubtypeError(
                    f"mapping {self.mapping.name or self.mapping.source!r} has no {kind}/{subtype}"
                )
            audit = source_kind == "events" and subtype_key(source_subtype) == "audit"
            if self.output == "cef":
                writer = compile_cef(
                    rules,
                    tenant_name=self.tenant_name,
                    cef_version=self.mapping.cef_version,
                    sort_keys=self._sort_extensions,
                    audit=audit,
                    generated=self._generated,
                    native=self._use_native,
                )
            else:
                writer = compile_leef(
                    rules,
                    tenant_name=self.tenant_name,
                    delimiter=self._leef_delimiter,
                    sort_keys=self._sort_extensions,
                    audit=audit,
                    generated=self._generated,
                    native=self._use_native,
                )
        # Subtype names come from the data (alert_type), so the cache is bounded; real feeds use a few dozen.
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[(kind, subtype)] = writer
        log.debug("formatter.compiled", output=self.output, kind=kind, subtype=subtype)
        return writer


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON; falls back to the stdlib for what orjson refuses (ints beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode(
            "utf-8", "replace"
        )


def _native(transformation: str) -> Callable[[Any], Any] | None:
    """A CE transformation giving a JSON-native value (numbers stay numbers), or None for String."""
    to_text = text_converter(transformation)
    if to_text is None:
        return None
    if transformation == "Integer":
        return lambda value: None if (text := to_text(value)) is None else int(text)
    if transformation == "Floating Point":
        return lambda value: None if (text := to_text(value)) is None else float(text)
    if transformation == "Time Stamp":

        def whole_number(value: Any) -> Any:
            text = to_text(value)
            return int(text) if text is not None and text.lstrip("-").isdigit() else value

        return whole_number
    return to_text


def compile_json(fields: Sequence[JsonField], tenant_name: str) -> RecordWriter:
    """``record -> JSON bytes``: the raw record when ``fields`` is empty, else the selected fields."""
    if not fields:
        return native.json_line_writer(dump_json) or dump_json
    steps: list[tuple[str, str, Callable[[Record], Any] | None, Callable[[Any], Any] | None, Any]] = []
    for field in fields:
        rule = field.rule
        convert = _native(rule.transformation)
        default = rule.default_value
        if isinstance(default, str):
            default = default.replace(_TENANT_PLACEHOLDER, tenant_name)
        if default is not None and convert is not None:
            default = convert(default)
        source, getter = make_getter(rule) if rule.mapping_field else ("", _absent)
        steps.append((field.name, source, getter, convert, default))
    plan = tuple(steps)

    def write(record: Record) -> bytes:
        get = record.get
        out: dict[str, Any] = {}
        for name, source, getter, convert, default in plan:
            value = get(source) if getter is None else getter(record)
            if value is None or value == "":
                value = default
            elif convert is not None:
                value = convert(value)
                if value is None:
                    value = default
            if value is not None:
                out[name] = value
        return dump_json(out)

    return write


def _absent(_record: Record) -> None:
    """The getter of a constant field: its default always applies."""
