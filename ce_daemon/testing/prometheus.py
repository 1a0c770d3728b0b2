"""A real Prometheus server on loopback, scraping the daemon as an operator's would.

``PrometheusServer`` writes a configuration of its own (one scrape job over the given targets, every
second), keeps its time-series database under the test's folder, starts ``prometheus`` (Debian
package ``prometheus``) as a child process on a port of 127.0.0.1 the kernel picks, and answers
instant queries through Prometheus's HTTP API (``/api/v1/query``)::

    async with PrometheusServer(tmp_path, ["127.0.0.1:9464"]) as prometheus:
        samples = await prometheus.wait_for("ce_daemon_route_sent_records_total > 0", timeout=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import yaml

from ce_daemon.testing.harness import terminate
from ce_daemon.testing.sockets import loopback_ports

_POLL_INTERVAL: Final = 0.2
_REQUEST_TIMEOUT: Final = 5.0
_STOP_TIMEOUT: Final = 15.0
JOB: Final = "ce-daemon"


def prometheus_path() -> str | None:
    """Where the ``prometheus`` server binary is installed."""
    return shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin:/usr/sbin")


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant query's answer: its labels and value."""

    labels: dict[str, str]
    value: float


class PrometheusServer:
    """``prometheus`` on 127.0.0.1 scraping ``targets`` (``host:port``, path ``/metrics``) every second.

    Use as an async context manager, or call :meth:`start` and :meth:`stop`. Its configuration, data
    and console output live in ``directory/prometheus``.
    """

    def __init__(
        self,
        directory: Path,
        targets: list[str],
        *,
        scrape_interval: float = 1.0,
        startup_timeout: float = 30.0,
    ) -> None:
        self.directory = directory / "prometheus"
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._console = self.directory / "console.log"
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """Prometheus's own base URL."""
        assert self.port is not None, "prometheus is not running"
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start prometheus and return once it answers ``/-/ready``."""
        if self.process is not None:
            raise RuntimeError("prometheus is already running")
        binary = prometheus_path()
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False), encoding="utf-8")
        with self._console.open("ab") as console:
            self.process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                "--web.listen-address=127.0.0.1:0",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=console,
                stderr=console,
            )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT))
        try:
            async with asyncio.timeout(self.startup_timeout):
                await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """SIGTERM prometheus and wait for it; SIGKILL if it hangs."""
        process, self.process = self.process, None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if process is not None:
            await terminate(process, _STOP_TIMEOUT)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what it has seen ----------------------------------------------------------------------------

    async def query(self, expression: str) -> list[Sample]:
        """The answer of an instant query (PromQL ``expression`` evaluated now)."""
        answer = await self._get("/api/v1/query", {"query": expression})
        return [
            Sample(labels=dict(item["metric"]), value=float(item["value"][1])) for item in answer["result"]
        ]

    async def wait_for(self, expression: str, timeout: float = 30.0) -> list[Sample]:
        """The first non-empty answer of ``expression`` (a PromQL filter such as ``x > 0``).

        Prometheus announces nothing when a scrape lands, so the query is repeated at a short
        interval (each request bounded), within ``timeout`` overall.
        """
        try:
            async with asyncio.timeout(timeout):
                while not (samples := await self.query(expression)):
                    self._check_running()
                    await asyncio.sleep(_POLL_INTERVAL)
                return samples
        except TimeoutError:
            raise TimeoutError(
                f"prometheus never answered {expression!r} within {timeout} s; targets: "
                f"{await self.targets_health()}\n{self.diagnostics()}"
            ) from None

    async def targets_health(self) -> list[dict[str, Any]]:
        """Each scrape target's URL, health and last error, as Prometheus reports them."""
        answer = await self._get("/api/v1/targets", {"state": "active"})
        return [
            {"url": t.get("scrapeUrl"), "health": t.get("health"), "error": t.get("lastError")}
            for t in answer.get("activeTargets", [])
        ]

    def diagnostics(self) -> str:
        """The tail of prometheus's console output, for failure reports."""
        if not self._console.exists():
            return ""
        return "--- prometheus console:\n" + self._console.read_text(errors="replace")[-3000:]

    # -- internals ---------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        interval = f"{int(self.scrape_interval * 1000)}ms"
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        assert self._session is not None, "prometheus is not running"
        async with self._session.get(self.url + path, params=params) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus refused {path} {params}: {body}")
        data: dict[str, Any] = body["data"]
        return data

    def _check_running(self) -> None:
        if self.process is None or self.process.returncode is not None:
            code = self.process.returncode if self.process else None
            raise RuntimeError(f"prometheus exited ({code}):\n{self.diagnostics()}")

    async def _wait_until_ready(self) -> None:
        # Polling: readiness is only visible in the sockets and answers of another process.
        assert self.process is not None and self._session is not None
        while True:
            self._check_running()
            ports = loopback_ports(self.process.pid, "tcp")
            if ports:
                self.port = ports[0]
                with contextlib.suppress(aiohttp.ClientError):
                    async with self._session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return
            await asyncio.sleep(_POLL_INTERVAL)
