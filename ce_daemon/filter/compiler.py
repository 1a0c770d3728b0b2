"""Compile a filter spec into nested closures, collecting every problem of the spec on the way."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any, Final, TypeGuard

import orjson

from ce_daemon.config.compose import MAX_DEPTH
from ce_daemon.filter.problems import FilterError, FilterProblem, Loc
from ce_daemon.filter.values import (
    BSON_TYPES,
    COMPARISONS,
    JSON_TYPES,
    MISSING,
    Matcher,
    Predicate,
    compare,
    equals,
    fast_path,
    lift,
    member_of,
    of_type,
    on_strings,
    remainder_is,
    resolver,
    size_is,
    some_element,
)


def match_all(record: Mapping[str, Any]) -> bool:
    """The predicate of an empty filter; consumers may test ``pred is match_all`` to skip filtering."""
    return True


def compile_filter(spec: object, *, warnings: list[FilterProblem] | None = None) -> Predicate:
    """Compile a filter spec into a predicate over records.

    ``spec`` is a mapping (as YAML gives it), a JSON string of one (as CE stores its ``mongo``
    queries), or ``None``/``{}`` for "match everything". Raises :class:`FilterError` listing every
    problem in the spec. What is valid but probably not meant (a field compared to a list literal, a
    ``$type`` no JSON value has) is appended to ``warnings`` when a list is given.
    """
    document = _load(spec)
    if not document:
        return match_all
    compiler = _Compiler()
    predicate = compiler.document(document, ())
    if warnings is not None:
        warnings.extend(compiler.warnings)
    if compiler.problems:
        raise FilterError(compiler.problems)
    return predicate


def fields_read(spec: object) -> tuple[str, ...] | None:
    """The top-level keys of a record the compiled ``spec`` reads (a dotted path reads its first part);
    None when the spec is not one :func:`compile_filter` takes. Its predicate gives the same answer for
    a mapping holding just these keys (those the record has) as for the whole record."""
    try:
        document = _load(spec)
    except FilterError:
        return None
    found: dict[str, None] = {}
    pending: list[Mapping[Any, Any]] = [document] if document else []
    while pending:
        for key, value in pending.pop().items():
            if not isinstance(key, str):
                return None
            if key in _LOGICAL_OPERATORS and isinstance(value, list):
                pending.extend(entry for entry in value if isinstance(entry, Mapping))
            elif key.startswith("$"):
                return None  # not a filter compile_filter takes
            else:
                found[key.split(".")[0]] = None
    return tuple(found)


def describe(spec: object) -> str:
    """A short one-line text of a spec for logs: compact JSON, truncated; never raises."""
    if isinstance(spec, str):
        try:
            spec = orjson.loads(spec)
        except orjson.JSONDecodeError:
            return _shorten(" ".join(str(spec).split()))
    if not spec:
        return "{}"
    try:
        text = orjson.dumps(spec, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        text = " ".join(repr(spec).split())
    return _shorten(text)


# --- spec loading and problem places -------------------------------------------------------------

_DESCRIBE_LIMIT: Final = 200
_FIELD_OPERATORS: Final = frozenset(
    {"$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$regex", "$options", "$exists", "$not"}
    | {"$all", "$size", "$elemMatch", "$type", "$mod"}
    | {"$contains", "$startswith"}
)
_LOGICAL_OPERATORS: Final = frozenset({"$and", "$or", "$nor"})
_ALL_OPERATORS: Final = sorted(_FIELD_OPERATORS | _LOGICAL_OPERATORS)
_REGEX_FLAGS: Final = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}
_NUMBER_TYPES: Final = frozenset({"double", "int", "long", "decimal"})
_TYPE_BY_CODE: Final = {code: name for name, code in BSON_TYPES.items()}
_INT64: Final = 2**63


def _load(spec: object) -> Mapping[Any, Any] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        if not spec.strip():
            raise FilterError([FilterProblem((), "empty filter string; use {} to match everything")])
        try:
            spec = orjson.loads(spec)
        except orjson.JSONDecodeError as exc:
            raise FilterError([FilterProblem((), f"invalid JSON filter: {exc}")]) from None
    if not isinstance(spec, Mapping):
        raise FilterError([FilterProblem((), f"a filter must be a mapping, got {_kind(spec)}")])
    if _deeper_than(spec, MAX_DEPTH):  # the compiler recurses once per level
        raise FilterError([FilterProblem((), f"the filter nests deeper than {MAX_DEPTH} levels")])
    return spec


def _deeper_than(spec: object, limit: int) -> bool:
    """True when lists and mappings in ``spec`` nest more than ``limit`` levels (walked without recursion)."""
    pending: list[tuple[object, int]] = [(spec, 1)]
    while pending:
        value, depth = pending.pop()
        children: Iterable[object]
        if isinstance(value, Mapping):
            children = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _shorten(text: str) -> str:
    return text if len(text) <= _DESCRIBE_LIMIT else text[: _DESCRIBE_LIMIT - 1] + "…"


def _kind(value: object) -> str:
    """The YAML-ish name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _unknown_operator(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), _ALL_OPERATORS, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known operators: {', '.join(_ALL_OPERATORS)}"
    return f"unknown operator '{name}'{hint}"


# --- the compiler --------------------------------------------------------------------------------


class _Compiler:
    """Walks a spec once, building closures and collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[FilterProblem] = []
        self.warnings: list[FilterProblem] = []

    def problem(self, loc: Loc, message: str, *, at_key: bool = False) -> None:
        self.problems.append(FilterProblem(loc, message, at_key))

    def warn(self, loc: Loc, message: str) -> None:
        self.warnings.append(FilterProblem(loc, message))

    def document(self, document: Mapping[Any, Any], loc: Loc) -> Predicate:
        """A whole filter: every key (field or logical operator) must hold."""
        parts: list[Predicate] = []
        for key, value in document.items():
            if isinstance(key, str) and key.startswith("$"):
                parts.append(self.logical(key, value, (*loc, key)))
            else:
                parts.append(self.field(key, value, (*loc, str(key))))
        return _all_of(parts)

    def logical(self, operator: str, operand: object, loc: Loc) -> Predicate:
        if operator not in _LOGICAL_OPERATORS:
            if operator in _FIELD_OPERATORS:
                self.problem(
                    loc, f"{operator} applies to a field: write {{field: {{{operator}: ...}}}}", at_key=True
                )
            else:
                self.problem(loc, _unknown_operator(operator), at_key=True)
            return match_all
        if not isinstance(operand, list) or not operand:
            self.problem(loc, f"{operator} needs a non-empty list of filters, got {_kind(operand)}")
            return match_all
        parts: list[Predicate] = []
        for index, entry in enumerate(operand):
            if isinstance(entry, Mapping):
                parts.append(self.document(entry, (*loc, index)) if entry else match_all)
            else:
                self.problem((*loc, index), f"each entry of {operator} must be a filter, got {_kind(entry)}")
        if operator == "$and":
            return _all_of(parts)
        either = _any_of(parts)
        if operator == "$or":
            return either
        return lambda record: not either(record)

    def field(self, key: object, condition: object, loc: Loc) -> Predicate:
        """One field key (a dotted path) with a bare value or an operator mapping."""
        if not isinstance(key, str):
            self.problem(loc, f"field names must be strings, got {_kind(key)}", at_key=True)
            return match_all
        segments = tuple(key.split("."))
        if not key:
            self.problem(loc, "empty field name", at_key=True)
            return match_all
        if "" in segments:
            self.problem(loc, f"field path '{key}' has an empty part", at_key=True)
            return match_all
        fans_out = len(segments) > 1
        if _is_operator_mapping(condition):
            fast = fast_path(segments, condition)
            matcher = self.operators(condition, loc, fans_out)
        else:
            if isinstance(condition, list) and condition:  # `field: []` plainly means an empty list
                listed = _json(condition)
                self.warn(
                    loc,
                    f"matches only a field equal to the whole list {listed}; to match any one of these "
                    f"values write {{$in: {listed}}} ({{$eq: [...]}} keeps whole-list equality, unwarned)",
                )
            fast = fast_path(segments, {"$eq": condition})
            matcher = lift(equals(condition), fans_out)
        if fast is not None:
            return fast
        if not fans_out:
            name = segments[0]
            return lambda record: matcher(record.get(name, MISSING))
        resolve = resolver(segments)
        return lambda record: matcher(resolve(record))

    def operators(self, condition: Mapping[Any, Any], loc: Loc, fans_out: bool) -> Matcher:
        """An operator mapping (``{$gt: 1, $lt: 9}``): every operator must hold."""
        parts: list[Matcher] = []
        for operator, operand in condition.items():
            here = (*loc, str(operator))
            if not (isinstance(operator, str) and operator.startswith("$")):
                self.problem(here, "cannot mix operators and plain keys in one condition", at_key=True)
            elif operator in _FIELD_OPERATORS:
                matcher = self.operator(operator, operand, condition, here, fans_out)
                if matcher is not None:
                    parts.append(matcher)
            elif operator in _LOGICAL_OPERATORS:
                self.problem(
                    here,
                    f"{operator} combines whole filters; put it above the field, not under it",
                    at_key=True,
                )
            else:
                self.problem(here, _unknown_operator(operator), at_key=True)
        return _all_of(parts)

    def operator(  # noqa: C901, PLR0911, PLR0912 -- one flat dispatch over the operator table reads best
        self, operator: str, operand: object, condition: Mapping[Any, Any], loc: Loc, fans_out: bool
    ) -> Matcher | None:
        if operator == "$eq":
            return lift(equals(operand), fans_out)
        if operator == "$ne":
            equal = lift(equals(operand), fans_out)
            return lambda value: not equal(value)
        if operator in ("$in", "$nin"):
            if not isinstance(operand, list):
                self.problem(loc, f"{operator} needs a list, got {_kind(operand)}")
                return None
            member = lift(member_of(operand), fans_out)
            return member if operator == "$in" else lambda value: not member(value)
        if operator in COMPARISONS:
            if isinstance(operand, bool) or not isinstance(operand, int | float | str):
                hint = "; quote it, or compare epoch seconds" if isinstance(operand, date) else ""
                self.problem(loc, f"{operator} needs a number or a string, got {_kind(operand)}{hint}")
                return None
            return lift(compare(operator, operand), fans_out)
        if operator == "$regex":
            pattern = self.regex(operand, condition.get("$options", ""), loc)
            return None if pattern is None else lift(on_strings(_searcher(pattern)), fans_out)
        if operator == "$options":
            if "$regex" not in condition:
                self.problem(loc, "$options needs a $regex beside it")
            return None  # read by $regex
        if operator == "$exists":
            if not isinstance(operand, bool):
                self.problem(loc, f"$exists needs true or false, got {_kind(operand)}")
                return None
            return (lambda value: value is not MISSING) if operand else (lambda value: value is MISSING)
        if operator == "$not":
            return self.negation(operand, loc, fans_out)
        if operator == "$all":
            return self.all_of(operand, loc, fans_out)
        if operator in self._ARRAY_AND_TYPE:
            matcher = self._ARRAY_AND_TYPE[operator](self, operand, loc)
            return None if matcher is None else lift(matcher, fans_out)
        # $contains and $startswith: substring tests on strings
        if not isinstance(operand, str):
            self.problem(loc, f"{operator} needs a string, got {_kind(operand)}")
            return None
        if operator == "$contains":
            return lift(on_strings(lambda text: operand in text), fans_out)
        return lift(on_strings(lambda text: text.startswith(operand)), fans_out)

    # -- $all $size $elemMatch $type $mod: each gives the matcher of one resolved value -------------

    def all_of(self, operand: object, loc: Loc, fans_out: bool) -> Matcher | None:
        """``$all``: every listed value matches as ``{field: value}`` would, or every ``$elemMatch``.

        Each entry is tested on its own, as Mongo's ``$and`` of them: across a list of objects, one
        object may give one value and another object the next.
        """
        if not isinstance(operand, list):
            self.problem(loc, f"$all needs a list of values, got {_kind(operand)}")
            return None
        if not operand:
            return _match_none  # Mongo: an empty $all matches no document
        parts: list[Matcher] = []
        elem_matches = 0
        for index, entry in enumerate(operand):
            here = (*loc, index)
            if not _is_operator_mapping(entry):
                parts.append(lift(equals(entry), fans_out))
            elif set(entry) == {"$elemMatch"}:
                elem_matches += 1
                matcher = self.elem_match(entry["$elemMatch"], (*here, "$elemMatch"))
                if matcher is not None:
                    parts.append(lift(matcher, fans_out))
            else:
                self.problem(here, "$all takes values or {$elemMatch: ...} conditions, not other operators")
        if 0 < elem_matches < len(operand):
            self.problem(loc, "$all cannot mix {$elemMatch: ...} conditions with plain values")
        return _all_of(parts)

    def size(self, operand: object, loc: Loc) -> Matcher | None:
        """``$size``: a list of exactly that many elements."""
        count = _whole_number(operand)
        if count is None or count < 0:
            self.problem(loc, f"$size needs a whole number of elements (0 or more), got {_shown(operand)}")
            return None
        return size_is(count)

    def elem_match(self, operand: object, loc: Loc) -> Matcher | None:
        """``$elemMatch``: a list with one element meeting every condition.

        Conditions on the element's fields (``{product: xyz, score: {$gte: 8}}``) test elements that are
        mappings; operators alone (``{$gte: 80, $lt: 85}``) test each element's value.
        """
        if not isinstance(operand, Mapping):
            self.problem(loc, f"$elemMatch needs a mapping of conditions, got {_kind(operand)}")
            return None
        first = next(iter(operand), None)
        if isinstance(first, str) and first.startswith("$") and first not in _LOGICAL_OPERATORS:
            test = self.operators(operand, loc, False)
            return some_element(test)
        predicate = self.document(operand, loc) if operand else match_all
        return some_element(lambda element: isinstance(element, Mapping) and predicate(element))

    def type_of(self, operand: object, loc: Loc) -> Matcher | None:
        """``$type``: a BSON type alias or code, or a list of them; ``number`` means any number."""
        listed = operand if isinstance(operand, list) else [operand]
        if not listed:
            self.problem(loc, "$type needs at least one type")
            return None
        names: set[str] = set()
        for index, entry in enumerate(listed):
            here = (*loc, index) if isinstance(operand, list) else loc
            name = self.type_name(entry, here)
            if name is None:
                continue
            if name == "number":
                names |= _NUMBER_TYPES
            else:
                names.add(name)
                if name not in JSON_TYPES:
                    self.warn(here, f"$type {name!r} never matches a value of a JSON record")
        return of_type(frozenset(names)) if names else None

    def type_name(self, entry: object, loc: Loc) -> str | None:
        if isinstance(entry, str):
            if entry in BSON_TYPES or entry == "number":
                return entry
            known = [*BSON_TYPES, "number"]
            close = [name for name in known if name.lower() == entry.lower()]
            close = close or difflib.get_close_matches(entry, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known types: {', '.join(known)}"
            self.problem(loc, f"unknown $type {entry!r}{hint}")
            return None
        code = _whole_number(entry)
        if code is None or code not in _TYPE_BY_CODE:
            self.problem(loc, f"$type needs a type name such as 'string' or a type code, got {_shown(entry)}")
            return None
        return _TYPE_BY_CODE[code]

    def modulo(self, operand: object, loc: Loc) -> Matcher | None:
        """``$mod: [divisor, remainder]``: both truncated toward zero, as Mongo does."""
        if not isinstance(operand, list):
            self.problem(loc, f"$mod needs [divisor, remainder], got {_kind(operand)}")
            return None
        if len(operand) != 2:
            amount = "not enough" if len(operand) < 2 else "too many"
            self.problem(loc, f"$mod needs [divisor, remainder]: {amount} elements ({len(operand)})")
            return None
        numbers: list[int] = []
        for index, (role, entry) in enumerate(zip(("divisor", "remainder"), operand, strict=True)):
            if isinstance(entry, bool) or not isinstance(entry, int | float):
                self.problem((*loc, index), f"$mod {role} must be a number, got {_kind(entry)}")
            elif not math.isfinite(entry) or not -_INT64 <= int(entry) < _INT64:
                self.problem((*loc, index), f"$mod {role} must be a finite number that fits in 64 bits")
            else:
                numbers.append(int(entry))
        if len(numbers) != 2:
            return None
        divisor, remainder = numbers
        if divisor == 0:
            self.problem((*loc, 0), "$mod divisor cannot be 0 (a fraction counts as its whole part)")
            return None
        return remainder_is(divisor, remainder)

    _ARRAY_AND_TYPE: Final[dict[str, Callable[[_Compiler, object, Loc], Matcher | None]]] = {
        "$size": size,
        "$elemMatch": elem_match,
        "$type": type_of,
        "$mod": modulo,
    }

    def negation(self, operand: object, loc: Loc, fans_out: bool) -> Matcher | None:
        if isinstance(operand, str):
            pattern = self.regex(operand, "", loc)
            if pattern is None:
                return None
            inner = lift(on_strings(_searcher(pattern)), fans_out)
        elif _is_operator_mapping(operand):
            inner = self.operators(operand, loc, fans_out)
        else:
            self.problem(loc, f"$not needs operators such as {{$in: [...]}} or a regex, got {_kind(operand)}")
            return None
        return lambda value: not inner(value)

    def regex(self, operand: object, options: object, loc: Loc) -> re.Pattern[str] | None:
        if not isinstance(operand, str):
            self.problem(loc, f"$regex needs a string, got {_kind(operand)}")
            return None
        flags = 0
        options_loc = (*loc[:-1], "$options")
        if not isinstance(options, str):
            self.problem(options_loc, f"$options needs a string of i, m, s, x, got {_kind(options)}")
        else:
            for letter in options:
                if letter not in _REGEX_FLAGS:
                    self.problem(options_loc, f"unknown regex option '{letter}'; use i, m, s or x")
                else:
                    flags |= _REGEX_FLAGS[letter]
        try:
            return re.compile(operand, flags)
        except re.error as exc:
            self.problem(loc, f"invalid regular expression: {exc}")
            return None


def _json(value: object) -> str:
    """Compact JSON of a spec value for messages, shortened; never raises."""
    try:
        text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson goes
        text = " ".join(repr(value).split())
    return _shorten(text)


def _shown(value: object) -> str:
    return _kind(value) if isinstance(value, Mapping | list) or value is None else repr(value)


def _whole_number(value: object) -> int | None:
    """An int, or a float with no fraction, as an int; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _match_none(value: Any) -> bool:
    return False


def _is_operator_mapping(condition: object) -> TypeGuard[Mapping[Any, Any]]:
    return isinstance(condition, Mapping) and any(
        isinstance(key, str) and key.startswith("$") for key in condition
    )


# --- combinators ---------------------------------------------------------------------------------


def _all_of(parts: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    if not parts:
        return match_all
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda item: first(item) and second(item)
    frozen = tuple(parts)

    def every(item: Any) -> bool:
        for part in frozen:  # noqa: SIM110 -- a plain loop beats all(generator) on the hot path
            if not part(item):
                return False
        return True

    return every


def _any_of(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    frozen = tuple(parts)

    def some(record: Mapping[str, Any]) -> bool:
        for part in frozen:  # noqa: SIM110 -- a plain loop beats any(generator) on the hot path
            if part(record):
                return True
        return False

    return some


def _searcher(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    search = pattern.search
    return lambda text: search(text) is not None
