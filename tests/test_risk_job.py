"""The risk job's section: problems refused at their places by `check`, a valid section summarised,
and the read commands on a state that has none yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from ce_daemon.testing import write_pipeline
from ce_daemon.testing.pipelines import run_cli
from ce_daemon.testing.state import state_section


def pipeline(tmp_path: Path, risk: dict[str, Any]) -> Path:
    body: dict[str, Any] = {"state": state_section(tmp_path / "state" / "state.db"), "risk": risk}
    return write_pipeline(tmp_path / "pipeline.yaml", body)


async def test_check_refuses_wrong_references_and_values_at_their_places(tmp_path: Path) -> None:
    config = pipeline(
        tmp_path,
        {
            "sources": [
                {"name": "ns", "netskope": {"tenant": "nope"}},
                {"name": "odd", "plugin": {"type": "knowbe5"}},
                {"name": "both", "plugin": {"type": "x"}, "netskope": {"tenant": "nope"}, "weight": 0},
            ],
            "actions": [
                {"name": "watch", "plugin": {"type": "risk_file", "path": "w.json", "color": 1}},
                {"name": "tell", "notify": {"type": "slak", "url": "https://hooks.slack.com/x"}},
                {"name": "page", "notify": {"type": "pagerduty"}},
                {"name": "neither"},
            ],
            "rules": [
                {"name": "r1", "filter": {"score": {"$lt": 300}}, "actions": ["wacth"]},
                {"name": "r2", "filter": {"score": {"$foo": 1}}, "actions": []},
                {
                    "name": "r3",
                    "entity": "device",
                    "actions": [
                        {"name": "own", "notify": {"type": "webhook", "url": "ftp://x"}},
                    ],
                },
            ],
            "maintenance": {"start": "25:00", "end": "06:00"},
        },
    )
    code, out = await run_cli("check", "-c", str(config), env={})
    assert code == 78, out
    for expected in (
        "risk.sources[0].netskope.tenant: no tenant named 'nope'",
        "risk.sources[1].plugin.type: unknown risk source type 'knowbe5'",
        "risk.sources[2]",
        "risk.actions[0].plugin.color",
        "risk.rules[0].actions[0]: no action named 'wacth'",
        "did you mean 'watch'?",
        "risk.rules[1].filter",
        "risk.maintenance.start",
        "risk.actions[1].notify.type: unknown notification destination type 'slak'",
        "risk.actions[2].notify.routing_key: required key 'routing_key' is missing",
        "risk.actions[3]",
        "risk.rules[2].actions[0].notify.url",
    ):
        assert expected in out, (expected, out)


async def test_a_valid_section_is_summarised(tmp_path: Path) -> None:
    own = {"name": "own", "plugin": {"type": "risk_file", "path": "d.json"}}
    config = pipeline(
        tmp_path,
        {
            "actions": [{"name": "watch", "plugin": {"type": "risk_file", "path": "w.json"}}],
            "rules": [
                {
                    "name": "r1",
                    "filter": {"band": "critical"},
                    "actions": ["watch"],
                    "flap_suppression": "1h",
                },
                {"name": "r2", "entity": "device", "actions": [own]},
            ],
            "maintenance": {"start": "22:00", "end": "02:00"},
        },
    )
    code, out = await run_cli("check", "-c", str(config), env={})
    assert code == 0, out
    assert "0 risk source(s), 2 risk rule(s), 2 risk action(s)" in out


async def test_reading_without_a_state_database_creates_none(tmp_path: Path) -> None:
    config = pipeline(tmp_path, {})
    for action in ("entities", "actions", "trend"):
        code, out = await run_cli("risk", action, "-c", str(config), "--json", env={})
        assert code == 0, out
        assert orjson.loads(out) == {"entities": []}
    assert not (tmp_path / "state" / "state.db").exists()
