"""What a filter does with a record's values at run time: path lookup, equality, membership, order.

Everything here runs per record, so it is written for speed (exact ``type() is`` checks first,
isinstance fallbacks for subclasses) and never raises, whatever a record holds.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

Predicate = Callable[[Mapping[str, Any]], bool]
#: Tests one resolved field value: a plain value, ``MISSING``, or a ``Fanout``.
Matcher = Callable[[Any], bool]


class _Missing:
    """The value of a field a record does not have (distinct from a field holding null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


class Fanout:
    """The values a dotted path found by looking into every object of a list (``users.name``)."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values


COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def resolver(segments: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """Look up a dotted path; a numeric part indexes a list, any other part fans out over one."""
    steps = tuple((name, int(name) if name.isascii() and name.isdigit() else None) for name in segments)

    def resolve(record: Mapping[str, Any]) -> Any:
        # Records are nearly always plain nested dicts: walk those inline, hand anything else to _walk.
        current: Any = record
        for name in segments:
            if type(current) is not dict:
                return _walk(record, steps, 0)
            current = current.get(name, MISSING)
            if current is MISSING:
                return MISSING
        return current

    return resolve


def _walk(current: Any, steps: tuple[tuple[str, int | None], ...], start: int) -> Any:
    for position in range(start, len(steps)):
        name, index = steps[position]
        if type(current) is dict or isinstance(current, Mapping):
            current = current.get(name, MISSING)
            if current is MISSING:
                return MISSING
        elif type(current) is list:
            if index is not None:
                if index >= len(current):
                    return MISSING
                current = current[index]
                continue
            found: list[Any] = []
            for element in current:
                if isinstance(element, Mapping):
                    got = _walk(element, steps, position)
                    if type(got) is Fanout:
                        found.extend(got.values)
                    elif got is not MISSING:
                        found.append(got)
            return Fanout(found) if found else MISSING
        else:
            return MISSING
    return current


def lift(matcher: Matcher, fans_out: bool) -> Matcher:
    """Make a positive matcher hold on a fanned-out path when it holds for any value found."""
    if not fans_out:
        return matcher

    def any_found(value: Any) -> bool:
        if type(value) is Fanout:
            return any(matcher(found) for found in value.values)
        return matcher(value)

    return any_found


def same(left: Any, right: Any) -> bool:
    """Mongo-style equality: bool is never a number, ints and floats compare by value, containers deep."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    if isinstance(left, list):
        return (
            isinstance(right, list)
            and len(left) == len(right)
            and all(same(a, b) for a, b in zip(left, right, strict=True))
        )
    if isinstance(left, Mapping):
        return (
            isinstance(right, Mapping)
            and left.keys() == right.keys()
            and all(same(value, right[key]) for key, value in left.items())
        )
    return type(left) is type(right) and bool(left == right)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equals(expected: Any) -> Matcher:
    """``$eq``: the value equals, or is a list with an element that equals; null also matches missing."""
    if isinstance(expected, str):

        def equals_text(value: Any) -> bool:
            matched: bool = value == expected
            return matched or (type(value) is list and expected in value)

        return equals_text
    return member_of([expected])


def member_of(listed: list[Any]) -> Matcher:
    """``$in``: the value (or an element of it) equals one of the candidates."""
    candidates = tuple(listed)  # later edits to the spec must not change a compiled filter
    strings = frozenset(c for c in candidates if isinstance(c, str))
    numbers = frozenset(c for c in candidates if _is_number(c))
    bools = frozenset(c for c in candidates if isinstance(c, bool))
    accepts_null = any(c is None for c in candidates)
    containers = [c for c in candidates if not isinstance(c, str | int | float) and c is not None]

    def one(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return value in strings
        if kind is int or kind is float:
            return value in numbers
        if kind is bool:
            return value in bools
        if value is None:
            return accepts_null
        if kind is list:
            return any(same(value, c) for c in containers)
        # subclasses and exotic types: the slow exact rule
        return any(same(value, c) for c in candidates)

    def member(value: Any) -> bool:
        if value is MISSING:
            return accepts_null
        return one(value) or (type(value) is list and any(one(element) for element in value))

    return member


def compare(name: str, bound: float | str) -> Matcher:
    """``$gt`` and friends: false for values of another type (bool is not a number)."""
    test = COMPARISONS[name]
    if isinstance(bound, str):
        return on_strings(lambda text: test(text, bound))

    def one(value: Any) -> bool:
        kind = type(value)
        if kind is int or kind is float:
            return test(value, bound)
        return _is_number(value) and test(value, bound)

    def ordered(value: Any) -> bool:
        kind = type(value)
        if kind is int or kind is float:  # the common case, without a second call
            return test(value, bound)
        if kind is list:
            return any(one(element) for element in value)
        return one(value)

    return ordered


def on_strings(test: Callable[[str], bool]) -> Matcher:
    """A string test that is false for non-strings and holds for a list with a matching string."""

    def strings(value: Any) -> bool:
        if isinstance(value, str):
            return test(value)
        return type(value) is list and any(isinstance(element, str) and test(element) for element in value)

    return strings


def fast_path(segments: tuple[str, ...], condition: Mapping[Any, Any]) -> Predicate | None:
    """A single-closure predicate for the commonest shapes, or None.

    A top-level field tested with ``$eq``/``$ne`` of a string or ``$in``/``$nin`` of strings costs
    one ``dict.get`` and one compare or set lookup, without a second call per record.
    """
    if len(segments) != 1 or len(condition) != 1:
        return None
    name = segments[0]
    ((op, operand),) = condition.items()
    if op in ("$eq", "$ne") and isinstance(operand, str):
        text: str = operand

        def equal(record: Mapping[str, Any]) -> bool:
            value = record.get(name, MISSING)
            matched: bool = value == text
            return matched or (type(value) is list and text in value)

        return equal if op == "$eq" else lambda record: not equal(record)
    if op in ("$in", "$nin") and isinstance(operand, list) and all(isinstance(c, str) for c in operand):
        strings = frozenset(operand)
        general = member_of(operand)

        def member(record: Mapping[str, Any]) -> bool:
            value = record.get(name, MISSING)
            if type(value) is str:
                return value in strings
            return value is not MISSING and general(value)

        return member if op == "$in" else lambda record: not member(record)
    return None


# --- array, type and arithmetic operators -------------------------------------------------------


def size_is(length: int) -> Matcher:
    """``$size``: the value is a list of exactly ``length`` elements (its elements are not looked into)."""
    return lambda value: type(value) is list and len(value) == length


def some_element(test: Callable[[Any], bool]) -> Matcher:
    """``$elemMatch``: the value is a list and one of its elements passes ``test``."""

    def element_matches(value: Any) -> bool:
        if type(value) is not list:
            return False
        for element in value:  # noqa: SIM110 -- a plain loop beats any(generator) on the hot path
            if test(element):
                return True
        return False

    return element_matches


#: The BSON type aliases ``$type`` accepts, with their numeric codes.
BSON_TYPES: Final = {
    "double": 1, "string": 2, "object": 3, "array": 4, "binData": 5, "undefined": 6, "objectId": 7,
    "bool": 8, "date": 9, "null": 10, "regex": 11, "dbPointer": 12, "javascript": 13, "symbol": 14,
    "javascriptWithScope": 15, "int": 16, "timestamp": 17, "long": 18, "decimal": 19, "minKey": -1,
    "maxKey": 127,
}  # fmt: skip
#: The types a JSON value can have once stored as BSON (an integer is an int when it fits 32 bits).
JSON_TYPES: Final = frozenset({"double", "string", "object", "array", "bool", "null", "int", "long"})
_INT32: Final = 2**31


def json_type(value: Any) -> str | None:  # noqa: PLR0911 - one return per JSON type reads clearest
    """The BSON type name of a JSON value as a driver would store it, or None for anything else."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -_INT32 <= value < _INT32 else "long"
    if isinstance(value, float):
        return "double"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return None


def of_type(names: frozenset[str]) -> Matcher:
    """``$type``: the value has one of the types, or is a list holding an element of one of them.

    ``array`` matches the list itself; a missing field has no type.
    """
    wants_array = "array" in names

    def typed(value: Any) -> bool:
        if type(value) is list:
            return wants_array or any(json_type(element) in names for element in value)
        return json_type(value) in names

    return typed


def remainder_is(divisor: int, remainder: int) -> Matcher:
    """``$mod``: the number (a float truncated toward zero) leaves ``remainder`` when divided by ``divisor``.

    The remainder takes the dividend's sign, as in C and in Mongo (``-5 % 4`` is ``-1``); non-finite
    numbers, booleans and anything else do not match; a list matches when an element does.
    """
    divide_by = abs(divisor)

    def one(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float):
            if not math.isfinite(value):
                return False
            value = int(value)
        number: int = value
        left = abs(number) % divide_by
        return (-left if number < 0 else left) == remainder

    def modulo(value: Any) -> bool:
        if type(value) is list:
            return any(one(element) for element in value)
        return one(value)

    return modulo
