"""The tenant simulator in a process of its own (``ce-daemon simulate``), for the demo and benchmarks.

A simulator sharing the daemon's event loop stamps a request's arrival only when its handler gets
the loop, which can be tens of milliseconds after the request arrived while the daemon parses a
page: its one-second rate-limit window then holds requests the daemon sent more than a second
apart, and it answers 429s a real tenant would not. In its own process it stamps them on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ce_daemon.testing.harness import terminate


@dataclass
class SimulatorProcess:
    """A running ``ce-daemon simulate`` child: its base URL, and its statistics on request."""

    process: asyncio.subprocess.Process
    url: str

    async def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats`` (see `SimulatorStats.to_dict`)."""
        return await self._get("stats")

    async def served(self) -> dict[str, list[dict[str, Any]]]:
        """``GET /_sim/served``: the pages built per endpoint (see `ServedPage`), the last 10,000 of each."""
        return await self._get("served")

    async def leases(self) -> dict[str, Any]:
        """``GET /_sim/leases`` (see `LeaseLedger.report`)."""
        return await self._get("leases")

    async def lists(self) -> dict[str, Any]:
        """``GET /_sim/lists``: the URL lists (deployed and pending entries), file-hash lists and deploys."""
        return await self._get("lists")

    async def uci(self) -> dict[str, Any]:
        """``GET /_sim/uci``: every user's UCI, history and anomalies (see `UciBook.report`)."""
        return await self._get("uci")

    async def scim(self) -> dict[str, Any]:
        """``GET /_sim/scim``: the SCIM users and groups with their members (see `ScimDirectory.report`)."""
        return await self._get("scim")

    async def move_uci(self, user: str, *, score: int | None = None, delta: int | None = None) -> int:
        """``POST /_sim/uci``: set the user's UCI (``score``) or move it by ``delta``; the UCI it has now."""
        body: dict[str, Any] = {"user": user} | ({"score": score} if score is not None else {"delta": delta})
        return int((await self._post("uci", body))["score"])

    async def add_scim_users(self, *user_names: str) -> list[str]:
        """``POST /_sim/scim/users``: create SCIM users (as the identity provider would); their ids."""
        return list((await self._post("scim/users", {"userNames": list(user_names)}))["ids"])

    async def _post(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/_sim/{what}", data=orjson.dumps(body)) as response,
        ):
            response.raise_for_status()
            answer: dict[str, Any] = orjson.loads(await response.read())
            return answer

    async def _get(self, what: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/_sim/{what}") as response:
            response.raise_for_status()
            answer: dict[str, Any] = orjson.loads(await response.read())
            return answer


@contextlib.asynccontextmanager
async def simulator_process(options: Mapping[str, object]) -> AsyncIterator[SimulatorProcess]:
    """Start ``ce-daemon simulate --port 0`` with ``options`` (``{"backlog": 5000}`` → ``--backlog
    5000``; a list repeats the option), stop it on exit. Its log lines are read and dropped."""
    argv = [sys.executable, "-m", "ce_daemon", "simulate", "--port", "0"]
    for name, value in options.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            argv += [f"--{name.replace('_', '-')}", str(item)]
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert child.stdout is not None
    try:
        while not (line := (await child.stdout.readline()).decode().strip()).startswith("http"):
            if not line and child.stdout.at_eof():
                raise RuntimeError(f"the tenant simulator exited before it listened: {' '.join(argv)}")
        drain = asyncio.create_task(_drain(child.stdout))
        try:
            yield SimulatorProcess(child, line)
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
    finally:
        await terminate(child)


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading the child's log lines, so that a full pipe never blocks it."""
    while await stream.readline():
        pass
