"""Leases on PostgreSQL: every unit held by exactly one node, takeover, handover, fencing, balance."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest
from cluster_pg import cluster, lease_rows, scratch_database, until_leases
from pydantic import ValidationError

from ce_daemon.cluster import leases
from ce_daemon.cluster.leases import NodeIdentity
from ce_daemon.cluster.manager import ClusterError, LeaseManager, _Link
from ce_daemon.cluster.settings import ClusterSettings
from ce_daemon.cluster.status import cluster_status
from ce_daemon.store import open_url
from ce_daemon.store.base import CommitUncertainError, Fence, LeaseLostError

UNITS = [
    f"poller:t{tenant}/events/{subtype}" for tenant in (1, 2, 3) for subtype in ("page", "network", "audit")
]

pytestmark = pytest.mark.timeout(45)


async def test_three_nodes_share_nine_units_exclusively() -> None:
    """Three managers started at once on nine units hold three each, every unit by exactly one."""
    async with cluster() as group:
        await asyncio.gather(*(group.start(f"node-{n}", UNITS) for n in "abc"))
        await group.until(lambda: group.shares() == [3, 3, 3], timeout=20)
        assert group.exclusive(UNITS)
        rows = await lease_rows(group.dsn)
        assert {unit: node for unit, (node, _) in rows.items()} == {
            unit: nodes[0] for unit, nodes in group.holders().items()
        }
        assert len({token for _, token in rows.values()}) == len(UNITS)
        assert group.violations == []


async def test_a_dead_node_s_units_move_to_the_others_after_expiry() -> None:
    """A node killed without releasing: its units are taken over, with greater tokens, by the survivors."""
    async with cluster() as group:
        await asyncio.gather(*(group.start(f"node-{n}", UNITS) for n in "abc"))
        await group.until(lambda: group.shares() == [3, 3, 3], timeout=20)
        orphaned = dict(group.holding["node-a"])
        await group.kill("node-a")
        await group.until(lambda: group.exclusive(UNITS), timeout=20)
        assert group.shares() == [4, 5]
        for unit, old in orphaned.items():
            (holder,) = group.holders()[unit]
            assert group.holding[holder][unit].token > old.token
            assert not old.held()
        assert group.violations == []


async def test_a_graceful_stop_hands_over_at_once() -> None:
    """A stopped node releases everything: the others take it well before its leases would expire."""
    async with cluster(ttl=30.0) as group:
        await asyncio.gather(*(group.start(f"node-{n}", UNITS) for n in "ab"))
        await group.until(lambda: group.shares() == [4, 5], timeout=20)
        held_by_a = set(group.holding["node-a"])
        before = len(group.events)
        await group.stop("node-a")
        assert {unit for node, event, unit in group.events[before:] if node == "node-a"} == held_by_a
        await group.until(lambda: group.exclusive(UNITS), timeout=10)  # expiry would take 30 s
        assert group.shares() == [9]
        assert group.violations == []


async def test_a_stale_fence_cannot_commit() -> None:
    """After a takeover the old holder's fence fails inside its transaction, whose writes roll back."""
    async with cluster() as group:
        await group.start("node-a", ["route:siem"])
        await group.until(lambda: len(group.holding["node-a"]) == 1, timeout=20)
        stale = group.holding["node-a"]["route:siem"].fence
        await group.kill("node-a")
        await group.start("node-b", ["route:siem"])
        await group.until(lambda: len(group.holding["node-b"]) == 1, timeout=20)
        fresh = group.holding["node-b"]["route:siem"].fence
        assert fresh.token > stale.token

        async with await open_url(group.dsn) as store:
            async with store.transaction() as tx:
                await tx.execute("CREATE TABLE offsets (unit TEXT PRIMARY KEY, seq BIGINT)")
            with pytest.raises(LeaseLostError, match="route:siem"):  # noqa: PT012 - the commit is the subject
                async with store.transaction() as tx:
                    await tx.execute(
                        "INSERT INTO offsets VALUES (:unit, :seq)", {"unit": "route:siem", "seq": 7}
                    )
                    await stale.check(tx)
            async with store.read() as tx:
                assert await tx.fetchval("SELECT count(*) FROM offsets") == 0
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO offsets VALUES (:unit, :seq)", {"unit": "route:siem", "seq": 8})
                await fresh.check(tx)
            async with store.read() as tx:
                assert await tx.fetchval("SELECT seq FROM offsets") == 8


async def test_a_passed_fence_check_holds_off_a_takeover_but_not_a_renewal() -> None:
    """Between a passed check and its commit the lease cannot be taken over, yet its holder renews it."""
    async with scratch_database() as dsn, await open_url(dsn) as store:
        other = await asyncpg.connect(dsn)
        me = NodeIdentity("a", "host", 1, "0")
        try:
            async with store.transaction() as tx:
                await tx.execute(
                    "INSERT INTO ce_leases VALUES ('u', 'a', 1, now(), now(), now() - interval '1 second')"
                )
            async with store.transaction() as tx:
                await Fence("u", "a", 1).check(tx)
                assert await leases.acquire(other, "b", 5.0, ["u"]) == {}
                async with asyncio.timeout(5):
                    assert await leases.renew(other, me, -1.0, {"u": 1}, {}) == {"u"}
            taken = await leases.acquire(other, "b", 5.0, ["u"])
            assert list(taken) == ["u"] and taken["u"] > 1
        finally:
            await other.close()


async def test_a_holder_paused_inside_a_commit_holds_off_a_takeover_only_briefly() -> None:
    """A node stopped between its fence check and its COMMIT (SIGSTOP) keeps the lease row locked: the
    server rolls that idle transaction back after ``idle_in_transaction`` seconds, the lease is taken
    over, and the paused commit, once resumed, fails as uncertain (nothing it wrote was kept)."""
    async with (
        scratch_database() as dsn,
        await open_url(dsn, idle_in_transaction=1.0) as store,
    ):
        other = await asyncpg.connect(dsn)
        try:
            async with store.transaction() as tx:
                await tx.execute(
                    "INSERT INTO ce_leases VALUES ('u', 'a', 1, now(), now(), now() - interval '1 second')"
                )
            taken: dict[str, int] = {}

            async def paused_commit() -> None:
                nonlocal taken
                async with store.transaction() as tx:
                    await tx.execute("CREATE TABLE written (n INTEGER)")
                    await Fence("u", "a", 1).check(tx)
                    assert await leases.acquire(other, "b", 5.0, ["u"]) == {}
                    async with asyncio.timeout(15):
                        while not taken:  # the paused holder's session is ended after about a second
                            await asyncio.sleep(0.2)
                            taken = await leases.acquire(other, "b", 5.0, ["u"])

            with pytest.raises(CommitUncertainError):
                await paused_commit()
            assert taken["u"] > 1
            assert await other.fetchval("SELECT to_regclass('written')") is None
        finally:
            await other.close()


async def test_the_lease_manager_s_sessions_are_bounded_like_the_store_s() -> None:
    """The renewer's and balancer's connections take row locks too (an acquire locks FOR UPDATE): the
    server ends their idle transactions and probes them as it does the store's sessions."""
    async with scratch_database() as dsn:
        link = _Link(dsn, "lease balancer test", 5.0)
        conn = await link.get()
        try:
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"
            assert await conn.fetchval("SHOW tcp_keepalives_idle") == "30"
            assert await conn.fetchval("SHOW application_name") == "ce-daemon lease balancer test"
        finally:
            await link.close()


async def test_held_turns_false_when_renewals_are_blocked() -> None:
    """Renewals that cannot complete: handles unheld, units stopped, health says why; then recovery."""
    async with cluster() as group:
        manager = await group.start("node-a", UNITS[:3])
        await group.until(lambda: len(group.holding["node-a"]) == 3, timeout=20)
        handles = list(group.holding["node-a"].values())
        assert all(handle.held() for handle in handles)
        blocker = await asyncpg.connect(group.dsn)
        try:
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM ce_nodes WHERE node = 'node-a' FOR UPDATE")
                await group.until(lambda: not group.holding["node-a"], timeout=20)
                assert not any(handle.held() for handle in handles)
                health = manager.health()
                assert health is not None and health.startswith("cannot reach the database since")
            await group.until(lambda: len(group.holding["node-a"]) == 3, timeout=20)
        finally:
            await blocker.close()
        assert manager.health() is None
        assert all(group.holding["node-a"][old.unit].token > old.token for old in handles)


async def test_a_lease_taken_behind_a_node_s_back_is_lost_at_its_next_renewal() -> None:
    """A renewal that finds another holder's token loses that handle and stops its unit, and only it."""
    async with cluster() as group:
        await group.start("node-a", UNITS[:2])
        await group.until(lambda: len(group.holding["node-a"]) == 2, timeout=20)
        taken = group.holding["node-a"][UNITS[0]]
        conn = await asyncpg.connect(group.dsn)
        try:
            await conn.execute(
                "UPDATE ce_leases SET node = 'elsewhere', token = nextval('ce_lease_tokens'),"
                " expires_at = now() + interval '1 hour' WHERE unit = $1",
                UNITS[0],
            )
        finally:
            await conn.close()
        await group.until(lambda: UNITS[0] not in group.holding["node-a"], timeout=10)
        assert not taken.held()
        assert list(group.holding["node-a"]) == [UNITS[1]]


async def test_removed_units_are_released() -> None:
    """set_units without some units: their holders stop and release them; the rest stay put."""
    async with cluster() as group:
        await asyncio.gather(*(group.start(f"node-{n}", UNITS[:6]) for n in "ab"))
        await group.until(lambda: group.shares() == [3, 3], timeout=20)
        before = {unit: nodes[0] for unit, nodes in group.holders().items()}
        for manager in group.managers.values():
            manager.set_units(UNITS[:4])
        await group.until(lambda: group.exclusive(UNITS[:4]), timeout=20)
        await until_leases(group.dsn, lambda rows: set(rows) == set(UNITS[:4]), timeout=20)
        moved = [unit for unit in UNITS[:4] if group.holders()[unit] != [before[unit]]]
        assert moved == [] or group.shares() == [2, 2]


async def test_nodes_joining_one_by_one_converge_without_flapping() -> None:
    """Nodes joining one after another end at 3/3/3 and then move nothing for several rounds."""
    async with cluster() as group:
        await group.start("node-a", UNITS)
        await group.until(lambda: group.shares() == [9], timeout=20)
        await group.start("node-b", UNITS)
        await group.until(lambda: group.shares() == [4, 5], timeout=20)
        await group.start("node-c", UNITS)
        await group.until(lambda: group.shares() == [3, 3, 3], timeout=20)
        settled = len(group.events)
        await asyncio.sleep(4 * 2.0 / 3)  # an observation window of four rounds, not a synchronisation
        assert group.events[settled:] == []
        assert group.exclusive(UNITS)
        assert group.violations == []


async def test_status_lists_nodes_and_what_they_hold() -> None:
    """cluster_status: every node with what it holds since when; a killed node shows as dead."""
    async with cluster() as group:
        await asyncio.gather(*(group.start(f"node-{n}", UNITS[:4]) for n in "ab"))
        await group.until(lambda: group.shares() == [2, 2], timeout=20)
        status = await group.managers["node-a"].status()
        assert [node.node for node in status.nodes] == ["node-a", "node-b"]
        assert all(node.alive and len(node.units) == 2 for node in status.nodes)
        assert status.unheld == ()
        assert status.to_dict()["nodes"][0]["units"][0]["since"]
        await group.kill("node-b")
        await group.until(lambda: group.shares() == [4], timeout=20)
        after = await cluster_status(group.dsn, UNITS[:5])
        dead = next(node for node in after.nodes if node.node == "node-b")
        assert not dead.alive and dead.units == () and dead.heartbeat_age > 0
        assert after.unheld == (UNITS[4],)


async def ignore(_: object) -> None:
    """A callback with nothing to start or stop."""


async def predecessor(dsn: str, host: str, pid: int) -> None:
    """A row of ``node-a`` that stays live for an hour, as its process on ``host`` left it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO ce_nodes (node, host, pid, version, expires_at)"
            " VALUES ('node-a', $1, $2, '0', now() + interval '1 hour')",
            host,
            pid,
        )
    finally:
        await conn.close()


async def test_a_node_name_in_use_by_a_live_process_is_refused() -> None:
    """A node name whose row another machine keeps live cannot join: each node needs its own name."""
    async with scratch_database() as dsn:
        await predecessor(dsn, "elsewhere", 1)
        manager = LeaseManager(dsn, ClusterSettings(node_name="node-a", lease_ttl=1.0), ignore, ignore)
        with pytest.raises(
            ClusterError, match="node name 'node-a' is in use by the live process 1 on elsewhere"
        ):
            await manager.start(UNITS)


async def test_a_dead_predecessor_on_this_host_is_replaced_at_once() -> None:
    """A restart under the same name joins at once when the old process on this host is gone."""
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    async with scratch_database() as dsn:
        await predecessor(dsn, socket.gethostname(), gone.pid)
        manager = LeaseManager(dsn, ClusterSettings(node_name="node-a", lease_ttl=1.0), ignore, ignore)
        async with asyncio.timeout(5):  # the stale row would keep a live name busy for an hour
            await manager.start(UNITS[:1])
        await manager.stop()


def test_renewals_must_fit_twice_in_a_lease() -> None:
    """Settings whose renewal interval leaves no room for one missed renewal are refused."""
    assert ClusterSettings(lease_ttl=15).renew_interval == 5
    with pytest.raises(ValidationError, match="renew_every 7s is too long"):
        ClusterSettings(lease_ttl=15, renew_every=7)
