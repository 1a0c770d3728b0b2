"""`ce-daemon status` for scripts: an exit code for each answer, and what a rejected reload left behind.

0 live and all ok; 150 live and degraded (or the last reload rejected); 151 live with a failed
component; 3 no daemon running (LSB); 4 status unknown (LSB), a daemon without its control socket
included. The file is read for its state and control settings alone, within the reader's bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_webhook.fake import FakeWebhook, bearer_value

from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.configs import billion_laughs, run_bounded
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config, route_when, run_cli

TOKEN = "status-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}


@pytest.fixture
async def simulator() -> AsyncIterator[TenantSimulator]:
    async with backlog_simulator(TOKEN, 50) as sim:
        yield sim


def pipeline(tmp_path: Path, url: str, sink: dict[str, Any], *, sqlite: bool = False) -> Path:
    """The pipeline file: one JSON route `r` of dlp alerts into ``sink`` (on SQLite when ``sqlite``,
    whatever the test run's backend)."""
    route = {"name": "r", "tenant": "sim", "alerts": ["dlp"], "format": "json", "sink": sink}
    config = pipeline_config(tmp_path, url, [route])
    if sqlite:
        config["state"] = {"path": config["state"]["path"]}
    return write_pipeline(tmp_path / "pipeline.yaml", config)


@contextlib.asynccontextmanager
async def running(path: Path) -> AsyncIterator[DaemonProcess]:
    """The daemon on ``path``, ready; stopped with SIGTERM (exit 0) afterwards."""
    async with DaemonProcess(path, env=ENV) as daemon:
        await daemon.wait_for_event("daemon.ready")
        yield daemon
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0


async def status(path: Path, *more: str) -> tuple[int, str]:
    """`ce-daemon status -c PATH ...`: its exit code and output (it needs no secret)."""
    return await run_cli("status", "-c", str(path), *more, env={})


async def test_0_when_a_live_daemon_is_all_ok(tmp_path: Path, simulator: TenantSimulator) -> None:
    """Everything ok: exit 0, `live: true` in the JSON, "ok" in the human form."""
    assert simulator.url is not None
    path = pipeline(tmp_path, simulator.url, {"type": "file", "path": "out.ndjson"})
    async with running(path):
        await route_when(path, "r", lambda r: r["counters"]["sent"] == 50)
        code, out = await status(path, "--json")
        human_code, human = await status(path)
    assert code == 0 and orjson.loads(out)["live"] is True
    assert human_code == 0 and human.splitlines()[0].endswith(": ok")


async def test_150_while_a_route_is_degraded(tmp_path: Path, simulator: TenantSimulator) -> None:
    """A sink failing (503, retried): exit 150, the route named as not ok."""
    hook = FakeWebhook()
    hook.fail_next(1_000_000, 503)
    async with hook as url:
        assert simulator.url is not None
        path = pipeline(tmp_path, simulator.url, {"type": "webhook", "url": f"{url}/hook"})
        async with running(path):
            await route_when(path, "r", lambda r: r["state"] == "degraded")
            code, out = await status(path)
    assert code == 150
    assert out.splitlines()[0].endswith(": DEGRADED") and "not ok: route:r" in out


async def test_151_when_a_component_failed(tmp_path: Path, simulator: TenantSimulator) -> None:
    """A sink refusing our credentials (401) stops its route until the file changes: exit 151."""
    hook = FakeWebhook(auth=("Authorization", bearer_value("the-right-token")))
    async with hook as url:
        assert simulator.url is not None
        path = pipeline(tmp_path, simulator.url, {"type": "webhook", "url": f"{url}/hook"})
        async with running(path) as daemon:
            await daemon.wait_for_event("component.failed")
            code, out = await status(path)
    assert code == 151
    assert out.splitlines()[0].endswith(": FAILED")


async def test_3_when_no_daemon_runs_with_the_saved_status_marked(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """After a stop: exit 3, NOT RUNNING first, then the last saved status marked as such; `live: false`."""
    assert simulator.url is not None
    path = pipeline(tmp_path, simulator.url, {"type": "file", "path": "out.ndjson"})
    async with running(path) as daemon:
        await route_when(path, "r", lambda r: r["counters"]["sent"] == 50)
    code, out = await status(path)
    json_code, json_out = await status(path, "--json")
    assert code == 3
    assert out.startswith("ce-daemon is NOT RUNNING: nothing answers on ")
    assert "its last saved status (" in out and "not a live answer" in out
    assert json_code == 3
    saved = orjson.loads(json_out)
    assert daemon.process is not None
    assert saved["live"] is False and saved["pid"] == daemon.process.pid


async def test_3_when_no_daemon_ever_ran(tmp_path: Path) -> None:
    """No daemon and no saved status: exit 3, and the JSON still says `live: false`."""
    path = pipeline(tmp_path, "https://t.goskope.com", {"type": "file", "path": "out.ndjson"})
    code, out = await status(path, "--json")
    assert code == 3
    assert orjson.loads(out) == {"live": False}


async def test_4_when_the_file_cannot_be_read(tmp_path: Path) -> None:
    """A pipeline file that is not there: the status cannot be determined, exit 4."""
    code, out = await status(tmp_path / "missing.yaml")
    assert code == 4
    assert "file not found" in out


async def test_4_when_the_answer_is_not_a_status(tmp_path: Path) -> None:
    """Something else listening on the socket: exit 4, naming the socket."""

    async def not_a_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello, I am not ce-daemon\n")
        await writer.drain()
        writer.close()

    socket_path = tmp_path / "control.sock"
    server = await asyncio.start_unix_server(not_a_daemon, path=str(socket_path))
    async with server:
        code, out = await run_cli("status", "--socket", str(socket_path), env={})
    assert code == 4
    assert f"no usable answer on {socket_path}" in out


async def test_4_when_the_socket_refuses_us(tmp_path: Path) -> None:
    """A control socket we may not open (another user's, mode 0600): exit 4, saying permission denied."""
    socket_path = tmp_path / "control.sock"
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(socket_path))
    command = [sys.executable, "-m", "ce_daemon", "status", "--socket", str(socket_path)]
    if os.geteuid() == 0:
        # root passes every permission check: drop the capabilities that let it (setpriv is util-linux).
        os.chown(socket_path, 65534, 65534)
        caps = "-dac_override,-dac_read_search"
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed to test a refused socket as root"
        command = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *command]
    socket_path.chmod(0o000 if os.geteuid() else 0o600)
    async with server:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
    assert process.returncode == 4
    assert b"permission denied" in out


async def test_a_rejected_reload_shows_its_problems_though_the_file_no_longer_loads(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """A reload of a file broken mid-way: `status -c` still finds the daemon, exits 150, shows file:line."""
    assert simulator.url is not None
    path = pipeline(tmp_path, simulator.url, {"type": "file", "path": "out.ndjson"})
    async with running(path) as daemon:
        path.write_text(path.read_text() + "logs: [unclosed\n")
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for_event("daemon.reload_rejected")
        code, out = await status(path)
        json_code, json_out = await status(path, "--json")
    assert code == 150 and json_code == 150
    assert "last reload rejected" in out
    problems = orjson.loads(json_out)["last_reload"]["problems"]
    assert problems and problems[0].startswith(f"{path}:")
    assert f"    {problems[0]}" in out.splitlines()


async def test_4_with_the_pid_when_a_running_daemon_has_lost_its_control_socket(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """The daemon runs (it holds the state lock) but nothing answers on its socket: 4, not 3, with its pid.

    On SQLite: its file lock tells a running daemon; nodes share a PostgreSQL state without one."""
    assert simulator.url is not None
    path = pipeline(tmp_path, simulator.url, {"type": "file", "path": "out.ndjson"}, sqlite=True)
    async with running(path) as daemon:
        (tmp_path / "state" / "control.sock").unlink()  # a cleaner of /tmp or /run, say
        code, out = await status(path)
        json_code, json_out = await status(path, "--json")
    assert daemon.process is not None
    pid = daemon.process.pid
    assert code == 4
    assert out.startswith(f"ce-daemon pid {pid} is RUNNING, but its control socket does not answer: ")
    assert "its last saved status (" in out and "not a live answer" in out
    assert json_code == 4
    answer = orjson.loads(json_out)
    assert answer["live"] is False and answer["running_pid"] == pid


@pytest.mark.parametrize(("command", "code"), [(("status",), 4), (("dlq", "list"), 78)])
def test_a_billion_laughs_in_the_state_section_is_refused_within_bounds(
    tmp_path: Path, command: tuple[str, ...], code: int
) -> None:
    """An alias bomb inside `state:` of a file that does not load: refused at its place, in 1 GiB and 30 s."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\nstate:\n  path: ./state/db.sqlite\n" + billion_laughs(indent="  ") + "logs: [\n"
    )
    result = run_bounded(*command, "-c", str(path))
    assert result.returncode == code, result.stderr
    assert f"{path}:4:" in result.stderr, result.stderr
    assert "more than 100,000 values once aliases and merges are expanded" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


async def test_a_wrong_state_setting_is_told_at_its_place(tmp_path: Path) -> None:
    """A misspelt key in `state:` of a file that does not load: placed problems on stderr, nothing quoted."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\nstate:\n  path: ./db.sqlite\n  bogus: [a, b, c]\ncontrol: {socket: 5}\nlogs: [\n"
    )
    code, out = await run_cli("status", "-c", str(path), env={})
    assert code == 4
    assert out.splitlines() == [
        f"{path}:4:3: state.bogus: unknown key 'bogus'",
        "    Hint: valid keys here: password, path, timeout, url",
        f"{path}:5:19: control.socket: Input is not a valid path for <class 'pathlib.Path'>",
    ]
