"""A whole pipeline end to end: the tenant simulator → the daemon (a child process) → a sink's fake."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ce_daemon.netskope.records import record_id
from ce_daemon.netskope.simulator import running_simulator
from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.testing.fakes.base import FakeHttpServer
from ce_daemon.testing.harness import DaemonProcess, write_pipeline

SIM_TOKEN = "sim-token-pipeline-0123456789"  # noqa: S105 - the simulator's own throwaway token


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
        config = {
            "version": 1,
            "state": {"path": str(tmp_path / "state" / "db.sqlite")},
            "health": {"interval": "1h", "syslog": {"enabled": False}},
            "shutdown_grace": "5s",
            "tenants": [{"name": "sim", "url": sim.url, "token": {"$env": "SIM_TOKEN"}, "start": "2h"}],
            "logs": {"routes": [route]},
        }
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        expected = {
            (kind, subtype): frozenset(record_id(sim.seed, kind, subtype, seq) for seq in range(backlog))
            for kind, subtypes in streams.items()
            for subtype in subtypes
        }
        wanted = frozenset().union(*expected.values())
        async with DaemonProcess(path, env={"SIM_TOKEN": SIM_TOKEN, **(env or {})}) as daemon:
            await fake.wait_until(lambda: wanted <= set(shipped()), timeout=timeout)
            daemon.signal(signal.SIGTERM)
            exit_code = await daemon.wait(30)
    return PipelineRun(expected, exit_code, "\n".join(daemon.raw))
