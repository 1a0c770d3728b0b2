"""Reading a page whatever the tenant sent: the fallback parser, its depth bound, and lossless repairs."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.netskope.pages import (
    FALLBACK_DEPTH_LIMIT,
    RECORD_DEPTH_LIMIT,
    PageSyntaxError,
    json_text,
    nesting_depth,
    parse_page,
    repair_records,
)


def nest(levels: int, inner: bytes = b"1") -> bytes:
    """``levels`` arrays, one inside the other, around ``inner``."""
    return b"[" * levels + inner + b"]" * levels


def test_a_page_orjson_reads_takes_the_fast_path() -> None:
    """A plain page is parsed by orjson and needs no repair."""
    assert parse_page(b'{"ok":1,"result":[{"_id":"a"}]}') == ({"ok": 1, "result": [{"_id": "a"}]}, False)


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (b'{"v":"\\ud800"}', '"\\ud800"'),  # a lone surrogate escape: valid JSON text, refused by orjson
        (b'{"v":NaN}', "NaN"),  # Python's json writes these; orjson refuses them
        (b'{"v":-Infinity}', "-Infinity"),
        (b'{"v":1e400}', "1e400"),  # beyond the double range: orjson refuses, the stdlib reads inf
        (b'\xef\xbb\xbf{"v":1}', 1),  # a byte-order mark
    ],
)
def test_json_orjson_refuses_is_read_by_the_fallback_and_repaired_to_its_text(
    body: bytes, stored: Any
) -> None:
    """The fallback reads it; after repair the value is its JSON text (or itself): the encoder writes it."""
    page, slow = parse_page(body)
    records = [page]
    repair_records(records)
    assert slow is True
    assert records[0]["v"] == stored
    orjson.dumps(records)


def test_an_integer_beyond_64_bits_keeps_its_digits_on_the_fallback() -> None:
    """In a page that takes the fallback, a 40-digit integer is kept as its digits (a string)."""
    digits = "1234567890" * 4
    page, slow = parse_page(f'{{"s":"\\ud800","n":{digits},"m":-9223372036854775808}}'.encode())
    records = [page]
    [repair] = repair_records(records)
    assert slow is True
    assert records[0]["n"] == digits
    assert records[0]["m"] == -(2**63)  # still a number: it fits
    assert "an integer beyond 64 bits" in repair.reasons


def test_the_fallback_refuses_nesting_beyond_its_limit_before_parsing() -> None:
    """A page orjson refuses and nested deeper than the fallback's limit is a syntax error, not a crash."""
    with pytest.raises(PageSyntaxError, match=f"at most {FALLBACK_DEPTH_LIMIT}"):
        parse_page(nest(FALLBACK_DEPTH_LIMIT + 1, b'"\\ud800"'))
    assert parse_page(nest(FALLBACK_DEPTH_LIMIT, b'"\\ud800"'))[1] is True  # at the limit: read
    assert nesting_depth(nest(FALLBACK_DEPTH_LIMIT)) == FALLBACK_DEPTH_LIMIT


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    """Brackets and escaped quotes in strings do not count."""
    assert nesting_depth(b'{"a":"[[[{{{\\"]]]","b":[[1]]}') == 3


def test_invalid_json_is_a_syntax_error_naming_orjsons_complaint() -> None:
    """Bytes neither parser takes: a PageSyntaxError with orjson's message."""
    with pytest.raises(PageSyntaxError, match="unexpected character"):
        parse_page(b'{"ok":1,"result":[<html>')
    with pytest.raises(PageSyntaxError):
        parse_page(b'{"v":"\xe9"}')  # not UTF-8


def test_a_record_nested_deeper_than_the_limit_is_cut_there_and_keeps_the_rest_as_text() -> None:
    """Levels past RECORD_DEPTH_LIMIT become one string of JSON text; the record then encodes."""
    inner = nest(300)
    records = [orjson.loads(b'{"_id":"x","deep":' + inner + b"}")]
    [repair] = repair_records(records)
    assert repair.record_id == "x"
    assert repair.reasons == (f"nested deeper than {RECORD_DEPTH_LIMIT} levels",)
    value, levels = records[0]["deep"], 1
    while isinstance(value, list):
        (value,) = value
        levels += 1
    assert levels == RECORD_DEPTH_LIMIT  # the record is level 1
    assert value == nest(300 - (RECORD_DEPTH_LIMIT - 1)).decode()
    orjson.dumps(records)


def test_a_record_at_the_limit_is_left_alone() -> None:
    """A record exactly RECORD_DEPTH_LIMIT levels deep is what the encoder takes: no repair."""
    record = {"deep": orjson.loads(nest(RECORD_DEPTH_LIMIT - 1))}
    records = [record]
    assert repair_records(records) == []
    assert records[0] is record
    orjson.dumps(records)


def test_lone_surrogates_in_keys_and_strings_become_their_escaped_json_text() -> None:
    """A key and a value with a lone surrogate: stored as JSON text that reads back to them."""
    page, _ = parse_page(b'[{"_id":"k","\\udc80key":"v\\ud800"}]')
    repairs = repair_records(page)
    assert [r.reasons for r in repairs] == [("a lone surrogate in a key", "a lone surrogate in a string")]
    assert page == [{"_id": "k", '"\\udc80key"': '"v\\ud800"'}]
    assert {json.loads(k): json.loads(v) for k, v in page[0].items() if k != "_id"} == {
        "\udc80key": "v\ud800"
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None)),  # lone surrogates included
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(codec=None), max_size=4), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(0, 300))
def test_any_parsed_value_is_encodable_after_repair(value: Any, wrap: int) -> None:
    """Whatever a parser produced, nested however deep, repair makes the record writable by orjson."""
    for _ in range(wrap):
        value = [value]
    records: list[Any] = [{"_id": "r", "v": value}]
    repair_records(records)
    orjson.dumps(records)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_json_text_reads_back_as_the_same_value(value: Any) -> None:
    """``json_text`` is JSON the standard library reads back to an equal value (NaN aside)."""
    back = json.loads(json_text(value))
    assert _same(back, value)


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left):
        return math.isnan(right)
    if isinstance(left, list):
        return isinstance(right, list) and len(left) == len(right) and all(map(_same, left, right))
    if isinstance(left, dict):
        return (
            isinstance(right, dict)
            and left.keys() == right.keys()
            and all(_same(left[k], right[k]) for k in left)
        )
    return bool(left == right and type(left) is type(right))
