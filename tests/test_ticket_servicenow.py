"""The ``servicenow`` ticket destination against the fake ServiceNow instance on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from ce_servicenow import ServiceNowSink
from ce_servicenow.fake import PASSWORD, TOKEN, USERNAME, FakeServiceNow
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.plugin import PluginContext, Ticket, TicketRef

BASIC = {"username": USERNAME, "password": PASSWORD}


@pytest.fixture
async def snow() -> AsyncIterator[FakeServiceNow]:
    fake = FakeServiceNow()
    async with fake:
        yield fake


def sink_for(url: str, tmp_path: Path, **options: Any) -> ServiceNowSink:
    settings = {"url": url, **(options if "token" in options else BASIC | options)}
    return ServiceNowSink(
        ServiceNowSink.Options.model_validate(settings),
        PluginContext(name="servicenow", base_dir=tmp_path, data_dir=tmp_path),
    )


@contextlib.asynccontextmanager
async def opened(snow: FakeServiceNow, tmp_path: Path, **options: Any) -> AsyncIterator[ServiceNowSink]:
    sink = sink_for(snow.url, tmp_path, **options)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


def ticket(key: str = "rule1-3f2a", **extra: Any) -> Ticket:
    values: dict[str, Any] = {
        "rule": "dlp-critical",
        "title": "DLP: credit card numbers\nuploaded to Box",
        "description": "User alice@example.com uploaded a file.\nPolicy: block-pci",
        "severity": "high",
        "fields": {},
        "alert": {"_id": "a1"},
    }
    return Ticket(key=key, **(values | extra))


# -- create, find, update, statuses ----------------------------------------------------------------


async def test_create_opens_an_incident_with_the_correlation_id(snow: FakeServiceNow, tmp_path: Path) -> None:
    """create posts a one-line short_description, impact/urgency, correlation_id = key; the ref links it."""
    async with opened(
        snow, tmp_path, assignment_group="SOC", caller="ce-bot", fields={"category": "security"}
    ) as sink:
        assert (await sink.health()).ok
        ref = await sink.create(ticket(fields={"subcategory": "dlp", "correlation_id": "hijack"}))
    record = snow.records[ref.id]
    assert record.fields["short_description"] == "DLP: credit card numbers uploaded to Box"
    assert record.fields["description"].startswith("User alice@example.com")
    assert (record.fields["impact"], record.fields["urgency"]) == ("1", "2")
    assert (record.fields["correlation_id"], record.fields["correlation_display"]) == (
        "rule1-3f2a",
        "ce-daemon",
    )
    assert (record.fields["assignment_group"], record.fields["caller_id"]) == ("SOC", "ce-bot")
    assert (record.fields["category"], record.fields["subcategory"]) == ("security", "dlp")
    assert ref.state == {"number": "INC0010001", "table": "incident"}
    assert ref.url == f"{snow.url}/nav_to.do?uri=incident.do%3Fsys_id%3D{ref.id}"
    post = next(r for r in snow.requests if r.method == "POST")
    assert post.query["sysparm_display_value"] == "false"
    assert post.query["sysparm_exclude_reference_link"] == "true"


async def test_secops_table_with_a_bearer_token(snow: FakeServiceNow, tmp_path: Path) -> None:
    """table sn_si_incident and an OAuth token: a SIR record, the caller as requested_by, Bearer sent."""
    async with opened(snow, tmp_path, token=TOKEN, table="sn_si_incident", caller="ce-bot") as sink:
        ref = await sink.create(ticket())
        assert await sink.find("rule1-3f2a") == ref
    record = snow.records[ref.id]
    assert record.table == "sn_si_incident" and record.fields["number"].startswith("SIR")
    assert record.fields["requested_by"] == "ce-bot"
    assert snow.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_find_returns_the_newest_record_for_the_key(snow: FakeServiceNow, tmp_path: Path) -> None:
    """find(key) queries correlation_id=<key>, newest first, one record; an unknown key: None."""
    async with opened(snow, tmp_path) as sink:
        await sink.create(ticket())
        await sink.create(ticket(key="other"))
        newest = await sink.create(ticket())
        assert await sink.find("rule1-3f2a") == newest
        assert await sink.find("never-seen") is None
    assert snow.queries[0] == "correlation_id=rule1-3f2a^ORDERBYDESCsys_created_on"
    get = next(r for r in snow.requests if r.method == "GET")
    assert get.query["sysparm_limit"] == "1"


async def test_update_adds_work_notes(snow: FakeServiceNow, tmp_path: Path) -> None:
    """update PATCHes work_notes saying how many alerts the group holds; the ref stays the same."""
    async with opened(snow, tmp_path) as sink:
        ref = await sink.create(ticket())
        assert await sink.update(ref, ticket(count=3)) == ref
    ((name, note),) = snow.records[ref.id].journal
    assert name == "work_notes" and note.startswith("Seen again: 3 alerts in this group so far.")


async def test_update_of_a_deleted_record_is_permanent(snow: FakeServiceNow, tmp_path: Path) -> None:
    """Work notes on a record the instance no longer has (404) are a PermanentError naming its number."""
    async with opened(snow, tmp_path) as sink:
        ref = await sink.create(ticket())
        snow.delete(ref.id)
        with pytest.raises(PermanentError, match="INC0010001 is gone"):
            await sink.update(ref, ticket(count=2))


async def test_incident_statuses_map_and_batch_by_100(snow: FakeServiceNow, tmp_path: Path) -> None:
    """States 1..8 map to new/in_progress/on_hold/closed; 150 refs: two sys_idIN queries; gone: deleted."""
    async with opened(snow, tmp_path) as sink:
        refs = [await sink.create(ticket(key=f"k{i}")) for i in range(150)]
        for ref, state in zip(refs, ["1", "2", "3", "6", "7", "8", "42"], strict=False):
            snow.set_state(ref.id, state)
        snow.delete(refs[7].id)
        snow.queries.clear()
        statuses = await sink.statuses([*refs, TicketRef(id="not-a-sys-id")])
    assert [(s.status, s.raw) for s in statuses[:8]] == [
        ("new", "New"),
        ("in_progress", "In Progress"),
        ("on_hold", "On Hold"),
        ("closed", "Resolved"),
        ("closed", "Closed"),
        ("closed", "Canceled"),
        ("other", "42"),
        ("deleted", ""),
    ]
    assert statuses[-1].status == "deleted"
    assert [q.count(",") + 1 for q in snow.queries] == [100, 50]
    assert all(q.startswith("sys_idIN") for q in snow.queries)


async def test_secops_statuses_map(snow: FakeServiceNow, tmp_path: Path) -> None:
    """SIR: Draft new; Analysis, Contain, Eradicate, Recover, Review in_progress; Closed, Cancelled closed."""
    states = ["10", "16", "18", "19", "20", "100", "3", "7"]
    async with opened(snow, tmp_path, table="sn_si_incident") as sink:
        refs = [await sink.create(ticket(key=f"k{i}")) for i in range(len(states))]
        for ref, state in zip(refs, states, strict=True):
            snow.set_state(ref.id, state)
        statuses = await sink.statuses(refs)
    assert [s.status for s in statuses] == [
        "new",
        "in_progress",
        "in_progress",
        "in_progress",
        "in_progress",
        "in_progress",
        "closed",
        "closed",
    ]
    assert statuses[6].raw == "Closed"


# -- lost answers and hostile peers ----------------------------------------------------------------


async def test_lost_create_answer_then_find_returns_the_record(snow: FakeServiceNow, tmp_path: Path) -> None:
    """The instance inserts, the answer is lost: create raises transient; find(key) gives it, no double."""
    async with opened(snow, tmp_path) as sink:
        snow.drop_after_apply()
        with pytest.raises(TransientError):
            await sink.create(ticket())
        found = await sink.find("rule1-3f2a")
    (record,) = snow.correlated("rule1-3f2a")
    assert found is not None and found.id == record.sys_id


async def test_timeout_then_find_returns_the_record_made_late(snow: FakeServiceNow, tmp_path: Path) -> None:
    """The instance answers late: create raises transient; once it inserted, find(key) gives it, no double."""
    async with opened(snow, tmp_path, timeout=0.2) as sink:
        snow.hold_next()
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.create(ticket())
        snow.release_held()
        await snow.wait_until(lambda: bool(snow.records), timeout=5)
        found = await sink.find("rule1-3f2a")
    assert found is not None and list(snow.records) == [found.id]


async def test_429_carries_retry_after(snow: FakeServiceNow, tmp_path: Path) -> None:
    """A 429 with Retry-After is a TransientError carrying it, quoting ServiceNow's message."""
    async with opened(snow, tmp_path) as sink:
        snow.fail_next(status=429, retry_after=30)
        with pytest.raises(TransientError, match="Rate limit exceeded") as caught:
            await sink.create(ticket())
        assert caught.value.retry_after == 30
        assert not snow.records


async def test_429_without_retry_after_uses_the_rate_limit_reset(
    snow: FakeServiceNow, tmp_path: Path
) -> None:
    """A 429 with only X-RateLimit-Reset (epoch seconds, here past) gives retry_after 0, never negative."""
    snow.rate_limit_headers = {"X-RateLimit-Reset": "946684800", "X-RateLimit-Rule": "per-user"}
    async with opened(snow, tmp_path) as sink:
        snow.fail_next(status=429)
        with pytest.raises(TransientError) as caught:
            await sink.find("k")
    assert caught.value.retry_after == 0.0


async def test_5xx_is_transient(snow: FakeServiceNow, tmp_path: Path) -> None:
    """A 502 on a status sync is a TransientError."""
    async with opened(snow, tmp_path) as sink:
        snow.fail_next(status=502)
        with pytest.raises(TransientError, match="HTTP 502"):
            await sink.statuses([TicketRef(id="0" * 32)])


async def test_401_is_an_auth_error_and_health_says_so(snow: FakeServiceNow, tmp_path: Path) -> None:
    """Refused credentials: AuthError quoting "User Not Authenticated", health not ok, no password shown."""
    async with opened(snow, tmp_path) as sink:
        snow.refuse_credentials()
        with pytest.raises(AuthError, match="User Not Authenticated") as caught:
            await sink.create(ticket())
        health = await sink.health()
    assert not health.ok and "401" in health.detail
    assert PASSWORD not in str(caught.value) and PASSWORD not in health.detail


async def test_403_acl_is_auth_but_operation_failed_is_permanent(
    snow: FakeServiceNow, tmp_path: Path
) -> None:
    """A 403 ACL refusal is an AuthError; a 403 "Operation Failed" (data policy) refuses the record."""
    acl = orjson.dumps({"error": {"message": "Insufficient rights to insert records", "detail": None}})
    async with opened(snow, tmp_path) as sink:
        snow.fail_next(status=403, body=acl)
        with pytest.raises(AuthError, match="Insufficient rights"):
            await sink.create(ticket())
        with pytest.raises(PermanentError, match="Operation Failed: Data Policy Exception"):
            await sink.create(ticket(fields={"short_description": " "}))


async def test_400_is_permanent_with_the_message(snow: FakeServiceNow, tmp_path: Path) -> None:
    """A table the instance lacks (400 "Invalid table") is a PermanentError quoting it; health says so too."""
    fake = FakeServiceNow(tables=("incident",))
    async with fake, opened(fake, tmp_path, table="sn_si_incident") as sink:
        with pytest.raises(PermanentError, match="Invalid table sn_si_incident"):
            await sink.create(ticket())
        health = await sink.health()
    assert not health.ok and "Invalid table" in health.detail


@pytest.mark.parametrize(
    "body",
    [b"<html><title>Instance Hibernating page</title></html>", b"[]", b'{"result": {"number": "INC1"}}'],
    ids=["hibernating", "not-an-object", "no-sys-id"],
)
async def test_garbage_answer_is_transient_and_quoted(
    snow: FakeServiceNow, tmp_path: Path, body: bytes
) -> None:
    """A 2xx body that is not ServiceNow's shape is a TransientError quoting it."""
    async with opened(snow, tmp_path) as sink:
        snow.fail_next(status=201, body=body)
        with pytest.raises(TransientError, match="answered"):
            await sink.create(ticket())


async def test_oversize_answer_is_not_read(snow: FakeServiceNow, tmp_path: Path) -> None:
    """An answer over max_body fails the call as transient without being parsed."""
    async with opened(snow, tmp_path, max_body=1024) as sink:
        snow.fail_next(status=200, body=b'{"result": [' + b'{"sys_id": "x"},' * 200 + b"{}]}")
        with pytest.raises(TransientError, match="more than 1,024 bytes"):
            await sink.find("k")


async def test_secrets_never_in_error_text(snow: FakeServiceNow, tmp_path: Path) -> None:
    """An error that echoes the password, the basic credential and a token quotes none of them."""
    async with opened(snow, tmp_path) as sink:
        authorization = sink.session().headers["Authorization"]
        echo = {"error": {"message": f"bad {authorization}", "detail": f"pw {PASSWORD}"}, "status": "failure"}
        snow.fail_next(status=400, body=orjson.dumps(echo))
        with pytest.raises(PermanentError) as caught:
            await sink.create(ticket())
    assert PASSWORD not in str(caught.value)
    assert authorization.split()[1] not in str(caught.value)


def test_options_need_exactly_one_credential() -> None:
    """Basic (username and password) or a token, not both, not neither, not half; secrets never print."""
    url = {"url": "https://acme.service-now.com"}
    for bad in ({}, {"username": USERNAME}, {**BASIC, "token": TOKEN}, {"password": PASSWORD}):
        with pytest.raises(pydantic.ValidationError):
            ServiceNowSink.Options.model_validate(url | bad)
    with pytest.raises(pydantic.ValidationError):
        ServiceNowSink.Options.model_validate(url | BASIC | {"table": "problem"})
    options = ServiceNowSink.Options.model_validate(url | BASIC)
    assert PASSWORD not in repr(options)


@given(
    title=st.text(max_size=400),
    description=st.text(max_size=200),
    key=st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True),
)
def test_any_ticket_makes_a_sendable_record(title: str, description: str, key: str) -> None:
    """Any title and description give a JSON record: a non-empty one-line short_description of at most 160."""
    sink = sink_for("https://acme.service-now.com", Path())
    record = sink.record(ticket(key=key, title=title, description=description))
    orjson.dumps(record)
    short = record["short_description"]
    assert short and len(short) <= 160 and "\n" not in short and short == short.strip()
    assert record["correlation_id"] == key
