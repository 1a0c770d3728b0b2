"""The fast path: records stored as the tenant's JSON text only when orjson reads them back as before."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.netskope.pages import RECORD_DEPTH_LIMIT, parse_page, repair_records
from ce_daemon.netskope.rawpages import split_page
from ce_daemon.spool import UnencodableRecordsError
from ce_daemon.spool.codec import CODEC, decode, encode, encode_texts


def stored_by_the_slow_path(body: bytes) -> list[Any]:
    """What the spool held for ``body`` before the fast path: parsed, objects kept, repaired, read back."""
    data, fallback = parse_page(body)
    records = [record for record in data["result"] if isinstance(record, dict)]
    if fallback:
        repair_records(records)
    try:
        stored = encode(records)
    except UnencodableRecordsError:
        repair_records(records)
        stored = encode(records)
    return [record for frame in decode(1, CODEC, stored) for record in orjson.loads(frame)]


def stored_by_the_fast_path(body: bytes) -> list[Any] | None:
    """What the spool holds for ``body`` when the fast path takes it (None: it takes the slow path)."""
    split = split_page(body)
    if split is None:
        return None
    stored = encode_texts(split.records.texts)
    return [record for frame in decode(1, CODEC, stored) for record in orjson.loads(frame)]


def nest(levels: int) -> bytes:
    """``levels`` empty arrays, one inside the other."""
    return b"[" * levels + b"]" * levels


def answer(*records: bytes, extra: bytes = b"") -> bytes:
    """A data-export answer holding ``records`` (JSON texts) as they are."""
    return b'{"ok":1,"result":[' + b",".join(records) + b'],"wait_time":0' + extra + b"}"


# -- what the fast path takes --------------------------------------------------------------------------


def test_a_plain_page_is_split_into_its_records_texts() -> None:
    """Each record is kept byte for byte; the other fields are read as orjson reads them."""
    body = b'{"ok": 1, "result": [{"_id": "a", "timestamp": 5}, {"_id":"b","timestamp":6, "x": [1]}],'
    body += b' "wait_time": 2.5, "timestamp_hwm": 7}'
    split = split_page(body)
    assert split is not None
    assert [bytes(text) for text in split.records.texts] == [
        b'{"_id": "a", "timestamp": 5}',
        b'{"_id":"b","timestamp":6, "x": [1]}',
    ]
    assert split.fields == {"ok": 1, "wait_time": 2.5, "timestamp_hwm": 7}
    assert split.records.field(1, "_id") == "b"
    assert split.records.field(0, "timestamp") == 5


def test_missing_and_odd_ids_and_timestamps_read_as_orjson_reads_them() -> None:
    """``_id`` and ``timestamp`` of any JSON type are parsed by orjson; an absent one gives the default."""
    body = answer(b'{"timestamp": "soon"}', b'{"_id": {"n": [1, 2.50]}, "timestamp": null}', b'{"_id": 1E2}')
    split = split_page(body)
    assert split is not None
    records = split.records
    assert records.field(0, "_id", "") == ""
    assert records.field(0, "timestamp") == "soon"
    assert records.field(1, "_id") == {"n": [1, 2.5]}
    assert records.field(1, "timestamp", "absent") is None
    assert records.field(2, "_id") == 100.0
    assert records.missing_fields() == 2


def test_a_key_given_twice_reads_as_its_last_value_as_orjson_reads_it() -> None:
    """The ``_id`` the checkpoint compares is the one orjson keeps: the last."""
    split = split_page(answer(b'{"_id": "first", "timestamp": 1, "_id": "last"}'))
    assert split is not None
    assert split.records.field(0, "_id") == "last"
    assert stored_by_the_fast_path(answer(b'{"_id": "first", "_id": "last"}')) == [{"_id": "last"}]


def test_a_record_nested_to_the_limit_takes_the_fast_path() -> None:
    """A record exactly RECORD_DEPTH_LIMIT levels deep is stored as it came."""
    record = b'{"v":' + nest(RECORD_DEPTH_LIMIT - 1) + b"}"
    assert split_page(answer(record)) is not None


def test_an_empty_result_is_an_empty_page() -> None:
    """No records: the fast path still reads the page's fields."""
    split = split_page(b'{"ok":1,"result":[],"wait_time":1,"timestamp_hwm":9}')
    assert split is not None
    assert len(split.records) == 0
    assert split.fields["timestamp_hwm"] == 9


# -- what it leaves to the slow path ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>sign in</html>", id="garbage"),
        pytest.param(answer(b'{"_id":"a"}')[:-7], id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"ok":1,"result":{"_id":"a"}}', id="result not a list"),
        pytest.param(b'{"ok":1,"result":"none"}', id="result a string"),
        pytest.param(b'{"ok":1}', id="no result"),
        pytest.param(b'[{"_id":"a"}]', id="not an object"),
        pytest.param(answer(b'{"_id":"a"}', b"[1]", b'"b"', b"null"), id="records that are not objects"),
        pytest.param(answer(b'{"_id":"a"}', extra=b',"message":"hi"'), id="a field it does not know"),
        pytest.param(b'{"ok":0,"message":"no such index","result":[]}', id="not ok, with a message"),
        pytest.param(answer(b'{"v":"\xff"}'), id="invalid UTF-8"),
        pytest.param(answer(b'{"v":"\xed\xa0\x80"}'), id="a surrogate encoded in UTF-8"),
        pytest.param(answer(b'{"v":"\xc0\xaf"}'), id="an overlong encoding"),
        pytest.param(answer(b'{"v":"\\ud800"}'), id="a lone surrogate escape"),
        pytest.param(answer(b'{"\\udc00":1}'), id="a lone surrogate in a key"),
        pytest.param(answer(b'{"v":"a\x01b"}'), id="a raw control character"),
        pytest.param(answer(b'{"v":1e400}'), id="beyond the double range"),
        pytest.param(answer(b'{"v":-1' + b"0" * 400 + b"}"), id="an integer beyond the double range"),
        pytest.param(answer(b'{"v":18446744073709551616}'), id="an integer beyond 64 bits"),
        pytest.param(answer(b'{"v":NaN}'), id="NaN"),
        pytest.param(b"\xef\xbb\xbf" + answer(b'{"_id":"a"}'), id="a byte-order mark"),
        pytest.param(answer(b'{"_id":"a"}') + b"x", id="trailing bytes"),
        pytest.param(
            answer(b'{"v":' + b"[" * RECORD_DEPTH_LIMIT + b"]" * RECORD_DEPTH_LIMIT + b"}"), id="deep"
        ),
        pytest.param(
            answer(b'{"v":' + b"[" * 5000 + b"]" * 5000 + b"}"), id="deeper than the recursion limit"
        ),
        pytest.param(
            answer(b'{"v":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"), id="very deep objects"
        ),
    ],
)
def test_what_it_cannot_vouch_for_takes_the_slow_path(body: bytes) -> None:
    """Anything orjson would refuse or the slow path would repair or reject is not split."""
    assert split_page(body) is None


def test_a_deep_record_among_many_brackets_is_found() -> None:
    """Brackets in strings do not hide a record nested too deep among shallow ones."""
    shallow = b'{"s":"' + b"[{" * 200 + b'"}'
    deep = b'{"v":' + nest(RECORD_DEPTH_LIMIT) + b"}"
    assert split_page(answer(shallow, shallow)) is not None
    assert split_page(answer(shallow, deep, shallow)) is None


# -- the property -----------------------------------------------------------------------------------------


class Token:
    """A number written as given (``1e400``, ``-0``, 25 digits…), which Python's json cannot write."""

    def __init__(self, text: str) -> None:
        self.text = text


def to_json(value: Any, ascii_only: bool, spaced: bool) -> str:
    """JSON text of ``value`` in one of several styles a tenant might use (escapes, whitespace)."""
    comma, colon = (", ", ": ") if spaced else (",", ":")
    if isinstance(value, Token):
        return value.text
    if isinstance(value, list):
        return "[" + comma.join(to_json(item, ascii_only, spaced) for item in value) + "]"
    if isinstance(value, dict):
        members = (
            f"{json.dumps(key, ensure_ascii=ascii_only)}{colon}{to_json(item, ascii_only, spaced)}"
            for key, item in value.items()
        )
        return "{" + comma.join(members) + "}"
    return json.dumps(value, ensure_ascii=ascii_only)


NUMBERS = ("-0", "0.0", "1E5", "1e-400", "1e400", "-1e308", "2.5e-3", "0.1000000000000000055511151231257827")
BIG_INTEGERS = ("9223372036854775807", "-9223372036854775808", "18446744073709551615", "18446744073709551616")
BEYOND = ("-9223372036854775809", "1" + "0" * 30, "1" + "0" * 320)
numbers = st.sampled_from((*NUMBERS, *BIG_INTEGERS, *BEYOND)).map(Token)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None))  # lone surrogates and control characters included
    | numbers
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet=st.characters(codec=None), max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A record: mostly an object with (or without) ``_id`` and ``timestamp`` of any type, maybe deep."""
    if draw(st.integers(0, 20)) == 0:
        return draw(values)  # not an object
    record: dict[str, Any] = {}
    if draw(st.booleans()):
        record["_id"] = draw(values)
    if draw(st.booleans()):
        record["timestamp"] = draw(values)
    record.update(draw(st.dictionaries(st.text(max_size=5), values, max_size=4)))
    if draw(st.integers(0, 8)) == 0:
        record["deep"] = draw(st.integers(RECORD_DEPTH_LIMIT - 3, RECORD_DEPTH_LIMIT + 1)) * [[]]
        for _ in range(draw(st.integers(RECORD_DEPTH_LIMIT - 4, RECORD_DEPTH_LIMIT + 1))):
            record["deep"] = [record["deep"]]
    return record


@settings(max_examples=400, deadline=None)
@given(st.lists(records(), max_size=6), st.booleans(), st.booleans())
def test_the_fast_path_stores_what_the_slow_path_stores(
    page: list[Any], ascii_only: bool, spaced: bool
) -> None:
    """A page the fast path takes needed no repair and reads back exactly as the slow path stored it."""
    text = to_json({"ok": 1, "result": page, "wait_time": 0}, ascii_only, spaced)
    body = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8: hostile too
    fast = stored_by_the_fast_path(body)
    if fast is None:
        return
    data, fallback = parse_page(body)
    assert not fallback
    assert all(isinstance(record, dict) for record in data["result"])
    encode(data["result"])  # no repair needed: orjson writes every record as it read it
    slow = stored_by_the_slow_path(body)
    assert orjson.dumps(fast) == orjson.dumps(slow)  # same values, same key order, same float digits
    split = split_page(body)
    assert split is not None
    for position, record in enumerate(slow):
        for name in ("_id", "timestamp"):
            assert orjson.dumps(split.records.field(position, name, "absent")) == orjson.dumps(
                record.get(name, "absent")
            )
