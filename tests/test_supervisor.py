"""The supervisor: a crash in one component is isolated, restarted with backoff; auth errors stop it."""

from __future__ import annotations

import asyncio

from ce_daemon.errors import AuthError
from ce_daemon.health import State
from ce_daemon.supervisor import Component, Supervisor


class Crashy(Component):
    """Crashes on its first runs, then works until stopped."""

    def __init__(self, crashes: int) -> None:
        super().__init__("crashy", "fp")
        self.crashes = crashes
        self.runs = 0
        self.working = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        self.status.ok("working")
        self.working.set()
        await stopping.wait()


class Steady(Component):
    """Counts ticks until stopped."""

    def __init__(self) -> None:
        super().__init__("steady", "fp")
        self.ticks = 0
        self.closed = False

    async def run(self, stopping: asyncio.Event) -> None:
        self.status.ok()
        while not stopping.is_set():
            self.ticks += 1
            await asyncio.sleep(0)

    async def close(self) -> None:
        self.closed = True


class Locked(Component):
    """Fails authentication."""

    runs = 0

    async def run(self, stopping: asyncio.Event) -> None:
        self.runs += 1
        raise AuthError("token refused (401)")


class Stubborn(Component):
    """Ignores the stop request."""

    def __init__(self) -> None:
        super().__init__("stubborn", "fp")
        self.running = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        self.running.set()
        await asyncio.Event().wait()


async def test_crash_is_restarted_and_siblings_keep_running() -> None:
    """A crashing component is restarted with backoff, marked degraded meanwhile; its sibling never stops."""
    supervisor = Supervisor(backoff_initial=0.01, backoff_max=0.05)
    crashy, steady = Crashy(crashes=3), Steady()
    transitions: list[State] = []
    crashy.status.on_transition = lambda status, old, new: transitions.append(new)
    supervisor.start(steady)
    supervisor.start(crashy)
    async with asyncio.timeout(10):
        await crashy.working.wait()
    assert crashy.runs == 4
    assert crashy.status.restarts == 3
    assert State.DEGRADED in transitions and crashy.status.state is State.OK
    before = steady.ticks
    await asyncio.sleep(0)  # one turn of the loop: a live sibling (ready to run) ticks in it
    assert steady.ticks > before  # the sibling was never cancelled
    await supervisor.stop_many(["crashy", "steady"], grace=5)
    assert steady.closed and steady.status.state is State.STOPPED


async def test_auth_error_stops_without_retry_storm() -> None:
    """An AuthError marks the component failed and it is not restarted."""
    supervisor = Supervisor(backoff_initial=0.001)
    locked = Locked("locked", "fp")
    failed = asyncio.Event()
    locked.status.on_transition = lambda status, old, new: failed.set() if new is State.FAILED else None
    supervised = supervisor.start(locked)
    async with asyncio.timeout(5):
        await failed.wait()
    for _ in range(50):  # give a (wrong) restart every chance to happen
        await asyncio.sleep(0)
    assert locked.runs == 1
    assert "401" in locked.status.detail
    await supervisor.stop("locked", grace=1)
    assert supervised.task is not None and supervised.task.done()


async def test_component_ignoring_stop_is_cancelled_after_grace() -> None:
    """A component that does not stop within the grace period is cancelled with a reason."""
    supervisor = Supervisor()
    stubborn = Stubborn()
    supervised = supervisor.start(stubborn)
    await stubborn.running.wait()
    await supervisor.stop("stubborn", grace=0.05)
    assert supervised.task is not None and supervised.task.cancelled()
