"""The ``jira`` ticket destination against the fake Jira Cloud site on loopback."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from ce_jira import JiraSink
from ce_jira.adf import CUT_NOTE, MAX_CHARACTERS, document, plain_text
from ce_jira.fake import EMAIL, TOKEN, FakeJira, parse_jql, valid_adf
from ce_jira.sink import jql_string
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.plugin import PluginContext, Ticket, TicketRef


@pytest.fixture
async def jira() -> AsyncIterator[FakeJira]:
    fake = FakeJira()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(jira: FakeJira, tmp_path: Path, **options: Any) -> AsyncIterator[JiraSink]:
    settings = {"url": jira.url, "email": EMAIL, "api_token": TOKEN, "project": "SEC", **options}
    sink = JiraSink(
        JiraSink.Options.model_validate(settings),
        PluginContext(name="jira", base_dir=tmp_path, data_dir=tmp_path),
    )
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


def ticket(key: str = "rule1-3f2a", **extra: Any) -> Ticket:
    values: dict[str, Any] = {
        "rule": "dlp-critical",
        "title": "DLP: credit card numbers uploaded to Box",
        "description": "User alice@example.com uploaded a file.\nPolicy: block-pci\n\nSeen by Netskope.",
        "severity": "high",
        "fields": {},
        "alert": {"_id": "a1"},
    }
    return Ticket(key=key, **(values | extra))


# -- create, find, update, statuses ----------------------------------------------------------------


async def test_create_opens_an_issue_with_adf_and_the_key_label(jira: FakeJira, tmp_path: Path) -> None:
    """create posts a summary, an ADF description, the ce-daemon-<key> label; the ref is the key and link."""
    async with opened(jira, tmp_path, labels=["netskope"], priorities={"high": "High"}) as sink:
        assert (await sink.health()).ok
        ref = await sink.create(ticket(fields={"customfield_10010": "box", "labels": "pci dlp"}))
    assert ref.id == "SEC-1"
    assert ref.url == f"{jira.url}/browse/SEC-1"
    issue = jira.issues["SEC-1"]
    assert issue.fields["summary"] == "DLP: credit card numbers uploaded to Box"
    assert issue.fields["labels"] == ["netskope", "pci", "dlp", "ce-daemon-rule1-3f2a"]
    assert issue.fields["priority"] == {"name": "High"}
    assert issue.fields["customfield_10010"] == "box"
    assert issue.fields["issuetype"] == {"name": "Task"}
    description = issue.fields["description"]
    assert valid_adf(description)
    assert description["content"][0]["content"] == [
        {"type": "text", "text": "User alice@example.com uploaded a file."},
        {"type": "hardBreak"},
        {"type": "text", "text": "Policy: block-pci"},
    ]
    assert len(description["content"]) == 2


async def test_find_returns_the_newest_issue_with_the_label(jira: FakeJira, tmp_path: Path) -> None:
    """find(key) searches the label in the project and answers the newest issue; an unknown key: None."""
    async with opened(jira, tmp_path) as sink:
        await sink.create(ticket())
        await sink.create(ticket(key="other"))
        second = await sink.create(ticket())
        assert await sink.find("rule1-3f2a") == second
        assert await sink.find("never-seen") is None
    assert jira.searches[0] == 'project = "SEC" AND labels = "ce-daemon-rule1-3f2a" ORDER BY created DESC'


async def test_update_comments_in_adf(jira: FakeJira, tmp_path: Path) -> None:
    """update adds an ADF comment saying how many alerts the group holds; the ref stays the same."""
    async with opened(jira, tmp_path) as sink:
        ref = await sink.create(ticket())
        assert await sink.update(ref, ticket(count=4)) == ref
    (comment,) = jira.issues["SEC-1"].comments
    assert valid_adf(comment["body"])
    assert plain_text(comment["body"]).startswith("Seen again: 4 alerts in this group so far.")


async def test_update_of_a_deleted_issue_is_permanent(jira: FakeJira, tmp_path: Path) -> None:
    """A comment on an issue Jira no longer has (404) is a PermanentError naming it."""
    async with opened(jira, tmp_path) as sink:
        ref = await sink.create(ticket())
        jira.delete(ref.id)
        with pytest.raises(PermanentError, match="SEC-1 is gone"):
            await sink.update(ref, ticket(count=2))


async def test_statuses_map_categories_and_deleted(jira: FakeJira, tmp_path: Path) -> None:
    """Statuses by category: new, in_progress, on_hold (by name), closed; a deleted key is `deleted`."""
    async with opened(jira, tmp_path) as sink:
        refs = [await sink.create(ticket(key=f"k{i}")) for i in range(6)]
        jira.set_status("SEC-2", "In Progress")
        jira.set_status("SEC-3", "Waiting for customer")
        jira.set_status("SEC-4", "Done")
        jira.set_status("SEC-5", "Won't Do")
        jira.delete("SEC-6")
        statuses = await sink.statuses(refs)
    assert [(s.id, s.status, s.raw) for s in statuses] == [
        ("SEC-1", "new", "To Do"),
        ("SEC-2", "in_progress", "In Progress"),
        ("SEC-3", "on_hold", "Waiting for customer"),
        ("SEC-4", "closed", "Done"),
        ("SEC-5", "closed", "Won't Do"),
        ("SEC-6", "deleted", ""),
    ]


async def test_statuses_batch_by_100_and_follow_a_moved_issue(jira: FakeJira, tmp_path: Path) -> None:
    """250 refs take three `key in (…)` searches; a moved issue answers under its new key, known by id."""
    async with opened(jira, tmp_path) as sink:
        refs = [await sink.create(ticket(key=f"k{i}")) for i in range(250)]
        new_key = jira.move("SEC-7", "OPS")
        jira.set_status(new_key, "Done")
        jira.searches.clear()
        statuses = await sink.statuses(refs)
    assert len(jira.searches) == 3
    assert all(search.startswith("key in (") for search in jira.searches)
    assert max(search.count(",") + 1 for search in jira.searches) == 100
    assert statuses[6].id == "SEC-7" and statuses[6].status == "closed"
    assert {s.status for i, s in enumerate(statuses) if i != 6} == {"new"}


async def test_statuses_of_a_key_from_a_gone_project(jira: FakeJira, tmp_path: Path) -> None:
    """A ref whose project Jira does not know (its key 'is invalid') is deleted; the rest are read."""
    async with opened(jira, tmp_path) as sink:
        ref = await sink.create(ticket())
        statuses = await sink.statuses([ref, TicketRef(id="GONE-3")])
    assert [(s.id, s.status) for s in statuses] == [("SEC-1", "new"), ("GONE-3", "deleted")]


async def test_statuses_understand_a_localised_refusal(jira: FakeJira, tmp_path: Path) -> None:
    """A 400 in another language naming a key takes that key out (deleted) and asks again for the rest."""
    german = {"errorMessages": ["Ein Vorgang mit dem Schlüssel 'SEC-1' existiert nicht."], "errors": {}}
    async with opened(jira, tmp_path) as sink:
        refs = [await sink.create(ticket(key=f"k{i}")) for i in range(11)]
        jira.fail_next(status=400, body=orjson.dumps(german))
        statuses = await sink.statuses(refs)
    assert [s.status for s in statuses] == ["deleted"] + ["new"] * 10
    assert jira.searches[-1].startswith('key in ("SEC-2", ')


async def test_statuses_refused_without_naming_a_key_is_permanent(jira: FakeJira, tmp_path: Path) -> None:
    """A 400 that names none of the keys is a PermanentError (nothing is marked deleted on a guess)."""
    async with opened(jira, tmp_path) as sink:
        ref = await sink.create(ticket())
        jira.fail_next(status=400, body=b'{"errorMessages": ["JQL is disabled"], "errors": {}}')
        with pytest.raises(PermanentError, match="JQL is disabled"):
            await sink.statuses([ref])


# -- lost answers and hostile peers ----------------------------------------------------------------


async def test_lost_create_answer_then_find_returns_the_created_issue(jira: FakeJira, tmp_path: Path) -> None:
    """Jira creates the issue, the answer is lost: create raises transient; find(key) gives it, no double."""
    async with opened(jira, tmp_path) as sink:
        jira.drop_after_apply()
        with pytest.raises(TransientError):
            await sink.create(ticket())
        found = await sink.find("rule1-3f2a")
    assert found is not None and found.id == "SEC-1"
    assert len(jira.issues) == 1


async def test_timeout_then_find_returns_the_issue_created_late(jira: FakeJira, tmp_path: Path) -> None:
    """Jira answers too late: create raises transient; once Jira applied it, find(key) gives it, no double."""
    async with opened(jira, tmp_path, timeout=0.2) as sink:
        jira.hold_next()
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.create(ticket())
        jira.release_held()
        await jira.wait_until(lambda: bool(jira.issues), timeout=5)
        found = await sink.find("rule1-3f2a")
    assert found is not None and list(jira.issues) == [found.id]


async def test_429_carries_retry_after(jira: FakeJira, tmp_path: Path) -> None:
    """A 429 with Retry-After is a TransientError carrying it; nothing is created; the retry creates."""
    async with opened(jira, tmp_path) as sink:
        jira.fail_next(status=429, retry_after=17)
        with pytest.raises(TransientError, match="Rate limit exceeded") as caught:
            await sink.create(ticket())
        assert caught.value.retry_after == 17
        assert not jira.issues
        assert (await sink.create(ticket())).id == "SEC-1"


async def test_429_without_retry_after_uses_the_rate_limit_reset(jira: FakeJira, tmp_path: Path) -> None:
    """A 429 with only X-RateLimit-Reset (ISO-8601) gives a retry_after from it (never negative)."""
    jira.rate_limit_headers = {
        "X-RateLimit-Reset": "2000-01-01T00:00:00Z",
        "RateLimit-Reason": "jira-cost-based",
    }
    async with opened(jira, tmp_path) as sink:
        jira.fail_next(status=429)
        with pytest.raises(TransientError) as caught:
            await sink.find("k")
    assert caught.value.retry_after == 0.0


async def test_5xx_is_transient(jira: FakeJira, tmp_path: Path) -> None:
    """A 503 on a status sync is a TransientError."""
    async with opened(jira, tmp_path) as sink:
        jira.fail_next(status=503)
        with pytest.raises(TransientError, match="HTTP 503"):
            await sink.statuses([TicketRef(id="SEC-1")])


async def test_401_is_an_auth_error_and_health_says_so(jira: FakeJira, tmp_path: Path) -> None:
    """Refused credentials: create raises AuthError, health answers not ok; the token appears nowhere."""
    async with opened(jira, tmp_path) as sink:
        jira.refuse_credentials()
        with pytest.raises(AuthError) as caught:
            await sink.create(ticket())
        health = await sink.health()
    assert not health.ok and "401" in health.detail
    assert TOKEN not in str(caught.value) and TOKEN not in health.detail


async def test_400_names_the_refused_fields(jira: FakeJira, tmp_path: Path) -> None:
    """Jira's 400 {errors: {field: message}} is a PermanentError naming each field and its reason."""
    async with opened(jira, tmp_path, issue_type="Epic Saga", fields={"customfield_99": "x"}) as sink:
        with pytest.raises(PermanentError) as caught:
            await sink.create(ticket())
    message = str(caught.value)
    assert "issuetype: valid issue type is required" in message
    assert "customfield_99: Field 'customfield_99' cannot be set" in message


async def test_the_fake_refuses_a_description_that_is_not_adf(jira: FakeJira, tmp_path: Path) -> None:
    """A plain-string description (v2 style) is refused as Jira v3 does, naming ADF."""
    async with opened(jira, tmp_path) as sink:
        fields = sink.issue_fields(ticket()) | {"description": "plain text"}
        with pytest.raises(
            PermanentError, match="description: Operation value must be an Atlassian Document"
        ):
            await sink._call("POST", "/rest/api/3/issue", {"fields": fields})


@pytest.mark.parametrize(
    "body",
    [b"<html>Atlassian maintenance</html>", b"[1, 2]", b'{"id": "1"}'],
    ids=["html", "not-an-object", "no-key"],
)
async def test_garbage_answer_is_transient_and_quoted(jira: FakeJira, tmp_path: Path, body: bytes) -> None:
    """A 2xx body that is not Jira's shape is a TransientError quoting it (find decides, no blind retry)."""
    async with opened(jira, tmp_path) as sink:
        jira.fail_next(status=201, body=body)
        with pytest.raises(TransientError) as caught:
            await sink.create(ticket())
    assert "answered" in str(caught.value)


async def test_oversize_answer_is_not_read(jira: FakeJira, tmp_path: Path) -> None:
    """An answer over max_body fails the call as transient without being parsed."""
    async with opened(jira, tmp_path, max_body=1024) as sink:
        jira.fail_next(status=200, body=b'{"issues": [' + b'{"key": "SEC-1"},' * 200 + b"{}]}")
        with pytest.raises(TransientError, match="more than 1,024 bytes"):
            await sink.find("k")


async def test_secrets_never_in_error_text(jira: FakeJira, tmp_path: Path) -> None:
    """An error page that echoes the Authorization header and the token quotes neither."""
    async with opened(jira, tmp_path) as sink:
        authorization = sink.session().headers["Authorization"]
        echo = f'{{"errorMessages": ["bad header {authorization} token {TOKEN}"], "errors": {{}}}}'
        jira.fail_next(status=400, body=echo.encode())
        with pytest.raises(PermanentError) as caught:
            await sink.create(ticket())
    assert TOKEN not in str(caught.value)
    assert authorization.split()[1] not in str(caught.value)


def test_options_refuse_bad_project_and_labels() -> None:
    """A lower-case project key or a label with a space is refused at validation; the token is SecretStr."""
    base = {"url": "https://acme.atlassian.net", "email": EMAIL, "api_token": TOKEN}
    with pytest.raises(pydantic.ValidationError):
        JiraSink.Options.model_validate({**base, "project": "sec"})
    with pytest.raises(pydantic.ValidationError):
        JiraSink.Options.model_validate({**base, "project": "SEC", "labels": ["two words"]})
    options = JiraSink.Options.model_validate({**base, "project": "SEC"})
    assert TOKEN not in repr(options)


# -- ADF and JQL -----------------------------------------------------------------------------------


UNSAFE = st.sampled_from("\n\r\t\x00\x08\x0b\x1b\x7f \ud800\udfff")


@given(st.text(alphabet=st.characters(codec="utf-8") | UNSAFE, max_size=300))
def test_adf_builder_always_produces_valid_adf(text: str) -> None:
    """Any text (control characters, lone surrogates, line ends) becomes ADF Jira takes, its text kept."""
    doc = document(text)
    assert valid_adf(doc)
    orjson.dumps(doc)  # encodable: no lone surrogates
    kept = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = "".join(
        c for c in kept if c in "\t\n" or not (ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) < 0xE000)
    )
    assert plain_text(doc) == re.sub(r"\n{2,}", "\n\n", kept.strip("\n"))


def test_adf_cuts_long_text_with_a_note() -> None:
    """Text over Jira's limit is cut, with a note saying so."""
    doc = document("x" * (MAX_CHARACTERS + 10))
    assert plain_text(doc).endswith(CUT_NOTE)
    assert len(plain_text(doc)) < 32_767


@given(st.text(max_size=80))
def test_jql_string_round_trips(value: str) -> None:
    """jql_string quotes any text so that a JQL parser reads back exactly that text as one value."""
    clauses, _, _ = parse_jql(f"labels = {jql_string(value)}")
    assert clauses == [("labels", [value])]
