"""Sharing and polling, end to end through the components, on both state backends.

The destination and source here are plugins written to the contract in this file (an in-memory list
and a scripted source): what is under test is the core's part — selection by the rules, trust and
allowlist, caps with the dropped counted, incremental and full pushes, retraction, the record kept
only after an acknowledgement (a lost answer is pushed again, never doubled), sudden death only
after a whole poll, checkpoints, refusals counted. The real plugins have their own tests against
their vendors' servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ce_daemon.errors import TransientError
from ce_daemon.filter import compile_filter
from ce_daemon.metrics import Metrics
from ce_daemon.pipeline import Runtime
from ce_daemon.plugin import (
    IocPage,
    IocRecord,
    PluginContext,
    PluginOptions,
    Pull,
    Push,
    PushResult,
    ThreatSink,
    ThreatSource,
)
from ce_daemon.registry import PluginInfo
from ce_daemon.store import Store
from ce_daemon.testing.state import open_test_store
from ce_daemon.threats.components import Sharer as SharerComponent
from ce_daemon.threats.components import SourcePoller, alert_records
from ce_daemon.threats.resolve import ResolvedDestination, ResolvedRule, ResolvedSource, ThreatPlan
from ce_daemon.threats.settings import Destination, SharingRule, Source, Threats
from ce_daemon.threats.share import ShareStore
from ce_daemon.threats.store import THREATS_MIGRATIONS, IocStore

NOW = 1_790_000_000.0


@dataclass
class Remote:
    """What an in-memory destination holds, and what it was sent."""

    entries: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pushes: list[Push] = field(default_factory=list)
    lose_answers: int = 0
    refuse: set[str] = field(default_factory=set)


REMOTES: dict[str, Remote] = {}


class ListOptions(PluginOptions):
    incremental: bool = True
    max_entries: int | None = None
    max_bytes: int | None = None


class ListSink(ThreatSink[ListOptions]):
    """A destination holding a list in memory; it can apply a push and lose the answer."""

    api_version = 1

    def __init__(self, options: ListOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.types = frozenset({"url", "domain", "hostname", "ipv4", "sha256", "md5"})
        self.incremental = options.incremental
        self.max_entries, self.max_bytes = options.max_entries, options.max_bytes
        self.remote = REMOTES.setdefault(context.name, Remote())

    async def push(self, push: Push) -> PushResult:
        remote = self.remote
        remote.pushes.append(push)
        if push.full:
            remote.entries.clear()
        refused = [(i.value, "not accepted here") for i in push.add if i.value in remote.refuse]
        for ioc in push.add:
            if ioc.value not in remote.refuse:
                remote.entries[ioc.value] = (*ioc.tags, push.tag)
        for ioc in push.remove:
            remote.entries.pop(ioc.value, None)
        if remote.lose_answers:
            remote.lose_answers -= 1
            raise TransientError("connection reset before the answer")
        return PushResult(refused)


@dataclass
class Script:
    """What a scripted source returns on each pull."""

    pages: list[list[IocPage]] = field(default_factory=list)
    fail_after: int | None = None
    pulls: list[Pull] = field(default_factory=list)


SCRIPTS: dict[str, Script] = {}


class ScriptOptions(PluginOptions):
    full_list: bool = False


class ScriptSource(ThreatSource[ScriptOptions]):
    api_version = 1

    def __init__(self, options: ScriptOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.full_list = options.full_list
        self.script = SCRIPTS[context.name]

    async def pull(self, request: Pull) -> AsyncIterator[IocPage]:
        self.script.pulls.append(request)
        pages = self.script.pages.pop(0) if self.script.pages else []
        for index, page in enumerate(pages):
            if self.script.fail_after is not None and index >= self.script.fail_after:
                raise TransientError("the feed went away mid-poll")
            yield page


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    REMOTES.clear()
    SCRIPTS.clear()
    opened: Store = await open_test_store(tmp_path / "state.db", THREATS_MIGRATIONS)
    async with opened:
        yield opened


def runtime(store: Store, tmp_path: Path) -> Runtime:
    return cast(Runtime, SimpleNamespace(store=store, metrics=Metrics(), data_dir=tmp_path))


def info(cls: type[Any], kind: str) -> PluginInfo:
    return PluginInfo(kind, cls.__name__, f"tests:{cls.__name__}", "tests", "0", cls, None, 1)


def plan(
    settings: Threats,
    *,
    rules: list[SharingRule],
    sink: ListOptions | None = None,
    echo_of: str | None = None,
) -> ThreatPlan:
    destination = Destination(name="list", plugin={"type": "list"}, echo_of=echo_of)
    resolved = ResolvedDestination(
        destination,
        info(ListSink, "threat_sink"),
        sink or ListOptions(),
        tuple(
            ResolvedRule(rule, compile_filter(rule.filter) if rule.filter else None, rule.name)
            for rule in rules
        ),
        "fp",
    )
    return ThreatPlan(settings, {}, {"list": resolved}, "fp")


async def share(store: Store, tmp_path: Path, plan_: ThreatPlan) -> SharerComponent:
    """One push cycle of the plan's destination (its failure, if any, recorded as the daemon would)."""
    destination = plan_.destinations["list"]
    context = PluginContext("list", tmp_path, tmp_path)
    sharer = SharerComponent("threat_destination:list", destination, plan_, runtime(store, tmp_path),
                             context=context, interval=60)  # fmt: skip
    try:
        await sharer.once()
    finally:
        await sharer.close()
    return sharer


async def feed(store: Store, source: str, values: dict[str, dict[str, Any]], *, full: bool = False) -> None:
    """Store what ``source`` says of ``values`` (one poll)."""
    from ce_daemon.threats.intake import Intake
    from ce_daemon.threats.settings import Lifetime

    intake = Intake(Threats().guards)
    sightings = [
        s
        for value, extra in values.items()
        if (s := intake.record(IocRecord(value, **extra), NOW)) is not None
    ]
    await IocStore(store).ingest(source, sightings, full_list=full, lifetime=Lifetime(), now=NOW)


def rule(name: str = "all", **fields: Any) -> SharingRule:
    return SharingRule(name=name, to="list", **fields)


async def test_a_rule_shares_what_its_sources_say_is_malicious_and_the_allowlist_retracts(
    store: Store, tmp_path: Path
) -> None:
    """Malicious by the higher-ranked source → shared; safe → not; allowlisted later → retracted."""
    await feed(store, "misp", {"evil.biz": {}, "corp.biz": {}, "good.biz": {}})
    await feed(store, "vt", {"good.biz": {"verdict": "safe"}})
    settings = Threats(trust=[{"name": "vt", "rank": 90}])  # type: ignore[list-item]
    await share(store, tmp_path, plan(settings, rules=[rule()]))
    remote = REMOTES["list"]
    assert sorted(remote.entries) == ["corp.biz", "evil.biz"]
    assert remote.entries["evil.biz"][-1] == "ce-daemon"  # marked as ours
    allowlisted = Threats(trust=settings.trust, allowlist=["corp.biz"])
    await share(store, tmp_path, plan(allowlisted, rules=[rule()]))
    assert sorted(remote.entries) == ["evil.biz"]
    assert [i.value for i in remote.pushes[-1].remove] == ["corp.biz"]
    assert [i.value for i in remote.pushes[-1].add] == []


async def test_types_reputation_tags_and_the_filter_narrow_a_rule(store: Store, tmp_path: Path) -> None:
    await feed(store, "misp", {
        "evil.biz": {"reputation": 9, "tags": ("apt",)},
        "meh.biz": {"reputation": 3, "tags": ("apt",)},
        "http://evil.biz/x": {"reputation": 9, "tags": ("apt",)},
        "spam.biz": {"reputation": 9, "tags": ("spam",)},
        "crit.biz": {"reputation": 9, "tags": ("apt", "test"), "severity": "critical"},
    })  # fmt: skip
    narrowed = rule(
        types=["domain"], min_reputation=7, tags={"include": ["apt"], "exclude": ["test"]},
        filter={"value": {"$ne": "nothing.biz"}},
    )  # fmt: skip
    await share(store, tmp_path, plan(Threats(), rules=[narrowed]))
    assert sorted(REMOTES["list"].entries) == ["evil.biz"]


async def test_caps_keep_the_first_by_the_rule_order_and_report_the_dropped(
    store: Store, tmp_path: Path
) -> None:
    """Order by reputation, cap 2 entries: the two highest are kept, the third is counted as dropped."""
    await feed(
        store, "misp", {"a.biz": {"reputation": 6}, "b.biz": {"reputation": 9}, "c.biz": {"reputation": 8}}
    )
    capped = rule(order="reputation", cap={"entries": 2})
    sharer = await share(store, tmp_path, plan(Threats(), rules=[capped]))
    assert sorted(REMOTES["list"].entries) == ["b.biz", "c.biz"]
    assert sharer.status.counters["dropped"] == 1
    [push] = await ShareStore(store).pushes()
    assert (push.listed, push.dropped) == (2, 1)
    # the destination's own cap applies to the union of its rules too
    await share(
        store, tmp_path, plan(Threats(), rules=[rule(order="reputation")], sink=ListOptions(max_entries=1))
    )
    assert sorted(REMOTES["list"].entries) == ["b.biz"]


async def test_a_lost_answer_is_pushed_again_and_nothing_is_doubled(store: Store, tmp_path: Path) -> None:
    """The destination applied the push but the answer was lost: nothing is recorded, the next run sends
    the same additions again (the plugin looks before adding), and after that the list is settled."""
    await feed(store, "misp", {"evil.biz": {}, "worse.biz": {}})
    REMOTES["list"] = Remote(lose_answers=1)
    sharer = await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    assert sharer.status.counters["failures"] == 1
    assert await ShareStore(store).held("list") == {}
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    remote = REMOTES["list"]
    assert [sorted(i.value for i in p.add) for p in remote.pushes] == [["evil.biz", "worse.biz"]] * 2
    assert sorted(remote.entries) == ["evil.biz", "worse.biz"]
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    assert len(remote.pushes) == 2  # nothing changed: nothing pushed


async def test_refused_entries_are_reported_and_not_offered_again(store: Store, tmp_path: Path) -> None:
    await feed(store, "misp", {"evil.biz": {}, "odd.biz": {}})
    REMOTES["list"] = Remote(refuse={"odd.biz"})
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    held = await ShareStore(store).held("list")
    assert {key[1]: h.state for key, h in held.items()} == {"evil.biz": "shared", "odd.biz": "rejected"}
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    assert len(REMOTES["list"].pushes) == 1
    assert (await ShareStore(store).where_shared("domain", "odd.biz"))[0][2:] == (
        "rejected",
        "not accepted here",
    )


async def test_a_full_list_destination_gets_the_whole_list_when_it_changed(
    store: Store, tmp_path: Path
) -> None:
    await feed(store, "feed", {"a.biz": {}, "b.biz": {}}, full=True)
    full = ListOptions(incremental=False)
    await share(store, tmp_path, plan(Threats(), rules=[rule()], sink=full))
    await share(store, tmp_path, plan(Threats(), rules=[rule()], sink=full))
    await feed(store, "feed", {"a.biz": {}}, full=True)  # b.biz delisted: the whole list again, without it
    await share(store, tmp_path, plan(Threats(), rules=[rule()], sink=full))
    remote = REMOTES["list"]
    assert [(p.full, sorted(i.value for i in p.add)) for p in remote.pushes] == [
        (True, ["a.biz", "b.biz"]),
        (True, ["a.biz"]),
    ]
    assert sorted(remote.entries) == ["a.biz"]


async def test_expired_indicators_are_retracted(store: Store, tmp_path: Path) -> None:
    await feed(store, "misp", {"old.biz": {}, "new.biz": {}})
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    async with store.transaction() as tx:
        await tx.execute("UPDATE threat_iocs SET expires_at = 1 WHERE value = 'old.biz'")
    assert await IocStore(store).expire() == 1
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    assert sorted(REMOTES["list"].entries) == ["new.biz"]


async def test_a_muted_rule_shares_nothing_new_and_retracts_nothing(store: Store, tmp_path: Path) -> None:
    await feed(store, "misp", {"first.biz": {}})
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))
    await feed(store, "misp", {"second.biz": {}})
    async with store.transaction() as tx:
        await tx.execute("UPDATE threat_iocs SET active = 0 WHERE value = 'first.biz'")
    muted = rule(muted_until=datetime.now(UTC) + timedelta(hours=1))
    await share(store, tmp_path, plan(Threats(), rules=[muted]))
    assert sorted(REMOTES["list"].entries) == ["first.biz"]
    await share(store, tmp_path, plan(Threats(), rules=[rule()]))  # unmuted: catches up
    assert sorted(REMOTES["list"].entries) == ["second.biz"]


async def test_what_only_the_destinations_own_system_says_is_not_echoed_back(
    store: Store, tmp_path: Path
) -> None:
    """A destination that is also a source (``echo_of``) never gets back what only that source said."""
    await feed(store, "misp", {"from-misp.biz": {}, "both.biz": {}})
    await feed(store, "netskope", {"from-netskope.biz": {}, "both.biz": {}})
    await share(store, tmp_path, plan(Threats(), rules=[rule()], echo_of="misp"))
    assert sorted(REMOTES["list"].entries) == ["both.biz", "from-netskope.biz"]


# -- sources ------------------------------------------------------------------------------------


async def poll(store: Store, tmp_path: Path, name: str, *, full: bool = False) -> SourcePoller:
    source = ResolvedSource(Source(name=name, plugin={"type": "script"}), info(ScriptSource, "threat_source"),
                            ScriptOptions(full_list=full), (), "fp")  # fmt: skip
    destination = Destination(name="list", plugin={"type": "list"}, tag="ours")
    sink = ResolvedDestination(destination, info(ListSink, "threat_sink"), ListOptions(), (), "")
    plan_ = ThreatPlan(Threats(), {name: source}, {"list": sink}, "fp")
    poller = SourcePoller(f"threat_source:{name}", source, plan_, runtime(store, tmp_path),
                          context=PluginContext(name, tmp_path, tmp_path), interval=60)  # fmt: skip
    try:
        await poller.once()
    finally:
        await poller.close()
    return poller


def page(
    *values: str, checkpoint: str | None = None, refused: tuple[tuple[str, str], ...] = (), **extra: Any
) -> IocPage:
    return IocPage([IocRecord(v, **extra) for v in values], refused, checkpoint)


async def test_an_incremental_source_resumes_from_its_checkpoint_and_skips_our_own(
    store: Store, tmp_path: Path
) -> None:
    SCRIPTS["misp"] = Script(pages=[
        [page("a.biz", checkpoint="100"), page("b.biz", checkpoint="200")],
        [page("c.biz", checkpoint="300"), IocPage([IocRecord("mine.biz", tags=("ours",))], (), "301")],
    ])  # fmt: skip
    await poll(store, tmp_path, "misp")
    await poll(store, tmp_path, "misp")
    script = SCRIPTS["misp"]
    assert [p.checkpoint for p in script.pulls] == [None, "200"]
    assert script.pulls[0].exclude_tags == frozenset({"ours"})
    stored = {m.indicator.value for m in await IocStore(store).active_merged()}
    assert stored == {"a.biz", "b.biz", "c.biz"}
    [row] = await IocStore(store).sources()
    assert (row.checkpoint, row.polls) == ("301", 2)


async def test_a_full_list_poll_that_fails_midway_delists_nothing(store: Store, tmp_path: Path) -> None:
    SCRIPTS["feed"] = Script(
        pages=[[page("a.biz", "b.biz")], [page("a.biz"), page("c.biz")], [page("a.biz")]]
    )
    await poll(store, tmp_path, "feed", full=True)
    SCRIPTS["feed"].fail_after = 1
    poller = await poll(store, tmp_path, "feed", full=True)
    assert poller.status.counters["failures"] == 1
    assert {m.indicator.value for m in await IocStore(store).active_merged()} == {"a.biz", "b.biz"}
    [row] = await IocStore(store).sources()
    assert "mid-poll" in row.last_error
    SCRIPTS["feed"].fail_after = None
    await poll(store, tmp_path, "feed", full=True)
    assert {m.indicator.value for m in await IocStore(store).active_merged()} == {"a.biz"}
    [row] = await IocStore(store).sources()
    assert row.last_error == ""


async def test_bad_records_are_refused_and_counted_without_losing_the_good(
    store: Store, tmp_path: Path
) -> None:
    SCRIPTS["misp"] = Script(pages=[[
        IocPage([IocRecord("good.biz"), IocRecord("not a value"), IocRecord("10.0.0.1"),
                 IocRecord("x.biz", severity="apocalyptic"), IocRecord("ab" * 16, "sha256")],
                [("pattern [broken", "unparseable pattern")], "1"),
    ]])  # fmt: skip
    poller = await poll(store, tmp_path, "misp")
    assert {m.indicator.value for m in await IocStore(store).active_merged()} == {"good.biz"}
    assert poller.status.counters["rejected"] == 5
    [row] = await IocStore(store).sources()
    assert row.rejected == 5


def test_netskope_alerts_give_file_hashes_and_urls() -> None:
    malware = {"alert_type": "Malware", "local_sha256": "a" * 64, "local_md5": "b" * 32, "sha256": "a" * 64,
               "malware_name": "EICAR", "malware_type": "Virus", "timestamp": 1_700_000_000}  # fmt: skip
    malsite = {"alert_type": "malsite", "url": "http://bad.example.net/x", "malsite_category": "Phishing"}
    records = (
        list(alert_records(malware))
        + list(alert_records(malsite))
        + list(alert_records({"alert_type": "dlp"}))
    )
    assert [(r.type, r.value[:4]) for r in records] == [
        ("sha256", "aaaa"), ("sha256", "aaaa"), ("md5", "bbbb"), ("url", "http")
    ]  # fmt: skip
    assert records[0].tags == ("netskope", "malware", "Virus") and records[-1].tags[-1] == "Phishing"
