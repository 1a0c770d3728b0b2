"""Components and the supervisor that runs each one in isolation.

A ``TaskGroup`` cancels every sibling when one child raises, so each component runs inside
its own supervised task instead: a crash is logged, the component is marked degraded and
restarted with backoff; auth and config errors stop it (no retry storm) until a reload
changes its settings. A commit refused because the node lost its unit's lease
(:class:`~ce_daemon.store.LeaseLostError`) ends the component quietly: the lease manager already
knows, and stops it. Siblings never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import structlog

from ce_daemon.backoff import Backoff, pause
from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.errors import AuthError, ComponentConfigError
from ce_daemon.health import ComponentStatus, State
from ce_daemon.store import LeaseLostError

log = structlog.get_logger("ce_daemon.supervisor")


class Component(ABC):
    """A long-running part of the pipeline (a poller, a route), keyed by name for reload by diff."""

    kind: str = "component"

    def __init__(self, name: str, fingerprint: str) -> None:
        self.name = name
        self.fingerprint = fingerprint
        self.status = ComponentStatus(name=name, kind=self.kind)
        self.lease: LeaseHandle | None = None
        """The lease of its unit when several nodes share the work (set before ``start``): check
        ``lease.held()`` before each request sent for the unit, pass ``lease.fence`` to each commit."""

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default on purpose
        """Open resources and check health before the component joins the running generation.

        Raising here at reload rejects the reload; at daemon start the component is still run
        (and reports itself degraded) so that one unreachable target never blocks the others.
        """

    @abstractmethod
    async def run(self, stopping: asyncio.Event) -> None:
        """Do the work until ``stopping`` is set, then return at a safe point (page or batch boundary)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, empty by default on purpose
        """Release what ``start`` opened; called once, after ``run`` has returned or been cancelled."""


@dataclass
class Supervised:
    """A component under supervision: its task and its stop signal."""

    component: Component
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Supervisor:
    """Starts, restarts and stops components, each in its own task."""

    def __init__(self, *, backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.running: dict[str, Supervised] = {}

    def start(self, component: Component) -> Supervised:
        """Run ``component`` under supervision (its ``start`` must already have been awaited)."""
        supervised = Supervised(component)
        supervised.task = asyncio.create_task(self._loop(supervised), name=f"component:{component.name}")
        self.running[component.name] = supervised
        return supervised

    async def _loop(self, sv: Supervised) -> None:
        component, status = sv.component, sv.component.status
        bound = log.bind(component=component.name)
        backoff, crashes = Backoff(self.backoff_initial, self.backoff_max), 0
        while not sv.stopping.is_set():
            try:
                await component.run(sv.stopping)
            except asyncio.CancelledError:
                raise
            except LeaseLostError as exc:
                status.stopped(f"lease lost: {exc}")
                bound.warning("component.lease_lost", error=str(exc))
                await sv.stopping.wait()
                return
            except (AuthError, ComponentConfigError) as exc:
                status.failed(str(exc))
                bound.error("component.failed", error=str(exc), hint="fix the configuration and reload")
                await sv.stopping.wait()
                return
            except Exception as exc:  # noqa: BLE001 - a crash in one component must never reach its siblings
                crashes += 1
                delay = backoff.delay(crashes)
                status.restarts += 1
                status.degraded(f"crashed: {type(exc).__name__}: {exc}")
                bound.exception("component.crashed", restart_in=round(delay, 2))
                await pause(sv.stopping, delay)
                continue
            return  # run() returned: it finished its work (a one-off job) or was asked to stop

    async def stop(self, name: str, grace: float) -> None:
        """Ask the component to finish at a safe point within ``grace`` seconds, then cancel and close it."""
        sv = self.running.pop(name, None)
        if sv is None:
            return
        sv.stopping.set()
        task = sv.task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                task.cancel(msg=f"{name}: shutdown grace of {grace:g}s exceeded")
                log.warning("component.cancelled", component=name, grace=grace)
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            log.error("component.stop_failed", component=name, error=repr(task.exception()))
        try:
            await sv.component.close()
        except Exception:
            log.exception("component.close_failed", component=name)
        status = sv.component.status
        if status.state is not State.FAILED and status.state is not State.STOPPED:
            status.stopped()

    async def stop_many(self, names: list[str], grace: float) -> None:
        """Stop several components at once, sharing one grace period."""
        await asyncio.gather(*(self.stop(name, grace) for name in names if name in self.running))
