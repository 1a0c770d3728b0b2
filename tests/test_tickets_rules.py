"""Rules, mute, dedup and templates: the decisions of one rule over alerts, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from test_tickets_support import NOW, alert, rule

from ce_daemon.tickets.flow import RuleEngine, group_of, render_ticket, severity_of, ticket_key
from ce_daemon.tickets.settings import Dedup, Mute, Tickets
from ce_daemon.tickets.store import PageCommit
from ce_daemon.tickets.template import MISSING, compile_template, render

# -- templates --------------------------------------------------------------------------------------


def test_fields_and_dotted_paths_are_substituted() -> None:
    record = {"user": "ann", "user_info": {"dept": "sales"}, "cci": 42, "ok": True, "tags": ["a", "b"]}
    assert render("$user of ${user_info.dept}: cci=$cci ok=$ok", record) == "ann of sales: cci=42 ok=true"
    assert render("${tags}/${tags.1}", record) == '["a","b"]/b'
    assert render("costs $$5", record) == "costs $5"


def test_a_missing_field_renders_a_clear_placeholder() -> None:
    assert render("by $user in ${user_info.dept}", {"user_info": {}}) == (
        "by <missing:user> in <missing:user_info.dept>"
    )
    assert render("$x", {"x": None}) == "<missing:x>"


names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
texts = st.text(alphabet=st.characters(blacklist_characters="$"), max_size=20)


@given(st.lists(st.tuples(texts, names), max_size=5), st.dictionaries(names, st.text(max_size=10)))
def test_rendering_substitutes_every_field_and_keeps_the_text(
    parts: list[tuple[str, str]], record: dict[str, str]
) -> None:
    source = "".join(f"{text}${{{name}}}" for text, name in parts)
    expected = "".join(
        text + (record[name] if name in record else MISSING.format(name)) for text, name in parts
    )
    assert render(source, record) == expected
    assert compile_template(source).fields == tuple(name for _, name in parts)


@given(st.text(max_size=60), st.dictionaries(names, st.text(max_size=10) | st.integers()))
def test_any_template_renders_without_raising(source: str, record: dict[str, Any]) -> None:
    assert isinstance(render(source, record), str)


# -- settings ---------------------------------------------------------------------------------------


def test_the_section_validates_mutes_dedup_and_queues() -> None:
    with pytest.raises(ValidationError, match="end must come after"):
        Mute(start=datetime(2026, 1, 2, tzinfo=UTC), end=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValidationError, match="either `fields` or `filter`"):
        Dedup(fields=["user"], filter={"severity": "high"})
    with pytest.raises(ValidationError, match="at least 1"):
        Tickets.model_validate({"rules": [{"name": "r", "tenant": "t", "alerts": ["dlp"], "queues": []}]})
    section = Tickets.model_validate({
        "destinations": [{"name": "d", "plugin": {"type": "webhook"}, "sync_every": "2m"}],
        "rules": [{"name": "r", "tenant": "t", "alerts": ["dlp"],
                   "dedup": {"fields": ["user"], "window": "30m"},
                   "queues": [{"to": "d"}]}],
    })  # fmt: skip
    assert section.destinations[0].sync_every == 120 and section.destinations[0].rate_limit == 1
    assert section.rules[0].dedup is not None and section.rules[0].dedup.window == 1800


# -- decisions --------------------------------------------------------------------------------------


def decide(engine: RuleEngine, alerts: list[dict[str, Any]], now: float = NOW) -> PageCommit:
    commit = PageCommit(engine.rule.config.name)
    engine.decide(alerts, now, commit)
    return commit


def test_the_filter_selects_and_each_alert_opens_its_ticket_without_dedup() -> None:
    engine = RuleEngine(rule(filter={"severity": "high"}))
    commit = decide(engine, [alert(1), alert(2, severity="low"), alert(3)])
    assert [t["title"] for t in commit.tickets] == [
        "Netskope DLP alert: leak 1",
        "Netskope DLP alert: leak 3",
    ]
    assert [c["state"] for c in commit.creates] == ["pending", "pending"]
    assert {t["key"] for t in commit.tickets} == {c["ticket"] for c in commit.creates}
    assert not commit.duplicates


def test_mute_windows_start_and_end_on_time_and_rule_mute_holds_until_its_time() -> None:
    start, end = datetime.fromtimestamp(NOW + 100, UTC), datetime.fromtimestamp(NOW + 200, UTC)
    engine = RuleEngine(
        rule(mute=[{"name": "m", "start": start, "end": end, "filter": {"user": "u1@example.com"}}])
    )
    for now, muted in ((NOW + 99.9, False), (NOW + 100, True), (NOW + 199.9, True), (NOW + 200, False)):
        assert engine.muted(alert(1), now) is muted, now
        assert engine.muted(alert(2), now) is False  # the mute's filter does not match u2
    until = RuleEngine(rule(muted_until=datetime.fromtimestamp(NOW + 50, UTC)))
    assert until.muted(alert(2), NOW + 49) and not until.muted(alert(2), NOW + 50)
    commit = PageCommit("r")
    counts = engine.decide([alert(1), alert(5)], NOW + 150, commit)
    assert (counts.muted, counts.opened) == (1, 1)


def test_dedup_by_fields_updates_within_the_window_and_creates_after_it() -> None:
    engine = RuleEngine(rule(dedup={"fields": ["user", "policy"], "window": "1h"}))
    first = decide(engine, [alert(0), alert(3), alert(1)])  # a0 and a3 share user u0
    assert len(first.tickets) == 2
    [(key, (n, _, payload, to))] = first.duplicates.items()
    assert n == 1 and to == "dest" and orjson.loads(payload())["alert"]["alert_name"] == "leak 3"
    assert key == next(t["key"] for t in first.tickets if t["title"].endswith("leak 0"))
    later = decide(engine, [alert(6), alert(3600 * 3)])  # u0 within the hour; u0 three hours later
    assert len(later.tickets) == 1 and later.tickets[0]["first_alert"] == NOW + 3600 * 3
    assert list(later.duplicates) == [key]


def test_dedup_by_filter_folds_every_matching_alert_into_one_group() -> None:
    engine = RuleEngine(rule(dedup={"filter": {"policy": "pci"}}))
    commit = decide(engine, [alert(1), alert(2), alert(3, policy="hipaa"), alert(4, policy="hipaa")])
    assert len(commit.tickets) == 3  # the pci group, and each hipaa alert alone
    assert [n for n, *_ in commit.duplicates.values()] == [1]


def test_approval_holds_the_create_and_keys_are_stable_and_short() -> None:
    engine = RuleEngine(rule(queues=[{"to": "dest"}, {"to": "other", "require_approval": True}]))
    commit = decide(engine, [alert(1)])
    assert [t["approval"] for t in commit.tickets] == ["not_required", "pending"]
    assert [c["state"] for c in commit.creates] == ["pending", "held"]
    again = decide(RuleEngine(engine.rule), [alert(1)])
    assert [t["key"] for t in again.tickets] == [t["key"] for t in commit.tickets]  # a replay: the same keys
    key = ticket_key("r", 0, "dest", None, "a1")
    assert len(key) <= 64 and key.replace("-", "").isalnum() and key == key.lower()


def test_queue_templates_severity_and_missing_group_fields() -> None:
    engine = RuleEngine(rule(queues=[{"to": "dest", "title": "$policy by $user", "severity": "$sev",
                                      "fields": {"team": "${user_info.team}"}}]))  # fmt: skip
    commit = decide(engine, [alert(1, sev="Very-High")])
    stored = orjson.loads(commit.creates[0]["payload"])
    assert stored["title"] == commit.tickets[0]["title"] == "pci by u1@example.com"
    payload = render_ticket(engine.rule.queues[stored["queue"]], "r", stored["alert"])  # as it is sent
    assert payload["title"] == "pci by u1@example.com" and payload["severity"] == "critical"
    assert payload["fields"] == {"team": "<missing:user_info.team>"}
    assert severity_of("nonsense") == "medium" and severity_of(" LOW ") == "low"
    grouped = rule(dedup={"fields": ["nothere"]})
    assert group_of(grouped, alert(1)) == "<missing>"
