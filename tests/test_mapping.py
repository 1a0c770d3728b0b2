"""Mapping files in CE's format: loading, validation, subtype lookup, value rules, JSON output."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from cef_reader import read_cef

from ce_daemon.errors import ConfigError
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.mapping import FieldRule, Mapping, MappingError, UnmappedSubtypeError, parse_field_path
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import SIM_TOKEN, backlog_ids, backlog_simulator, pipeline_config, run_cli
from ce_daemon.testing.sockets import SyslogReceiver

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "ce_syslog_mappings.json"
# Our own files in the form of the mapping files CE's CLS plugins ship: the same wrapper, taxonomy
# (logs, webtx, alerts, events, json), header/extension tables per subtype, transformations, defaults,
# nested and hyphenated field paths, and every shape of extension key those plugins use.
CE_PLUGIN_FIXTURES = {
    "syslog": ("ce_syslog_mappings.json", "Syslog Default Mappings"),
    "qradar": ("ce_qradar_mappings.json", "QRadar Default Mappings"),
    "arcsight": ("ce_arcsight_mappings.json", "ArcSight Default Mappings"),
    "logrhythm": ("ce_logrhythm_mappings.json", "LogRhythm Default Mappings"),
}
UBA_KEYS = {
    "syslog": ("event_type", "policy_name", "md5_list", "policy_actions", "uba_inst1", "uba_inst2",
               "uba_ap1", "uba_ap2", "IncidentID", "NetskopeJustificationType"),
    "qradar": ("eventType", "policyName", "md5List", "policyActions", "ubaInst1", "ubaInst2", "ubaAp1",
               "ubaAp2", "IncidentID", "netskopeJustificationType"),
}  # fmt: skip
UBA_KEYS["arcsight"] = UBA_KEYS["logrhythm"] = UBA_KEYS["syslog"]
HEADER = {
    "Device Vendor": {"default_value": "Netskope"},
    "Device Product": {"default_value": "$tenant_name"},
    "Device Version": {"default_value": "NULL"},
    "Device Event Class ID": {"mapping_field": "alert_type"},
    "Name": {"mapping_field": "alert_name"},
    "Severity": {"default_value": "Low"},
}


TRANSFORMATIONS = "(expected String, Integer, Floating Point, IP Address, MAC Address, Time Stamp)"
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


# --- CE's own mapping files, as shipped ------------------------------------------------------------

SAMPLE_BY_TRANSFORMATION: dict[str, object] = {
    "String": "a value",
    "Integer": 7,
    "Floating Point": 1.5,
    "IP Address": "192.0.2.1",
    "MAC Address": "00:1a:2b:3c:4d:5e",
    "Time Stamp": 1700000000,
}


def record_for(rules: dict[str, FieldRule]) -> dict[str, Any]:
    """A record giving every field the rules read a value of the kind its transformation expects."""
    record: dict[str, Any] = {}
    for rule in rules.values():
        if rule.mapping_field:
            *parents, leaf = rule.mapping_field.split(".")
            target = record
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = SAMPLE_BY_TRANSFORMATION[rule.transformation]
    return record


@pytest.mark.parametrize("family", CE_PLUGIN_FIXTURES)
def test_ce_plugin_mapping_file_loads(family: str) -> None:
    """The mapping file of CE's syslog, QRadar, ArcSight and LogRhythm plugins loads in the form they ship."""
    file, name = CE_PLUGIN_FIXTURES[family]
    mapping = Mapping.load(DATA / file)
    assert mapping.name == name
    for kind, subtype in [
        ("alerts", "uba"), ("alerts", "Compromised Credential"), ("alerts", "Legal Hold"), ("alerts", "ctep"),
        ("alerts", "c2"), ("events", "audit"), ("events", "network"), ("webtx", "v2"), ("logs", "error"),
    ]:  # fmt: skip
        assert mapping.covers(kind, subtype), (kind, subtype)
    assert mapping.json_fields("alerts", "uba") == ()
    uba = mapping.rules("alerts", "uba")
    assert uba is not None
    assert set(UBA_KEYS[family]) <= set(uba.extension)


@pytest.mark.parametrize("family", CE_PLUGIN_FIXTURES)
@pytest.mark.parametrize(("kind", "subtype"), [("alerts", "uba"), ("webtx", "v2"), ("events", "page")])
def test_ce_plugin_keys_are_written_as_the_file_names_them(family: str, kind: str, subtype: str) -> None:
    """Every extension key (underscored, camelCase, capitalised, numbered) reaches the CEF line unchanged."""
    mapping = Mapping.load(DATA / CE_PLUGIN_FIXTURES[family][0])
    rules = mapping.rules(kind, subtype)
    assert rules is not None
    line = RecordFormatter("cef", mapping, "acme").format(record_for(dict(rules.extension)), kind, subtype)
    _, pairs = read_cef(line.decode())
    assert set(pairs) == set(rules.extension)


@pytest.mark.parametrize(
    "key",
    ["event_type", "uba_inst1", "IncidentID", "NetskopeJustificationType", "md5List", "cs1", "x-forwarded",
     "a.b", "größe"],
)  # fmt: skip
def test_extension_keys_are_accepted_as_ce_writes_them(key: str) -> None:
    """Any key CEF and LEEF can carry is written as it is named, as CE does."""
    line = RecordFormatter("cef", one_subtype({key: {"mapping_field": "v"}}), "t").format(
        {"v": "x"}, "alerts", "dlp"
    )
    assert read_cef(line.decode())[1] == {key: "x"}


CANNOT = ": CEF and LEEF have no way to write it in a key"
NOT_PRINTING = "a non-printing character"
TRY_A_B = "(hint: try 'a_b')"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", ": extension key is empty"),
        ("src ip", f"src ip: extension key cannot contain a space{CANNOT} (hint: try 'src_ip')"),
        ("a=b", f"a=b: extension key cannot contain '='{CANNOT} (hint: try 'a_b')"),
        ("a|b", f"a|b: extension key cannot contain '|'{CANNOT} (hint: try 'a_b')"),
        ("a\\b", f"a\\b: extension key cannot contain '\\\\'{CANNOT} (hint: try 'a_b')"),
        ("a\tb", f"'a\\tb': extension key cannot contain U+0009 (white space){CANNOT} (hint: try 'a_b')"),
        (
            "a\x00b ",
            f"'a\\x00b ': extension key cannot contain U+0000 ({NOT_PRINTING}), a space{CANNOT} {TRY_A_B}",
        ),
        (
            "a\x7fb",
            f"'a\\x7fb': extension key cannot contain U+007F ({NOT_PRINTING}){CANNOT} (hint: try 'a_b')",
        ),
        ("=", f"=: extension key cannot contain '='{CANNOT}"),
    ],
)
def test_keys_cef_and_leef_cannot_carry_are_refused(key: str, problem: str) -> None:
    """Empty keys, white space, '=', '|', '\\' and control characters are refused, with why and a hint."""
    assert problems_of({"taxonomy": {"alerts": {"dlp": {"header": HEADER, "extension": {
        key: {"mapping_field": "v"}}}}}}) == [f"taxonomy.alerts.dlp.extension.{problem}"]  # fmt: skip


async def test_check_names_the_mapping_file_and_the_place_in_it(tmp_path: Path) -> None:
    """`ce-daemon check` refuses a bad mapping file naming the route, the file, the JSON path and why."""
    document = json.loads(FIXTURE.read_text())
    data = json.loads(document["jsonData"])
    data["taxonomy"]["alerts"]["uba"]["extension"]["policy name"] = {"mapping_field": "policy_name"}
    (tmp_path / "mine.json").write_text(json.dumps({**document, "jsonData": json.dumps(data)}))
    (tmp_path / "broken.json").write_text('{\n  "taxonomy": {,\n}')
    pipeline = pipeline_config(tmp_path, "https://acme.goskope.com", [
        {"name": "mine", "tenant": "sim", "alerts": ["uba"], "mapping": "mine.json",
         "sink": {"type": "file", "path": "out.cef"}},
        {"name": "broken", "tenant": "sim", "alerts": ["uba"], "mapping": "broken.json",
         "sink": {"type": "file", "path": "out2.cef"}},
    ])  # fmt: skip
    config = write_pipeline(tmp_path / "pipeline.yaml", pipeline)
    code, output = await run_cli("check", "-c", str(config), env={"SIM_TOKEN": SIM_TOKEN})
    assert code == 78
    lines = output.splitlines()
    [bad_key] = [number for number, line in enumerate(lines) if "logs.routes[0].mapping" in line]
    assert lines[bad_key].endswith(
        f"logs.routes[0].mapping: {tmp_path}/mine.json: taxonomy.alerts.uba.extension.policy name: "
        "extension key cannot contain a space: CEF and LEEF have no way to write it in a key"
    )
    assert lines[bad_key + 1] == "    Hint: try 'policy_name'"
    [broken] = [line for line in lines if "logs.routes[1].mapping" in line]
    assert f"logs.routes[1].mapping: {tmp_path}/broken.json:2:16: not valid JSON:" in broken


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
                        "src ip": {"mapping_field": "srcip"},
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
        (
            f"{where}.extension.src ip: extension key cannot contain a space: CEF and LEEF have no way to "
            "write it in a key (hint: try 'src_ip')"
        ),
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
        ("Time Stamp", 1700000000, "1700000000"),
        ("Time Stamp", 1700000000.9, "1700000000"),
        ("Time Stamp", "1700000000", "1700000000"),
        ("Time Stamp", "2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z"),
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
                        {"name": "seen", "mapping_field": "timestamp", "transformation": "Time Stamp"},
                        {"name": "when", "mapping_field": "date", "transformation": "Time Stamp"},
                        "missing",
                    ]
                }
            }
        }
    }
    mapping = Mapping.from_document(document)
    record = {
        "_id": "x1",
        "host_info": {"hostname": "pc"},
        "file_size": "2048",
        "timestamp": "1700000000",
        "date": "2023-11-14",
        "other": 1,
    }
    out = RecordFormatter("json", mapping, "acme").format(record, "alerts", "dlp")
    assert orjson.loads(out) == {
        "_id": "x1",
        "host_info.hostname": "pc",
        "size": 2048,
        "tenant": "acme",
        "seen": 1700000000,
        "when": "2023-11-14",
    }


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


# --- end to end ------------------------------------------------------------------------------------


async def test_ce_syslog_mapping_ships_underscore_keys_through_a_real_pipeline(tmp_path: Path) -> None:
    """Simulator → daemon → syslog: with CE's syslog mapping, each uba alert's CEF has the underscore keys."""
    backlog = 60
    shutil.copy(FIXTURE, tmp_path / "ce_syslog_mappings.json")
    async with (
        backlog_simulator(SIM_TOKEN, backlog, [("alerts", "uba")], rate_limit=20) as sim,
        SyslogReceiver("tcp") as cef_receiver,
        SyslogReceiver("tcp") as json_receiver,
    ):
        assert sim.url is not None

        def route(name: str, receiver: SyslogReceiver, **options: Any) -> dict[str, Any]:
            port = int(receiver.target.rsplit(":", 1)[1])
            sink = {"type": "syslog", "host": "127.0.0.1", "port": port, "protocol": "tcp"}
            return {"name": name, "tenant": "sim", "alerts": ["uba"], "sink": sink, **options}

        routes = [
            route("uba-cef", cef_receiver, format="cef", mapping="ce_syslog_mappings.json"),
            route("uba-json", json_receiver, format="json"),
        ]
        config = write_pipeline(
            tmp_path / "pipeline.yaml", pipeline_config(tmp_path, sim.url, routes, rate_limit=20)
        )
        async with DaemonProcess(config, env={"SIM_TOKEN": SIM_TOKEN}) as daemon:
            cef_lines = [await cef_receiver.wait_for("CEF:0|", timeout=30) for _ in range(backlog)]
            json_lines = [await json_receiver.wait_for('{"', timeout=30) for _ in range(backlog)]
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    records = [orjson.loads(line[line.index("{") :]) for line in json_lines]
    assert [record["_id"] for record in records] == backlog_ids(sim, "alerts", "uba", backlog)
    reference = RecordFormatter("cef", Mapping.load(FIXTURE), "sim")
    underscored = set(UBA_KEYS["syslog"][:8])
    # Both routes read the one stream in spool order, so line i of each is the same record.
    for record, line in zip(records, cef_lines, strict=True):
        cef = line[line.index("CEF:0|") :]
        header, pairs = read_cef(cef)
        assert header[1:5] == ["Netskope", "sim", "NULL", "uba"]
        assert underscored <= set(pairs)
        assert pairs["uba_inst1"] == record["uba_inst1"]
        assert pairs["md5_list"] == orjson.dumps(record["md5_list"]).decode()
        assert cef.encode() == reference.format(record, "alerts", "uba")
