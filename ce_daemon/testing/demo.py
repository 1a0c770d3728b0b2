"""``ce-daemon demo`` in a child process, for tests that drive what a person sees (the API, the dashboard)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

__all__ = ["DemoProcess", "running_demo"]

DEMO_STARTS = 90.0


class DemoProcess:
    """``ce-daemon demo`` in a child process, with the address of its listener."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        """The listener's address (``http://127.0.0.1:PORT/``)."""
        self.user = ""
        self.password = ""
        """The dashboard's first login, as the demo printed it."""
        self.token = ""
        """The admin API token the demo printed."""
        self.lines: list[str] = []
        """What the demo printed so far."""
        self._drainer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ce_daemon", "demo", "--dir", str(self.directory), "--duration", "600",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert self.process.stdout is not None
        async with asyncio.timeout(DEMO_STARTS):
            while not (self.url and self.password and self.token):
                line = (await self.process.stdout.readline()).decode()
                assert line, "the demo ended before its listener started:\n" + "".join(self.lines[-30:])
                self.lines.append(line)
                if found := re.search(r"metrics on (http://\S+/)metrics", line):
                    self.url = found.group(1)
                if found := re.search(r"first login: user (\S+), password (\S+)", line):
                    self.user, self.password = found.group(1), found.group(2)
                if found := re.search(r"API token \(admin\): (\S+)", line):
                    self.token = found.group(1)
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode())

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._drainer is not None:
            await self._drainer

    @property
    def headers(self) -> dict[str, str]:
        """What an API request carries: the admin token."""
        return {"Authorization": f"Bearer {self.token}"}


@asynccontextmanager
async def running_demo(directory: Path) -> AsyncIterator[DemoProcess]:
    """The demo running in ``directory`` (its state may be seeded before), stopped at the end."""
    running = DemoProcess(directory)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()
