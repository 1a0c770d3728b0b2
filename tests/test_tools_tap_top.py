"""`ce-daemon tap` and `ce-daemon top` against a running daemon, and the control socket's tap requests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from ce_daemon.control import ControlServer, ask_status
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.taps import MAX_TAPS, TAP_BUFFER, Sample, Tap, TapHub
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config, route_when, run_cli

TOKEN = "tools-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}


def pipeline(tmp_path: Path, url: str) -> Path:
    """One JSON route `r` of dlp alerts into the file `out.ndjson` (each line the record as sent)."""
    route = {
        "name": "r",
        "tenant": "sim",
        "alerts": ["dlp"],
        "format": "json",
        "batch": {"max_wait": "100ms"},
        "sink": {"type": "file", "path": "out.ndjson"},
    }
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline_config(tmp_path, url, [route]))


@contextlib.asynccontextmanager
async def live(tmp_path: Path, rate: float) -> AsyncIterator[tuple[Path, DaemonProcess]]:
    """A daemon reading a tenant where ``rate`` dlp alerts arrive per second, shipping already."""
    async with backlog_simulator(TOKEN, 20, arrival_rate=rate) as sim:
        assert isinstance(sim, TenantSimulator) and sim.url is not None
        path = pipeline(tmp_path, sim.url)
        async with DaemonProcess(path, env=ENV) as daemon:
            await daemon.wait_for_event("daemon.ready")
            await route_when(path, "r", lambda r: r["counters"]["sent"] > 0)
            yield path, daemon
            if daemon.process is not None and daemon.process.returncode is None:
                daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0


def shipped(tmp_path: Path) -> dict[str, str]:
    """What the sink received: each line by its record's ``_id``."""
    out = tmp_path / "out.ndjson"
    lines = out.read_text().split("\n") if out.exists() else []
    return {orjson.loads(line)["_id"]: line for line in lines[:-1] if line}  # the last: cut short, or ""


async def sent(path: Path) -> int:
    entry = await route_when(path, "r", lambda r: True)
    return int(entry["counters"]["sent"])


async def test_tapped_records_are_what_the_sink_receives_and_delivery_goes_on(tmp_path: Path) -> None:
    """`tap r --limit 30 --json`: 30 records, each byte for byte the line the sink got for that record;
    a tap that reads nothing holds no record back (delivery goes on, its missed samples are counted);
    once it disconnects, delivery still goes on."""
    async with live(tmp_path, rate=400) as (path, daemon):
        code, out = await run_cli("tap", "r", "-c", str(path), "--limit", "30", "--json", env={})
        assert code == 0, out
        samples = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(samples) == 30
        ids = {s["id"] for s in samples}
        await route_when(path, "r", lambda r: ids <= shipped(tmp_path).keys())
        received = shipped(tmp_path)
        assert [s["data"] for s in samples] == [received[s["id"]] for s in samples]
        assert {s["stream"] for s in samples} == {"sim/alerts/dlp"}

        socket = control_socket_path_of(path)
        reader, writer = await asyncio.open_unix_connection(str(socket))  # reads ahead 128 KiB at most
        writer.write(b'{"tap": "route:r"}\n')
        header = orjson.loads(await reader.readline())
        assert header == {"tap": "route:r", "buffer": TAP_BUFFER}
        before = await sent(path)
        # The stalled tap holds a buffer of TAP_BUFFER samples: the route ships far more meanwhile.
        await route_when(path, "r", lambda r: r["counters"]["sent"] > before + 2 * TAP_BUFFER, timeout=60)
        dropped = 0
        async with asyncio.timeout(30):
            while not dropped:
                message = orjson.loads(await reader.readline())
                dropped = message.get("dropped", 0)
        assert dropped > 0
        writer.close()
        await writer.wait_closed()
        await daemon.wait_for_event("control.tap_closed", count=2)
        after = await sent(path)
        await route_when(path, "r", lambda r: r["counters"]["sent"] > after + 100)


async def cli(*args: str) -> asyncio.subprocess.Process:
    """``ce-daemon ARGS`` running, its stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ce_daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def first_line(process: asyncio.subprocess.Process, holding: bytes) -> None:
    """Wait until ``process`` prints a line holding ``holding`` (it is at work)."""
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while holding not in (line := await process.stdout.readline()):
            assert line, "the command ended before printing what was expected"


def control_socket_path_of(path: Path) -> Path:
    """The control socket of the test's pipeline (beside its state database)."""
    return tmp_state(path) / "control.sock"


def tmp_state(path: Path) -> Path:
    return path.parent / "state"


async def test_top_once_names_every_component_and_ends_when_the_daemon_goes(tmp_path: Path) -> None:
    """`top --once`: one plain view naming every component of the status, with its rates; `top` and
    `tap` end with 0 at Ctrl-C; a running `top` whose daemon stops says so and exits 3."""
    async with live(tmp_path, rate=50) as (path, daemon):
        code, out = await run_cli("top", "-c", str(path), "--once", "--interval", "0.3", env={})
        snapshot = await ask_status(control_socket_path_of(path))
        assert code == 0, out
        names = [c["name"] for c in snapshot["components"]]
        rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
        assert names and all(name in rows for name in names)
        assert rows["COMPONENT"][:7] == ["COMPONENT", "STATE", "IN/s", "OUT/s", "ERRORS", "LAG", "BACKLOG"]
        assert float(rows["route:r"][3]) >= 0  # OUT/s: a rate from two snapshots, not "-"
        assert "rates over" in out and "\x1b[" not in out, "plain text when stdout is no terminal"

        for command in (("top", "-c", str(path), "--interval", "0.2"), ("tap", "r", "-c", str(path))):
            interrupted = await cli(*command)
            await first_line(interrupted, b"" if command[0] == "tap" else b"route:r")
            interrupted.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                _, err = await interrupted.communicate()
            assert interrupted.returncode == 0, (command, err)
            assert b"Traceback" not in err

        top = await cli("top", "-c", str(path), "--interval", "0.2")
        await first_line(top, b"route:r")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
        async with asyncio.timeout(30):
            _, err = await top.communicate()
        assert top.returncode == 3
        assert "the daemon is not running" in err.decode() and "Traceback" not in err.decode()


async def test_tap_and_top_without_a_daemon_exit_with_a_clear_message(tmp_path: Path) -> None:
    """No daemon: `tap` exits 69 and `top` 3, each saying nothing answers; an unknown route is 78."""
    path = pipeline(tmp_path, "http://127.0.0.1:9")
    tap_code, tap_out = await run_cli("tap", "r", "-c", str(path), env={})
    top_code, top_out = await run_cli("top", "-c", str(path), "--once", env={})
    bad_code, bad_out = await run_cli("tap", "x", "-c", str(path), env={})
    assert tap_code == os.EX_UNAVAILABLE and "nothing answers on" in tap_out
    assert top_code == 3 and "nothing answers on" in top_out
    assert bad_code == os.EX_CONFIG and "routes: r" in bad_out


# -- the control socket's tap requests, on a server of its own ------------------------------------


async def snapshot() -> dict[str, Any]:
    return {"phase": "ready"}


async def request(
    path: Path, line: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(line)
    return reader, writer, orjson.loads(await reader.readline())


async def test_the_socket_streams_samples_up_to_the_limit_and_still_answers_status(tmp_path: Path) -> None:
    """A tap gets the samples published after it opened, in order, and ends at its limit; `status`
    requests (and lines that are no request) are answered as before."""
    hub = TapHub()
    hub.register("route:r")
    server = ControlServer(tmp_path / "control.sock", snapshot, hub)
    await server.start()
    try:
        reader, writer, header = await request(server.path, b'{"tap": "route:r", "limit": 3}\n')
        assert header == {"tap": "route:r", "buffer": TAP_BUFFER}
        for n in range(5):
            TapHub.publish(hub.taps_of("route:r"), Sample("t/alerts/dlp", f"id{n}", f"line {n}".encode()))
        async with asyncio.timeout(10):
            lines = [orjson.loads(line) for line in (await reader.read()).splitlines()]
        writer.close()
        assert lines == [{"stream": "t/alerts/dlp", "id": f"id{n}", "data": f"line {n}"} for n in range(3)]
        assert await ask_status(server.path) == {"phase": "ready"}
        for line in (b"\xff\xfe not a request\n", b'{"tap": "' + b"x" * 100_000 + b'"}\n'):
            _, writer, answer = await request(server.path, line)  # garbage, a request past the limit
            writer.close()
            assert answer == {"phase": "ready"}
    finally:
        await server.close()


async def test_bad_unknown_and_too_many_taps_are_refused_and_a_stop_ends_every_tap(tmp_path: Path) -> None:
    """A malformed request, an unknown component (the tappable ones listed) and a tap beyond MAX_TAPS
    are refused with the reason; closing the server ends the open taps (their clients see the end)."""
    hub = TapHub()
    hub.register("route:r")
    server = ControlServer(tmp_path / "control.sock", snapshot, hub)
    await server.start()
    opened = []
    try:
        for line in (b'{"tap": 5}\n', b'{"tap": "route:r", "limit": -1}\n', b"{broken\n"):
            _, writer, answer = await request(server.path, line)
            writer.close()
            assert "a tap" in answer["error"]
        _, writer, answer = await request(server.path, b'{"tap": "route:nope"}\n')
        writer.close()
        assert "route:nope" in answer["error"] and answer["sources"] == ["route:r"]
        for _ in range(MAX_TAPS):
            reader, writer, header = await request(server.path, b'{"tap": "route:r"}\n')
            assert header["tap"] == "route:r"
            opened.append((reader, writer))
        _, writer, answer = await request(server.path, b'{"tap": "route:r"}\n')
        writer.close()
        assert f"{MAX_TAPS} taps are open already" in answer["error"]
    finally:
        await server.close()
    async with asyncio.timeout(10):
        for reader, writer in opened:
            assert await reader.read() == b""
            writer.close()
    assert hub.taps_of("route:r") == ()


async def test_a_tap_holds_a_bounded_number_of_samples_and_bytes_and_counts_the_rest() -> None:
    """Past its sample or byte bound a tap drops what is offered, counts it, and never blocks."""
    tap = Tap("route:r", buffer=3, buffer_bytes=10)
    for n in range(5):
        tap.offer(Sample("s", str(n), b"12"))
    assert tap.take_dropped() == 2 and tap.take_dropped() == 0
    tap.offer(Sample("s", "big", b"x" * 11))
    assert tap.take_dropped() == 1
    taken = [await tap.next() for _ in range(3)]
    assert [sample.id for sample in taken if sample is not None] == ["0", "1", "2"]
    tap.offer(Sample("s", "fits", b"x" * 10))
    assert await tap.next() == Sample("s", "fits", b"x" * 10)
    tap.close()
    assert await tap.next() is None
