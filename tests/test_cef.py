"""CEF output: escaping (checked by an independent parser), severity, values, the shipped mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cef_reader import read_cef
from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.logs.cef import normalize_audit_severity, normalize_severity
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.mapping import FieldRule, Mapping

FIXTURE = Path(__file__).parent / "data" / "ce_syslog_mappings.json"


# --- property: anything written reads back the same --------------------------------------------

HEADER = {
    "Device Vendor": {"default_value": "Net|sk\\ope"},
    "Device Product": {"default_value": "$tenant_name"},
    "Device Version": {"default_value": "1.0"},
    "Device Event Class ID": {"mapping_field": "alert_type"},
    "Name": {"mapping_field": "alert_name"},
    "Severity": {"mapping_field": "severity", "default_value": "Low"},
}
EXTENSION_FIELDS = {
    "suser": "user",
    "msg": "message",
    "cs1": "policy",
    "request": "url",
    "fname": "file",
    "event_type": "event_type",  # key shapes of CE's own mapping files
    "uba_inst1": "instance",
    "IncidentID": "transaction_id",
}
PLAIN_HEADER = {**HEADER, "Device Vendor": {"default_value": "Netskope"}}


def dlp_mapping(extension: dict[str, dict[str, str]], header: dict[str, Any] = PLAIN_HEADER) -> Mapping:
    """A mapping of alerts/dlp alone: ``header`` and the ``extension`` rules (CEF key -> rule)."""
    return Mapping.from_document(
        {"taxonomy": {"alerts": {"dlp": {"header": header, "extension": extension}}}}
    )


PROPERTY_MAPPING = dlp_mapping(
    {key: {"mapping_field": field} for key, field in EXTENSION_FIELDS.items()}, header=HEADER
)
CONTROLS = [chr(code) for code in range(0x20)] + ["\x7f"]
NASTY = st.sampled_from(["|", "=", "\\", " ", "\\n", "a=b", "x ", " y", "é", "💥", "␀", *CONTROLS])
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=4)), max_size=6).map("".join)
# The Unicode Control Pictures: U+2400 + code for C0 characters, U+2421 for DEL.
PICTURES = {code: 0x2400 + code for code in range(0x20)} | {0x7F: 0x2421}
EXTENSION_PICTURES = {code: picture for code, picture in PICTURES.items() if chr(code) not in "\r\n"}


def header_expected(value: str | None) -> str:
    """A header field as it reads back: every control character (CR and LF too) as its picture."""
    return "" if value is None else value.translate(PICTURES)


def value_expected(value: str) -> str:
    """An extension value as it reads back: LF and CR from \\n and \\r, other controls as pictures."""
    return value.translate(EXTENSION_PICTURES)


@settings(max_examples=300, deadline=None)
@given(
    alert_type=st.one_of(st.none(), TEXT),
    alert_name=st.one_of(st.none(), TEXT),
    tenant=TEXT,
    values=st.fixed_dictionaries({field: st.one_of(st.none(), TEXT) for field in EXTENSION_FIELDS.values()}),
    sort=st.booleans(),
)
def test_written_fields_read_back_identically(
    alert_type: str | None, alert_name: str | None, tenant: str, values: dict[str, str | None], sort: bool
) -> None:
    """Header fields and extension values read back as written, control characters as their pictures."""
    record: dict[str, Any] = {field: value for field, value in values.items() if value is not None}
    if alert_type is not None:
        record["alert_type"] = alert_type
    if alert_name is not None:
        record["alert_name"] = alert_name
    formatter = RecordFormatter("cef", PROPERTY_MAPPING, tenant, sort_extensions=sort)
    line = formatter.format(record, "alerts", "dlp").decode("utf-8")

    assert not set(line) & set(CONTROLS), "a raw control character reached the line"
    header, pairs = read_cef(line)
    assert header == [
        "CEF:0",
        "Net|sk\\ope",
        header_expected(tenant),
        "1.0",
        header_expected(alert_type),
        header_expected(alert_name),
        "Low",
    ]
    expected = {
        key: value_expected(text) for key, field in EXTENSION_FIELDS.items() if (text := values[field])
    }
    assert pairs == expected
    if sort:
        assert list(pairs) == sorted(pairs)
    else:
        assert list(pairs) == [key for key in EXTENSION_FIELDS if key in expected]


def test_reader_agrees_on_a_hand_escaped_line() -> None:
    """The test's own reader decodes a line escaped by hand (so the property test is not circular)."""
    header, pairs = read_cef(r"CEF:0|a\|b|c\\d|v|id|n|High|k1=x\=y z k2=p\\q\nr k3=")
    assert header == ["CEF:0", "a|b", "c\\d", "v", "id", "n", "High"]
    assert pairs == {"k1": "x=y z", "k2": "p\\q\nr", "k3": ""}


# --- exact lines -----------------------------------------------------------------------------------


def test_ce_fixture_gives_the_expected_line() -> None:
    """CE's own file format, loaded unchanged, writes exactly this line for a DLP alert."""
    record = {
        "_id": "f1e2d3c4b5a6",
        "timestamp": 1700000000,
        "alert_type": "DLP",
        "alert_name": "PCI | cards",
        "dlp_rule_severity": "critical",
        "user": "zoë@example.com",
        "srcip": "10.1.2.3",
        "dstip": "bad-ip",
        "activity": "Upload",
        "app": "Box",
        "dlp_profile": "PCI=strict",
        "dlp_rule": "C:\\rules\\cc",
        "file_size": "2048",
        "url": "https://box.com/f?id=1&x=2",
        "cci": 87.0,
        "ccl": None,
    }
    line = RecordFormatter("cef", Mapping.load(FIXTURE), "acme").format(record, "alerts", "DLP")
    assert line.decode() == (
        r"CEF:0|Netskope|acme|NULL|DLP|PCI \| cards|Very-High|act=Upload cci=87 ccl=unknown "
        r"dlpProfile=PCI\=strict dlpRule=C:\\rules\\cc fsize=2048 requestClientApplication=Box "
        r"src=10.1.2.3 suser=zoë@example.com timestamp=1700000000 url=https://box.com/f?id\=1&x\=2"
    )


def test_nested_fields_through_the_ce_fixture() -> None:
    """The fixture's clientstatus entry reads host_info/user_info paths."""
    record = {"host_info": {"hostname": "pc-1", "os": "macOS"}, "user_info": {"username": "u@x"}}
    line = RecordFormatter("cef", Mapping.load(FIXTURE), "acme").format(record, "events", "clientstatus")
    assert (
        line.decode()
        == "CEF:0|Netskope|acme|NULL|clientstatus|NULL|Unknown|hostname=pc-1 os=macOS username=u@x"
    )


def test_header_control_characters_become_pictures() -> None:
    """CR, LF, TAB, NUL... cannot appear in a header field; each becomes its Unicode Control Picture."""
    record = {"alert_name": "a\r\nb\x00", "alert_type": "x\ty\x7f"}
    line = RecordFormatter("cef", PROPERTY_MAPPING, "t").format(record, "alerts", "dlp").decode()
    assert read_cef(line)[0][4:6] == ["x␉y␡", "a␍␊b␀"]


@pytest.mark.parametrize("code", [*range(0x20), 0x7F], ids=lambda code: f"U+{code:04X}")
def test_every_control_character_is_escaped_in_header_and_extension(code: int) -> None:
    """No C0 character or DEL reaches header or extension raw: LF/CR are escaped, the rest are pictures."""
    char = chr(code)
    line = RecordFormatter("cef", PROPERTY_MAPPING, "t").format(
        {"alert_name": f"a{char}b", "message": f"c{char}d", "user": "u"}, "alerts", "dlp"
    )
    escaped = {"\n": "\\n", "\r": "\\r"}.get(char, chr(PICTURES[code]))
    assert (
        line.decode() == f"CEF:0|Net\\|sk\\\\ope|t|1.0||a{chr(PICTURES[code])}b|Low|msg=c{escaped}d suser=u"
    )


def test_extension_escapes() -> None:
    """Backslash, equals, LF and CR are escaped in values; pipes are not."""
    line = RecordFormatter("cef", PROPERTY_MAPPING, "t").format(
        {"message": "a|b=c\\d\ne\rf"}, "alerts", "dlp"
    )
    assert line.decode().endswith("|Low|msg=a|b\\=c\\\\d\\ne\\rf")


def test_value_types() -> None:
    """None omits the field; bools are true/false; lists and dicts are compact JSON; numbers as text."""
    mapping = dlp_mapping(
        {key: {"mapping_field": key} for key in ("cs1", "cs2", "cs3", "cs4", "cs5", "cs6", "cn1")}
    )
    record = {
        "cs1": None,
        "cs2": True,
        "cs3": [1, "a=b"],
        "cs4": {"k": "v"},
        "cs5": 1.5,
        "cs6": False,
        "cn1": 7,
    }
    line = RecordFormatter("cef", mapping, "t").format(record, "alerts", "dlp").decode()
    assert line.split("|", 7)[7] == 'cn1=7 cs2=true cs3=[1,"a\\=b"] cs4={"k":"v"} cs5=1.5 cs6=false'


def test_time_keys_are_epoch_milliseconds() -> None:
    """rt/start/end from epoch seconds become epoch ms; ms stay ms; a formatted date passes through."""
    mapping = dlp_mapping(
        {
            "rt": {"mapping_field": "timestamp"},
            "start": {"mapping_field": "start_ms"},
            "end": {"mapping_field": "end_text"},
            "cs1": {"mapping_field": "timestamp"},
        }
    )
    record = {"timestamp": 1700000000, "start_ms": 1700000000123, "end_text": "Nov 14 2023 22:13:20"}
    line = RecordFormatter("cef", mapping, "t").format(record, "alerts", "dlp").decode()
    assert (
        line.split("|", 7)[7]
        == "cs1=1700000000 end=Nov 14 2023 22:13:20 rt=1700000000000 start=1700000000123"
    )


def test_custom_string_label_follows_its_field() -> None:
    """cs1 with a label writes cs1Label right after it, and neither when cs1 has no value."""
    mapping = dlp_mapping(
        {
            "cs1": {"mapping_field": "policy", "label": "Policy Name"},
            "cs2": {"mapping_field": "profile", "label": "Profile"},
            "act": {"mapping_field": "activity"},
        }
    )
    formatter = RecordFormatter("cef", mapping, "t")
    line = formatter.format({"policy": "Block=all", "activity": "Upload"}, "alerts", "dlp").decode()
    assert line.split("|", 7)[7] == "act=Upload cs1=Block\\=all cs1Label=Policy Name"


def test_mapping_order_can_be_kept() -> None:
    """sort_extensions=False writes keys in the mapping file's order."""
    mapping = dlp_mapping(
        {"suser": {"mapping_field": "u"}, "act": {"mapping_field": "a"}, "dst": {"mapping_field": "d"}}
    )
    record = {"u": "x", "a": "y", "d": "z"}
    assert (
        RecordFormatter("cef", mapping, "t").format(record, "alerts", "dlp").endswith(b"|act=y dst=z suser=x")
    )
    kept = RecordFormatter("cef", mapping, "t", sort_extensions=False)
    assert kept.format(record, "alerts", "dlp").endswith(b"|suser=x act=y dst=z")


def test_value_with_nul_is_still_escaped() -> None:
    """A NUL inside a value does not confuse the writer's key placeholder, and is written as ␀."""
    line = RecordFormatter("cef", PROPERTY_MAPPING, "t").format(
        {"message": "a\x00b=c", "user": "u"}, "alerts", "dlp"
    )
    assert read_cef(line.decode())[1] == {"msg": "a␀b=c", "suser": "u"}
    assert line.endswith("|Low|msg=a␀b\\=c suser=u".encode())


# --- severity --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("low", "Low"),
        ("LOW", "Low"),
        (0, "Low"),
        ("3", "Low"),
        ("med", "Medium"),
        ("medium", "Medium"),
        (4, "Medium"),
        ("6", "Medium"),
        ("high", "High"),
        (7, "High"),
        ("8", "High"),
        ("very-high", "Very-High"),
        ("critical", "Very-High"),
        (9, "Very-High"),
        ("10", "Very-High"),
        (11, "Unknown"),
        (-1, "Unknown"),
        ("informational", "Unknown"),
        ("", "Unknown"),
        (None, "Unknown"),
        (True, "Unknown"),
        (5.5, "Unknown"),
        ([1], "Unknown"),
    ],
)
def test_severity_normalisation(value: object, expected: str) -> None:
    """Netskope severities map to CEF words exactly as CE's table says."""
    assert normalize_severity(value) == expected


# CE's AUDIT_SEVERITY_MAP (syslog, QRadar, ArcSight and LogRhythm plugins), applied to str(value).lower().
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "Unknown"),
        (1, "High"),
        (2, "Medium"),
        (3, "Unknown"),
        (4, "Low"),
        (5, "Unknown"),
        (6, "Info"),
        (7, "Unknown"),
        ("0", "Unknown"),
        ("1", "High"),
        ("2", "Medium"),
        ("3", "Unknown"),
        ("4", "Low"),
        ("5", "Unknown"),
        ("6", "Info"),
        ("7", "Unknown"),
        (8, "Unknown"),
        (9, "Unknown"),
        (10, "Unknown"),
        (-1, "Unknown"),
        (100, "Unknown"),
        ("low", "Low"),
        ("Med", "Medium"),
        ("medium", "Medium"),
        ("HIGH", "High"),
        ("very-high", "High"),
        ("critical", "High"),
        ("informational", "Unknown"),
        (" 1", "Unknown"),
        ("1.0", "Unknown"),
        (1.0, "Unknown"),
        (True, "Unknown"),
        (None, "Unknown"),
        ("", "Unknown"),
        ([1], "Unknown"),
        ({"level": 1}, "Unknown"),
    ],
)
def test_audit_severity_normalisation(value: object, expected: str) -> None:
    """severity_level maps exactly as CE's audit table: 1 High, 2 Medium, 4 Low, 6 Info, else Unknown."""
    assert normalize_audit_severity(value) == expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [(0, b"Unknown"), (1, b"High"), (2, b"Medium"), (3, b"Unknown"),
     (4, b"Low"), (5, b"Unknown"), (6, b"Info"), (7, b"Unknown")],
)  # fmt: skip
def test_audit_events_use_the_audit_table(level: int, expected: bytes) -> None:
    """events/audit writes the severity CE writes for each severity_level 0-7."""
    line = RecordFormatter("cef", Mapping.builtin(), "t").format({"severity_level": level}, "events", "audit")
    assert line.split(b"|")[6] == expected


def test_audit_severity_default_applies_when_the_level_is_missing() -> None:
    """Without severity_level, the mapping's default (Low) is looked up in the audit table, as CE does."""
    line = RecordFormatter("cef", Mapping.load(FIXTURE), "t").format(
        {"audit_log_event": "x"}, "events", "audit"
    )
    assert line.split(b"|")[6] == b"Low"


# --- the shipped mapping ---------------------------------------------------------------------------

ALERT_SUBTYPES = (
    "compromisedcredential", "ctep", "dlp", "malsite", "malware", "policy", "quarantine", "remediation",
    "securityassessment", "uba", "watchlist", "device", "content",
)  # fmt: skip
EVENT_SUBTYPES = (
    "alert", "application", "audit", "clientstatus", "connection", "endpoint", "incident", "infrastructure",
    "network", "page",
)  # fmt: skip
SAMPLE_BY_TRANSFORMATION = {
    "String": "value|with=specials\\",
    "Integer": 4096,
    "Floating Point": 2.5,
    "IP Address": "192.0.2.10",
    "MAC Address": "00:1A:2B:3C:4D:5E",
}


def sample_record(rules: dict[str, FieldRule], subtype: str) -> dict[str, Any]:
    """A record giving every field the mapping reads a value of the right kind (nested paths included)."""
    record: dict[str, Any] = {
        "timestamp": 1700000000,
        "alert_type": subtype,
        "alert_name": f"{subtype} alert",
    }
    for rule in rules.values():
        if not rule.mapping_field or rule.mapping_field in ("timestamp", "alert_type", "alert_name"):
            continue
        *parents, leaf = rule.mapping_field.split(".")
        target = record
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = SAMPLE_BY_TRANSFORMATION[rule.transformation]
    return record


@pytest.mark.parametrize(
    ("kind", "subtype"),
    [("alerts", name) for name in ALERT_SUBTYPES] + [("events", name) for name in EVENT_SUBTYPES],
)
def test_default_mapping_covers_and_formats_every_subtype(kind: str, subtype: str) -> None:
    """The shipped mapping has every subtype ce-daemon pulls, and every extension it maps is written."""
    mapping = Mapping.builtin()
    rules = mapping.rules(kind, subtype)
    assert rules is not None
    record = sample_record({**rules.header, **rules.extension}, subtype)
    line = RecordFormatter("cef", mapping, "acme").format(record, kind, subtype).decode()
    header, pairs = read_cef(line)
    assert header[:4] == ["CEF:0", "Netskope", "acme", "NULL"]
    assert header[6] in ("Low", "Medium", "High", "Very-High", "Unknown")
    assert set(pairs) == set(rules.extension)
    assert pairs["rt"] == "1700000000000"
    assert mapping.json_fields(kind, subtype) == ()


def test_default_mapping_dlp_line() -> None:
    """A realistic DLP alert through the shipped mapping (guards the mapping against accidental edits)."""
    record = {
        "_id": "0a1b2c3d4e5f60718293a4b5",
        "timestamp": 1700000000,
        "alert_type": "DLP",
        "alert_name": "DLP-PCI",
        "dlp_rule_severity": "high",
        "user": "ana@example.com",
        "srcip": "10.0.0.5",
        "dstip": "203.0.113.9",
        "app": "Box",
        "activity": "Upload",
        "action": "block",
        "dlp_profile": "PCI",
        "dlp_rule": "Credit cards",
        "dlp_incident_id": "3056981472093856789",
        "file_size": 1024,
        "sha256": "ab" * 32,
        "url": "https://app.box.com/upload?x=1",
    }
    line = RecordFormatter("cef", Mapping.builtin(), "acme").format(record, "alerts", "dlp").decode()
    assert line == (
        "CEF:0|Netskope|acme|NULL|DLP|DLP-PCI|High|act=Upload action=block "
        "dlpIncidentId=3056981472093856789 dlpProfile=PCI dlpRule=Credit cards dlpRuleSeverity=high "
        f"dst=203.0.113.9 externalId=0a1b2c3d4e5f60718293a4b5 fileHash={'ab' * 32} fsize=1024 "
        "request=https://app.box.com/upload?x\\=1 requestClientApplication=Box "
        f"rt=1700000000000 sha256={'ab' * 32} src=10.0.0.5 suser=ana@example.com"
    )


def test_alerts_from_the_events_alert_stream_use_their_alert_type() -> None:
    """subtype_from_record picks the entry from alert_type; ips/c2 use ctep; others use events/alert."""
    formatter = RecordFormatter("cef", Mapping.builtin(), "acme", subtype_from_record=True)
    malware = formatter.format({"alert_type": "Malware", "malware_name": "Eicar"}, "events", "alert").decode()
    assert "malwareName=Eicar" in malware
    ips = formatter.format({"alert_type": "ips", "signature_id": "2001"}, "events", "alert").decode()
    assert "signatureId=2001" in ips
    plain = formatter.format({"severity": "high", "object": "o"}, "events", "alert").decode()
    assert plain == "CEF:0|Netskope|acme|NULL|alert|NULL|High|object=o severity=high"
    anomaly = formatter.format({"alert_type": "anomaly", "severity": "low"}, "events", "alert").decode()
    assert anomaly == "CEF:0|Netskope|acme|NULL|anomaly|NULL|Low|severity=low"
