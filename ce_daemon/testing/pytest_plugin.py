"""pytest fixtures for ce-daemon and its plugins (registered through the ``pytest11`` entry point).

``--state-backend=sqlite|postgresql`` selects the state backend of the whole run. With ``postgresql``
every test gets a database of its own on ``127.0.0.1:5432`` (user ``postgres``, trust authentication),
created before it and dropped after it; an unreachable server fails the test, it is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ce_daemon.testing.demo import DemoProcess, running_demo
from ce_daemon.testing.sockets import NotifySocket, SyslogReceiver
from ce_daemon.testing.state import (
    POSTGRES_SERVER,
    STATE_URL_VARIABLE,
    PostgresUnreachableError,
    create_database,
    drop_database,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--state-backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the state backend every test runs on (postgresql: a fresh database per test on "
        f"{POSTGRES_SERVER})",
    )


@pytest.fixture(autouse=True)
def state_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The selected backend; with PostgreSQL, the test's own database is named in ``CE_TEST_STATE_URL``."""
    backend = str(request.config.getoption("--state-backend"))
    if backend == "sqlite":
        monkeypatch.delenv(STATE_URL_VARIABLE, raising=False)
        yield backend
        return
    with _database() as url:
        monkeypatch.setenv(STATE_URL_VARIABLE, url)
        yield backend


@pytest.fixture
async def demo(tmp_path: Path, state_backend: str) -> AsyncIterator[DemoProcess]:
    """``ce-daemon demo`` running in the test's folder (``demo/``), for tests of what a person sees."""
    if state_backend != "sqlite":
        pytest.skip("the demo keeps its state in SQLite whatever the run's backend: one pass is enough")
    async with running_demo(tmp_path / "demo") as running:
        yield running


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database's URL whatever the selected backend (a move from SQLite, say)."""
    with _database() as url:
        yield url


@contextlib.contextmanager
def _database() -> Iterator[str]:
    """A database of its own on :data:`POSTGRES_SERVER`, dropped afterwards (FORCE: a daemon the test
    killed may have left connections behind)."""
    try:
        url = asyncio.run(create_database())
    except PostgresUnreachableError as exc:
        pytest.fail(f"--state-backend=postgresql: {exc}", pytrace=False)
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    """A bound sd_notify datagram socket; pass ``notify_socket.env`` to the daemon."""
    async with NotifySocket(tmp_path) as sock:
        yield sock


@pytest.fixture
async def syslog_receiver() -> AsyncIterator[SyslogReceiver]:
    """A UDP syslog receiver on loopback; ``syslog_receiver.target`` goes into ``health.syslog.target``."""
    async with SyslogReceiver("udp") as receiver:
        yield receiver
