"""Generated writers: byte for byte what the reference loop (`FieldPlan.collect`) writes, for CEF and LEEF.

The reference formatter (``generated=False``) is today's tested implementation; the generated one must
never differ from it: on the simulator's records of every subtype, and on generated mappings (every
transformation, labels, defaults, constants, nested paths) over generated values (every control
character, CEF and LEEF syntax, containers, numbers of every kind).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.logs.formatter import OutputFormat, RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.netskope.subtypes import SUBTYPES
from ce_daemon.simulator.records import RecordFactory

BUILTIN = Mapping.builtin("netskope")
STREAMS = [(kind, subtype) for kind, subtypes in SUBTYPES.items() for subtype in subtypes]
FORMATS: list[tuple[OutputFormat, str]] = [("cef", "\t"), ("leef", "\t"), ("leef", "^")]


def pair(output: OutputFormat, mapping: Mapping, delimiter: str = "\t", **options: Any) -> tuple[Any, Any]:
    """(generated, reference) formatters of one output."""
    made = [
        RecordFormatter(
            output, mapping, "tenant|one", leef_delimiter=delimiter, generated=generated, **options
        )
        for generated in (True, False)
    ]
    return made[0], made[1]


@pytest.mark.parametrize(("kind", "subtype"), STREAMS, ids=[f"{k}/{s}" for k, s in STREAMS])
@pytest.mark.parametrize(("output", "delimiter"), FORMATS, ids=["cef", "leef-tab", "leef-caret"])
def test_simulator_records_are_written_identically(
    kind: str, subtype: str, output: OutputFormat, delimiter: str
) -> None:
    """Every subtype's simulator records: the generated writer's bytes are the reference's."""
    if not BUILTIN.covers(kind, subtype):
        pytest.skip(f"the built-in mapping has no {kind}/{subtype}")
    records = RecordFactory(seed=7, tenant="t").make_many(kind, subtype, range(300), [1_714_557_600] * 300)  # type: ignore[arg-type]  # kinds of SUBTYPES
    fast, reference = pair(output, BUILTIN, delimiter)
    for record in records:
        assert fast.format(record, kind, subtype) == reference.format(record, kind, subtype), record["_id"]


# --- property: generated mappings over generated values ------------------------------------------

FIELDS = ["f0", "f1", "f2", "time", "ip", "host.name", "$.list[0].x"]
CONTROLS = [chr(code) for code in [*range(0x20), 0x7F]]
NASTY = st.sampled_from(["|", "=", "\\", " ", "\t", "^", "\n", "\r", "a=b", "é", "💥", "␀", "", *CONTROLS])
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
        "Device Version": st.just({"mapping_field": "f1"}),
        "Device Event Class ID": st.just({"mapping_field": "f0"}),
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
    delimiter=st.sampled_from(["\t", "^", "|"]),
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
    fast, reference = pair(output, mapping, delimiter, sort_extensions=sort)
    for record in records:
        assert fast.format(record, "alerts", "dlp") == reference.format(record, "alerts", "dlp")


def test_the_generated_source_names_each_key_and_its_field() -> None:
    """`source` shows what runs per record: one commented block per output key, readable Python."""
    formatter = RecordFormatter("cef", BUILTIN, "t")
    source = formatter.source("alerts", "dlp")
    assert source.startswith("# alerts/dlp as CEF")
    assert "# suser <- user" in source
    assert "v = get('user')" in source
    compile(source, "<shown>", "exec")  # what is shown is the code that runs, so it compiles
    assert "# alerts/malware as LEEF 2.0" in RecordFormatter("leef", BUILTIN, "t").source("alerts", "malware")
