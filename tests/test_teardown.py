"""Teardown closes in reverse order, tries every close and reports every failure (aiohttp's cleanup)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ce_daemon.health import HealthRegistry, State
from ce_daemon.metrics import Metrics
from ce_daemon.pipeline import Runtime
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.supervisor import Component, Supervisor
from ce_daemon.teardown import Teardown, close_all
from ce_daemon.testing.state import open_test_store


class Part(Component):
    """A component that records when it is closed, and may fail to close."""

    def __init__(self, name: str, closed: list[str], *, fails: bool = False) -> None:
        super().__init__(name, "fp")
        self.closed = closed
        self.fails = fails

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()

    async def close(self) -> None:
        self.closed.append(self.name)
        if self.fails:
            raise OSError(f"{self.name} would not close")


async def test_close_all_closes_the_last_first_and_raises_every_failure_together() -> None:
    """Two of four closes fail: all are tried, last first; the group holds both, each noted with its name."""
    closed: list[str] = []
    parts = [
        Part("a", closed),
        Part("b", closed, fails=True),
        Part("c", closed),
        Part("d", closed, fails=True),
    ]
    with pytest.raises(ExceptionGroup) as caught:
        await close_all([(p.name, p) for p in parts], "components")
    assert closed == ["d", "c", "b", "a"]
    assert str(caught.value) == "2 of 4 components failed to close (2 sub-exceptions)"
    assert [str(e) for e in caught.value.exceptions] == ["d would not close", "b would not close"]
    assert [e.__notes__ for e in caught.value.exceptions] == [["while closing d"], ["while closing b"]]


async def test_close_all_without_failures_raises_nothing() -> None:
    """Every close succeeds: nothing is raised, everything was closed."""
    closed: list[str] = []
    await close_all([(n, Part(n, closed)) for n in "xyz"], "components")
    assert closed == ["z", "y", "x"]


async def test_teardown_runs_every_callback_in_reverse_and_raises_the_failures() -> None:
    """A context entered first is exited last, after callbacks that failed; the failures come out together."""
    order: list[str] = []

    @contextlib.contextmanager
    def lock() -> Iterator[None]:
        yield
        order.append("lock")

    async def failing() -> None:
        order.append("failing")
        raise RuntimeError("boom")

    async def last() -> None:
        order.append("last")

    async def body() -> None:
        async with Teardown("resources") as teardown:
            teardown.enter_context("lock", lock())
            teardown.push("failing", failing)
            teardown.push("last", last)

    with pytest.raises(ExceptionGroup) as caught:
        await body()
    assert order == ["last", "failing", "lock"]
    assert [str(e) for e in caught.value.exceptions] == ["boom"]


async def test_teardown_lets_the_bodys_exception_through_and_still_closes_everything() -> None:
    """The body raised: that exception goes on (it says why), every callback still ran."""
    order: list[str] = []

    async def failing() -> None:
        order.append("failing")
        raise RuntimeError("close failed")

    async def fine() -> None:
        order.append("fine")

    async def body() -> None:
        async with Teardown("resources") as teardown:
            teardown.push("fine", fine)
            teardown.push("failing", failing)
            raise KeyError("the body's own failure")

    with pytest.raises(KeyError):
        await body()
    assert order == ["failing", "fine"]


async def test_runtime_close_tries_every_tenant_client(tmp_path: Path) -> None:
    """Runtime.close closes every client even when one fails, and raises that failure."""
    closed: list[str] = []
    async with await open_test_store(tmp_path / "db.sqlite", SPOOL_MIGRATIONS) as store:
        runtime = Runtime(
            store=store,
            spool=Spool(store, 1024**2),
            health=HealthRegistry(),
            data_dir=tmp_path,
            metrics=Metrics(),
        )
        # stand-ins for tenant clients: Runtime.close only closes them
        runtime.clients.update(
            {"a:1": Part("a", closed), "b:1": Part("b", closed, fails=True), "c:1": Part("c", closed)}
        )
        with pytest.raises(ExceptionGroup) as caught:
            await runtime.close()
    assert closed == ["c", "b", "a"] and not runtime.clients
    assert [e.__notes__ for e in caught.value.exceptions] == [["while closing b:1"]]


async def test_stopping_components_whose_close_raises_still_stops_and_closes_each() -> None:
    """The supervisor stops every component of a group; a close that raises is logged, the others go on."""
    closed: list[str] = []
    supervisor = Supervisor()
    parts = [Part("a", closed, fails=True), Part("b", closed), Part("c", closed, fails=True)]
    for part in parts:
        supervisor.start(part)
    await supervisor.stop_many([p.name for p in parts], 5.0)
    assert sorted(closed) == ["a", "b", "c"] and not supervisor.running
    assert all(p.status.state is State.STOPPED for p in parts)
