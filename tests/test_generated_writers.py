"""Generated and C writers: byte for byte what the reference loop (`FieldPlan.collect`) writes, for CEF
and LEEF.

The reference formatter (``generated=False``) is today's tested implementation; the generated Python
writer and the C writer (``native``, :mod:`ce_daemon.logs.native`) must never differ from it: on the
simulator's records of every subtype, and on generated mappings (every transformation, labels,
defaults, constants, nested paths) over generated values (every control character, CEF and LEEF
syntax, lone surrogates, containers, numbers of every kind).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.filter import FilterError, compile_filter, fields_read
from ce_daemon.logs import native
from ce_daemon.logs.formatter import OutputFormat, RecordFormatter
from ce_daemon.logs.generated import PlanStep
from ce_daemon.logs.mapping import Mapping, reads
from ce_daemon.logs.resolve import Mute
from ce_daemon.logs.route import decide_records, decide_texts, reads_json
from ce_daemon.logs.workers import PageDecisions
from ce_daemon.netskope.subtypes import SUBTYPES
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.spool.codec import CODEC, SpoolCorruptError, decode, encode, encode_texts, parse_frame

BUILTIN = Mapping.builtin("netskope")
STREAMS = [(kind, subtype) for kind, subtypes in SUBTYPES.items() for subtype in subtypes]
FORMATS: list[tuple[OutputFormat, str]] = [("cef", "\t"), ("leef", "\t"), ("leef", "^")]


def writers(
    output: OutputFormat, mapping: Mapping, delimiter: str = "\t", **options: Any
) -> tuple[RecordFormatter, RecordFormatter, RecordFormatter]:
    """(C, generated, reference) formatters of one output."""
    made = [
        RecordFormatter(
            output,
            mapping,
            "tenant|one",
            leef_delimiter=delimiter,
            generated=generated,
            native=in_c,
            **options,
        )
        for generated, in_c in ((True, True), (True, False), (False, False))
    ]
    return made[0], made[1], made[2]


def test_the_c_writer_is_built() -> None:
    """The install built the C writer (a C compiler is on this machine): the tests below exercise it."""
    assert native.AVAILABLE, native.STATE


@pytest.mark.parametrize(("kind", "subtype"), STREAMS, ids=[f"{k}/{s}" for k, s in STREAMS])
@pytest.mark.parametrize(("output", "delimiter"), FORMATS, ids=["cef", "leef-tab", "leef-caret"])
def test_simulator_records_are_written_identically(
    kind: str, subtype: str, output: OutputFormat, delimiter: str
) -> None:
    """Every subtype's simulator records: the generated writer's bytes are the reference's."""
    if not BUILTIN.covers(kind, subtype):
        pytest.skip(f"the built-in mapping has no {kind}/{subtype}")
    records = RecordFactory(seed=7, tenant="t").make_many(kind, subtype, range(300), [1_714_557_600] * 300)  # type: ignore[arg-type]  # kinds of SUBTYPES
    in_c, generated, reference = writers(output, BUILTIN, delimiter)
    for record in records:
        expected = reference.format(record, kind, subtype)
        assert generated.format(record, kind, subtype) == expected, record["_id"]
        assert in_c.format(record, kind, subtype) == expected, record["_id"]


@pytest.mark.parametrize(("output", "delimiter"), FORMATS, ids=["cef", "leef-tab", "leef-caret"])
def test_parsed_records_are_written_identically_whatever_key_objects_they_hold(
    output: OutputFormat, delimiter: str
) -> None:
    """Records as the routes get them (orjson's, which share one key object per key but not the C
    writer's): the C writer takes a record's key objects for its lookups every 1,024 records; records
    of other shapes in between (keys missing, keys as other objects) read the same."""
    factory = RecordFactory(seed=3, tenant="t")
    made = factory.make_many("alerts", "dlp", range(2_500), [1_714_557_600] * 2_500)
    records: list[dict[str, Any]] = orjson.loads(orjson.dumps(made))
    for index in range(0, len(records), 7):
        records[index] = {key: value for i, (key, value) in enumerate(records[index].items()) if i % 3}
    for index in range(3, len(records), 11):
        records[index] = made[index]  # the factory's own key objects
    in_c, generated, reference = writers(output, BUILTIN, delimiter)
    for record in records:
        expected = reference.format(record, "alerts", "dlp")
        assert in_c.format(record, "alerts", "dlp") == expected, record.get("_id")
        assert generated.format(record, "alerts", "dlp") == expected, record.get("_id")


# --- property: generated mappings over generated values ------------------------------------------

FIELDS = ["f0", "f1", "f2", "time", "ip", "host.name", "$.list[0].x"]
CONTROLS = [chr(code) for code in [*range(0x20), 0x7F]]
NASTY = st.sampled_from(
    [
        "|",
        "=",
        "\\",
        " ",
        "\t",
        "^",
        "¦",
        "\n",
        "\r",
        "a=b",
        "é",
        "💥",
        "␀",
        "\ud800",
        "\u2028",
        "",
        *CONTROLS,
    ]
)
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=5)), max_size=6).map("".join)
SCALAR = st.one_of(
    TEXT,  # text twice: it is what most fields hold
    TEXT,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.sampled_from(
        ["10.0.0.1", " ::1 ", "00:1a:2B:3c:4d:5e", "001a.2b3c.4d5e", "1714557600", "1.5e3", "-7"]
    ),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)
# String three times: most rules of a real mapping have no transformation.
TRANSFORMATIONS = ["String"] * 3 + ["Integer", "Floating Point", "IP Address", "MAC Address", "Time Stamp"]


@st.composite
def rules(draw: st.DrawFn, key: str) -> dict[str, Any]:
    """One extension rule for ``key``: a field or a constant, a transformation, maybe a default/label."""
    rule: dict[str, Any] = {}
    field = draw(st.sampled_from([*FIELDS, None]))
    if field is not None:
        rule["mapping_field"] = field
        if field.startswith("$"):
            rule["is_json_path"] = True
    if field is None or draw(st.booleans()):
        rule["default_value"] = draw(st.one_of(TEXT.filter(bool), st.integers(), st.just("$tenant_name")))
    rule["transformation"] = draw(st.sampled_from(TRANSFORMATIONS))
    if key.startswith("cs") and draw(st.booleans()):
        rule["label"] = draw(TEXT.filter(bool))
    return rule


KEYS = ["cs1", "cs2", "msg", "suser", "spt", "rt", "start", "src", "dmac", "cat", "sev", "act", "cn1"]
MAPPINGS = st.lists(st.sampled_from(KEYS), min_size=1, max_size=len(KEYS), unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({key: rules(key) for key in keys})
)
HEADERS = st.fixed_dictionaries(
    {
        "Device Vendor": st.just({"default_value": "Net|sk\\ope"}),
        "Device Product": st.just({"default_value": "$tenant_name"}),
        "Device Version": st.sampled_from(
            [
                {"mapping_field": "f1"},
                {"mapping_field": "f1", "default_value": "d|e\\f"},
                {"mapping_field": "f1", "transformation": "Integer"},
                {"mapping_field": "host.name"},
            ]
        ),
        "Device Event Class ID": st.sampled_from(
            [{"mapping_field": "f0"}, {"mapping_field": "f0", "default_value": "é|" * 200}]
        ),
        "Name": st.just({"mapping_field": "f2"}),
        "Severity": st.sampled_from([{"mapping_field": "f0", "default_value": "high"}, {"default_value": 7}]),
    }
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "f0": VALUE,
        "f1": VALUE,
        "f2": VALUE,
        "time": st.one_of(VALUE, st.integers(min_value=0, max_value=2**40)),
        "ip": VALUE,
        "host.name": VALUE,
        "host": st.one_of(VALUE, st.fixed_dictionaries({"name": VALUE})),
        "list": st.one_of(VALUE, st.lists(st.fixed_dictionaries({"x": VALUE}), max_size=2)),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extension=MAPPINGS,
    header=HEADERS,
    records=st.lists(RECORDS, min_size=1, max_size=5),
    output=st.sampled_from(["cef", "leef"]),
    delimiter=st.sampled_from(["\t", "^", "|", "¦"]),
    sort=st.booleans(),
)
def test_generated_mappings_over_any_values_are_written_identically(
    extension: dict[str, Any],
    header: dict[str, Any],
    records: list[dict[str, Any]],
    output: OutputFormat,
    delimiter: str,
    sort: bool,
) -> None:
    """Any mapping, any values (control characters, syntax, containers, big numbers): the same bytes."""
    mapping = Mapping.from_document(
        {"taxonomy": {"alerts": {"dlp": {"header": header, "extension": extension}}}}
    )
    in_c, generated, reference = writers(output, mapping, delimiter, sort_extensions=sort)
    for record in records:
        expected = reference.format(record, "alerts", "dlp")
        assert generated.format(record, "alerts", "dlp") == expected
        assert in_c.format(record, "alerts", "dlp") == expected


PLAIN_HEADER = {
    "Device Vendor": {"default_value": "v"},
    "Device Product": {"default_value": "p"},
    "Device Version": {"default_value": "1"},
    "Device Event Class ID": {"mapping_field": "f0"},
    "Name": {"mapping_field": "f1"},
    "Severity": {"default_value": "high"},
}
SPECIAL = [chr(code) for code in range(0x80)] + ["é", "¦", "\u2028", "\u2400", "\ud800", "\udfff", "💥"]


def _single_field_mapping(text: str) -> Mapping:
    """Every way a text reaches an extension: a record value, a default and a label."""
    return Mapping.from_document(
        {
            "taxonomy": {
                "alerts": {
                    "dlp": {
                        "header": PLAIN_HEADER,
                        "extension": {
                            "msg": {"mapping_field": "f0"},
                            "cs1": {"mapping_field": "f1", "label": f"l{text}l"},
                            "cs2": {"mapping_field": "absent", "default_value": f"d{text}d"},
                        },
                    }
                }
            }
        }
    )


@pytest.mark.parametrize(
    ("output", "delimiter"),
    [*FORMATS, ("leef", "¦")],
    ids=["cef", "leef-tab", "leef-caret", "leef-broken-bar"],
)
def test_every_character_is_written_identically(output: OutputFormat, delimiter: str) -> None:
    """Each ASCII character (and a few beyond: the delimiters, a picture, lone surrogates, an emoji)
    in a value, a default and a label, alone and between others."""
    for char in SPECIAL:
        in_c, generated, reference = writers(output, _single_field_mapping(char), delimiter)
        for record in ({"f0": char, "f1": f"a{char}{char}b"}, {"f0": char * 3, "f1": 7}):
            expected = reference.format(record, "alerts", "dlp")
            assert generated.format(record, "alerts", "dlp") == expected, repr(char)
            assert in_c.format(record, "alerts", "dlp") == expected, repr(char)


EDGE_NUMBERS = [
    0,
    -1,
    99_999_999_999,
    100_000_000_000,
    -99_999_999_999,
    -100_000_000_000,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**70,
    True,
    False,
    1.5,
    -0.0,
    "1714557600",
]


@pytest.mark.parametrize(("output", "delimiter"), FORMATS, ids=["cef", "leef-tab", "leef-caret"])
def test_numbers_at_every_edge_are_written_identically(output: OutputFormat, delimiter: str) -> None:
    """Whole numbers where the C writer changes path (64 bits, the seconds/milliseconds limit), as a time
    key, as an Integer and as a plain value."""
    mapping = Mapping.from_document(
        {
            "taxonomy": {
                "alerts": {
                    "dlp": {
                        "header": PLAIN_HEADER,
                        "extension": {
                            "rt": {"mapping_field": "f0"},
                            "start": {"mapping_field": "f0", "transformation": "Time Stamp"},
                            "cn1": {"mapping_field": "f0", "transformation": "Integer"},
                            "msg": {"mapping_field": "f0"},
                        },
                    }
                }
            }
        }
    )
    in_c, generated, reference = writers(output, mapping, delimiter)
    for number in EDGE_NUMBERS:
        record = {"f0": number}
        expected = reference.format(record, "alerts", "dlp")
        assert generated.format(record, "alerts", "dlp") == expected, number
        assert in_c.format(record, "alerts", "dlp") == expected, number


class _Record(dict[str, Any]):
    """A record that is a dict subclass whose ``get`` reads ``f0`` from ``renamed``: every writer must
    read it through ``get``, as the Python writers do."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get("renamed" if key == "f0" else key, default)


@pytest.mark.parametrize(("output", "delimiter"), FORMATS, ids=["cef", "leef-tab", "leef-caret"])
def test_long_values_and_dict_subclasses_are_written_identically(
    output: OutputFormat, delimiter: str
) -> None:
    """Values far beyond the C writer's first buffer (every escape, non-ASCII, surrogates) and records
    that are not plain dicts."""
    long_value = ("a=b\\c|d^e\tf\ng\rh\x00i\x7fé💥\ud800 " * 4000)[:50_000]
    mapping = Mapping.from_document(
        {
            "taxonomy": {
                "alerts": {
                    "dlp": {
                        "header": {**PLAIN_HEADER, "Name": {"mapping_field": "f2"}},
                        "extension": {
                            "msg": {"mapping_field": "f0"},
                            "cs1": {"mapping_field": "f1", "label": "x=y"},
                            "cs2": {"mapping_field": "f2", "default_value": long_value},
                        },
                    }
                }
            }
        }
    )
    in_c, generated, reference = writers(output, mapping, delimiter)
    for record in ({"f0": long_value, "f1": long_value.upper()}, _Record(renamed="plain", f1=[long_value])):
        expected = reference.format(record, "alerts", "dlp")
        assert len(expected) > 50_000
        assert generated.format(record, "alerts", "dlp") == expected
        assert in_c.format(record, "alerts", "dlp") == expected


def test_the_generated_source_names_each_key_and_its_field() -> None:
    """`source` shows what runs per record: one commented block per output key, readable Python."""
    formatter = RecordFormatter("cef", BUILTIN, "t")
    source = formatter.source("alerts", "dlp")
    assert source.startswith("# alerts/dlp as CEF")
    assert "# suser <- user" in source
    assert "v = get('user')" in source
    compile(source, "<shown>", "exec")  # what is shown is the code that runs, so it compiles
    assert "# alerts/malware as LEEF 2.0" in RecordFormatter("leef", BUILTIN, "t").source("alerts", "malware")


# -- records read as JSON text (`Writer.write_frame`, `decide_texts`) ----------------------------------


def _decided_both_ways(
    write: Any,
    frames: list[bytes],
    start: int = 0,
    predicate: Any = None,
    pick: Any = None,
    mutes: Sequence[Mute] = (),
) -> tuple[PageDecisions | Exception, PageDecisions | Exception]:
    """A page of JSON ``frames`` decided from its text and from its parsed dicts (or what each raised),
    with a filter's ``predicate``, active ``mutes`` and their ``pick`` if given."""

    def parse(chunk: bytes) -> list[dict[str, Any]]:
        return parse_frame(1, chunk)

    outcomes: list[PageDecisions | Exception] = []
    for decide in (
        lambda: decide_texts(frames, start, write, parse, predicate, pick, mutes),
        lambda: decide_records(_offsets([parse(chunk) for chunk in frames]), start, predicate, mutes, write),
    ):
        try:
            outcomes.append(decide())
        except Exception as exc:  # compared below: both ways must fail alike
            outcomes.append(exc)
    return outcomes[0], outcomes[1]


def _offsets(frames: list[list[dict[str, Any]]]) -> list[tuple[int, list[dict[str, Any]]]]:
    starts = [0]
    for records in frames[:-1]:
        starts.append(starts[-1] + len(records))
    return list(zip(starts, frames, strict=True))


def _same(from_text: PageDecisions | Exception, from_dicts: PageDecisions | Exception) -> None:
    if isinstance(from_dicts, Exception):
        assert type(from_text) is type(from_dicts), (from_text, from_dicts)
        assert str(from_text) == str(from_dicts)
    else:
        assert from_text == from_dicts


def _cef_writer(steps: tuple[PlanStep, ...]) -> Any:
    """A C writer of ``CEF:0|`` and ``steps``, texts as they are (for the tests of its own rules)."""
    return native.line_writer(
        ["CEF:0|"],
        steps,
        mode=native.CEF,
        separator="=",
        joint=" ",
        escape=str,
        render_text=str,
        shortcuts={},
    )


def test_reading_json_text_needs_the_c_writer_and_declared_reads() -> None:
    """CEF and LEEF C writers read JSON text, and JSON of the raw record; a getter that does not say what
    it reads, a non-ASCII LEEF delimiter, JSON of selected fields or the Python writers do not."""
    assert RecordFormatter("cef", BUILTIN, "t").writer_for("alerts", "dlp").reads_json  # type: ignore[attr-defined]
    assert RecordFormatter("leef", BUILTIN, "t").reads_json
    assert RecordFormatter("json", BUILTIN, "t").reads_json  # the raw record
    assert not RecordFormatter("json", BUILTIN, "t", json_fields=["user"]).reads_json
    assert not RecordFormatter("cef", BUILTIN, "t", native=False).reads_json
    leef = RecordFormatter("leef", BUILTIN, "t", leef_delimiter="¦").writer_for("alerts", "dlp")
    assert not getattr(leef, "reads_json", False)

    def undeclared(record: Any) -> Any:
        return record.get("x")

    steps = (PlanStep("k=", "", undeclared, None, None, None, False),)
    made = _cef_writer(steps)
    assert made is not None and not made.reads_json  # type: ignore[attr-defined]
    declared = _cef_writer((PlanStep("k=", "", reads(("x",), undeclared), None, None, None, False),))
    assert declared is not None and declared.reads_json  # type: ignore[attr-defined]
    assert decide_texts([b'[{"x": "a=b", "y": 1}, {}]'], 0, declared, orjson.loads).data == [
        b"CEF:0|k=a\\=b",
        b"CEF:0|",
    ]


@pytest.mark.parametrize(("kind", "subtype"), STREAMS, ids=[f"{k}/{s}" for k, s in STREAMS])
@pytest.mark.parametrize(("output", "delimiter"), FORMATS, ids=["cef", "leef-tab", "leef-caret"])
def test_simulator_pages_are_decided_identically_from_their_text(
    kind: str, subtype: str, output: OutputFormat, delimiter: str
) -> None:
    """Every subtype's simulator records, spooled as the codec stores them (orjson's text, and the
    tenant's own spelling: spaces and escapes), from several start positions: the same lines, ids and
    timestamps as from their dicts."""
    if not BUILTIN.covers(kind, subtype):
        pytest.skip(f"the built-in mapping has no {kind}/{subtype}")
    records = RecordFactory(seed=5, tenant="t").make_many(
        kind, subtype, range(2_300), [1_714_557_600] * 2_300
    )  # type: ignore[arg-type]  # kinds of SUBTYPES
    write = writers(output, BUILTIN, delimiter)[0].writer_for(kind, subtype)
    assert write.reads_json  # type: ignore[attr-defined]
    spelled = [json.dumps(record, indent=1, ensure_ascii=True).encode() for record in records]
    for body in (encode(records), encode_texts(spelled)):
        frames = list(decode(1, CODEC, body))
        assert len(frames) == 3
        for start in (0, 999, 1_000, 2_299, 2_300):
            from_text, from_dicts = _decided_both_ways(write, frames, start)
            assert isinstance(from_text, PageDecisions)
            assert len(from_text.data) == 2_300 - start
            _same(from_text, from_dicts)


SPELLINGS = st.sampled_from(
    [
        orjson.dumps,
        lambda record: json.dumps(record).encode(),
        lambda record: json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        lambda record: json.dumps(record, indent="\t", separators=(" ,\r\n", " : ")).encode(),
    ]
)


def _spelled(records: list[Any], spell: Any) -> list[bytes]:
    """Each record's JSON text as ``spell`` writes it; as the stdlib writes it when ``spell`` refuses one
    of them (orjson.dumps refuses ints beyond 64 bits)."""
    try:
        return [spell(record) for record in records]
    except (TypeError, ValueError):
        return [json.dumps(record).encode() for record in records]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extension=MAPPINGS,
    header=HEADERS,
    records=st.lists(st.one_of(RECORDS, RECORDS, VALUE), min_size=1, max_size=5),
    output=st.sampled_from(["cef", "leef"]),
    delimiter=st.sampled_from(["\t", "^", "|"]),
    spell=SPELLINGS,
    data=st.data(),
)
def test_any_mapping_over_any_json_text_is_decided_identically(
    extension: dict[str, Any],
    header: dict[str, Any],
    records: list[Any],
    output: OutputFormat,
    delimiter: str,
    spell: Any,
    data: st.DataObject,
) -> None:
    """Any mapping over any records, spelled any way JSON allows (escapes, surrogate pairs, whitespace,
    keys given twice, ints beyond 64 bits, lone surrogates and records that are not objects): reading
    the text decides what reading the dicts does, dead letters and errors included."""
    mapping = Mapping.from_document(
        {"taxonomy": {"alerts": {"dlp": {"header": header, "extension": extension}}}}
    )
    write = writers(output, mapping, delimiter)[0].writer_for("alerts", "dlp")
    assert write.reads_json  # type: ignore[attr-defined]
    texts = _spelled(records, spell)
    if data.draw(st.booleans()):  # a key given twice: the last one counts, as in orjson's dict
        texts = [
            text.replace(b"{", b'{"f0": "first", ', 1) if text.startswith(b"{") else text for text in texts
        ]
    frame = b"[" + b",".join(texts) + b"]"
    _same(*_decided_both_ways(write, [frame], data.draw(st.integers(0, len(records)))))


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_damaged_text_is_never_read_where_orjson_refuses_it(data: st.DataObject) -> None:
    """Frames cut, spliced and overwritten anywhere: the C writer takes a frame only when orjson reads it,
    and then writes what the dicts give; one it refuses is read with orjson, which decides (or fails)."""
    records = RecordFactory(seed=9, tenant="t").make_many("alerts", "dlp", range(3), [1_714_557_600] * 3)
    frame = bytearray(orjson.dumps(records))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(frame)))
        cut = data.draw(st.integers(0, 8))
        frame[at : at + cut] = data.draw(
            st.one_of(
                st.binary(max_size=4),
                st.sampled_from(
                    [
                        b'"',
                        b"\\",
                        b"\\u",
                        b"\\ud800",
                        b"{",
                        b"[",
                        b"]",
                        b",",
                        b":",
                        b"-",
                        b"0",
                        b"1e999",
                        b"\xff",
                        b"\xed\xa0\x80",
                    ]
                ),
            )
        )
    write = RecordFormatter("cef", BUILTIN, "t").writer_for("alerts", "dlp")
    try:
        count, _, _, lines = write.write_frame(bytes(frame), 0)  # type: ignore[attr-defined]
    except ValueError:
        return
    parsed = orjson.loads(bytes(frame))  # would raise: the C writer took what orjson refuses
    assert count == len(parsed)
    assert lines == [write(record) for record in parsed]


def test_a_value_a_converter_refuses_is_dead_lettered_as_from_dicts() -> None:
    """A converter that raises on one record: that frame is decided from its dicts, so the record is
    dead-lettered with the same reason and the others are written."""

    def strict(value: Any) -> str:
        if value == "bad":
            raise ValueError("not a value this converter takes")
        return str(value)

    steps = (PlanStep("k=", "f", None, strict, None, None, False),)
    write = _cef_writer(steps)
    frames = [b'[{"f": "good", "_id": 1}, {"f": "bad", "_id": 2}]', b'[{"f": 7, "_id": "x", "timestamp": 9}]']
    from_text, from_dicts = _decided_both_ways(write, frames)
    _same(from_text, from_dicts)
    assert isinstance(from_text, PageDecisions)
    assert from_text.positions == [0, 2] and from_text.ids == ["1", "x"] and from_text.timestamps == [0, 9]
    assert from_text.dropped == [
        (1, "dead_lettered", "not a value this converter takes", {"f": "bad", "_id": 2})
    ]


@pytest.mark.parametrize(
    "frame",
    [
        b"[" + b"[" * 600 + b"]" * 600 + b"]",  # deeper than the C writer reads: orjson's own rules
        b'[{"f0": "' + b"\\u00e9=" * 200_000 + b'"}]',  # a long value grows the buffer
        b'[1, "two", null, {"f0": 3}]',  # records that are not objects
        b"[]",
        b" [ ] ",
        b'[{"f0": "x"}',  # cut short
        b'[{"f\\u0030": "x", "f0": "y", "f\\u0031": 2}]',  # keys spelled with escapes
        b'[{"f0": 18446744073709551615, "f1": -9223372036854775809, "f2": 1e308, "time": 1E2}]',
    ],
    ids=["deep", "long", "not-objects", "empty", "spaced", "cut", "escaped-keys", "numbers"],
)
def test_hostile_frames_are_decided_as_from_dicts(frame: bytes) -> None:
    """Frames no tenant sends (nesting, sizes, non-objects, truncation, numbers at the edges): the text
    path decides them as the dict path does, or fails as it does."""
    mapping = Mapping.from_document(
        {
            "taxonomy": {
                "alerts": {
                    "dlp": {
                        "header": PLAIN_HEADER,
                        "extension": {
                            "cs1": {"mapping_field": "f0"},
                            "cn1": {"mapping_field": "f1", "transformation": "Integer"},
                            "cs2": {"mapping_field": "f2"},
                            "rt": {"mapping_field": "time"},
                        },
                    }
                }
            }
        }
    )
    write = RecordFormatter("cef", mapping, "t").writer_for("alerts", "dlp")
    _same(*_decided_both_ways(write, [frame]))


REFUSED_BY_ORJSON = [
    b'[{"f1": 01}]',
    b'[{"f1": -}]',
    b'[{"f1": 1.}]',
    b'[{"f1": .5}]',
    b'[{"f1": +1}]',
    b'[{"f1": 1e}]',
    b'[{"f1": 1e999}]',
    b'[{"f1": tru}]',
    b'[{"f1": nul}]',
    b'[{"f0": 1,}]',
    b'[{"f0": 1}],',
    b'[{"f0": 1},]',
    b'[{"f0" 1}]',
    b"[{f0: 1}]",
    b'[{"f0": "a\x01b"}]',
    b'[{"f0": "\\x"}]',
    b'[{"f0": "\\u12G4"}]',
    b'[{"f0": "\\udc00"}]',
    b'[{"f0": "\\ud800x"}]',
    b'[{"f0": "\\ud800\\u0041"}]',
    b'[{"f0": "\xff"}]',
    b'[{"f0": "\xc0\x80"}]',
    b'[{"f0": "\xed\xa0\x80"}]',
    b'[{"f0": "\xf4\x90\x80\x80"}]',
    b'[{"f0": "\xe2\x82"}]',
    b"[{'f0': 1}]",
    b'[{"f0": 1}] x',
]


@pytest.mark.parametrize("frame", REFUSED_BY_ORJSON)
def test_text_orjson_refuses_is_refused_alike(frame: bytes) -> None:
    """Each way JSON text can break at the scanner's every decision: orjson refuses it, and so does the C
    writer, so the page fails as it fails from dicts (`SpoolCorruptError`), never read more leniently."""
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(frame)
    write = RecordFormatter("cef", BUILTIN, "t").writer_for("alerts", "dlp")
    with pytest.raises(ValueError, match="is not JSON this writer reads"):
        write.write_frame(frame, 0)  # type: ignore[attr-defined]
    from_text, from_dicts = _decided_both_ways(write, [frame])
    assert isinstance(from_dicts, SpoolCorruptError)
    _same(from_text, from_dicts)


def test_json_routes_ship_a_records_own_text_when_orjson_would_write_it() -> None:
    """A JSON route of the raw record reads frames' text too: it ships the record's own bytes when they
    are orjson's, and orjson's rewrite of the others (whitespace, floats, escapes orjson does not
    write, "-0", a key given twice, at any depth)."""
    write = RecordFormatter("json", BUILTIN, "t").writer_for("alerts", "dlp")
    assert write.reads_json  # type: ignore[attr-defined]
    records = [
        b'{"a":1,"b":"x\\u001fy\\"\\\\\\n","c":[true,false,null,{"d":-1}]}',
        b'{"a": 1}',
        b'{"a":1.0}',
        b'{"a":1E2}',
        b'{"a":-0}',
        b'{"a":"\\/"}',
        b'{"a":"\\u00e9"}',
        b'{"a":"\\u000a"}',
        b'{"a":"\\u001F"}',
        b'{"a":1,"a":2}',
        b'{"a":{"b":1,"b":2}}',
        b'{"a":[{"b":1},{"b":2}],"b":{"b":{"b":3}}}',
        b'{"a":"\\ud83d\\ude00"}',
    ]
    frame = b"[" + b",".join(records) + b"]"
    count, _, _, lines = write.write_frame(frame, 0)  # type: ignore[attr-defined]
    assert count == len(records)
    assert lines == [orjson.dumps(orjson.loads(record)) for record in records]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.one_of(RECORDS, RECORDS, VALUE), min_size=1, max_size=5),
    spell=SPELLINGS,
    twice=st.sampled_from([None, b'{"', b'{"f0":']),
    start=st.integers(0, 5),
)
def test_json_lines_from_any_text_are_what_orjson_writes(
    records: list[Any], spell: Any, twice: bytes | None, start: int
) -> None:
    """Any records spelled any way JSON allows, with keys given twice at the top or nested: a JSON route
    decides from the text what it decides from the dicts."""
    write = RecordFormatter("json", BUILTIN, "t").writer_for("alerts", "dlp")
    texts = _spelled(records, spell)
    if twice is not None:
        texts = [text.replace(twice, b'{"k": 0, "k": [1], ' + twice[1:], 2) for text in texts]
    frame = b"[" + b",".join(texts) + b"]"
    _same(*_decided_both_ways(write, [frame], min(start, len(records))))


# -- routes with a filter, read from the text ---------------------------------------------------------

FILTER_FIELDS = ["f0", "f1", "f2", "time", "host.name", "host", "list.x", "list.0.x", "_id", "absent"]
CONDITION = st.one_of(
    SCALAR,
    st.fixed_dictionaries({"$eq": SCALAR}),
    st.fixed_dictionaries({"$ne": SCALAR}),
    st.fixed_dictionaries({"$in": st.lists(SCALAR, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"$nin": st.lists(SCALAR, max_size=3)}),
    st.fixed_dictionaries({"$exists": st.booleans()}),
    st.fixed_dictionaries({"$gt": st.one_of(st.integers(-5, 2**40), TEXT)}),
    st.fixed_dictionaries({"$lte": st.one_of(st.integers(-5, 2**40), st.floats(allow_nan=False), TEXT)}),
    st.fixed_dictionaries({"$regex": st.sampled_from(["^a", "b", "\\d", "é", "^$"])}),
    st.fixed_dictionaries({"$contains": TEXT}),
    st.fixed_dictionaries({"$not": st.fixed_dictionaries({"$eq": SCALAR})}),
)
FIELD_FILTER = st.dictionaries(st.sampled_from(FILTER_FIELDS), CONDITION, min_size=1, max_size=2)
FILTERS = st.recursive(
    FIELD_FILTER,
    lambda inner: st.dictionaries(
        st.sampled_from(["$or", "$and", "$nor"]),
        st.lists(inner, min_size=1, max_size=2),
        min_size=1,
        max_size=1,
    ),
    max_leaves=4,
)


def _compiled(spec: dict[str, Any]) -> Any:
    try:
        return compile_filter(spec)
    except FilterError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=FILTERS, records=st.lists(st.one_of(RECORDS, RECORDS, VALUE), min_size=1, max_size=6))
def test_a_filter_decides_alike_on_the_fields_it_names_and_on_the_whole_record(
    spec: dict[str, Any], records: list[Any]
) -> None:
    """`fields_read`: a filter's predicate gives the same answer for a dict of the top-level fields its
    spec names as for the whole record, whatever the record holds."""
    predicate = _compiled(spec)
    if predicate is None:
        return
    fields = fields_read(spec)
    assert fields is not None
    for record in records:
        if isinstance(record, dict):
            assert predicate({key: record[key] for key in fields if key in record}) == predicate(record)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=FILTERS,
    records=st.lists(st.one_of(RECORDS, RECORDS, VALUE), min_size=1, max_size=6),
    output=st.sampled_from(["cef", "leef", "json"]),
    spell=SPELLINGS,
    start=st.integers(0, 6),
)
def test_a_route_with_a_filter_decides_alike_from_the_text(
    spec: dict[str, Any], records: list[Any], output: OutputFormat, spell: Any, start: int
) -> None:
    """A route with a filter reads the text too: its filter gets the fields it names, and the page is
    decided (sent, filtered, dead-lettered) exactly as from the dicts."""
    predicate = _compiled(spec)
    if predicate is None:
        return
    pick = native.filter_picker(spec)
    write = RecordFormatter(output, BUILTIN, "t").writer_for("alerts", "dlp")
    assert pick is not None and reads_json(write, predicate, (), pick)
    texts = _spelled(records, spell)
    frame = b"[" + b",".join(texts) + b"]"
    _same(*_decided_both_ways(write, [frame], min(start, len(records)), predicate, pick))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.none() | FILTERS,
    mute_specs=st.lists(st.none() | FILTERS, min_size=1, max_size=3),
    records=st.lists(st.one_of(RECORDS, RECORDS, VALUE), min_size=1, max_size=6),
    output=st.sampled_from(["cef", "leef", "json"]),
    spell=SPELLINGS,
    start=st.integers(0, 6),
)
def test_a_route_with_active_mutes_decides_alike_from_the_text(
    spec: dict[str, Any] | None,
    mute_specs: list[dict[str, Any] | None],
    records: list[Any],
    output: OutputFormat,
    spell: Any,
    start: int,
) -> None:
    """Active mutes (a mute of everything among them) with or without the route's filter: the picker
    hands them the fields they read, and every record is sent, filtered or muted by the same mute as
    from the dicts."""
    predicate = None if spec is None else _compiled(spec)
    compiled = [None if each is None else _compiled(each) for each in mute_specs]
    if (spec is not None and predicate is None) or any(
        each is not None and done is None for each, done in zip(mute_specs, compiled, strict=True)
    ):
        return
    mutes = [Mute(f"mute-{n}", 0.0, float("inf"), done) for n, done in enumerate(compiled)]
    pick = native.filter_picker(spec, *mute_specs)
    write = RecordFormatter(output, BUILTIN, "t").writer_for("alerts", "dlp")
    assert pick is not None and reads_json(write, predicate, mutes, pick)
    frame = b"[" + b",".join(_spelled(records, spell)) + b"]"
    _same(*_decided_both_ways(write, [frame], min(start, len(records)), predicate, pick, mutes))


def test_the_simulators_records_under_a_mute_decide_alike_from_the_text() -> None:
    """A mute of one user's records and a route filter, on every alert subtype: the same lines, the same
    muted and filtered records."""
    spec = {"severity": {"$in": ["high", "critical", "medium"]}}
    mute_spec = {"user": {"$regex": "^[a-h]"}}
    mutes = [Mute("quiet", 0.0, float("inf"), compile_filter(mute_spec))]
    predicate, pick = compile_filter(spec), native.filter_picker(spec, mute_spec)
    for kind, subtype in STREAMS:
        if kind != "alerts" or not BUILTIN.covers(kind, subtype):
            continue
        records = RecordFactory(seed=2, tenant="t").make_many(
            kind, subtype, range(1_500), [1_714_557_600] * 1_500
        )  # type: ignore[arg-type]  # kinds of SUBTYPES
        write = RecordFormatter("cef", BUILTIN, "t").writer_for(kind, subtype)
        frames = list(decode(1, CODEC, encode(records)))
        from_text, from_dicts = _decided_both_ways(write, frames, 300, predicate, pick, mutes)
        assert isinstance(from_text, PageDecisions)
        assert from_text == from_dicts, subtype
        reasons = {counter for _, counter, _, _ in from_text.dropped}
        assert reasons == {"muted", "filtered"}, (subtype, reasons)


def test_a_filter_on_the_simulators_records_decides_alike_from_the_text() -> None:
    """The demo's own filter over every alert subtype's records: the same lines and the same filtered."""
    spec = {"severity": {"$in": ["high", "critical"]}}
    predicate, pick = compile_filter(spec), native.filter_picker(spec)
    for kind, subtype in STREAMS:
        if not BUILTIN.covers(kind, subtype):
            continue
        records = RecordFactory(seed=2, tenant="t").make_many(
            kind, subtype, range(1_500), [1_714_557_600] * 1_500
        )  # type: ignore[arg-type]  # kinds of SUBTYPES
        write = RecordFormatter("leef", BUILTIN, "t").writer_for(kind, subtype)
        from_text, from_dicts = _decided_both_ways(
            write, list(decode(1, CODEC, encode(records))), 700, predicate, pick
        )
        assert isinstance(from_text, PageDecisions)
        assert from_text == from_dicts
        if kind == "alerts":
            assert from_text.data and from_text.dropped, subtype  # both kinds of decision were made


def test_fields_read_names_every_top_level_key_a_spec_reads() -> None:
    """Dotted paths read their first part; logical operators are walked; specs the compiler refuses
    give None."""
    spec = {"severity": "high", "$or": [{"user.name": {"$ne": "x"}}, {"$nor": [{"app": {"$exists": True}}]}]}
    assert sorted(fields_read(spec) or ()) == ["app", "severity", "user"]
    assert fields_read('{"a.b": 1}') == ("a",)
    assert fields_read(None) == ()
    assert fields_read({}) == ()
    assert fields_read({"$where": "1"}) is None
    assert fields_read("not json") is None


@pytest.mark.parametrize(
    "spec",
    [
        {"host.name": {"$exists": True}},
        {"host.name": "a"},
        {"list.0.x": {"$exists": True}},
        {"list.x": {"$in": ["b", 1]}},
        {"$nor": [{"host.name": {"$exists": False}}]},
    ],
)
def test_a_filter_on_a_dotted_path_reads_the_nested_value_from_the_text(spec: dict[str, Any]) -> None:
    """A dotted path is read inside the record's top-level field (``host`` for ``host.name``), never from
    a key spelled with the dot; the text path finds what the dicts do."""
    records = [
        {"host": {"name": "a"}, "list": [{"x": "b"}]},
        {"host.name": "a", "list.x": "b"},
        {"host": "a"},
    ]
    predicate, pick = compile_filter(spec), native.filter_picker(spec)
    write = RecordFormatter("cef", BUILTIN, "t").writer_for("alerts", "dlp")
    frame = orjson.dumps(records)
    from_text = decide_texts([frame], 0, write, orjson.loads, predicate, pick)
    assert from_text == decide_records([(0, orjson.loads(frame))], 0, predicate, (), write)
    assert from_text.positions == [0]  # only the first record holds the nested value
