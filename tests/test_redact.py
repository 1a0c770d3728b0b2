"""Secrets never leave the process: the scrubbing rules, and each exit that applies them."""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon import applog, redact
from ce_daemon.config.load import load_pipeline
from ce_daemon.http import basic, excerpt
from ce_daemon.logs.deadletter import DEADLETTER_MIGRATIONS, DeadLetters
from ce_daemon.redact import LOG_LIMIT, MARKER, MIN_LENGTH, Redactor
from ce_daemon.registry import Registry
from ce_daemon.syslog import HealthChannel
from ce_daemon.systemd import Notifier
from ce_daemon.testing import write_pipeline
from ce_daemon.testing.sockets import NotifySocket, SyslogReceiver
from ce_daemon.testing.state import open_test_store, state_section

SECRET = "s3cr3t-token-0123456789"


@pytest.fixture
def remembered() -> Iterator[str]:
    """SECRET is a configured secret of this process for the test's duration."""
    redact.remember([SECRET])
    yield SECRET
    redact.forget_all()


# -- the rules ----------------------------------------------------------------------------------------


def test_a_remembered_secret_is_replaced_wherever_it_appears() -> None:
    """Every occurrence of a configured value becomes the marker, the text around it stays."""
    redactor = Redactor()
    redactor.remember([SECRET])
    text = f'answered HTTP 400: {{"Authorization": "Bearer {SECRET}", "again": "{SECRET}"}}'
    assert (
        redactor.scrub(text)
        == f'answered HTTP 400: {{"Authorization": "Bearer {MARKER}", "again": "{MARKER}"}}'
    )


def test_escaped_forms_of_a_secret_are_replaced_too() -> None:
    """A secret echoed inside JSON (quotes escaped) or in a URL (percent-encoded) is found as well."""
    secret = 'pa"ss/word+1'
    redactor = Redactor()
    redactor.remember([secret])
    echoed = orjson.dumps({"password": secret}).decode()
    assert redactor.scrub(echoed) == f'{{"password":"{MARKER}"}}'
    assert redactor.scrub("GET /hook?key=pa%22ss%2Fword%2B1 HTTP/1.1") == f"GET /hook?key={MARKER} HTTP/1.1"


def test_values_too_short_to_mean_anything_are_left_alone() -> None:
    """A value under MIN_LENGTH characters is not scrubbed: it would garble every line."""
    redactor = Redactor()
    redactor.remember(["abc", "x" * (MIN_LENGTH - 1)])
    assert redactor.scrub("abc xxxxx") == "abc xxxxx"


def test_a_secret_containing_another_is_replaced_whole() -> None:
    """The longer of two overlapping secrets is replaced as one, leaving no piece of it."""
    redactor = Redactor()
    redactor.remember(["abcdef", "abcdefghijkl"])
    assert redactor.scrub("x abcdefghijkl y") == f"x {MARKER} y"


def test_the_start_of_a_secret_left_by_someone_elses_cut_is_replaced() -> None:
    """A quote cut in the middle of a secret (by a plugin, before any exit) loses what is left of it."""
    redactor = Redactor()
    redactor.remember([SECRET])
    cut = f'proxy said: {{"Authorization": "Bearer {SECRET[:9]}'
    assert redactor.scrub(cut) == f'proxy said: {{"Authorization": "Bearer {MARKER}'
    assert redactor.scrub(cut + "...") == f'proxy said: {{"Authorization": "Bearer {MARKER}...'


def test_long_text_is_cut_after_scrubbing() -> None:
    """A limit cuts the text (marked with an ellipsis) once the secrets are out of it."""
    redactor = Redactor()
    redactor.remember([SECRET])
    cleaned = redactor.scrub("x" * 10 + SECRET + "y" * 1000, limit=30)
    assert cleaned == "x" * 10 + MARKER + "y" * 9 + "…"
    assert len(cleaned) == 30


_LETTERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=MIN_LENGTH, max_size=40)
_OTHER = st.text(alphabet='0123456789 :{}"', max_size=200)


@given(secret=_LETTERS, before=_OTHER, after=_OTHER, limit=st.integers(min_value=1, max_value=300))
def test_no_cut_ever_leaves_the_start_of_a_secret(secret: str, before: str, after: str, limit: int) -> None:
    """Whatever surrounds a secret and wherever the limit falls, not even its first characters remain."""
    redactor = Redactor()
    redactor.remember([secret])
    cleaned = redactor.scrub(before + secret + after, limit)
    assert secret[:MIN_LENGTH] not in cleaned
    assert len(cleaned) <= limit


@given(secret=_LETTERS, before=_OTHER, data=st.data())
def test_a_quote_cut_inside_a_secret_keeps_none_of_it(secret: str, before: str, data: st.DataObject) -> None:
    """A text someone cut inside a secret, at MIN_LENGTH characters or more, shows none of them."""
    redactor = Redactor()
    redactor.remember([secret])
    kept = data.draw(st.integers(min_value=MIN_LENGTH, max_value=len(secret)))
    assert secret[:MIN_LENGTH] not in redactor.scrub(before + secret[:kept])


def test_registered_derived_values_are_scrubbed_and_bounded() -> None:
    """A value a plugin registers is scrubbed; beyond DERIVED_KEPT the oldest ones are let go."""
    redactor = Redactor()
    tokens = [f"access-token-{n:05d}" for n in range(redact.DERIVED_KEPT + 1)]
    for token in tokens:
        redactor.register(token)
    assert redactor.scrub(tokens[-1]) == MARKER
    assert redactor.scrub(tokens[0]) == tokens[0]


def test_scrub_data_cleans_every_string_of_a_snapshot() -> None:
    """Nested dictionaries and lists are scrubbed string by string; numbers and keys are kept."""
    redactor = Redactor()
    redactor.remember([SECRET])
    snapshot = {
        "components": [{"detail": f"echo {SECRET}", "restarts": 2}],
        "last_reload": {"problems": [SECRET]},
    }
    assert redactor.scrub_data(snapshot) == {
        "components": [{"detail": f"echo {MARKER}", "restarts": 2}],
        "last_reload": {"problems": [MARKER]},
    }


def test_the_secrets_of_a_pipeline_are_its_references_and_secret_settings(tmp_path: Path) -> None:
    """Resolved $env/$file references (even in a plain field, like a header) and SecretStr options count."""
    (tmp_path / "hook-password").write_text("file-password-42\n")
    config = {
        "state": state_section(tmp_path / "db.sqlite"),
        "tenants": [{"name": "t", "url": "https://t.goskope.com", "token": {"$env": "NS_TOKEN"}}],
        "logs": {
            "routes": [
                {
                    "name": "r",
                    "tenant": "t",
                    "alerts": ["dlp"],
                    "sink": {
                        "type": "webhook",
                        "url": "https://hook.example.net/in",
                        "headers": {"X-Api-Key": {"$env": "HOOK_KEY"}},
                        "auth": {"type": "basic", "username": "u", "password": {"$file": "hook-password"}},
                    },
                }
            ]
        },
    }
    path = write_pipeline(tmp_path / "pipeline.yaml", config)
    environ = {"NS_TOKEN": "netskope-token-0123", "HOOK_KEY": "header-key-4567"}
    loaded = load_pipeline(path, Registry.discover(), environ=environ)
    assert redact.pipeline_secrets(loaded) == {"netskope-token-0123", "header-key-4567", "file-password-42"}


# -- the exits ----------------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[None]:
    """Application logs configured as the daemon configures them, put back to defaults afterwards."""
    applog.configure("info", "json")
    yield
    applog.reset()


def test_log_lines_and_their_tracebacks_are_scrubbed(
    remembered: str, json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret in a log value, in an exception passed as a value, and in a traceback, is not printed."""
    log = structlog.get_logger("test")
    try:
        raise ValueError(f"the proxy answered: Bearer {remembered}")
    except ValueError as exc:
        log.exception("sink.batch_failed", error=str(exc), cause=exc)
    line = orjson.loads(capsys.readouterr().out)
    assert remembered not in str(line)
    assert line["error"] == f"the proxy answered: Bearer {MARKER}"
    assert line["cause"] == f"the proxy answered: Bearer {MARKER}"
    assert f"ValueError: the proxy answered: Bearer {MARKER}" in line["exception"]


async def test_a_stray_tasks_exception_is_logged_as_json_without_the_secret(
    remembered: str, json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """asyncio's "Task exception was never retrieved" (stdlib logging) is a JSON line, the secret scrubbed."""

    async def stray() -> None:
        raise RuntimeError(f"the proxy answered: Bearer {remembered}")

    task = asyncio.create_task(stray())
    await asyncio.wait({task})
    del task  # never awaited: asyncio logs the exception when the task is collected
    gc.collect()
    captured = capsys.readouterr()
    [line] = [orjson.loads(text) for text in captured.out.splitlines()]
    assert remembered not in captured.out + captured.err
    assert (line["logger"], line["level"]) == ("asyncio", "error")
    assert line["event"].startswith("Task exception was never retrieved")
    assert f"RuntimeError: the proxy answered: Bearer {MARKER}" in line["exception"]


def test_a_library_record_is_cut_like_ours(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A standard-library record of any length is one JSON line, its message cut to LOG_LIMIT."""
    logging.getLogger("aiohttp.server").error("Error handling request: %s", "x" * (2 * LOG_LIMIT))
    [line] = [orjson.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["logger"] == "aiohttp.server"
    assert len(line["event"]) == LOG_LIMIT and line["event"].startswith("Error handling request: xxx")


async def test_syslog_health_fields_are_scrubbed_and_cut(remembered: str, tmp_path: Path) -> None:
    """A health message's text fields reach syslog without the secret, each cut to SYSLOG_LIMIT."""
    async with SyslogReceiver("unix", directory=tmp_path) as receiver:
        channel = HealthChannel(receiver.target, pid=1)
        channel.emit("component.degraded", "warning", reason=f"echo Bearer {remembered} " + "z" * 1000)
        channel.close()
        message = await receiver.receive()
    assert remembered not in message
    assert f"echo Bearer {MARKER}" in message
    assert len(message) < redact.SYSLOG_LIMIT + 100


async def test_dead_letter_reasons_are_scrubbed(remembered: str, tmp_path: Path) -> None:
    """The reason kept with a dead letter holds no secret, however the target quoted it."""
    async with await open_test_store(tmp_path / "db.sqlite", DEADLETTER_MIGRATIONS) as store:
        dead = DeadLetters(store)
        await dead.add("r", "t/alerts/dlp", {"_id": "a"}, b"{}", f"HTTP 400: echo Bearer {remembered}")
        [row] = await dead.oldest()
    assert row["reason"] == f"HTTP 400: echo Bearer {MARKER}"


async def test_systemd_status_line_is_scrubbed(remembered: str, tmp_path: Path) -> None:
    """The STATUS= line systemctl shows carries no secret (a reload rejection may quote a target)."""
    async with NotifySocket(tmp_path) as notify:
        notifier = Notifier.from_env(notify.env)
        notifier.status(f"reload rejected (sink unhealthy: echo {remembered}); still gen=1")
        notifier.close()
        assert (
            await notify.receive() == f"STATUS=reload rejected (sink unhealthy: echo {MARKER}); still gen=1"
        )


def test_http_basic_registers_the_encoded_pair() -> None:
    """The base64 `user:password` of basic auth is scrubbed too: it is what an echo would quote."""
    from pydantic import SecretStr

    header = basic("user", SecretStr("basic-password-99"))
    encoded = base64.b64encode(b"user:basic-password-99").decode()
    try:
        assert header == f"Basic {encoded}"
        assert redact.scrub(f"echo: Authorization: Basic {encoded}") == f"echo: Authorization: Basic {MARKER}"
    finally:
        redact.forget_all()


def test_an_excerpt_of_a_remote_answer_is_scrubbed_before_it_is_cut(remembered: str) -> None:
    """Quoting the start of an answer never leaves the start of a secret it echoed."""
    body = ("x" * 290 + f" Bearer {remembered}").encode()
    quoted = excerpt(body)
    assert remembered[:MIN_LENGTH] not in quoted
    assert len(quoted) <= redact.REMOTE_LIMIT
