"""A daemon with only its HTTP listener, and the access tables its tests fill (access-control tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ce_daemon.access import AccessStore, AuditLog, Role
from ce_daemon.daemon import state_migrations
from ce_daemon.jobs import Jobs
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.state import open_test_store, state_section

PASSWORD = "correct horse battery staple"


def listener_pipeline(tmp_path: Path, http: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline of no tenant and no route: the daemon, its state and its listener (``http``)."""
    return {
        "version": 1,
        "state": state_section(tmp_path / "state" / "db.sqlite"),
        "health": {"interval": "1h", "syslog": {"enabled": False}},
        "shutdown_grace": "5s",
        "http": dict(http),
    }


async def make_tokens(tmp_path: Path, roles: Mapping[str, Role]) -> dict[str, str]:
    """Tokens named after ``roles`` in the test's state (before the daemon starts): their secrets."""
    async with await open_test_store(
        tmp_path / "state" / "db.sqlite", state_migrations(Jobs.discover())
    ) as store:
        access = AccessStore(store)
        return {name: await access.create_token(name, role) for name, role in roles.items()}


async def add_users(tmp_path: Path, roles: Mapping[str, Role]) -> None:
    """Local users named after ``roles``, each with :data:`PASSWORD`."""
    async with await open_test_store(
        tmp_path / "state" / "db.sqlite", state_migrations(Jobs.discover())
    ) as store:
        for name, role in roles.items():
            await AccessStore(store).add_user(name, role, PASSWORD)


async def audit_events(tmp_path: Path) -> list[dict[str, Any]]:
    """Every audit event of the test's state, oldest first."""
    async with await open_test_store(
        tmp_path / "state" / "db.sqlite", state_migrations(Jobs.discover())
    ) as store:
        return await AuditLog(store).latest(10_000)


@dataclass
class Listener:
    """The running daemon and its listener's base URL."""

    daemon: DaemonProcess
    url: str

    def output(self) -> str:
        """Every line the daemon wrote so far."""
        return "\n".join(self.daemon.raw)


@asynccontextmanager
async def listening(tmp_path: Path, http: Mapping[str, Any]) -> AsyncIterator[Listener]:
    """The daemon serving ``http``; stopped with SIGTERM at the end (exit code 0)."""
    config = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, http))
    async with DaemonProcess(config) as daemon:
        url = str((await daemon.wait_for_event("http.listening"))["url"])
        await daemon.wait_for_event("daemon.ready")
        yield Listener(daemon, url)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers and body text."""

    status: int
    headers: Mapping[str, str]
    text: str


async def request(
    method: str,
    url: str,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> Answer:
    """One request to ``url`` (with ``Authorization: Bearer token`` when given)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.request(method, url, headers=sent, ssl=ssl_context or False, **options) as answer:
            return Answer(answer.status, dict(answer.headers), await answer.text())
    finally:
        if own:
            await client.close()


async def cli(*args: str) -> tuple[int, str, str]:
    """``python -m ce_daemon ARGS``: exit code, stdout and stderr apart (a token is on stdout alone)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ce_daemon", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
