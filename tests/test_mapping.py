"""Mapping files in CE's format: loading, validation, subtype lookup, value rules, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from ce_daemon.errors import ConfigError
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.mapping import Mapping, MappingError, UnmappedSubtypeError, parse_field_path

FIXTURE = Path(__file__).parent / "data" / "ce_syslog_mappings.json"
HEADER = {
    "Device Vendor": {"default_value": "Netskope"},
    "Device Product": {"default_value": "$tenant_name"},
    "Device Version": {"default_value": "NULL"},
    "Device Event Class ID": {"mapping_field": "alert_type"},
    "Name": {"mapping_field": "alert_name"},
    "Severity": {"default_value": "Low"},
}


TRANSFORMATIONS = "(expected String, Integer, Floating Point, IP Address, MAC Address)"
FIELD_KEYS = "(expected mapping_field, default_value, transformation, is_json_path, label)"
DATA_TYPES = "(expected alerts, events, webtx, logs or json)"


def one_subtype(extension: dict[str, Any], *, kind: str = "alerts", subtype: str = "dlp") -> Mapping:
    """A mapping with a single subtype, the standard header and the given extension rules."""
    return Mapping.from_document({"taxonomy": {kind: {subtype: {"header": HEADER, "extension": extension}}}})


def extensions(line: bytes) -> str:
    """The extension part of a CEF line (no escaped pipes in these tests' headers)."""
    return line.decode().split("|", 7)[7]


def problems_of(document: object) -> list[str]:
    with pytest.raises(MappingError) as caught:
        Mapping.from_document(document)
    return [str(problem) for problem in caught.value.problems]


# --- loading ---------------------------------------------------------------------------------------


def test_ce_fixture_loads_unchanged() -> None:
    """CE's wrapper format (name + jsonData as a JSON string) loads as it is."""
    mapping = Mapping.load(FIXTURE)
    assert mapping.name == "Syslog Default Mappings"
    assert mapping.cef_version == "0"
    assert mapping.covers("alerts", "dlp")
    assert mapping.covers("events", "clientstatus")


def test_bare_json_data_object_is_the_same_mapping() -> None:
    """The bare jsonData object is accepted and gives the same content fingerprint as its wrapper."""
    wrapped = json.loads(FIXTURE.read_text())
    bare = Mapping.from_document(json.loads(wrapped["jsonData"]))
    assert bare.covers("alerts", "Compromised Credential")
    assert bare.fingerprint == Mapping.load(FIXTURE).fingerprint


def test_fingerprint_follows_content() -> None:
    """Changing one rule changes the fingerprint, so a reload knows to rebuild the route."""
    first = one_subtype({"src": {"mapping_field": "srcip"}})
    same = one_subtype({"src": {"mapping_field": "srcip"}})
    other = one_subtype({"src": {"mapping_field": "dstip"}})
    assert first.fingerprint == same.fingerprint != other.fingerprint


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    """A syntax error names the file, line and column."""
    path = tmp_path / "broken.json"
    path.write_text('{\n  "taxonomy": {,\n}')
    with pytest.raises(MappingError) as caught:
        Mapping.load(path)
    problem = caught.value.problems[0]
    assert (problem.file, problem.line) == (str(path), 2)
    assert caught.value.render().startswith(f"{path}:2:")


def test_invalid_embedded_json_data_is_reported() -> None:
    """A jsonData string that is not JSON is a problem at path jsonData."""
    assert problems_of({"name": "x", "jsonData": "{not json"})[0].startswith(
        "jsonData: embedded JSON is invalid"
    )


def test_unreadable_file_is_a_mapping_error(tmp_path: Path) -> None:
    """A missing file raises MappingError, not a bare OSError."""
    with pytest.raises(MappingError, match="cannot read mapping file"):
        Mapping.load(tmp_path / "missing.json")


def test_builtin_mapping_by_name() -> None:
    """The shipped mapping loads by name; an unknown name is a MappingError."""
    assert Mapping.builtin().covers("alerts", "dlp")
    with pytest.raises(MappingError, match="no built-in mapping named 'nope'"):
        Mapping.builtin("nope")


# --- validation ------------------------------------------------------------------------------------


def test_validation_collects_every_problem_with_its_path() -> None:
    """All problems are reported at once, each with its JSON path."""
    header = dict(HEADER)
    del header["Name"]
    header["Severity"] = {"mapping_field": "severity", "transformation": "Int"}
    document = {
        "taxonomy": {
            "alerts": {
                "dlp": {
                    "header": header,
                    "extension": {
                        "src": {"transformation": "IP Address"},
                        "src_ip": {"mapping_field": "srcip"},
                        "dst": {"mapping_field": "dstip", "transformation": "Hostname"},
                        "act": {"mapping_feild": "activity", "mapping_field": "activity"},
                    },
                }
            },
            "event": {},
        }
    }
    problems = problems_of(document)
    where = "taxonomy.alerts.dlp"
    assert problems == [
        f"{where}.header.Severity.transformation: unknown transformation 'Int' {TRANSFORMATIONS}",
        f"{where}.header: missing header field 'Name'",
        f"{where}.extension.src: needs mapping_field or default_value",
        f"{where}.extension.src_ip: extension key must contain only letters and digits (hint: try 'srcip')",
        f"{where}.extension.dst.transformation: unknown transformation 'Hostname' {TRANSFORMATIONS}",
        f"{where}.extension.act.mapping_feild: unknown key {FIELD_KEYS}",
        f"taxonomy.event: unknown data type {DATA_TYPES} (hint: did you mean 'events'?)",
    ]


def test_mapping_error_is_a_value_error_and_a_config_error() -> None:
    """Callers may catch it as either; its text lists every problem."""
    with pytest.raises(MappingError) as caught:
        one_subtype({"src": {}, "dst": {}})
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ConfigError)
    assert str(caught.value).count("needs mapping_field or default_value") == 2


def test_transformation_hint_for_a_near_miss() -> None:
    """A wrongly cased transformation gets a did-you-mean hint."""
    problems = problems_of({"taxonomy": {"alerts": {"dlp": {"header": HEADER, "extension": {
        "fsize": {"mapping_field": "file_size", "transformation": "integer"}}}}}})  # fmt: skip
    assert problems[0].endswith("(hint: did you mean 'Integer'?)")


def test_label_only_on_custom_keys() -> None:
    """A label is accepted on cs1..cs6 and refused on a standard key."""
    assert one_subtype({"cs1": {"mapping_field": "policy", "label": "Policy"}}).covers("alerts", "dlp")
    problems = problems_of({"taxonomy": {"alerts": {"dlp": {"header": HEADER, "extension": {
        "src": {"mapping_field": "srcip", "label": "Source"}}}}}})  # fmt: skip
    assert problems == [
        "taxonomy.alerts.dlp.extension.src.label: only custom keys (cs1..cs6, cn1..cn3, ...) take a label"
    ]


def test_same_subtype_spelled_twice_is_a_problem() -> None:
    """CE display name and API path name of one subtype cannot both appear."""
    entry = {"header": HEADER, "extension": {}}
    problems = problems_of(
        {"taxonomy": {"alerts": {"Security Assessment": entry, "securityassessment": entry}}}
    )
    assert problems == [
        (
            "taxonomy.alerts.securityassessment: same subtype as 'Security Assessment' "
            "(names are matched case- and space-insensitively)"
        )
    ]


def test_unsupported_field_path_is_a_problem() -> None:
    """Only dotted names and [n] indexes are understood."""
    problems = problems_of({"taxonomy": {"alerts": {"dlp": {"header": HEADER, "extension": {
        "src": {"mapping_field": "a..b"}}}}}})  # fmt: skip
    assert problems[0].startswith(
        "taxonomy.alerts.dlp.extension.src.mapping_field: unsupported field path 'a..b'"
    )


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("srcip", ("srcip",)),
        ("host_info.hostname", ("host_info", "hostname")),
        ("$.a.b[0].c", ("a", "b", 0, "c")),
        ("a[2]", ("a", 2)),
        ("a..b", None),
        ("a.", None),
        ("[0]", None),
        ("a[x]", None),
    ],
)
def test_field_path_syntax(text: str, steps: tuple[str | int, ...] | None) -> None:
    """Field paths split into keys and list indexes."""
    assert parse_field_path(text) == steps


# --- subtype lookup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("DLP", True),
        ("dlp", True),
        ("Compromised Credential", True),
        ("compromisedcredential", True),
        ("Security Assessment", True),
        ("ips", True),
        ("c2", True),
        ("anomaly", False),
    ],
)
def test_subtype_lookup_is_loose(asked: str, expected: bool) -> None:
    """Display names and path names match; ips and c2 alerts use the ctep entry as CE does."""
    entry = {"header": HEADER, "extension": {}}
    mapping = Mapping.from_document(
        {
            "taxonomy": {
                "alerts": {
                    "DLP": entry,
                    "compromisedcredential": entry,
                    "Security Assessment": entry,
                    "ctep": entry,
                }
            }
        }
    )
    assert mapping.covers("alerts", asked) is expected


def test_unmapped_subtype_raises_for_cef() -> None:
    """Formatting CEF for a subtype the mapping lacks raises UnmappedSubtypeError."""
    formatter = RecordFormatter("cef", one_subtype({}), "acme")
    assert not formatter.covers("alerts", "malware")
    with pytest.raises(UnmappedSubtypeError, match="alerts/malware"):
        formatter.format({}, "alerts", "malware")


# --- values ----------------------------------------------------------------------------------------


def test_tenant_name_is_substituted_in_defaults() -> None:
    """$tenant_name in a default value becomes the route's tenant name."""
    mapping = one_subtype({"cs1": {"default_value": "from $tenant_name", "label": "Origin"}})
    line = RecordFormatter("cef", mapping, "acme-prod").format(
        {"alert_type": "DLP", "alert_name": "n"}, "alerts", "dlp"
    )
    assert line.decode() == "CEF:0|Netskope|acme-prod|NULL|DLP|n|Low|cs1=from acme-prod cs1Label=Origin"


def test_dotted_paths_and_json_paths_reach_nested_values() -> None:
    """host_info.hostname walks dicts, $.a[1].b walks lists, a literal dotted key wins unless is_json_path."""
    mapping = one_subtype(
        {
            "shost": {"mapping_field": "host_info.hostname"},
            "cs2": {"mapping_field": "$.groups[1].name", "is_json_path": True},
            "cs3": {"mapping_field": "odd.key"},
            "cs4": {"mapping_field": "host_info.missing.deeper"},
        }
    )
    record = {
        "host_info": {"hostname": "pc-7"},
        "groups": [{"name": "a"}, {"name": "b"}],
        "odd.key": "literal",
        "odd": {"key": "nested"},
    }
    line = RecordFormatter("cef", mapping, "t").format(record, "alerts", "dlp")
    assert extensions(line) == "cs2=b cs3=literal shost=pc-7"


def test_defaults_fill_missing_and_empty_values() -> None:
    """default_value applies when the field is missing, None or empty; a present value wins."""
    mapping = one_subtype(
        {
            "cs1": {"mapping_field": "a", "default_value": "dflt"},
            "cs2": {"mapping_field": "b", "default_value": "dflt"},
            "cs3": {"mapping_field": "c", "default_value": "dflt"},
            "cs4": {"mapping_field": "d", "default_value": "dflt"},
        }
    )
    line = RecordFormatter("cef", mapping, "t").format({"b": None, "c": "", "d": "real"}, "alerts", "dlp")
    assert extensions(line) == "cs1=dflt cs2=dflt cs3=dflt cs4=real"


@pytest.mark.parametrize(
    ("transformation", "value", "expected"),
    [
        ("Integer", 42, "42"),
        ("Integer", "17", "17"),
        ("Integer", 3.9, "3"),
        ("Integer", "2.5", "2"),
        ("Integer", "n/a", None),
        ("Integer", True, None),
        ("Floating Point", "1.5", "1.5"),
        ("Floating Point", 2, "2.0"),
        ("Floating Point", "nan", None),
        ("IP Address", "10.0.0.1", "10.0.0.1"),
        ("IP Address", "2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("IP Address", "10.0.0.300", None),
        ("MAC Address", "aa-bb-cc-dd-ee-0f", "AA:BB:CC:DD:EE:0F"),
        ("MAC Address", "aabb.ccdd.ee0f", "AA:BB:CC:DD:EE:0F"),
        ("MAC Address", "aa:bb:cc", None),
        ("String", 7, "7"),
    ],
)
def test_transformations(transformation: str, value: object, expected: str | None) -> None:
    """Each CE transformation converts what it can and omits what it cannot."""
    mapping = one_subtype({"cs1": {"mapping_field": "v", "transformation": transformation}})
    line = extensions(RecordFormatter("cef", mapping, "t").format({"v": value}, "alerts", "dlp"))
    assert line == ("" if expected is None else f"cs1={expected}")


def test_invalid_value_falls_back_to_the_default() -> None:
    """A value the transformation rejects is replaced by the (converted) default."""
    mapping = one_subtype(
        {"src": {"mapping_field": "srcip", "default_value": "0.0.0.0", "transformation": "IP Address"}}
    )
    line = RecordFormatter("cef", mapping, "t").format({"srcip": "not-an-ip"}, "alerts", "dlp")
    assert extensions(line) == "src=0.0.0.0"


# --- JSON ------------------------------------------------------------------------------------------


def test_json_empty_list_sends_the_raw_record() -> None:
    """An empty taxonomy.json list means the record exactly as orjson writes it."""
    mapping = Mapping.load(FIXTURE)
    record = {"_id": "x1", "alert_type": "DLP", "nested": {"a": [1, 2]}, "text": "line\nbreak é"}
    assert RecordFormatter("json", mapping, "t").format(record, "alerts", "DLP") == orjson.dumps(record)


def test_json_field_list_selects_and_renames() -> None:
    """A field list keeps only those fields; dict entries rename and convert to native types."""
    document = {
        "taxonomy": {
            "json": {
                "alerts": {
                    "dlp": [
                        "_id",
                        "host_info.hostname",
                        {"name": "size", "mapping_field": "file_size", "transformation": "Integer"},
                        {"name": "tenant", "default_value": "$tenant_name"},
                        "missing",
                    ]
                }
            }
        }
    }
    mapping = Mapping.from_document(document)
    record = {"_id": "x1", "host_info": {"hostname": "pc"}, "file_size": "2048", "other": 1}
    out = RecordFormatter("json", mapping, "acme").format(record, "alerts", "dlp")
    assert orjson.loads(out) == {"_id": "x1", "host_info.hostname": "pc", "size": 2048, "tenant": "acme"}


def test_route_json_fields_override_the_mapping() -> None:
    """json_fields given to the formatter replace the mapping's list for every subtype."""
    formatter = RecordFormatter("json", Mapping.load(FIXTURE), "t", json_fields=["_id", "user"])
    out = formatter.format({"_id": "a", "user": "u", "srcip": "1.2.3.4"}, "events", "page")
    assert orjson.loads(out) == {"_id": "a", "user": "u"}


def test_route_json_fields_are_validated() -> None:
    """A bad json_fields entry raises MappingError with its index."""
    with pytest.raises(MappingError, match=r"json_fields\[1\]"):
        RecordFormatter("json", Mapping.load(FIXTURE), "t", json_fields=["_id", 5])  # type: ignore[list-item]


def test_json_survives_integers_beyond_64_bits() -> None:
    """A record orjson refuses is still written, through the stdlib fallback."""
    record = {"_id": "big", "n": 2**70}
    out = RecordFormatter("json", Mapping.load(FIXTURE), "t").format(record, "alerts", "dlp")
    assert json.loads(out) == record
