"""`ce-daemon … | head`: a reader that goes away ends the command quietly, exit 141, never a traceback."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from ce_daemon.testing import write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config, run_cli

TOKEN = "pipes-token-0123456789"


async def into_closed_pipe(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m ce_daemon ARGS`` with stdout a pipe whose reader is already gone: exit code, stderr."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ce_daemon",
            *args,
            stdout=writer,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
    finally:
        os.close(writer)
    _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


def file_pipeline(tmp_path: Path, url: str) -> Path:
    """A valid pipeline file: one route of dlp alerts into a file."""
    route = {"name": "r", "tenant": "sim", "alerts": ["dlp"], "sink": {"type": "file", "path": "out.cef"}}
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline_config(tmp_path, url, [route]))


@pytest.mark.parametrize(
    "command",
    [("plugins",), ("plugins", "--json"), ("status",), ("dlq", "list"), ("check",)],
    ids=" ".join,
)
async def test_a_command_into_a_closed_pipe_ends_quietly(tmp_path: Path, command: tuple[str, ...]) -> None:
    """The reader is gone before the first line: exit 141 (as for SIGPIPE), nothing on stderr."""
    path = file_pipeline(tmp_path, "https://t.goskope.com")
    needs_file = command[0] in ("status", "dlq", "check")
    code, err = await into_closed_pipe(
        *command, *(("-c", str(path)) if needs_file else ()), env={"SIM_TOKEN": "x"}
    )
    assert (code, err) == (141, "")


async def test_the_daemon_into_a_closed_pipe_stops_cleanly(tmp_path: Path) -> None:
    """`ce-daemon run … | head`: the daemon stops as if sent SIGTERM, then exits 141, no traceback."""
    async with backlog_simulator(TOKEN, 20) as sim:
        assert sim.url is not None
        path = file_pipeline(tmp_path, sim.url)
        code, err = await into_closed_pipe("run", "-c", str(path), env={"SIM_TOKEN": TOKEN})
    assert (code, err) == (141, "")
    status, out = await run_cli("status", "-c", str(path), "--json", env={})
    assert status == 3
    assert orjson.loads(out)["phase"] == "stopping"  # saved by an orderly shutdown, not left by a crash
