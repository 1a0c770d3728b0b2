"""A route whose sink fails to start: any exception is a start failure, retried; opens and closes pair up.

The sink is a third-party plugin of the test's own, installed as a throwaway distribution the daemon
(a child process) finds through its entry point. It fails its first starts the way its options say
and journals every open, close and batch to a file.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from ce_daemon.registry import GROUPS
from ce_daemon.testing.distribution import write_distribution
from ce_daemon.testing.harness import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import SIM_TOKEN, backlog_simulator, pipeline_config

FLAKY = '''
"""A log sink that fails its first starts as its options say, journaling each call."""

import ssl

from ce_daemon.errors import AuthError
from ce_daemon.plugin import Health, LogSink, PluginOptions, SendResult

ERRORS = {
    "AuthError": lambda: AuthError("the token was refused"),
    "ValueError": lambda: ValueError("bad value from a plugin bug"),
    "KeyError": lambda: KeyError("missing"),
    "SSLError": lambda: ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
}


class Options(PluginOptions):
    journal: str
    fail_in: str = "open"
    error: str = "ValueError"
    failures: int = 2


class FlakySink(LogSink):
    """Fails its first `failures` starts in `fail_in` with `error`; journals open, close and batches."""

    api_version = 1
    Options = Options

    def _journal(self, line):
        with open(self.options.journal, "a") as journal:
            journal.write(line + "\\n")

    def _failing(self):
        with open(self.options.journal) as journal:
            return sum(line == "open\\n" for line in journal) <= self.options.failures

    async def open(self):
        self._journal("open")
        if self.options.fail_in == "open" and self._failing():
            raise ERRORS[self.options.error]()

    async def health(self):
        if self.options.fail_in == "health" and self._failing():
            raise ERRORS[self.options.error]()
        if self.options.fail_in == "health_none" and self._failing():
            return None
        return Health(ok=True, detail="fine")

    async def send(self, batch):
        self._journal(f"sent {len(batch)}")
        return SendResult()

    async def close(self):
        self._journal("close")
'''


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The distribution `flaky-sink` 1.0 with the `flaky` log sink."""
    return write_distribution(
        tmp_path / "site",
        "flaky-sink",
        "1.0",
        {"flaky_sink": FLAKY},
        {GROUPS["log_sink"]: {"flaky": "flaky_sink:FlakySink"}},
    )


def _pipeline(tmp_path: Path, url: str, routes: list[dict[str, Any]]) -> Path:
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline_config(tmp_path, url, routes))


def _route(name: str, journal: Path, **sink: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tenant": "sim",
        "alerts": ["dlp"],
        "format": "json",
        "sink": {"type": "flaky", "journal": str(journal), **sink},
    }


def _journal(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    ("fail_in", "error", "reason"),
    [
        ("open", "ValueError", "ValueError: bad value from a plugin bug"),
        ("open", "SSLError", "SSLError: [SSL: WRONG_VERSION_NUMBER] wrong version number"),
        ("health", "KeyError", "KeyError: 'missing'"),
        ("health_none", "-", "TypeError: FlakySink.health() returned None, not a Health"),
    ],
)
async def test_a_failing_start_is_retried_and_every_open_is_closed(
    tmp_path: Path, site: Path, fail_in: str, error: str, reason: str
) -> None:
    """Two failed starts (any exception, no Health): degraded with the reason, retried; no traceback."""
    journal = tmp_path / "journal"
    async with backlog_simulator(SIM_TOKEN, 20) as sim:
        assert sim.url is not None
        path = _pipeline(tmp_path, sim.url, [_route("flaky", journal, fail_in=fail_in, error=error)])
        env = {"SIM_TOKEN": SIM_TOKEN, "PYTHONPATH": str(site)}
        async with DaemonProcess(path, env=env) as daemon:
            first = await daemon.wait_for_event("component.start_failed")
            retried = await daemon.wait_for_event("route.start_failed")
            await daemon.wait_for_event("route.first_batch_shipped")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    expected = f"sink 'flaky' not usable: {reason}"
    assert first["error"] == expected
    assert (retried["error"], retried["attempt"]) == (expected, 2)
    degraded = daemon.events("component.degraded")
    assert degraded and degraded[0]["reason"] == f"start failed: {expected}"
    assert not [line for line in daemon.lines if "exception" in line], "a start failure logs no traceback"
    calls = _journal(journal)
    assert calls[:6] == ["open", "close", "open", "close", "open", *calls[5:6]]
    assert calls.count("open") == calls.count("close") == 3, calls
    assert calls[-1] == "close"


async def test_a_sink_that_never_starts_is_closed_after_each_attempt_and_at_stop(
    tmp_path: Path, site: Path
) -> None:
    """A route whose sink keeps failing keeps retrying; at stop, no open is left without its close."""
    journal = tmp_path / "journal"
    async with backlog_simulator(SIM_TOKEN, 5) as sim:
        assert sim.url is not None
        path = _pipeline(tmp_path, sim.url, [_route("flaky", journal, failures=1000)])
        env = {"SIM_TOKEN": SIM_TOKEN, "PYTHONPATH": str(site)}
        async with DaemonProcess(path, env=env) as daemon:
            await daemon.wait_for_event("route.start_failed", count=2)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    calls = _journal(journal)
    assert calls.count("open") >= 3 and calls.count("open") == calls.count("close"), calls
    assert not [line for line in daemon.lines if "exception" in line]


async def test_refused_credentials_at_start_fail_the_route_without_retrying(
    tmp_path: Path, site: Path
) -> None:
    """AuthError from open(): the route fails (no retry storm) until a reload; its sink was closed."""
    journal = tmp_path / "journal"
    async with backlog_simulator(SIM_TOKEN, 5) as sim:
        assert sim.url is not None
        path = _pipeline(tmp_path, sim.url, [_route("flaky", journal, error="AuthError", failures=1000)])
        env = {"SIM_TOKEN": SIM_TOKEN, "PYTHONPATH": str(site)}
        async with DaemonProcess(path, env=env) as daemon:
            failed = await daemon.wait_for_event("component.failed")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert failed["error"] == "sink 'flaky' not usable: the token was refused"
    assert not daemon.events("route.start_failed")
    assert _journal(journal) == ["open", "close"]


async def test_a_sink_failing_to_open_at_reload_is_closed(tmp_path: Path, site: Path) -> None:
    """A route added by a reload whose sink fails to open: whatever the reload policy, each open is closed."""
    journal = tmp_path / "journal"
    async with backlog_simulator(SIM_TOKEN, 5) as sim:
        assert sim.url is not None
        path = _pipeline(tmp_path, sim.url, [])
        env = {"SIM_TOKEN": SIM_TOKEN, "PYTHONPATH": str(site)}
        async with DaemonProcess(path, env=env) as daemon:
            await daemon.wait_for_event("daemon.ready")
            _pipeline(tmp_path, sim.url, [_route("flaky", journal, error="KeyError", failures=1000)])
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for_any(("daemon.reload_applied", "daemon.reload_rejected"))
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    calls = _journal(journal)
    assert calls.count("open") >= 1 and calls.count("open") == calls.count("close"), calls
    assert not [line for line in daemon.lines if "exception" in line]
