"""Mapping files in Netskope Cloud Exchange's format: loading, validation, subtype lookup, field paths.

A mapping file says, per data type (``alerts``/``events``) and subtype, which record fields fill the six
CEF header fields and which fill each extension key; ``taxonomy.json`` lists the fields a JSON route
keeps. ce-daemon reads CE's own files unchanged: the wrapper ``{"name": ..., "jsonData": "<JSON text>"}``
or the bare ``jsonData`` object. Everything is validated at load time and every problem is reported
with its path, so a bad file never reaches the record path.

Extension keys are written as the file names them, as CE does: ``suser``, ``cs1``, ``IncidentID``,
``NetskopeJustificationType``, ``event_type``, ``uba_inst1``... Only what cannot be written as a
CEF or LEEF key is refused: an empty key, white space, ``=``, ``|``, ``\\`` and non-printing
characters (control characters among them).

CE's ``Time Stamp`` transformation (QRadar's mapping) writes an epoch number as a whole number and
any other value as it is.

Two additions of ours, used only by files written for ce-daemon:

* an extension entry may carry ``"label"`` on a custom key (``cs1``..``cs6``, ``cn1``..``cn3``, ...):
  ``cs1Label=<label>`` is then written right after ``cs1`` whenever ``cs1`` has a value;
* a JSON field list entry may be ``{"name": "out", "mapping_field": "a.b", ...}`` instead of a field name.

``mapping_field`` may be a dotted path (``host_info.hostname``) or, with ``is_json_path``, a small
JSONPath (``$.a.b[0].c``). Without ``is_json_path`` a dotted name is first tried as a literal key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

from ce_daemon.errors import ConfigError, Problem
from ce_daemon.files import UnusableFileError, read_regular_file

Record = MappingABC[str, Any]
Getter = Callable[[Record], Any]
Scalar = str | int | float | bool

HEADER_FIELDS: Final = (
    "Device Vendor",
    "Device Product",
    "Device Version",
    "Device Event Class ID",
    "Name",
    "Severity",
)
TRANSFORMATIONS: Final = ("String", "Integer", "Floating Point", "IP Address", "MAC Address", "Time Stamp")
DATA_TYPES: Final = ("alerts", "events", "webtx", "logs")
_FIELD_KEYS: Final = ("mapping_field", "default_value", "transformation", "is_json_path", "label")
_JSON_FIELD_KEYS: Final = ("name", "mapping_field", "default_value", "transformation", "is_json_path")
# Characters no CEF/LEEF key can hold besides white space and control characters: "=" ends a key,
# and a backslash or pipe in a key has no escape a parser would undo.
_KEY_FORBIDDEN: Final = frozenset("=|\\")
# CEF keys that come with a "<key>Label" companion in the CEF dictionary.
_LABELLED_KEY = re.compile(
    r"(?:cs[1-6]|cn[1-3]|cfp[1-4]|c6a[1-4]|flexString[12]|flexNumber[12]|flexDate1|deviceCustomDate[12])"
)
MAX_MAPPING_BYTES: Final = 4 * 1024 * 1024
"""The largest mapping file read (CE's own mapping files are a few hundred KiB at most)."""
# CE formats the ips and c2 alert types with the ctep entry of a mapping.
_SUBTYPE_FALLBACK: Final = {"ips": "ctep", "c2": "ctep"}

PathStep = str | int
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class MappingProblem(Problem):
    """A `Problem` whose ``str()`` is ``path: message`` (the file is said once, by whoever reports it)."""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class MappingError(ConfigError, ValueError):
    """A mapping file is invalid; ``problems`` lists every problem found, each with its JSON path."""

    def __str__(self) -> str:
        return self.render()


class UnmappedSubtypeError(LookupError):
    """The mapping has no CEF/LEEF entry for this (kind, subtype); CE skips such batches as unmapped."""


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One mapping entry: where a value comes from and how it is converted."""

    mapping_field: str | None = None
    default_value: Scalar | None = None
    transformation: str = "String"
    is_json_path: bool = False
    label: str | None = None
    path: tuple[PathStep, ...] = ()


@dataclass(frozen=True, slots=True)
class SubtypeRules:
    """The CEF/LEEF mapping of one subtype: the six header rules and the extension rules in file order."""

    header: MappingABC[str, FieldRule]
    extension: MappingABC[str, FieldRule]


@dataclass(frozen=True, slots=True)
class JsonField:
    """One field of a JSON route's field list: the output key and the rule that fills it."""

    name: str
    rule: FieldRule


def subtype_key(name: str) -> str:
    """The lookup key of a subtype: CE display names and API path names meet here.

    ``"Compromised Credential"``, ``"compromised_credential"`` and ``"compromisedcredential"`` all give
    ``"compromisedcredential"``.
    """
    return "".join(ch for ch in name.lower() if ch.isalnum())


class Mapping:
    """A validated, immutable mapping file. Build it with `load`, `loads`, `from_document` or `builtin`."""

    __slots__ = ("_json", "_rules", "cef_version", "fingerprint", "name", "source")

    def __init__(
        self,
        *,
        name: str,
        source: str,
        cef_version: str,
        rules: dict[str, dict[str, SubtypeRules]],
        json_fields: dict[str, dict[str, tuple[JsonField, ...]]],
        fingerprint: str = "",
    ) -> None:
        self.name = name
        self.source = source
        self.cef_version = cef_version
        #: A digest of the mapping's content: a reload rebuilds a route only when this changes.
        self.fingerprint = fingerprint
        self._rules = rules
        self._json = json_fields

    def __repr__(self) -> str:
        return f"Mapping(name={self.name!r}, source={self.source!r})"

    @classmethod
    def load(cls, path: Path) -> Mapping:
        """Read and validate a mapping file; raises `MappingError` listing every problem.

        The file must be a regular file of at most :data:`MAX_MAPPING_BYTES`.
        """
        try:
            text = read_regular_file(path, limit=MAX_MAPPING_BYTES)
        except UnusableFileError as exc:
            raise MappingError(
                [MappingProblem(str(path), "", f"cannot read mapping file: {exc.reason}")]
            ) from None
        try:
            return cls.loads(text, source=str(path))
        except RecursionError:  # json's decoder recurses once per level of nesting
            raise MappingError(
                [MappingProblem(str(path), "", "nested too deeply to be a mapping file")]
            ) from None

    @classmethod
    def loads(cls, text: str | bytes, *, source: str = "<mapping>") -> Mapping:
        """Parse and validate mapping text (CE wrapper or bare ``jsonData`` object)."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MappingError(
                [MappingProblem(source, "", f"not valid JSON: {exc.msg}", line=exc.lineno, column=exc.colno)]
            ) from exc
        return cls.from_document(document, source=source)

    @classmethod
    def from_document(cls, document: object, *, source: str = "<mapping>") -> Mapping:
        """Validate an already-decoded mapping document."""
        return _MappingReader(source).read(document)

    @classmethod
    def builtin(cls, name: str = "netskope") -> Mapping:
        """A mapping shipped with ce-daemon (``ce_daemon/logs/mappings/<name>.json``)."""
        return _load_builtin(name)

    def rules(self, kind: str, subtype: str) -> SubtypeRules | None:
        """The CEF/LEEF rules for (kind, subtype), or None; subtype names are matched loosely."""
        return _lookup(self._rules.get(kind), subtype)

    def covers(self, kind: str, subtype: str) -> bool:
        """True when CEF/LEEF output of (kind, subtype) is mapped."""
        return self.rules(kind, subtype) is not None

    def json_fields(self, kind: str, subtype: str) -> tuple[JsonField, ...] | None:
        """The JSON field list for (kind, subtype); None or empty means "the raw record"."""
        return _lookup(self._json.get(kind), subtype)

    def has_json_fields(self) -> bool:
        """True when some (kind, subtype) has a JSON field list (the others write the raw record)."""
        return any(fields for table in self._json.values() for fields in table.values())

    def extension_keys(self) -> frozenset[str]:
        """Every extension key the mapping's CEF/LEEF entries write, over all data types and subtypes."""
        return frozenset(
            key for table in self._rules.values() for rules in table.values() for key in rules.extension
        )

    def subtypes(self, kind: str) -> list[str]:
        """The lookup keys of every subtype mapped for CEF/LEEF under ``kind``."""
        return sorted(self._rules.get(kind, {}))


def _lookup(table: dict[str, _T] | None, subtype: str) -> _T | None:
    if table is None:
        return None
    key = subtype_key(subtype)
    found = table.get(key)
    if found is None and key in _SUBTYPE_FALLBACK:
        found = table.get(_SUBTYPE_FALLBACK[key])
    return found


@functools.cache
def _load_builtin(name: str) -> Mapping:
    if not name.isidentifier():
        raise MappingError([MappingProblem("<builtin>", "", f"no built-in mapping named {name!r}")])
    resource = resources.files("ce_daemon.logs").joinpath("mappings").joinpath(f"{name}.json")
    if not resource.is_file():
        raise MappingError([MappingProblem("<builtin>", "", f"no built-in mapping named {name!r}")])
    return Mapping.loads(resource.read_bytes(), source=f"<builtin:{name}>")


def parse_json_fields(entries: object, *, source: str = "<json_fields>") -> tuple[JsonField, ...]:
    """Validate a JSON field list given outside a mapping file (a route's ``json_fields`` option)."""
    reader = _MappingReader(source)
    fields = reader.json_field_list(entries, "json_fields")
    reader.raise_if_any()
    return fields


class _MappingReader:
    """Walks a decoded mapping document, collecting every problem before giving up."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str, hint: str | None = None) -> None:
        self.problems.append(MappingProblem(self.source, path, message, hint=hint))

    def raise_if_any(self) -> None:
        if self.problems:
            raise MappingError(self.problems)

    def read(self, document: object) -> Mapping:
        name, data = self.unwrap(document)
        rules: dict[str, dict[str, SubtypeRules]] = {}
        json_fields: dict[str, dict[str, tuple[JsonField, ...]]] = {}
        cef_version = "0"
        if data is not None:
            version = data.get("cef_version", "0")
            if isinstance(version, int | str) and str(version).isdigit():
                cef_version = str(version)
            else:
                self.problem("cef_version", f'must be a CEF version number such as "0", not {version!r}')
            taxonomy = data.get("taxonomy")
            if not isinstance(taxonomy, dict):
                self.problem("taxonomy", "missing or not an object")
            else:
                for data_type, table in taxonomy.items():
                    if data_type == "json":
                        json_fields = self.json_taxonomy(table)
                    elif data_type in DATA_TYPES:
                        rules[data_type] = self.subtype_table(table, f"taxonomy.{data_type}")
                    else:
                        hint = None
                        if data_type.rstrip("s") + "s" in DATA_TYPES:
                            hint = f"did you mean {data_type.rstrip('s') + 's'!r}?"
                        self.problem(
                            f"taxonomy.{data_type}",
                            "unknown data type (expected alerts, events, webtx, logs or json)",
                            hint,
                        )
        self.raise_if_any()
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return Mapping(
            name=name,
            source=self.source,
            cef_version=cef_version,
            rules=rules,
            json_fields=json_fields,
            fingerprint=hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest(),
        )

    def unwrap(self, document: object) -> tuple[str, dict[str, Any] | None]:
        if not isinstance(document, dict):
            self.problem("", "a mapping file must be a JSON object")
            return "", None
        if "jsonData" not in document:
            return str(document.get("name", "")), document
        name = document.get("name", "")
        data = document["jsonData"]
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                self.problem(
                    "jsonData", f"embedded JSON is invalid: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                )
                return str(name), None
        if not isinstance(data, dict):
            self.problem("jsonData", "must be a JSON object, or a string holding one")
            return str(name), None
        return str(name), data

    def subtype_table(self, table: object, path: str) -> dict[str, SubtypeRules]:
        result: dict[str, SubtypeRules] = {}
        if not isinstance(table, dict):
            self.problem(path, "must be an object of subtypes")
            return result
        seen: dict[str, str] = {}
        for subtype, entry in table.items():
            here = f"{path}.{subtype}"
            key = subtype_key(subtype)
            if not key:
                self.problem(here, "subtype name has no letters or digits")
                continue
            if key in seen:
                self.problem(
                    here, f"same subtype as {seen[key]!r} (names are matched case- and space-insensitively)"
                )
                continue
            seen[key] = subtype
            rules = self.subtype_rules(entry, here)
            if rules is not None:
                result[key] = rules
        return result

    def subtype_rules(self, entry: object, path: str) -> SubtypeRules | None:
        if not isinstance(entry, dict):
            self.problem(path, "must be an object with header and extension")
            return None
        for extra in [key for key in entry if key not in ("header", "extension")]:
            self.problem(f"{path}.{extra}", "unknown key (expected header and extension)")
        header = self.header_rules(entry.get("header"), f"{path}.header")
        extension = self.extension_rules(entry.get("extension", {}), f"{path}.extension")
        return SubtypeRules(header=header, extension=extension)

    def header_rules(self, raw_header: object, path: str) -> dict[str, FieldRule]:
        header: dict[str, FieldRule] = {}
        if not isinstance(raw_header, dict):
            self.problem(path, "missing or not an object")
            return header
        for field_name, raw in raw_header.items():
            if field_name not in HEADER_FIELDS:
                self.problem(
                    f"{path}.{field_name}", "unknown header field (expected " + ", ".join(HEADER_FIELDS) + ")"
                )
                continue
            rule = self.field_rule(raw, f"{path}.{field_name}", allow_label=False)
            if rule is not None:
                header[field_name] = rule
        for missing in HEADER_FIELDS:
            if missing not in raw_header:
                self.problem(path, f"missing header field {missing!r}")
        return header

    def extension_rules(self, raw_extension: object, path: str) -> dict[str, FieldRule]:
        extension: dict[str, FieldRule] = {}
        if not isinstance(raw_extension, dict):
            self.problem(path, "must be an object")
            return extension
        for key, raw in raw_extension.items():
            here = f"{path}.{key}" if key.isprintable() else f"{path}.{key!r}"
            refused = key_problem(key)
            if refused is not None:
                suggestion = "_".join("".join(ch if _key_char(ch) else " " for ch in key).split())
                self.problem(here, refused, f"try {suggestion!r}" if suggestion else None)
                continue
            rule = self.field_rule(raw, here, allow_label=_LABELLED_KEY.fullmatch(key) is not None)
            if rule is not None:
                extension[key] = rule
        return extension

    def field_rule(
        self, raw: object, path: str, *, allow_label: bool, keys: Sequence[str] = _FIELD_KEYS
    ) -> FieldRule | None:
        if not isinstance(raw, dict):
            self.problem(path, "must be an object with mapping_field and/or default_value")
            return None
        problems_before = len(self.problems)
        for extra in [key for key in raw if key not in keys]:
            self.problem(f"{path}.{extra}", "unknown key (expected " + ", ".join(keys) + ")")
        mapping_field = raw.get("mapping_field")
        if mapping_field is not None and not isinstance(mapping_field, str):
            self.problem(f"{path}.mapping_field", "must be a string")
            mapping_field = None
        default_value = raw.get("default_value")
        if default_value is not None and not isinstance(default_value, str | int | float | bool):
            self.problem(f"{path}.default_value", "must be a string, number or boolean")
            default_value = None
        if not mapping_field and (default_value is None or default_value == ""):
            self.problem(path, "needs mapping_field or default_value")
        transformation = raw.get("transformation") or "String"
        if transformation not in TRANSFORMATIONS:
            near = [t for t in TRANSFORMATIONS if str(transformation).lower().replace("_", " ") == t.lower()]
            self.problem(
                f"{path}.transformation",
                f"unknown transformation {transformation!r} (expected " + ", ".join(TRANSFORMATIONS) + ")",
                f"did you mean {near[0]!r}?" if near else None,
            )
        is_json_path = raw.get("is_json_path", False)
        if not isinstance(is_json_path, bool):
            self.problem(f"{path}.is_json_path", "must be true or false")
            is_json_path = False
        label = raw.get("label")
        if label is not None and (not allow_label or not isinstance(label, str) or not label):
            why = (
                "must be a non-empty string"
                if allow_label
                else "only custom keys (cs1..cs6, cn1..cn3, ...) take a label"
            )
            self.problem(f"{path}.label", why)
        steps: tuple[PathStep, ...] = ()
        if mapping_field:
            parsed = parse_field_path(mapping_field)
            if parsed is None:
                self.problem(
                    f"{path}.mapping_field",
                    f"unsupported field path {mapping_field!r} (use a.b.c, or $.a.b[0] with is_json_path)",
                )
            else:
                steps = parsed
        if len(self.problems) != problems_before:
            return None
        return FieldRule(
            mapping_field=mapping_field or None,
            default_value=None if default_value == "" else default_value,
            transformation=transformation,
            is_json_path=is_json_path,
            label=label,
            path=steps,
        )

    def json_taxonomy(self, table: object) -> dict[str, dict[str, tuple[JsonField, ...]]]:
        result: dict[str, dict[str, tuple[JsonField, ...]]] = {}
        if not isinstance(table, dict):
            self.problem("taxonomy.json", "must be an object of data types")
            return result
        for data_type, subtypes in table.items():
            path = f"taxonomy.json.{data_type}"
            if data_type not in DATA_TYPES:
                self.problem(path, "unknown data type (expected alerts, events, webtx or logs)")
                continue
            if not isinstance(subtypes, dict):
                self.problem(path, "must be an object of subtypes")
                continue
            by_key: dict[str, tuple[JsonField, ...]] = {}
            for subtype, entries in subtypes.items():
                key = subtype_key(subtype)
                if key in by_key:
                    self.problem(f"{path}.{subtype}", "same subtype appears twice under different spellings")
                    continue
                by_key[key] = self.json_field_list(entries, f"{path}.{subtype}")
            result[data_type] = by_key
        return result

    def json_field_list(self, entries: object, path: str) -> tuple[JsonField, ...]:
        if not isinstance(entries, list):
            self.problem(path, "must be a list of field names (empty for the raw record)")
            return ()
        fields: list[JsonField] = []
        for index, entry in enumerate(entries):
            here = f"{path}[{index}]"
            if isinstance(entry, str):
                rule = self.field_rule({"mapping_field": entry}, here, allow_label=False)
                name = entry
            elif isinstance(entry, dict):
                rule = self.field_rule(entry, here, allow_label=False, keys=_JSON_FIELD_KEYS)
                name = entry.get("name") or entry.get("mapping_field") or ""
                if not isinstance(name, str) or not name:
                    self.problem(f"{here}.name", "needs a name (or a mapping_field to name it after)")
                    continue
            else:
                self.problem(here, "must be a field name or an object with name and mapping_field")
                continue
            if rule is not None:
                fields.append(JsonField(name=name, rule=rule))
        return tuple(fields)


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be written as a CEF/LEEF extension key, or None when it can."""
    if not key:
        return "extension key is empty"
    bad = [ch for ch in dict.fromkeys(key) if not _key_char(ch)]
    if not bad:
        return None
    shown = ", ".join(_describe_char(ch) for ch in bad)
    return f"extension key cannot contain {shown}: CEF and LEEF have no way to write it in a key"


def _key_char(ch: str) -> bool:
    return ch.isprintable() and not ch.isspace() and ch not in _KEY_FORBIDDEN


def _describe_char(ch: str) -> str:
    if ch == " ":
        return "a space"
    if ch in _KEY_FORBIDDEN:
        return repr(ch)
    return f"U+{ord(ch):04X} ({'white space' if ch.isspace() else 'a non-printing character'})"


_PATH_STEP = re.compile(r"([^.\[\]$]+)|\[(\d+)\]|\.")


def parse_field_path(text: str) -> tuple[PathStep, ...] | None:
    """Split ``a.b[0].c`` (optionally ``$.``-prefixed) into steps; None when the syntax is unsupported."""
    body = text.removeprefix("$.")
    steps: list[PathStep] = []
    position = 0
    expect_name = True
    while position < len(body):
        match = _PATH_STEP.match(body, position)
        if match is None:
            return None
        name, index = match.group(1), match.group(2)
        if name is not None:
            if not expect_name:
                return None
            steps.append(name)
            expect_name = False
        elif index is not None:
            if expect_name and not steps:
                return None
            steps.append(int(index))
            expect_name = False
        else:
            if expect_name:
                return None
            expect_name = True
        position = match.end()
    if expect_name or not steps:
        return None
    return tuple(steps)


# --- reading a field out of a record -------------------------------------------------------------


_Reader = TypeVar("_Reader", bound=Callable[..., Any])


def reads(fields: tuple[str, ...], function: _Reader) -> _Reader:
    """Declare that ``function(record)`` reads no top-level key of a record but ``fields``: the C writer,
    reading records as JSON text, then hands it a dict of those fields alone (`ce_daemon.logs.native`)."""
    function.reads = fields  # type: ignore[attr-defined]  # a function's own attribute
    return function


def reads_of(function: object) -> tuple[str, ...] | None:
    """The top-level keys ``function`` declared it reads (:func:`reads`); None when it declared none."""
    found = getattr(function, "reads", None)
    return found if isinstance(found, tuple) else None


def make_getter(rule: FieldRule) -> tuple[str, Getter | None]:
    """(top-level key, getter): getter is None when ``record.get(key)`` is enough (the fast, common case)."""
    field = rule.mapping_field or ""
    steps = rule.path
    if len(steps) == 1 and steps[0] == field:
        return field, None
    whole = field
    literal_first = not rule.is_json_path

    def get_path(record: Record) -> Any:
        if literal_first:
            value = record.get(whole)
            if value is not None:
                return value
        current: Any = record
        for step in steps:
            if isinstance(step, int):
                if isinstance(current, list) and -len(current) <= step < len(current):
                    current = current[step]
                else:
                    return None
            elif isinstance(current, dict):
                current = current.get(step)
            else:
                return None
        return current

    top = (whole,) if literal_first else ()
    return field, reads(top + tuple(step for step in steps[:1] if isinstance(step, str)), get_path)
