"""Run the real daemon as a child process and watch what it says (stdout JSON lines)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml


async def terminate(process: asyncio.subprocess.Process, timeout: float = 15.0) -> None:
    """SIGTERM a child server and reap it; SIGKILL it if it has not exited within ``timeout`` seconds."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def write_pipeline(path: Path, pipeline: Mapping[str, Any]) -> Path:
    """Write ``pipeline`` as YAML to ``path`` (its folder created if need be) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(pipeline), sort_keys=False), encoding="utf-8")
    return path


class DaemonProcess:
    """``ce-daemon run -c FILE [ARGUMENTS]`` in a child process, its JSON log lines collected as they come."""

    def __init__(
        self,
        config: Path,
        *,
        env: Mapping[str, str] | None = None,
        command: str = "run",
        arguments: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.command = command
        self.arguments = tuple(arguments)
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def start(self) -> DaemonProcess:
        """Start the child; its stdout is parsed line by line."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ce_daemon",
            self.command,
            "-c",
            str(self.config),
            *self.arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(text)
                if isinstance(parsed, dict):
                    self.lines.append(parsed)
            async with self._changed:
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every log line with ``event == name``."""
        return [line for line in self.lines if line.get("event") == name]

    async def wait_for_event(self, name: str, timeout: float = 30.0, *, count: int = 1) -> dict[str, Any]:
        """The ``count``-th log line with ``event == name`` (waits for it; fails if the child exits first)."""
        return await self.wait_for_any((name,), timeout, count=count)

    async def wait_for_any(
        self, names: tuple[str, ...], timeout: float = 30.0, *, count: int = 1
    ) -> dict[str, Any]:
        """The ``count``-th log line whose event is one of ``names`` (waits; fails if the child exits)."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                found = [line for line in self.lines if line.get("event") in names]
                if len(found) >= count:
                    return found[count - 1]
                if self._reader is not None and self._reader.done():
                    raise AssertionError(
                        f"daemon exited before logging {' or '.join(names)}; output:\n"
                        + "\n".join(self.raw[-40:])
                    )
                await self._changed.wait()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child."""
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit; its exit code."""
        assert self.process is not None
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader

    async def __aenter__(self) -> DaemonProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
