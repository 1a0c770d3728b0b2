"""The daemon: one lifecycle, STARTING → READY → RELOADING → READY → STOPPING.

Signal handlers only record what was asked; this module's main loop acts on it. Each
transition logs one fixed event name and sends one sd_notify message. What a reload changes is a
:class:`~ce_daemon.topology.Difference`; the status snapshot is :mod:`ce_daemon.status`'s, the
watchdog :mod:`ce_daemon.systemd`'s, and teardown :mod:`ce_daemon.teardown`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from ce_daemon import __version__, applog, redact
from ce_daemon.access import ACCESS_MIGRATIONS, AccessStore, AuditLog
from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.cluster.manager import ClusterError, LeaseManager
from ce_daemon.config.load import LoadedPipeline, load_pipeline
from ce_daemon.config.model import RESTART_ONLY, HttpSettings
from ce_daemon.config.node import Node, cluster_settings
from ce_daemon.control import ControlServer, control_socket_path
from ce_daemon.errors import ConfigError
from ce_daemon.health import ComponentStatus, HealthRegistry, State
from ce_daemon.jobs import Jobs
from ce_daemon.metrics import Metrics
from ce_daemon.pipeline import ComponentSpec, Runtime, plan_components
from ce_daemon.registry import Registry
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.status import save_snapshot, status_snapshot
from ce_daemon.store import Migration, StoreError, exclusive, open_store, state_url
from ce_daemon.supervisor import Component, Supervisor
from ce_daemon.syslog import HealthChannel, Severity
from ce_daemon.systemd import Notifier, keep_watchdog_fed
from ce_daemon.teardown import Teardown, close_all, log_failures
from ce_daemon.topology import Difference
from ce_daemon.web import WebServer


def state_migrations(jobs: Jobs) -> tuple[Migration, ...]:
    """Every migration the daemon opens its state with: the spool's, the access tables and each job's
    (``state migrate`` copies their tables)."""
    return (*SPOOL_MIGRATIONS, *ACCESS_MIGRATIONS, *jobs.migrations())


def file_digest(path: Path) -> str:
    """The SHA-256 of the pipeline file's content as it is now (what the audit log records of a load)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable ({exc.strerror or type(exc).__name__})"


log = structlog.get_logger("ce_daemon.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = os.EX_CONFIG  # 78: systemd's RestartPreventExitStatus keeps a bad file from looping
WATCHDOG_STALL_LIMIT = 600.0
START_CHECK_LIMIT = 30.0
"""How long the start checks of a generation's new components may take, all together (they run at once):
a component whose check has not finished by then joins degraded and retries, as after a failed check."""
CLUSTER_HEALTH_EVERY = 1.0
"""Seconds between two looks at whether this node still reaches the cluster's database."""


class Phase(StrEnum):
    """The lifecycle phases."""

    STARTING = "starting"
    READY = "ready"
    RELOADING = "reloading"
    STOPPING = "stopping"


class Daemon:
    """Runs one pipeline file until asked to stop."""

    def __init__(
        self,
        path: Path,
        registry: Registry,
        *,
        jobs: Jobs | None = None,
        environ: Mapping[str, str] | None = None,
        node: Node | None = None,
    ) -> None:
        self.path = path
        self.node = Node() if node is None else node
        """This node's name and directory as the command line gave them (applied to every load)."""
        self.registry = registry
        self.jobs = Jobs.discover() if jobs is None else jobs
        """The jobs of this process: found once, so that every generation has the same tables and metrics."""
        self.environ = dict(os.environ if environ is None else environ)
        self.phase = Phase.STARTING
        self.generation = 0
        self.started = time.time()
        self.notifier = Notifier.from_env(self.environ)
        self.supervisor = Supervisor()
        self.health = HealthRegistry(on_transition=self._on_transition)
        self.syslog: HealthChannel | None = None
        self.loaded: LoadedPipeline | None = None
        self.specs: dict[str, ComponentSpec] = {}
        self.runtime: Runtime | None = None
        self.cluster: LeaseManager | None = None
        """This node's lease manager on a PostgreSQL state (None on SQLite: one node runs everything)."""
        self.cluster_health = ComponentStatus(name="cluster", kind="cluster")
        """This node's hold on the cluster, a health component: degraded while the database is unreachable."""
        self._units = asyncio.Lock()
        """One change at a time of what runs on this node: a unit started or stopped, a reload."""
        self.last_reload: dict[str, Any] = {}
        self.audit: AuditLog | None = None
        self.loaded_digest = ""
        """The SHA-256 of the pipeline file as last read (for a start or a reload, applied or not)."""
        self.running_digest = ""
        """The SHA-256 of the file the running generation was loaded from."""
        self.metrics = Metrics()
        self.metrics.watch(self)
        for job in self.jobs.loaded():
            job.register_metrics(self.metrics)
        self.web = WebServer(self.metrics, self.health, lambda: str(self.phase), api=self)
        self._reload_requested = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._force_exit = asyncio.Event()
        self._signals = 0

    # -- signals: record only ------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)

    def _on_stop_signal(self) -> None:
        if self._stop_requested.is_set():
            self._force_exit.set()
        self._stop_requested.set()

    # -- the lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop; return the process exit code."""
        self._install_signals()
        self.notifier.status(f"loading {self.path}")
        try:
            loaded = self._load()
        except ConfigError as exc:
            log.error(
                "daemon.config_invalid", file=str(self.path), problems=len(exc.problems), errors=exc.render()
            )
            self.notifier.send("STATUS=configuration invalid, not started", f"ERRNO={EXIT_CONFIG}")
            return EXIT_CONFIG
        redact.remember_pipeline(loaded)
        applog.configure(loaded.config.logging.level, loaded.config.logging.format)
        _log_warnings(loaded)
        try:
            self.syslog = _health_channel(loaded)
            async with Teardown("daemon resources") as teardown:
                teardown.enter_context("state lock", exclusive(loaded.config.state))
                store = await open_store(loaded.config.state, state_migrations(self.jobs))
                teardown.push("state database", store.close)
                self.audit = AuditLog(store, self._audit_emit)
                self.web.attach(
                    AccessStore(store),
                    self.audit,
                    loaded.config.state.path.parent,
                    self._reload_requested.set,
                )
                spool = Spool(store, loaded.config.spool.max_bytes)
                await spool.load()
                self.runtime = Runtime(
                    store=store,
                    spool=spool,
                    health=self.health,
                    data_dir=loaded.config.state.path.parent,
                    metrics=self.metrics,
                )
                teardown.push("tenant clients", self.runtime.close)
                settings = cluster_settings(loaded.config)
                if settings is not None:  # the leases replace the file lock: nodes share this state
                    self.cluster = LeaseManager(
                        state_url(loaded.config.state), settings, self._unit_acquired, self._unit_released
                    )
                    teardown.push("cluster", self.cluster.stop)
                control = ControlServer(
                    control_socket_path(loaded.config), self.status_snapshot, self.runtime.taps
                )
                await control.start()
                teardown.push("control socket", control.close)
                # first to close, after the drain it reports on
                teardown.push("http listener", self.web.close)
                await self._listen(loaded.config.http)
                await self._start_generation(loaded)
                return await self._serve()
        except StoreError as exc:
            log.error("daemon.state_unusable", error=str(exc))
            self._emit("daemon.failed", "crit", reason="state database unusable")
            return EXIT_FAILURE
        except ClusterError as exc:
            log.error("daemon.cluster_unusable", error=str(exc))
            self._emit("daemon.failed", "crit", reason="cannot join the cluster")
            self.notifier.send(f"STATUS=failed: {exc}", f"ERRNO={EXIT_FAILURE}")
            return EXIT_FAILURE
        except Exception as exc:  # the last resort: say why before the process ends
            log.exception("daemon.failed", error=f"{type(exc).__name__}: {exc}")
            self._emit("daemon.failed", "crit", reason=type(exc).__name__)
            self.notifier.send(f"STATUS=failed: {type(exc).__name__}", f"ERRNO={EXIT_FAILURE}")
            return EXIT_FAILURE
        finally:
            if self.syslog:
                self.syslog.close()

    async def _start_generation(self, loaded: LoadedPipeline) -> None:
        assert self.runtime is not None
        self.loaded = loaded
        self.generation = 1
        self.specs = plan_components(loaded, self.runtime)
        structlog.contextvars.bind_contextvars(gen=self.generation)  # copied into every component task
        await self.runtime.spool.set_consumers(self._consumers(self.specs))
        if self.cluster is not None:
            # Ready once joined, whatever this node holds: the units come as the balancer acquires them.
            self._attach(self.cluster_health)
            await self.cluster.start(_units(self.specs))
            self.cluster_health.ok(f"node {self.cluster.node} joined")
            await self.cluster.first_round()  # what it took at once has started (or been abandoned)
            if self._stop_requested.is_set():
                log.info("daemon.start_abandoned", generation=self.generation, reason="stop requested")
                return
        else:
            components = [spec.build_for(None) for spec in self._start_order(self.specs.values())]
            for component in components:
                self._attach(component.status)
            if await start_checks(components, START_CHECK_LIMIT, self._stop_requested) is None:
                await _close_unrun(components)  # asked to stop before it was ready: nothing ran
                for component in components:
                    component.status.stopped()
                log.info("daemon.start_abandoned", generation=self.generation, reason="stop requested")
                return
            for component in components:
                self.supervisor.start(component)
        self.phase = Phase.READY
        line = self._status_line()
        log.info("daemon.ready", generation=self.generation, file=str(self.path), version=__version__)
        self.notifier.ready(line)
        self._emit(
            "daemon.started", "notice", gen=self.generation, version=__version__, components=len(self.specs)
        )
        self.running_digest = self.loaded_digest
        await self._audit(
            "daemon.start", "ok", f"gen={self.generation} version={__version__}", self.running_digest
        )
        await save_snapshot(self)

    async def _serve(self) -> int:
        tasks = [
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(
                keep_watchdog_fed(self.notifier, self.health, WATCHDOG_STALL_LIMIT), name="watchdog"
            ),
        ]
        if self.cluster is not None:
            tasks.append(asyncio.create_task(self._watch_cluster(self.cluster), name="cluster-health"))
        try:
            while True:
                stop = asyncio.create_task(self._stop_requested.wait())
                reload = asyncio.create_task(self._reload_requested.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                reload.cancel()
                if self._stop_requested.is_set():
                    return await self._shutdown()
                self._reload_requested.clear()  # HUPs that arrived meanwhile coalesce into this one
                await self._reload()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown(self) -> int:
        assert self.loaded is not None
        self.phase = Phase.STOPPING
        grace = self.loaded.config.shutdown_grace
        log.info("daemon.stopping", generation=self.generation, grace=grace)
        self.notifier.stopping(f"stopping gen={self.generation}, draining up to {grace:g}s")
        self._emit("daemon.stopping", "notice", gen=self.generation)
        drain = asyncio.create_task(self._stop_all(grace))
        force = asyncio.create_task(self._force_exit.wait())
        await asyncio.wait({drain, force}, return_when=asyncio.FIRST_COMPLETED)
        if force.done() and not drain.done():
            drain.cancel("second stop signal: forced exit")
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            if self.cluster is not None:  # released nothing: the leases expire as after a crash
                await self.cluster.abort()
            log.warning("daemon.forced_exit")
            return EXIT_FAILURE
        force.cancel()
        await save_snapshot(self)
        await self._audit("daemon.stop", "ok", f"gen={self.generation}", self.running_digest)
        log.info("daemon.stopped", generation=self.generation)
        return EXIT_OK

    async def _stop_all(self, grace: float) -> None:
        if self.cluster is not None:  # each unit stopped, then every lease released: taken over at once
            await self.cluster.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # intake first, then consumers drain what is in flight, then everything else
        for group in self._stop_groups(list(self.supervisor.running)):
            await self.supervisor.stop_many(group, max(0.0, deadline - loop.time()))

    # -- reload by diff ----------------------------------------------------------------

    async def _reload(self) -> None:
        """Reload by diff, and audit the outcome with the file's content hash."""
        self.last_reload = {}
        await self._reload_by_diff()
        outcome = str(self.last_reload.get("outcome", "abandoned"))
        if outcome == "applied":
            self.running_digest = self.loaded_digest
        reason = self.last_reload.get("reason")
        detail = f"gen={self.generation}" + (f" reason={reason}" if reason else "")
        await self._audit("daemon.reload", outcome, detail, self.loaded_digest)

    async def _reload_by_diff(self) -> None:
        assert self.runtime is not None and self.loaded is not None
        self.phase = Phase.RELOADING
        self.notifier.reloading(f"reloading {self.path}")
        log.info("daemon.reloading", generation=self.generation)
        new = self._load_again()
        if new is None:
            return
        channel = self.syslog
        if new.section_fingerprint("health") != self.loaded.section_fingerprint("health"):
            try:  # opened before the swap: a channel that cannot open refuses the reload, not the process
                channel = _health_channel(new)
            except Exception as exc:  # noqa: BLE001 - whatever it is, the running channel stays
                place = new.place(("health", "syslog"))
                self._reject(f"{place}: the health channel cannot be opened: {exc}", "")
                return
        specs = plan_components(new, self.runtime)
        difference = Difference.between(self.specs, specs)
        async with self._units:
            # Every node checks every new or changed component, so that all refuse or apply a file
            # alike; each runs those of the units it holds (rebuilt under the same lease). The
            # cluster's new units are acquired, and its removed ones released, once the plan is in place.
            leases = self._held()
            outcome = await self._build(new, [specs[n] for n in difference.to_start], leases)
            if outcome is None or outcome[1]:
                if channel is not None and channel is not self.syslog:
                    channel.close()
                await self.runtime.forget_unused(self.specs)
                if outcome is None:
                    self._abandon()
                else:
                    self._reject(outcome[1], "")
                return
            await self._swap(new, specs, outcome[0], difference, channel=channel)
        if self.cluster is not None:
            self.cluster.set_units(_units(specs))

    def _load_again(self) -> LoadedPipeline | None:
        """The file as it is now, or None when it cannot replace the running one (the reload is rejected)."""
        assert self.loaded is not None
        try:
            new = self._load()
        except ConfigError as exc:
            self._reject(f"{len(exc.problems)} configuration problem(s)", exc.render())
            return None
        redact.remember_pipeline(new)  # before anything quotes an answer from one of its targets
        _log_warnings(new)
        restart = [
            ".".join(p)
            for p in RESTART_ONLY
            if new.section_fingerprint(*p) != self.loaded.section_fingerprint(*p)
        ]
        if restart:
            self._reject(f"restart needed: {', '.join(restart)} cannot change while running", "")
            return None
        return new

    async def _swap(
        self,
        new: LoadedPipeline,
        specs: dict[str, ComponentSpec],
        built: list[Component],
        difference: Difference,
        *,
        channel: HealthChannel | None,
    ) -> None:
        """Make ``new`` the running generation: ``built`` (checked) replace what ``difference`` stops.

        On a cluster, of ``built`` only the components of units this node holds run; the others were
        checked (every node refuses or applies a file alike) and are closed: the node that holds or
        takes their unit builds them again. ``started`` counts every component checked.
        """
        assert self.runtime is not None
        remove, kept = list(difference.to_stop), len(difference.kept)
        checked = built
        if self.cluster is not None:  # checked only: their units run elsewhere, or are not taken yet
            leases = self._held()
            built = [c for c in checked if specs[c.name].unit in leases]
            await _close_unrun([c for c in checked if specs[c.name].unit not in leases])
        # swap: stop what goes away or changes, then move consumers and start the new ones
        loop = asyncio.get_running_loop()
        deadline = loop.time() + new.config.shutdown_grace
        for group in self._stop_groups(remove):
            await self.supervisor.stop_many(group, max(0.0, deadline - loop.time()))
        for name in difference.removed:
            self.health.unregister(name)
        await self.runtime.spool.set_consumers(self._consumers(specs))
        structlog.contextvars.bind_contextvars(gen=self.generation + 1)
        degraded = [c.name for c in checked if c.status.state is not State.OK]
        for component in built:
            self._attach(component.status)
            if component.status.state is not State.OK:  # its start check failed before it was watched
                self._on_transition(component.status, State.STARTING, component.status.state)
            self.supervisor.start(component)
        await self.runtime.forget_unused(specs)
        self.specs, self.loaded = specs, new
        self.generation += 1
        self._apply_live_settings(new, channel)
        await self._listen(new.config.http)
        self.metrics.reload_outcome("applied")
        self.phase = Phase.READY
        self.last_reload = {
            "outcome": "applied",
            "at": time.time(),
            "kept": kept,
            "started": len(checked),
            "stopped": len(remove),
            "started_degraded": degraded,
        }
        log.info(
            "daemon.reload_applied",
            generation=self.generation,
            kept=kept,
            started=len(checked),
            stopped=len(remove),
            degraded=degraded or None,
        )
        self.notifier.ready(self._status_line())
        self._emit(
            "daemon.reload_applied",
            "notice",
            gen=self.generation,
            kept=kept,
            started=len(checked),
            stopped=len(remove),
        )
        await save_snapshot(self)

    async def _build(
        self, new: LoadedPipeline, specs: list[ComponentSpec], leases: Mapping[str, LeaseHandle]
    ) -> tuple[list[Component], str] | None:
        """Build and start-check the new or changed components: them, and why the reload is refused, or "";
        None when a stop request came first.

        Only what the configuration gets wrong refuses a reload: a target that cannot be reached
        degrades its component, which runs and retries as at start, unless it asks for
        ``require_healthy``. The start checks run at once, within :data:`START_CHECK_LIMIT` together;
        a stop request cancels them. After a refusal or a stop, what was built is closed again.
        """
        built: list[Component] = []
        for spec in self._start_order(specs):
            try:
                built.append(spec.build_for(leases.get(spec.unit)))
            except Exception as exc:  # noqa: BLE001 - a component its settings cannot build refuses the reload
                await _close_unrun(built)
                return [], f"{new.place(spec.place)}: {spec.name} cannot be built: {exc}"
        failures = await start_checks(built, START_CHECK_LIMIT, self._stop_requested)
        if failures is None:
            await _close_unrun(built)
            return None
        for spec in self._start_order(specs):
            failure = failures.get(spec.name)
            if failure is not None and spec.require_healthy:
                await _close_unrun(built)
                place = new.place(spec.place)
                return [], f"{place}: {spec.name} failed its start check (require_healthy): {failure}"
        return built, ""

    def _apply_live_settings(self, new: LoadedPipeline, channel: HealthChannel | None) -> None:
        """Global settings that change without a restart: log level and format, spool cap, health channel.

        ``channel`` is the health channel of ``new``, opened before the swap (the running one when the
        ``health`` section did not change).
        """
        assert self.runtime is not None
        applog.configure(new.config.logging.level, new.config.logging.format)
        self.runtime.spool.resize(new.config.spool.max_bytes)
        if channel is not self.syslog:
            if self.syslog:
                self.syslog.close()
            self.syslog = channel

    def _abandon(self) -> None:
        """A stop request came before the swap: the running generation stays, and stops next."""
        self.phase = Phase.READY
        self.last_reload = {"outcome": "abandoned", "at": time.time(), "reason": "stop requested"}
        log.warning("daemon.reload_abandoned", generation=self.generation, reason="stop requested")

    def _reject(self, reason: str, details: str) -> None:
        self.phase = Phase.READY
        self.metrics.reload_outcome("rejected")
        # The rendered problems stay in `status` until the next reload: the file may no longer load.
        problems = details.splitlines()
        self.last_reload = {"outcome": "rejected", "at": time.time(), "reason": reason, "problems": problems}
        log.warning(
            "daemon.reload_rejected", generation=self.generation, reason=reason, errors=details or None
        )
        self.notifier.ready(f"reload rejected ({reason}); still gen={self.generation} {self._ok_total()} ok")
        first = details.splitlines()[0] if details else ""
        self._emit(
            "daemon.reload_rejected", "warning", gen=self.generation, reason=reason, first_error=first or None
        )

    # -- units of work (several nodes) ------------------------------------------------

    async def _unit_acquired(self, lease: LeaseHandle) -> None:
        """This node took ``lease``'s unit: build its components under the lease, check and start them."""
        assert self.runtime is not None
        async with self._units:
            specs = self._start_order(
                s
                for s in self.specs.values()
                if s.unit == lease.unit and s.name not in self.supervisor.running
            )
            components: list[Component] = []
            try:
                components.extend(spec.build_for(lease) for spec in specs)
            except BaseException:
                await _close_unrun(components)
                raise
            self._takeover(specs)
            for component in components:
                self._attach(component.status)
            if await start_checks(components, START_CHECK_LIMIT, self._stop_requested) is None:
                await _close_unrun(components)  # the stop that came first releases the unit
                for component in components:
                    self.health.unregister(component.name)
                log.info("daemon.unit_abandoned", unit=lease.unit, reason="stop requested")
                return
            for component in components:
                self.supervisor.start(component)
        log.info("daemon.unit_started", unit=lease.unit, token=lease.token, components=len(components))

    async def _unit_released(self, unit: str) -> None:
        """Stop the components of ``unit`` (producers at a page boundary, consumers at a batch boundary),
        before its lease is given back or after it was lost."""
        assert self.loaded is not None
        async with self._units:
            names = [n for n in self.supervisor.running if n in self.specs and self.specs[n].unit == unit]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.loaded.config.shutdown_grace
            for group in self._stop_groups(names):
                await self.supervisor.stop_many(group, max(0.0, deadline - loop.time()))
            if self.phase is not Phase.STOPPING:  # a stopping node's last status shows what it ran
                for name in names:
                    self.health.unregister(name)
        log.info("daemon.unit_stopped", unit=unit, components=len(names))

    def _takeover(self, specs: Iterable[ComponentSpec]) -> None:
        """Start the send windows of the tenant clients ``specs`` use as full: the node that held the unit
        before may have spent the tenant's budget of the last second."""
        assert self.runtime is not None
        now = asyncio.get_running_loop().time()
        for key in {s.client for s in specs if s.client is not None}:
            client = self.runtime.clients.get(key)
            if client is not None:
                client.window.assume_full(now)

    def _held(self) -> dict[str, LeaseHandle]:
        """The units this node holds and may still drive, by unit."""
        if self.cluster is None:
            return {}
        return {unit: lease for unit, lease in self.cluster.handles.items() if not lease.lost}

    async def _watch_cluster(self, cluster: LeaseManager) -> None:
        """Keep the ``cluster`` health component telling whether this node can reach the database."""
        while True:
            reason = cluster.health()
            if reason is not None:
                self.cluster_health.degraded(reason)
            elif self.cluster_health.state is not State.OK:
                self.cluster_health.ok(f"node {cluster.node}")
            self.cluster_health.beat()
            await asyncio.sleep(CLUSTER_HEALTH_EVERY)

    # -- helpers -------------------------------------------------------------------------

    def _load(self) -> LoadedPipeline:
        """The pipeline file as this node runs it (its name and directory put in)."""
        self.loaded_digest = file_digest(self.path)  # just before the loader reads it
        loaded = load_pipeline(self.path, self.registry, jobs=self.jobs, environ=self.environ)
        loaded.config = self.node.apply(loaded.config)
        return loaded

    @staticmethod
    def _consumers(specs: Mapping[str, ComponentSpec]) -> dict[str, frozenset[str]]:
        return {s.name: s.consumes for s in specs.values() if s.consumes is not None}

    @staticmethod
    def _start_order(specs: Iterable[ComponentSpec]) -> list[ComponentSpec]:
        # consumers before producers, so a first start reads every page from the beginning
        return sorted(specs, key=lambda s: (s.stage != "consumer", s.name))

    def _stop_groups(self, names: list[str]) -> list[list[str]]:
        def stage(name: str) -> str:
            spec = self.specs.get(name)
            return spec.stage if spec else "other"

        return [
            [n for n in names if stage(n) == "producer"],
            [n for n in names if stage(n) == "consumer"],
            [n for n in names if stage(n) not in ("producer", "consumer")],
        ]

    def _attach(self, status: ComponentStatus) -> None:
        status.on_transition = self._on_transition
        self.health.adopt(status)

    def _on_transition(self, status: ComponentStatus, old: State, new: State) -> None:
        if new is State.DEGRADED or new is State.FAILED:
            log.warning(
                "component.degraded" if new is State.DEGRADED else "component.failed_state",
                component=status.name,
                reason=status.detail,
            )
            self._emit(
                f"component.{new}",
                "warning" if new is State.DEGRADED else "err",
                component=status.name,
                reason=status.detail,
            )
        elif new is State.OK and old in (State.DEGRADED, State.FAILED):
            log.info("component.recovered", component=status.name)
            self._emit("component.recovered", "notice", component=status.name)
        if self.phase is Phase.READY:
            self.notifier.status(self._status_line())

    def _ok_total(self) -> str:
        ok, total, _ = self.health.summary()
        return f"{ok}/{total}"

    def _status_line(self) -> str:
        ok, total, bad = self.health.summary()
        line = f"running gen={self.generation} components ok={ok}/{total}"
        return line + (f" failing={','.join(bad[:5])}" if bad else "")

    async def _listen(self, settings: HttpSettings | None) -> None:
        """Serve /metrics, /healthz and /readyz as ``settings`` say.

        An address that cannot be bound is reported and leaves the listener off, the way an
        unreachable sink at start leaves one route degraded: the pipeline itself runs on.
        """
        try:
            await self.web.configure(settings)
        except OSError as exc:
            assert settings is not None
            log.error("http.listen_failed", listen=settings.listen, error=str(exc))
            self._emit("http.listen_failed", "err", listen=settings.listen, error=str(exc)[:200])

    async def _audit(self, action: str, outcome: str, detail: str, digest: str) -> None:
        """Record a lifecycle event in the audit log with the pipeline file's content hash ``digest``; a
        state database that cannot take it is logged, never a reason to fail the lifecycle step."""
        if self.audit is None:
            return
        try:
            await self.audit.record(
                action,
                outcome,
                actor="daemon",
                detail=f"{detail} file={self.path} sha256={digest}",
            )
        except StoreError as exc:
            log.error("audit.failed", action=action, error=str(exc))

    def _audit_emit(self, event: str, fields: dict[str, Any]) -> None:
        severity: Severity = "notice" if fields.get("outcome") in ("ok", "applied") else "warning"
        self._emit(event, severity, **{k: v for k, v in fields.items() if k != "action" and v is not None})

    def _emit(self, event: str, severity: Severity, **fields: Any) -> None:
        if self.syslog:
            self.syslog.emit(event, severity, **fields)

    async def _heartbeat(self) -> None:
        assert self.loaded is not None
        while True:
            await asyncio.sleep(self.loaded.config.health.interval)
            ok, total, bad = self.health.summary()
            self._emit(
                "health.heartbeat",
                "info",
                gen=self.generation,
                components_ok=f"{ok}/{total}",
                failing=",".join(bad) or None,
                uptime_s=int(time.time() - self.started),
            )
            await save_snapshot(self)

    async def status_snapshot(self) -> dict[str, Any]:
        """What ``ce-daemon status`` shows (see :mod:`ce_daemon.status`)."""
        return await status_snapshot(self)


async def start_checks(
    components: Sequence[Component], limit: float, stop: asyncio.Event
) -> dict[str, Exception] | None:
    """Run every component's ``start()`` at once, for ``limit`` seconds overall: the failures by name.

    A component whose check fails or does not finish in time is degraded with the reason (it runs
    anyway and retries). None when ``stop`` is set first: the checks still running are cancelled.
    """
    checks = {asyncio.create_task(_start_check(c), name=f"start-check:{c.name}"): c for c in components}
    every: asyncio.Future[Any] = asyncio.gather(*checks, return_exceptions=True)
    stopping: asyncio.Future[Any] = asyncio.create_task(stop.wait(), name="start-checks:stop")
    try:
        await asyncio.wait({every, stopping}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for task in checks:
            task.cancel(f"start checks: not done within {limit:g}s, or asked to stop")
        await asyncio.wait({every})  # each start cut short closes what it opened before it ends
    if stop.is_set():
        return None
    failures: dict[str, Exception] = {}
    for task, component in checks.items():
        if task.cancelled():
            failure: Exception | None = TimeoutError(f"start check not done within {limit:g}s")
            component.status.degraded(f"start failed: {failure}")
            log.warning("component.start_failed", component=component.name, error=str(failure))
        else:
            failure = task.result()
        if failure is not None:
            failures[component.name] = failure
    return failures


async def _start_check(component: Component) -> Exception | None:
    """Run ``component.start()``; on failure the component is degraded (it runs and retries anyway)."""
    try:
        await component.start()
    except Exception as exc:  # noqa: BLE001 - an unreachable target degrades one component only
        component.status.degraded(f"start failed: {exc}")
        log.warning("component.start_failed", component=component.name, error=str(exc))
        return exc
    return None


async def _close_unrun(components: Sequence[Component]) -> None:
    """Close components that never ran, the last built first, each close failure logged."""
    try:
        await close_all([(c.name, c) for c in components], "components")
    except ExceptionGroup as group:
        log_failures(group, "component.close_failed")


def _units(specs: Mapping[str, ComponentSpec]) -> set[str]:
    """The units the cluster runs for a plan: the same on every node, since every node plans the same file."""
    return {spec.unit for spec in specs.values()}


def _health_channel(loaded: LoadedPipeline) -> HealthChannel | None:
    """The syslog health channel ``loaded`` asks for (None when it is off)."""
    settings = loaded.config.health.syslog
    if not settings.enabled:
        return None
    return HealthChannel(
        settings.target, settings.format, settings.facility, repeat_after=loaded.config.health.interval
    )


def _place(loaded: LoadedPipeline, *loc: str) -> str:
    """``file:line:col`` of a section of ``loaded`` (the file alone when it is not written there)."""
    place = loaded.source.position(loc)
    return f"{loaded.path}:{place[0]}:{place[1]}" if place else str(loaded.path)


def _log_warnings(loaded: LoadedPipeline) -> None:
    """Log each warning of a newly loaded file once (at start and at each reload), placed like an error."""
    for warning in loaded.warnings:
        log.warning("config.warning", file=str(loaded.path), warning=warning.render(label="warning"))
