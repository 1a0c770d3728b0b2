"""LEEF 2.0 output: header, delimiter field, value flattening, predefined attributes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.leef import delimiter_field
from ce_daemon.logs.mapping import Mapping

HEADER = {
    "Device Vendor": {"default_value": "Netskope"},
    "Device Product": {"default_value": "$tenant_name"},
    "Device Version": {"default_value": "NULL"},
    "Device Event Class ID": {"mapping_field": "alert_type"},
    "Name": {"mapping_field": "alert_name"},
    "Severity": {"mapping_field": "severity", "default_value": "Unknown"},
}
EXTENSION = {
    "suser": {"mapping_field": "user"},
    "src": {"mapping_field": "srcip", "transformation": "IP Address"},
    "dst": {"mapping_field": "dstip", "transformation": "IP Address"},
    "spt": {"mapping_field": "srcport", "transformation": "Integer"},
    "dpt": {"mapping_field": "dstport", "transformation": "Integer"},
    "rt": {"mapping_field": "timestamp"},
    "msg": {"mapping_field": "message"},
    "request": {"mapping_field": "url"},
}
MAPPING = Mapping.from_document({"taxonomy": {"alerts": {"dlp": {"header": HEADER, "extension": EXTENSION}}}})


def leef(record: dict[str, Any], *, delimiter: str = "\t", mapping: Mapping = MAPPING) -> str:
    return (
        RecordFormatter("leef", mapping, "acme", leef_delimiter=delimiter)
        .format(record, "alerts", "dlp")
        .decode()
    )


def read_leef(line: str) -> tuple[list[str], dict[str, str]]:
    """An independent reader: header fields split on unescaped pipes, attributes on the declared delimiter."""
    assert line.startswith("LEEF:2.0|")
    header: list[str] = []
    field = ""
    position = len("LEEF:2.0|")
    while len(header) < 5:
        char = line[position]
        if char == "\\":
            field += line[position + 1]
            position += 2
        elif char == "|":
            header.append(field)
            field = ""
            position += 1
        else:
            field += char
            position += 1
    declared = header[4]
    delimiter = chr(int(declared[1:], 16)) if len(declared) > 1 and declared[0] == "x" else declared
    body = line[position:]
    pairs = dict(item.split("=", 1) for item in body.split(delimiter)) if body else {}
    return header, pairs


def test_header_and_attributes_exactly() -> None:
    """A DLP alert becomes exactly this LEEF 2.0 line with the default tab delimiter."""
    record = {
        "alert_type": "DLP",
        "alert_name": "PCI cards",
        "severity": "high",
        "user": "ana@example.com",
        "srcip": "10.0.0.1",
        "dstip": "203.0.113.7",
        "srcport": "51000",
        "dstport": 443,
        "timestamp": 1700000000,
        "url": "https://x.example/?a=1|b",
    }
    assert leef(record) == (
        "LEEF:2.0|Netskope|acme|NULL|DLP|x09|cat=PCI cards\tdevTime=2023-11-14T22:13:20.000+0000\t"
        "devTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ\tdst=203.0.113.7\tdstPort=443\trequest=https://x.example/?a=1|b\t"
        "sev=8\tsrc=10.0.0.1\tsrcPort=51000\tusrName=ana@example.com"
    )


@pytest.mark.parametrize(
    ("delimiter", "field"),
    [("\t", "x09"), ("^", "^"), ("|", "x7C"), ("\\", "x5C"), ("\xa0", "xA0"), ("¦", "xA6")],
)
def test_delimiter_field(delimiter: str, field: str) -> None:
    """Tab is written x09, printable punctuation as itself, anything ambiguous or invisible as hex."""
    assert delimiter_field(delimiter) == field


@pytest.mark.parametrize("delimiter", ["", "ab", "a", "7", "=", " ", "\n", "\r", "\x00", "\x1f", "\x7f"])
def test_unusable_delimiters_are_refused(delimiter: str) -> None:
    """A delimiter that would break keys or values is refused when the formatter is built."""
    with pytest.raises(ValueError, match="LEEF delimiter"):
        RecordFormatter("leef", MAPPING, "acme", leef_delimiter=delimiter)


def test_caret_delimiter_line() -> None:
    """With '^' the header declares it and the attributes are joined by it."""
    line = leef({"alert_type": "DLP", "user": "u", "message": "hi"}, delimiter="^")
    assert line == "LEEF:2.0|Netskope|acme|NULL|DLP|^|msg=hi^usrName=u"


def test_values_cannot_carry_the_delimiter_or_control_characters() -> None:
    """A printable delimiter in a value becomes a space, control characters (tab included) their pictures."""
    line = leef({"message": "a\tb^c\r\nd=e|f\x00g\x1bh"}, delimiter="\t")
    assert line.endswith("|x09|msg=a␉b^c␍␊d=e|f␀g␛h")
    line = leef({"message": "a\tb^c"}, delimiter="^")
    assert line.endswith("|^|msg=a␉b c")


def test_header_fields_escape_pipes_and_backslashes() -> None:
    """Header fields escape '|' and '\\', control characters become pictures; EventID is cut at 255."""
    line = leef({"alert_type": "a|b\\c\nd\x00"})
    assert line.startswith("LEEF:2.0|Netskope|acme|NULL|a\\|b\\\\c␊d␀|x09|")
    long_id = leef({"alert_type": "e" * 254 + "\\|" + "e" * 50})
    assert read_leef(long_id)[0][3] == "e" * 254 + "\\"


def test_delimiter_inside_an_extension_key_is_refused() -> None:
    """A mapping key holding the chosen delimiter could not be read back: the formatter refuses it."""
    mapping = Mapping.from_document(
        {"taxonomy": {"alerts": {"dlp": {"header": HEADER, "extension": {"a^b": {"mapping_field": "x"}}}}}}
    )
    with pytest.raises(ValueError, match=r"LEEF delimiter '\^' appears in extension keys \['a\^b'\]"):
        RecordFormatter("leef", mapping, "acme", leef_delimiter="^")


def test_explicit_leef_attribute_wins_over_a_renamed_one() -> None:
    """A mapping that names usrName itself keeps it; suser is then not renamed onto it."""
    mapping = Mapping.from_document(
        {
            "taxonomy": {
                "alerts": {
                    "dlp": {
                        "header": HEADER,
                        "extension": {
                            "suser": {"mapping_field": "user"},
                            "usrName": {"mapping_field": "login"},
                        },
                    }
                }
            }
        }
    )
    assert leef({"user": "u@x", "login": "DOMAIN\\u"}, mapping=mapping).endswith("|x09|usrName=DOMAIN\\u")


def test_unknown_severity_omits_sev_and_constant_name_gives_no_cat() -> None:
    """sev is written only for a known severity; cat only when Name reads a record field."""
    header = {**HEADER, "Name": {"default_value": "NULL"}}
    mapping = Mapping.from_document(
        {"taxonomy": {"alerts": {"dlp": {"header": header, "extension": EXTENSION}}}}
    )
    assert leef({"severity": "informational", "user": "u"}, mapping=mapping).endswith("|x09|usrName=u")


@pytest.mark.parametrize(("severity", "sev"), [("low", "3"), ("medium", "6"), (7, "8"), ("critical", "10")])
def test_sev_from_the_cef_severity(severity: object, sev: str) -> None:
    """LEEF sev (1-10) follows the normalised CEF severity."""
    assert read_leef(leef({"severity": severity}))[1]["sev"] == sev


@pytest.mark.parametrize(
    ("level", "sev"), [(0, None), (1, "8"), (2, "6"), (3, None), (4, "3"), (5, None), (6, "1"), (7, None)]
)
def test_audit_sev_follows_the_audit_table(level: int, sev: str | None) -> None:
    """Audit events: High 8, Medium 6, Low 3, Info 1, and no sev where CE's audit table says Unknown."""
    formatter = RecordFormatter("leef", Mapping.builtin(), "acme")
    _, pairs = read_leef(formatter.format({"severity_level": level}, "events", "audit").decode())
    assert pairs.get("sev") == sev


def test_default_mapping_writes_leef_for_clientstatus() -> None:
    """The shipped mapping drives LEEF too, nested paths included."""
    record = {"timestamp": 1700000000, "host_info": {"hostname": "pc-1"}, "user_info": {"username": "u@x"}}
    formatter = RecordFormatter("leef", Mapping.builtin(), "acme")
    header, pairs = read_leef(formatter.format(record, "events", "clientstatus").decode())
    assert header == ["Netskope", "acme", "NULL", "clientstatus", "x09"]
    assert pairs["shost"] == "pc-1"
    assert pairs["usrName"] == "u@x"
    assert pairs["devTime"] == "2023-11-14T22:13:20.000+0000"


CONTROLS = [chr(code) for code in range(0x20)] + ["\x7f"]
PICTURES = {code: 0x2400 + code for code in range(0x20)} | {0x7F: 0x2421}
TEXT = st.lists(
    st.one_of(st.sampled_from(["^", "=", "|", "\\", " ", "é", "␉", *CONTROLS]), st.text(max_size=3)),
    max_size=6,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(message=TEXT, user=TEXT, delimiter=st.sampled_from(["\t", "^", "|", "#"]))
def test_values_read_back_flattened(message: str, user: str, delimiter: str) -> None:
    """Any value reads back through a delimiter-splitting reader: only the delimiter and controls change."""
    line = leef({"message": message, "user": user}, delimiter=delimiter)
    assert set(line) & set(CONTROLS) <= {delimiter}, "a raw control character reached the line"
    _, pairs = read_leef(line)

    def flat(text: str) -> str:
        return (
            text.replace(delimiter, " ").translate(PICTURES)
            if delimiter != "\t"
            else text.translate(PICTURES)
        )

    expected = {key: flat(value) for key, value in (("msg", message), ("usrName", user)) if value}
    assert pairs == expected
