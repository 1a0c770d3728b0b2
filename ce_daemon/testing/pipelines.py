"""A whole pipeline end to end: the tenant simulator → the daemon (a child process) → a sink's fake.

Besides :func:`ship_backlog` (one route, start to SIGTERM), the pieces end-to-end tests build their
own runs from: :func:`backlog_simulator` (a tenant with a finite backlog), :func:`pipeline_config`
(the pipeline file around their routes), :func:`backlog_ids` (what the tenant holds) and
:func:`run_cli`/:func:`route_counters`/:func:`route_when` (the ``ce-daemon`` command beside the running
daemon).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.simulator.records import record_id
from ce_daemon.simulator.tenant import TenantSimulator, running_simulator
from ce_daemon.testing.fakes.base import FakeHttpServer
from ce_daemon.testing.harness import DaemonProcess, write_pipeline
from ce_daemon.testing.state import state_section

SIM_TOKEN = "sim-token-pipeline-0123456789"  # noqa: S105 - the simulator's own throwaway token
StreamId = tuple[DataKind, str]


def backlog_simulator(
    token: str, backlog: int, streams: Iterable[StreamId] = (("alerts", "dlp"),), **options: Any
) -> AbstractAsyncContextManager[TenantSimulator]:
    """A tenant simulator accepting ``token``: ``backlog`` records in each of ``streams``, none to come.

    An idle poller is told to come back after 0.2 s; ``options`` (any :class:`TenantSimulator`
    setting: ``seed``, ``page_size``, ``rate_limit``...) override these defaults.
    """
    settings: dict[str, Any] = {
        "tokens": {token: None},
        "backlog": backlog,
        "arrival_rate": 0,
        "idle_wait_time": 0.2,
        "subtypes": [f"{kind}/{subtype}" for kind, subtype in streams],
    }
    settings.update(options)
    return running_simulator(**settings)


def backlog_ids(sim: TenantSimulator, kind: DataKind, subtype: str, backlog: int) -> list[str]:
    """Every ``_id`` of the stream's backlog, in order, recomputed from the simulator's seed."""
    return [record_id(sim.seed, kind, subtype, seq) for seq in range(backlog)]


def pipeline_config(
    tmp_path: Path,
    url: str,
    routes: Sequence[Mapping[str, Any]],
    *,
    rate_limit: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A pipeline file's content: one tenant ``sim`` at ``url`` read from two hours back, into ``routes``.

    The tenant's token is ``$SIM_TOKEN`` (``rate_limit`` requests/s when given); the state lives in
    ``tmp_path/state/db.sqlite`` (or the test's PostgreSQL database); health goes to no syslog; a stop
    drains for at most 5 s. Each of ``overrides`` replaces a whole top-level section (``logging=...``).
    """
    tenant: dict[str, Any] = {"name": "sim", "url": url, "token": {"$env": "SIM_TOKEN"}, "start": "2h"}
    if rate_limit is not None:
        tenant["rate_limit"] = rate_limit
    config: dict[str, Any] = {
        "version": 1,
        "state": state_section(tmp_path / "state" / "db.sqlite"),
        "health": {"interval": "1h", "syslog": {"enabled": False}},
        "shutdown_grace": "5s",
        "tenants": [tenant],
        "logs": {"routes": list(routes)},
    }
    config.update(overrides)
    return config


async def run_cli(*args: str, env: Mapping[str, str]) -> tuple[int, str]:
    """Run ``python -m ce_daemon ARGS`` (``env`` added to ours): its exit code and output (stderr included).

    A child process awaited without blocking the event loop, where the test's simulator and fakes live.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ce_daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def daemon_status(config: Path, *, env: Mapping[str, str]) -> dict[str, Any]:
    """What ``ce-daemon status -c CONFIG --json`` prints: a live daemon's answer (healthy or not), or
    once it stopped, the status it saved (``"live": false``)."""
    code, out = await run_cli("status", "-c", str(config), "--json", env=env)
    assert code in (0, 150, 151, 3), (code, out)
    snapshot: dict[str, Any] = orjson.loads(out)
    assert "components" in snapshot, f"no daemon ran on {config}: {out}"
    return snapshot


def route_of(snapshot: Mapping[str, Any], route: str) -> dict[str, Any]:
    """The component entry of ``route`` in a status snapshot."""
    [component] = [c for c in snapshot["components"] if c["name"] == f"route:{route}"]
    return dict(component)


async def route_counters(config: Path, route: str, *, env: Mapping[str, str]) -> dict[str, Any]:
    """The counters ``ce-daemon status --json`` shows for ``route``."""
    return dict(route_of(await daemon_status(config, env=env), route).get("counters", {}))


async def route_when(
    config: Path,
    route: str,
    check: Callable[[dict[str, Any]], bool],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Ask ``status`` until ``route``'s entry (state, detail, counters) satisfies ``check``; that entry.

    The daemon is another process: asking again is the only way to see it change. TimeoutError after
    ``timeout`` seconds.
    """
    async with asyncio.timeout(timeout):
        while True:
            entry = route_of(await daemon_status(config, env=env or {}), route)
            if check(entry):
                return entry


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """What an end-to-end run leaves for the test to check."""

    expected: Mapping[tuple[DataKind, str], frozenset[str]]
    """The ``_id`` of every backlog record the route reads, by (kind, subtype)."""
    exit_code: int
    """The daemon's exit code after SIGTERM."""
    output: str
    """Everything the daemon printed (to check that no secret leaked)."""

    @property
    def ids(self) -> frozenset[str]:
        """Every expected ``_id``, whatever its stream."""
        return frozenset().union(*self.expected.values())


async def ship_backlog(
    tmp_path: Path,
    fake: FakeHttpServer,
    sink: Mapping[str, Any],
    shipped: Callable[[], Iterable[str]],
    *,
    streams: Mapping[DataKind, Sequence[str]] | None = None,
    record_format: str = "json",
    env: Mapping[str, str] | None = None,
    backlog: int = 500,
    max_records: int = 200,
    timeout: float = 45.0,
) -> PipelineRun:
    """Ship a simulated tenant's backlog through the daemon to ``sink``, then stop it with SIGTERM.

    The tenant is a simulator holding ``backlog`` records of every subtype (read from two hours
    back). The pipeline, written to ``tmp_path/pipeline.yaml`` (relative paths in ``sink`` resolve
    from there), has one route reading ``streams`` (default ``{"alerts": ["dlp"]}``) formatted as
    ``record_format`` into the ``sink`` block, whose URL points at ``fake`` (already started);
    ``env`` holds the variables its ``$env`` secrets name. Once ``shipped()`` (the ``_id`` of every
    record ``fake`` has received) holds every expected one, the daemon gets SIGTERM; not within
    ``timeout`` seconds: TimeoutError.
    """
    streams = streams or {"alerts": ["dlp"]}
    async with running_simulator(
        tokens={SIM_TOKEN: None}, backlog=backlog, arrival_rate=0, idle_wait_time=0.2
    ) as sim:
        assert sim.url is not None
        route: dict[str, Any] = {
            "name": f"to-{sink['type']}",
            "tenant": "sim",
            **{kind: list(subtypes) for kind, subtypes in streams.items()},
            "format": record_format,
            "batch": {"max_records": max_records, "max_wait": "200ms"},
            "sink": dict(sink),
        }
        path = write_pipeline(tmp_path / "pipeline.yaml", pipeline_config(tmp_path, sim.url, [route]))
        expected = {
            (kind, subtype): frozenset(backlog_ids(sim, kind, subtype, backlog))
            for kind, subtypes in streams.items()
            for subtype in subtypes
        }
        wanted = frozenset().union(*expected.values())
        async with DaemonProcess(path, env={"SIM_TOKEN": SIM_TOKEN, **(env or {})}) as daemon:
            await fake.wait_until(lambda: wanted <= set(shipped()), timeout=timeout)
            daemon.signal(signal.SIGTERM)
            exit_code = await daemon.wait(30)
    return PipelineRun(expected, exit_code, "\n".join(daemon.raw))
