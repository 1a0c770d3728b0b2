"""Generated and C writers: byte for byte what the reference loop (`FieldPlan.collect`) writes, for CEF
and LEEF.

The reference formatter (``generated=False``) is today's tested implementation; the generated Python
writer and the C writer (``native``, :mod:`ce_daemon.logs.native`) must never differ from it: on the
simulator's records of every subtype, and on generated mappings (every transformation, labels,
defaults, constants, nested paths) over generated values (every control character, CEF and LEEF
syntax, lone surrogates, containers, numbers of every kind).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.logs import native
from ce_daemon.logs.formatter import OutputFormat, RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.netskope.subtypes import SUBTYPES
from ce_daemon.simulator.records import RecordFactory

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
