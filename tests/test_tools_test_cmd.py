"""`ce-daemon test`: a route's dry run says what it would send and why it would drop each other record."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.config.model import StateSettings
from ce_daemon.logs.dryrun import MAX_LINE, MAX_NESTING, DryRun, judge_file, load_route
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.store import open_store
from ce_daemon.testing import write_pipeline
from ce_daemon.testing.pipelines import run_cli
from ce_daemon.testing.state import state_section

SEVERE = ("high", "critical")
STREAMS = (("alerts", "dlp"), ("alerts", "malware"), ("events", "page"), ("events", "network"))
"""What the input holds: the route reads the first three; network events are not its."""


def pipeline(tmp_path: Path) -> Path:
    """One CEF route `siem` of dlp and malware alerts and page events: severe ones, users whose name
    starts with `a` muted (a window around now)."""
    route = {
        "name": "siem",
        "tenant": "sim",
        "alerts": ["dlp", "malware"],
        "events": ["page"],
        "format": "cef",
        "filter": {"severity": {"$in": list(SEVERE)}, "user": {"$exists": True}},
        "mute": [
            {
                "name": "quiet-a",
                "start": "2020-01-01T00:00:00Z",
                "end": "2100-01-01T00:00:00Z",
                "filter": {"user": {"$regex": "^a"}},
            }
        ],
        "sink": {"type": "file", "path": "out.cef"},
    }
    config = {
        "version": 1,
        "state": state_section(tmp_path / "state" / "db.sqlite"),
        "tenants": [{"name": "sim", "url": "https://127.0.0.1:9", "token": {"$env": "NOT_SET_ANYWHERE"}}],
        "logs": {"routes": [route]},
    }
    return write_pipeline(tmp_path / "pipeline.yaml", config)


def simulated(count: int = 40) -> list[tuple[str, str, dict[str, Any]]]:
    """``count`` simulator records of each of :data:`STREAMS`, with their stream."""
    factory = RecordFactory(seed=11, tenant="sim")
    return [
        (kind, subtype, factory.make(kind, subtype, seq, 1_700_000_000 + seq))  # type: ignore[arg-type]
        for kind, subtype in STREAMS
        for seq in range(count)
    ]


def expected_verdict(kind: str, subtype: str, record: dict[str, Any]) -> str:
    if (kind, subtype) == ("events", "network"):
        return "unrouted"
    if record.get("severity") not in SEVERE or "user" not in record:
        return "filtered"
    return "muted" if str(record["user"]).startswith("a") else "sent"


async def test_each_record_gets_the_routes_verdict_and_the_reason(tmp_path: Path) -> None:
    """Simulator records of four subtypes: sent as the route's formatter writes them; the others
    filtered (naming the failing clause), muted (naming the mute) or not of the route's streams."""
    path = pipeline(tmp_path)
    records = simulated()
    (tmp_path / "records.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for _, _, r in records))
    code, out = await run_cli(
        "test",
        "-c",
        str(path),
        "--route",
        "siem",
        "--input",
        str(tmp_path / "records.ndjson"),
        "--json",
        env={},
    )
    assert code == 0, out
    lines = [orjson.loads(line) for line in out.splitlines()]
    outcomes, summary = lines[:-1], lines[-1]["summary"]
    formatter = RecordFormatter("cef", Mapping.builtin("netskope"), "sim")
    verdicts = [expected_verdict(kind, subtype, record) for kind, subtype, record in records]
    assert [o["verdict"] for o in outcomes] == verdicts
    assert {v: summary[v] for v in set(verdicts)} == {v: verdicts.count(v) for v in set(verdicts)}
    assert {"sent", "filtered", "muted", "unrouted"} <= set(verdicts), "the sample exercises every outcome"
    for number, (outcome, (kind, subtype, record)) in enumerate(zip(outcomes, records, strict=True), 1):
        assert outcome["where"].endswith(f"records.ndjson:{number}")
        if outcome["verdict"] == "sent":
            assert outcome["data"] == formatter.format(record, kind, subtype).decode()
            assert outcome["stream"] == f"{kind}/{subtype}" and outcome["id"] == record["_id"]
        elif outcome["verdict"] == "filtered":
            clause = "severity" if record.get("severity") not in SEVERE else "user"
            assert outcome["reason"].startswith(f'filtered out by clause {{"{clause}":')
        elif outcome["verdict"] == "muted":
            assert outcome["reason"] == "muted by mute 'quiet-a'"
        else:
            assert "events/network" in outcome["reason"]


async def test_with_the_c_writer_turned_off_the_same_lines_are_written_by_python(tmp_path: Path) -> None:
    """``CE_DAEMON_NATIVE=0``: ``--show-writer`` says the Python writer runs and why, and the route writes
    the very same lines as with the C writer."""
    path = pipeline(tmp_path)
    source = tmp_path / "records.ndjson"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for _, _, r in simulated(30)))
    command = ("test", "-c", str(path), "--route", "siem")
    code, shown = await run_cli(*command, "--show-writer", env={"CE_DAEMON_NATIVE": "0"})
    assert code == 0, shown
    assert "# this Python runs per record (the C writer: turned off (CE_DAEMON_NATIVE=0))" in shown
    outputs = []
    for switch in ("0", "1"):
        code, out = await run_cli(
            *command, "--input", str(source), "--json", env={"CE_DAEMON_NATIVE": switch}
        )
        assert code == 0, out
        outputs.append([line for line in out.splitlines() if '"verdict":"sent"' in line])
    assert outputs[0] == outputs[1] and len(outputs[0]) > 10


async def test_the_human_form_prints_what_would_be_sent_on_stdout_and_reasons_on_stderr(
    tmp_path: Path,
) -> None:
    """Without --json: the sent records alone on stdout (as the sink gets them), each drop on stderr."""
    path = pipeline(tmp_path)
    records = simulated(10)
    source = tmp_path / "records.ndjson"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for _, _, r in records))
    loaded_route = load_route(path, "siem")
    assert loaded_route is not None
    run = DryRun(loaded_route[1], loaded_route[0])
    sent = [o.data for o in judge_file(run, source, io.BytesIO(source.read_bytes())) if o.verdict == "sent"]
    process = await _run_split("test", "-c", str(path), "--route", "siem", "--input", str(source))
    code, stdout, stderr = process
    assert code == 0
    assert stdout.splitlines() == [d.decode() for d in sent if d is not None]
    assert stderr.splitlines()[-1].startswith(f"{len(records)} input(s): {len(sent)} sent")
    assert "filtered out by clause" in stderr and "Traceback" not in stderr


async def _run_split(*args: str) -> tuple[int, str, str]:
    import asyncio
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ce_daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_hostile_input_file_is_reported_line_by_line_never_a_traceback(tmp_path: Path) -> None:
    """Garbage, arrays, invalid UTF-8, a NUL, an oversized line, deep nesting and a 5,000-digit number:
    each reported with its line number and counted; the good record after them still goes through."""
    path = pipeline(tmp_path)
    good = next(r for kind, subtype, r in simulated() if expected_verdict(kind, subtype, r) == "sent")
    lines = [
        b"not json at all",
        b"[1, 2, 3]",
        b'"a string"',
        b"\xff\xfe\x00garbage",
        b'{"_id": "x", "user": "\x00"',
        b'{"pad": "' + b"x" * (MAX_LINE + 10) + b'"}',
        b'{"deep": ' + b"[" * (MAX_NESTING + 5) + b"]" * (MAX_NESTING + 5) + b"}",
        b'{"n": ' + b"9" * 5000 + b"}",
        b"",
        orjson.dumps(good),
    ]
    source = tmp_path / "hostile.ndjson"
    source.write_bytes(b"\n".join(lines) + b"\n")
    code, out = await run_cli(
        "test", "-c", str(path), "--route", "siem", "--input", str(source), "--json", env={}
    )
    assert code == 0, out[-2000:]
    assert "Traceback" not in out
    outcomes = [orjson.loads(line) for line in out.splitlines()]
    by_line = {int(o["where"].rsplit(":", 1)[1]): o for o in outcomes[:-1]}
    assert set(by_line) == {1, 2, 3, 4, 5, 6, 7, 8, 10}, "the blank line 9 is skipped"
    assert all(by_line[n]["verdict"] == "bad_input" for n in range(1, 8))
    assert by_line[2]["reason"] == "a JSON array, not a record (an object)"
    assert by_line[6]["reason"] == f"longer than {MAX_LINE} bytes"
    assert by_line[7]["reason"] == f"nests deeper than {MAX_NESTING} levels"
    assert by_line[8]["verdict"] in (
        "bad_input",
        "filtered",
    )  # a big number: refused by the parser or the filter
    assert by_line[10]["verdict"] == "sent" and by_line[10]["id"] == good["_id"]
    assert outcomes[-1]["summary"]["bad_input"] >= 7


async def test_an_unknown_route_exits_78_naming_the_routes(tmp_path: Path) -> None:
    """A misspelt route: EX_CONFIG, with the nearest name and the list of routes as a hint."""
    path = pipeline(tmp_path)
    (tmp_path / "r.ndjson").write_text("{}\n")
    code, out = await run_cli(
        "test", "-c", str(path), "--route", "sim", "--input", str(tmp_path / "r.ndjson"), env={}
    )
    assert code == os.EX_CONFIG
    assert "no route named 'sim'" in out and "did you mean 'siem'?" in out and "routes: siem" in out


async def test_show_writer_prints_the_generated_source_of_each_stream(tmp_path: Path) -> None:
    """`--show-writer`: the Python each stream's records run through, one block per stream; a stream
    the route does not read exits 78 naming the ones it does."""
    path = pipeline(tmp_path)
    code, out = await run_cli("test", "-c", str(path), "--route", "siem", "--show-writer", env={})
    assert code == 0, out
    assert [line for line in out.splitlines() if line.startswith("# ") and " as CEF" in line] == [
        f"# {kind}/{subtype} as CEF: the header, then these extension fields joined by spaces, escaped as one"
        for kind, subtype in STREAMS[:3]
    ]
    assert out.count("def collect(record):") == 3
    assert out.count("# the C writer (logs/_native.c) runs this plan, the same bytes as this Python") == 3
    code, out = await run_cli(
        "test", "-c", str(path), "--route", "siem", "--show-writer", "--stream", "events/network", env={}
    )
    assert code == os.EX_CONFIG
    assert "reads no stream 'events/network'" in out and "Traceback" not in out


async def test_a_broken_pipeline_file_exits_78_with_its_problems(tmp_path: Path) -> None:
    """An invalid file: EX_CONFIG, its problems at their place, no traceback."""
    path = tmp_path / "pipeline.yaml"
    path.write_text("version: 1\nlogs:\n  routes:\n    - name: siem\n      format: xml\n")
    code, out = await run_cli("test", "-c", str(path), "--route", "siem", "--input", str(path), env={})
    assert code == os.EX_CONFIG
    assert "pipeline.yaml:" in out and "Traceback" not in out


async def test_from_spool_reads_what_the_route_has_not_acknowledged_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """Pages waiting in the spool: the dry run judges their records (up to --limit) and leaves the
    spool as it was (a second run says the same)."""
    path = pipeline(tmp_path)
    records = [r for kind, subtype, r in simulated(30) if (kind, subtype) == ("alerts", "dlp")]
    settings_ = StateSettings.model_validate(state_section(tmp_path / "state" / "db.sqlite"))
    (tmp_path / "state").mkdir(exist_ok=True)
    async with await open_store(settings_, SPOOL_MIGRATIONS) as store:
        spool = Spool(store, 1 << 30)
        await spool.load()
        await spool.append("sim/alerts/dlp", records[:20])
        await spool.append("sim/alerts/dlp", records[20:])
        before = await spool.stats()
    args = ("test", "-c", str(path), "--route", "siem", "--from-spool", "--limit", "25", "--json")
    code, out = await run_cli(*args, env={})
    again_code, again = await run_cli(*args, env={})
    assert code == again_code == 0 and out == again
    outcomes = [orjson.loads(line) for line in out.splitlines()]
    assert [o["id"] for o in outcomes[:-1]] == [r["_id"] for r in records[:25]]
    assert [o["verdict"] for o in outcomes[:-1]] == [
        expected_verdict("alerts", "dlp", r) for r in records[:25]
    ]
    assert outcomes[-1]["summary"]["records"] == 25
    async with await open_store(settings_, SPOOL_MIGRATIONS) as store:
        spool = Spool(store, 1 << 30)
        await spool.load()
        assert await spool.stats() == before


_RUNS: dict[Path, DryRun] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_arbitrary_line_bytes_never_crash_the_dry_run(tmp_path: Path, lines: list[bytes]) -> None:
    """Whatever bytes each line holds, every line gets an outcome and nothing raises."""
    path = tmp_path / "pipeline.yaml"
    if path not in _RUNS:
        found = load_route(pipeline(tmp_path), "siem")
        assert found is not None
        _RUNS[path] = DryRun(found[1], found[0])
    run = _RUNS[path]
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    outcomes = list(judge_file(run, path, io.BytesIO(data)))
    assert len(outcomes) == sum(1 for line in lines if line.replace(b"\n", b" ").strip())
    assert all(
        o.verdict in ("sent", "filtered", "muted", "unformattable", "unrouted", "bad_input") for o in outcomes
    )


def test_a_filter_given_as_a_json_string_names_the_failing_part_of_its_and(tmp_path: Path) -> None:
    """CE's stored form (`{"$and": [...]}` as a JSON string): the reason names the part that fails."""
    config = {
        "version": 1,
        "state": {"path": str(tmp_path / "db.sqlite")},
        "tenants": [{"name": "sim", "url": "https://127.0.0.1:9", "token": {"$env": "NOT_SET_ANYWHERE"}}],
        "logs": {
            "routes": [
                {
                    "name": "j",
                    "tenant": "sim",
                    "alerts": ["dlp"],
                    "format": "json",
                    "filter": '{"$and": [{"severity": "high"}, {"user": {"$regex": "^z"}}]}',
                    "sink": {"type": "file", "path": "out.ndjson"},
                }
            ]
        },
    }
    found = load_route(write_pipeline(tmp_path / "pipeline.yaml", config), "j")
    assert found is not None
    run = DryRun(found[1], found[0])
    lines = b'{"severity": "high", "user": "bob"}\n{"severity": "low"}\n{"severity": "high", "user": "zed"}\n'
    outcomes = list(judge_file(run, Path("in.ndjson"), io.BytesIO(lines)))
    assert [o.reason for o in outcomes] == [
        'filtered out by clause {"user":{"$regex":"^z"}}',
        'filtered out by clause {"severity":"high"}',
        None,
    ]
    assert outcomes[2].data == b'{"severity":"high","user":"zed"}'
