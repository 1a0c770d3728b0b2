"""Several nodes on one PostgreSQL state: the units shared, a graceful stop handing its units over at once
with nothing lost, a poller that stops asking once its lease is no longer held, ``cluster:`` refused on
SQLite."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from ce_daemon.cluster import leases
from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.cluster.settings import ClusterSettings
from ce_daemon.config.model import Pipeline
from ce_daemon.config.node import DATA_DIR_ENV, NODE_NAME_ENV, Node, cluster_settings
from ce_daemon.control import control_socket_path
from ce_daemon.health import State
from ce_daemon.store import Fence, open_url
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.ingest import ingesting, route, tenant
from ce_daemon.testing.pipelines import backlog_ids, backlog_simulator, run_cli
from ce_daemon.testing.state import STATE_URL_VARIABLE

TOKEN = "nodes-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
TENANTS = ("east", "west")
UNITS = {"tenant:east", "tenant:west", "route:east", "route:west"}


def two_tenant_pipeline(tmp_path: Path, url: str, state_url: str) -> dict[str, Any]:
    """Two tenants (on one simulator), each shipped by its own route to a file: four units."""
    return {
        "version": 1,
        "state": {"url": state_url, "path": str(tmp_path / "state" / "db.sqlite")},
        # Long leases: a unit that moves within the tests' timeouts was handed over, not left to expire.
        "cluster": {"lease_ttl": "60s"},
        "logging": {"level": "info", "format": "json"},
        "health": {"interval": "1h", "syslog": {"enabled": False}},
        "shutdown_grace": "5s",
        "tenants": [
            {"name": name, "url": url, "token": {"$env": "SIM_TOKEN"}, "start": "2h", "rate_limit": 10}
            for name in TENANTS
        ],
        "logs": {"routes": [route(name, name, [("alerts", "dlp")]) for name in TENANTS]},
    }


def node_env(tmp_path: Path, name: str) -> dict[str, str]:
    """What a systemd template unit gives node ``name``: its name and its own directory."""
    return {**ENV, "CE_DAEMON_NODE_NAME": name, "CE_DAEMON_DATA_DIR": str(tmp_path / name)}


async def node_status(config: Path, tmp_path: Path, name: str) -> dict[str, Any]:
    """``ce-daemon status -c CONFIG --data-dir DIR --json`` of node ``name``: its live answer."""
    code, out = await run_cli(
        "status", "-c", str(config), "--data-dir", str(tmp_path / name), "--json", env=ENV
    )
    snapshot: dict[str, Any] = orjson.loads(out)
    assert snapshot.get("live") is True, (code, out)
    return snapshot


def holders(snapshot: dict[str, Any]) -> dict[str, list[str]]:
    """Unit → the live nodes holding it, as a node's status shows the cluster."""
    held: dict[str, list[str]] = {}
    for node in snapshot["cluster"]["nodes"]:
        if node["alive"]:
            for unit in node["units"]:
                held.setdefault(unit["unit"], []).append(node["name"])
    return held


async def status_when(
    config: Path, tmp_path: Path, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 40.0
) -> dict[str, Any]:
    """Ask node ``name`` for its status until ``check`` holds (the nodes are other processes)."""
    async with asyncio.timeout(timeout):
        while True:
            snapshot = await node_status(config, tmp_path, name)
            if check(snapshot):
                return snapshot
            await asyncio.sleep(0.2)


def shipped_ids(path: Path) -> set[str]:
    """The ``_id`` of every complete line a file sink wrote."""
    try:
        lines = path.read_bytes().split(b"\n")[:-1]
    except FileNotFoundError:
        return set()
    return {str(orjson.loads(line)["_id"]) for line in lines}


async def test_cluster_section_is_refused_on_a_sqlite_state(tmp_path: Path) -> None:
    """``check`` places the refusal at the ``cluster:`` key and says what several nodes need."""
    config = {
        "version": 1,
        "state": {"path": str(tmp_path / "state" / "db.sqlite")},
        "cluster": {"node_name": "a"},
        "tenants": [],
    }
    path = write_pipeline(tmp_path / "pipeline.yaml", config)
    code, out = await run_cli("check", "-c", str(path), env={})
    assert code == 78, out
    assert f"{path}:" in out and ": cluster: a cluster needs a state every node shares" in out
    assert "several nodes need state.url: postgresql://" in out


async def test_two_nodes_share_the_units_and_a_stopped_node_hands_them_over(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two daemons on one PostgreSQL: every unit on exactly one node, both ship; SIGTERM of one moves its
    units to the other at once (well before its leases would expire) and every record reaches its sink."""
    backlog = 1500
    async with backlog_simulator(TOKEN, backlog, page_size=25, rate_limit=40) as sim:
        assert sim.url is not None
        config = write_pipeline(
            tmp_path / "pipeline.yaml", two_tenant_pipeline(tmp_path, sim.url, postgres_url)
        )
        first = DaemonProcess(config, env=node_env(tmp_path, "first"))
        second = DaemonProcess(config, env=node_env(tmp_path, "second"))
        async with first, second:
            await first.wait_for_event("daemon.ready")
            await second.wait_for_event("daemon.ready")

            def shared(snapshot: dict[str, Any]) -> bool:
                held = holders(snapshot)
                mine = {n["name"]: len(n["units"]) for n in snapshot["cluster"]["nodes"] if n["alive"]}
                return set(held) == UNITS and mine == {"first": 2, "second": 2}

            snapshot = await status_when(config, tmp_path, "first", shared)
            assert all(len(nodes) == 1 for nodes in holders(snapshot).values()), holders(snapshot)
            assert snapshot["cluster"]["node"] == "first" and snapshot["cluster"]["unheld"] == []
            assert snapshot["cluster"]["health"] is None
            running = {c["name"] for c in snapshot["components"] if c["name"] != "cluster"}
            mine = {
                u["unit"] for n in snapshot["cluster"]["nodes"] if n["name"] == "first" for u in n["units"]
            }
            # only the components of its own units run on a node
            assert {f"route:{t}" for t in TENANTS} & running == mine & {f"route:{t}" for t in TENANTS}
            outputs = {name: tmp_path / "out" / f"{name}.ndjson" for name in TENANTS}
            async with asyncio.timeout(40):
                while not all(shipped_ids(path) for path in outputs.values()):  # noqa: ASYNC110 - files
                    await asyncio.sleep(0.1)

            first.signal(signal.SIGTERM)
            assert await first.wait(30) == 0
            # handed over at once: the second node holds every unit long before the first's could expire
            await second.wait_for_event("cluster.lease_acquired", count=4, timeout=30)
            snapshot = await status_when(config, tmp_path, "second", lambda s: set(holders(s)) == UNITS)
            assert all(nodes == ["second"] for nodes in holders(snapshot).values())

            expected = {name: set(backlog_ids(sim, "alerts", "dlp", backlog)) for name in TENANTS}
            async with asyncio.timeout(60):
                while any(not expected[n] <= shipped_ids(p) for n, p in outputs.items()):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            second.signal(signal.SIGTERM)
            assert await second.wait(30) == 0
    report = sim.leases.report()
    assert report, "clustered pollers send the lease header"
    assert sim.leases.violations() == []


async def test_a_poller_whose_lease_is_no_longer_held_stops_asking(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease nobody renews stops being held ``ttl - margin`` after it was taken: from then on the poller
    sends nothing (each request also carried the lease header); once the lease is lost it ends cleanly,
    neither crashed nor restarted."""
    monkeypatch.setenv(STATE_URL_VARIABLE, postgres_url)
    await (await open_url(postgres_url)).close()  # the cluster's tables
    conn = await asyncpg.connect(postgres_url)
    try:
        sent = time.monotonic()
        [(unit, token)] = (await leases.acquire(conn, "solo", 2.0, ["tenant:sim"])).items()
    finally:
        await conn.close()
    lease = LeaseHandle(unit, Fence(unit, "solo", token), sent, ttl=2.0, margin=0.5)
    async with (
        backlog_simulator(TOKEN, 100_000, page_size=5, rate_limit=50) as sim,
        ingesting(
            tmp_path,
            [tenant("sim", str(sim.url), rate_limit=20)],
            [route("r", "sim", [("alerts", "dlp")])],
            environ=ENV,
            leases={unit: lease},
        ) as ingest,
    ):
        poller = ingest.poller(("alerts", "dlp"))
        await ingest.watch.until(lambda: len(ingest.ids(("alerts", "dlp"))) >= 5)
        # It notices at its next request at the latest, and waits for the lease (beating meanwhile).
        async with asyncio.timeout(10):
            while "lease of tenant:sim was not renewed" not in poller.status.detail:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not lease.held()
        asked = sim.stats().requests_total
        beat = poller.status.last_beat
        async with asyncio.timeout(10):
            while poller.status.last_beat == beat:  # noqa: ASYNC110 - a beat is not an event either
                await asyncio.sleep(0.05)
        assert sim.stats().requests_total == asked  # nothing asked while the lease is not held
        supervised = ingest.supervisor.running[poller.name]
        lease.lose()
        assert supervised.task is not None
        await asyncio.wait_for(asyncio.shield(supervised.task), 10)  # ends by itself, cleanly
        assert poller.status.restarts == 0
        assert poller.status.state is State.STOPPED and "lost" in poller.status.detail
        assert sim.stats().requests_total == asked
    runs = [
        run for index in sim.leases.report().values() for record in index.values() for run in record["runs"]
    ]
    assert runs and {(run["node"], run["token"]) for run in runs} == {("solo", token)}
    assert sim.leases.violations() == []


def test_a_node_is_named_and_placed_by_its_options_and_joins_only_on_postgresql(tmp_path: Path) -> None:
    """``--node-name``/``--data-dir`` (or the environment) name the node and move its directory; a SQLite
    state never gets cluster settings (so no lease, and no fence, is ever used on it)."""
    sqlite = Pipeline.model_validate({"state": {"path": str(tmp_path / "s" / "db.sqlite")}})
    node = Node.given({DATA_DIR_ENV: str(tmp_path / "n1"), NODE_NAME_ENV: "env-name"}, name="flag-name")
    assert node == Node("flag-name", tmp_path / "n1")
    placed = node.apply(sqlite)
    assert placed.state.path == tmp_path / "n1" / "db.sqlite"
    assert control_socket_path(placed) == tmp_path / "n1" / "control.sock"
    assert cluster_settings(placed) is None and placed.cluster is None
    shared = Pipeline.model_validate({"state": {"url": "postgresql://ce@db/ce", "path": "/x/db"}})
    default = cluster_settings(shared)
    assert default is not None and default == ClusterSettings(node_name=default.node_name)
    settings = cluster_settings(node.apply(shared))
    assert settings is not None and settings.node_name == "flag-name" and settings.lease_ttl == 15.0
    with pytest.raises(ValueError, match="node name 'a b'"):
        Node.given({}, name="a b")
