"""The fast path: records stored as the tenant's JSON text only when orjson reads them back as before.

Every test runs on both splitters: ``_pages.c`` (when built) and msgspec with simdjson.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.netskope import rawpages
from ce_daemon.netskope.pages import RECORD_DEPTH_LIMIT, parse_page, repair_records
from ce_daemon.netskope.rawpages import SplitPage
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.spool import UnencodableRecordsError
from ce_daemon.spool.codec import CODEC, FRAME_RECORDS, decode, encode, encode_texts

SPLITTERS = [
    "python",
    pytest.param("c", marks=pytest.mark.skipif(rawpages._PAGES is None, reason="not built")),
]


@pytest.fixture(params=SPLITTERS, autouse=True)
def splitter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with the C splitter and once without it."""
    if request.param == "python":
        monkeypatch.setattr(rawpages, "_PAGES", None)
    return str(request.param)


def split_page(body: bytes) -> SplitPage | None:
    """The splitter the test runs on (looked up at each call: the fixture chose it)."""
    return rawpages.split_page(body)


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
    stored = encode_texts(split.records)
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
    assert [split.records.text(p) for p in range(len(split.records))] == [
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


# -- the records' texts, and what the spool stores --------------------------------------------------------


def simulator_answer(kind: str, subtype: str, count: int, *, spaced: bool) -> tuple[bytes, list[Any]]:
    """An answer of ``count`` simulator records, as the simulator writes it or spaced out and escaped."""
    made = RecordFactory(seed=11, tenant="t").make_many(kind, subtype, range(count), [1_714_557_600] * count)  # type: ignore[arg-type]  # kinds of SUBTYPES
    records: list[Any] = orjson.loads(orjson.dumps(made))
    if spaced:
        text = json.dumps({"ok": 1, "result": records, "wait_time": 0}, indent=1, ensure_ascii=True)
        return text.encode(), records
    return orjson.dumps({"ok": 1, "result": records, "wait_time": 0}), records


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize(("kind", "subtype"), [("alerts", "dlp"), ("events", "page"), ("events", "network")])
def test_simulator_pages_are_stored_as_they_came(kind: str, subtype: str, spaced: bool) -> None:
    """Every record of a page of 2,500 comes back from the spool's frames as the tenant sent it."""
    body, records = simulator_answer(kind, subtype, 2_500, spaced=spaced)
    split = split_page(body)
    assert split is not None
    texts = split.records
    assert len(texts) == 2_500
    assert texts.missing_fields() == 0
    assert texts.parsed() == records
    assert [texts.field(p, "_id") for p in (0, 1_234, -1)] == [records[p]["_id"] for p in (0, 1_234, -1)]
    frames = decode(1, CODEC, encode_texts(texts))
    assert [len(orjson.loads(frame)) for frame in frames] == [FRAME_RECORDS, FRAME_RECORDS, 500]
    assert [record for frame in frames for record in orjson.loads(frame)] == records
    assert stored_by_the_fast_path(body) == stored_by_the_slow_path(body)


def test_keep_takes_the_records_asked_for_with_their_fields() -> None:
    """A page cut at the end of a window keeps the records it keeps, their ids, stamps and counts."""
    body = answer(*(orjson.dumps({"_id": f"r{i}", "timestamp": i} if i % 3 else {"n": i}) for i in range(10)))
    split = split_page(body)
    assert split is not None
    assert split.records.missing_fields() == 4
    kept = split.records.keep(lambda position: position >= 5)
    assert len(kept) == 5
    assert [kept.field(p, "_id") for p in range(5)] == ["r5", None, "r7", "r8", None]
    assert kept.parsed() == [orjson.loads(kept.text(p)) for p in range(5)]
    assert [record.get("_id") for record in kept.parsed()] == ["r5", None, "r7", "r8", None]
    assert [kept.field(p, "timestamp", -1) for p in range(5)] == [5, -1, 7, 8, -1]
    assert kept.missing_fields() == 2
    records = kept.parsed()
    assert [orjson.loads(array) for array in kept.arrays(2)] == [records[:2], records[2:4], records[4:]]
    assert len(split.records.keep(lambda position: False)) == 0
    with pytest.raises(IndexError):
        kept.field(5, "_id")


def test_a_name_spelled_with_escapes_is_read_or_refused_never_misread() -> None:
    """``\\u005fid`` is ``_id``: a splitter reads it as orjson does, or sends the page the slow way."""
    body = answer(b'{"\\u005fid": "escaped", "timestamp": 1}')
    split = split_page(body)
    if split is not None:
        assert split.records.field(0, "_id") == "escaped"
    body = b'{"ok":1,"re\\u0073ult":[{"_id":"a"}]}'
    split = split_page(body)
    assert split is None or split.records.parsed() == [{"_id": "a"}]


def test_a_field_given_twice_at_the_top_is_read_as_orjson_reads_it_or_refused() -> None:
    """Two ``result`` arrays: orjson keeps the last; a splitter keeps that too or refuses the page."""
    body = b'{"ok":1,"result":[{"_id":"first"}],"result":[{"_id":"last"}]}'
    split = split_page(body)
    assert split is None or split.records.parsed() == orjson.loads(body)["result"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_damaged_answer_is_refused_or_read_as_orjson_reads_it(data: st.DataObject) -> None:
    """Bytes flipped, cut or inserted anywhere: whatever a splitter takes, orjson reads the same way."""
    body = bytearray(answer(*PAGE_RECORDS, extra=b',"timestamp_hwm":1714557600'))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        edit = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if edit == "flip":
            body[at] = data.draw(st.sampled_from(HOSTILE_BYTES))
        elif edit == "cut":
            del body[at : at + data.draw(st.integers(1, 8))]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from(HOSTILE_TEXTS))
    split = split_page(bytes(body))
    if split is None:
        return
    read = orjson.loads(bytes(body))
    assert set(read) <= {"ok", "result", "wait_time", "timestamp_hwm"}
    assert split.records.parsed() == read["result"]
    assert split.fields == {name: value for name, value in read.items() if name != "result"}
    for position, record in enumerate(read["result"]):
        assert split.records.field(position, "_id", "absent") == record.get("_id", "absent")


PAGE_RECORDS = (
    b'{"_id":"a1","timestamp":1714557600,"user":"ann@example.com","n":[1,2.5,{"d":null}],"ok":true}',
    b'{"_id": "b\\u00e92", "timestamp": -0, "s": "tab\\tq\\"\\\\ \xc3\xa9 \xf0\x9f\x98\x80", "e": 1e3}',
    b'{"timestamp":9223372036854775807,"_id":"c3","deep":[[[{"x":[]}]]],"f":false}',
)
HOSTILE_BYTES = list(b'"\\{}[],: 0-eE.\x00\x1f\x7f\x80\xbf\xc0\xed\xf0\xf5\xff')
HOSTILE_TEXTS = (
    b"\\ud800",
    b"\\udc00",
    b"\\u00",
    b"1e999",
    b"-",
    b"\xed\xa0\x80",
    b'"_id":',
    b"]]",
    b"{{",
    b"NaN",
)
HOSTILE_TEXTS += (b"18446744073709551616", b"\\u005f")
