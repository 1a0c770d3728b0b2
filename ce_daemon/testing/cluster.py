"""Several daemon processes sharing one PostgreSQL state, the tenant simulator and a syslog receiver.

The harness of the cluster's integration tests and benchmark (issue 8 §3), for every job's tests to
reuse: :func:`cluster_run` starts simulated tenants (two by default, each a ``ce-daemon simulate``
process with a backlog and steady arrivals), a TCP syslog receiver in this process that keeps every
shipped record's ``_id``, a pipeline file with one JSON route per tenant and data kind into it, and N
nodes (``ce-daemon run -c FILE --node-name nI --data-dir DIR_I``) on a fresh database. A test then
looks at who holds what (`ClusterRun.leases`, straight from ``ce_leases``; `Node.status` and
`Node.status_command`, each node's own answer), signals nodes (SIGKILL, SIGTERM, SIGSTOP, SIGCONT;
`Node.restart`), waits for a condition with a bound (`ClusterRun.until`), and asks the simulators
what they served and who drove each iterator index (`ClusterRun.served_ids`,
`ClusterRun.ledger_violations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson

from ce_daemon.control import ask_status
from ce_daemon.netskope.subtypes import DataKind, check_kind
from ce_daemon.simulator.process import SimulatorProcess, simulator_process
from ce_daemon.simulator.records import record_id
from ce_daemon.testing.harness import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import StreamId, run_cli
from ce_daemon.testing.sockets import SyslogReceiver

T = TypeVar("T")

TOKEN = "sim-token-0123456789-nodes"  # noqa: S105 - the simulators' own throwaway token
ENV = {"SIM_TOKEN": TOKEN}
STREAMS: tuple[StreamId, ...] = (("alerts", "dlp"), ("alerts", "malware"), ("events", "page"))
"""Subtypes with data in every simulated tenant (the others answer empty pages)."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What each of ``tenants`` simulated tenants holds and generates, and how the daemons read it.

    ``backlog`` records per subtype of ``streams`` wait at start, ``arrival_rate`` more arrive per
    second per subtype; pages hold ``page_size`` records at most; an idle poller is told to come back
    after ``idle_wait`` seconds; a route's batches hold ``batch_records`` records at most.
    """

    backlog: int = 2000
    arrival_rate: float = 20.0
    page_size: int = 500
    idle_wait: float = 0.5
    streams: tuple[StreamId, ...] = STREAMS
    tenants: int = 2
    batch_records: int = 500


@dataclass(frozen=True, slots=True)
class Lease:
    """A row of ``ce_leases``: who holds a unit, under which token."""

    node: str
    token: int


@dataclass(slots=True)
class SimulatedTenant:
    """A tenant of the pipeline and the simulator process behind it (its records depend on ``seed``)."""

    name: str
    seed: int
    simulator: SimulatorProcess

    async def served_ids(self) -> set[str]:
        """The ``_id`` of every record the simulator has put in a page so far (on any index)."""
        ids: set[str] = set()
        for endpoint, pages in (await self.simulator.served()).items():
            kind, subtype = endpoint.split("/", 1)
            checked = check_kind(kind)
            for page in pages:
                seqs = range(page["first_seq"], page["end_seq"])
                ids.update(record_id(self.seed, checked, subtype, seq) for seq in seqs)
        return ids


class ShippedRecords:
    """The ``_id`` of what the routes shipped to the syslog receiver (JSON records, no syslog header)."""

    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver
        self._counts: Counter[str] = Counter()
        self._read = 0

    def counts(self) -> Counter[str]:
        """How many times each ``_id`` arrived so far."""
        messages = self.receiver.messages
        for message in messages[self._read :]:
            self._counts[orjson.loads(message)["_id"]] += 1
        self._read = len(messages)
        return self._counts


@dataclass(eq=False)
class Node:
    """One daemon of the cluster: ``ce-daemon run -c CONFIG --node-name NAME --data-dir DATA_DIR``.

    Every run's process is kept (``runs``) so that a test can read what a node printed before it was
    restarted.
    """

    name: str
    config: Path
    data_dir: Path
    env: Mapping[str, str]
    runs: list[DaemonProcess] = field(default_factory=list)
    stopped: bool = False
    """SIGSTOP sent and no SIGCONT since."""

    @property
    def process(self) -> DaemonProcess:
        """The current (last started) run."""
        return self.runs[-1]

    @property
    def running(self) -> bool:
        """Whether the current run's process has not exited."""
        child = self.runs[-1].process if self.runs else None
        return child is not None and child.returncode is None

    @property
    def socket(self) -> Path:
        """The node's control socket, in its data directory."""
        return self.data_dir / "control.sock"

    async def start(self) -> None:
        """Start a new run of the node (its previous one must have ended)."""
        assert not self.running, f"node {self.name} is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        arguments = ("--node-name", self.name, "--data-dir", str(self.data_dir))
        self.runs.append(await DaemonProcess(self.config, env=self.env, arguments=arguments).start())
        self.stopped = False

    async def status(self) -> dict[str, Any]:
        """The node's live status (``ce-daemon status --json``), asked on its control socket."""
        return await ask_status(self.socket)

    async def status_command(self) -> tuple[int, dict[str, Any]]:
        """``ce-daemon status --json -c CONFIG --data-dir DATA_DIR``: its exit code and the snapshot."""
        arguments = ("status", "--json", "-c", str(self.config), "--data-dir", str(self.data_dir))
        code, out = await run_cli(*arguments, env=self.env)
        snapshot: dict[str, Any] = orjson.loads(out)
        return code, snapshot

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the node's process (SIGSTOP and SIGCONT are remembered in ``stopped``)."""
        self.process.signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self.stopped = sig == signal.SIGSTOP

    async def kill(self) -> None:
        """SIGKILL the node, as a crash would end it: nothing released, its leases left to expire."""
        await self.process.kill()

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the node (a graceful stop hands its units over); its exit code."""
        if self.stopped:
            self.signal(signal.SIGCONT)
        self.process.signal(signal.SIGTERM)
        return await self.process.wait(timeout)

    async def restart(self, timeout: float = 30.0) -> int:
        """SIGTERM the node, then start it again under the same name; the exit code of the stop."""
        code = await self.terminate(timeout)
        await self.start()
        return code

    def output(self) -> str:
        """Everything every run of the node printed, for a failing test's message."""
        return "\n".join(line for run in self.runs for line in run.raw)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The current run's log lines with ``event == name``."""
        return self.process.events(name)


@dataclass(eq=False)
class ClusterRun:
    """Everything :func:`cluster_run` started, and what a test asks of it."""

    dsn: str
    config: Path
    tenants: list[SimulatedTenant]
    routes: list[str]
    nodes: dict[str, Node]
    collected: ShippedRecords | None
    lease_ttl: float

    @property
    def shipped(self) -> ShippedRecords:
        """What reached the collecting receiver (not when the caller runs the receiver)."""
        assert self.collected is not None, "this run ships to the caller's receiver"
        return self.collected

    @property
    def units(self) -> set[str]:
        """Every unit of the pipeline: ``tenant:<name>`` (its pollers) and ``route:<name>`` (its consumer)."""
        return {f"tenant:{t.name}" for t in self.tenants} | {f"route:{r}" for r in self.routes}

    def live(self) -> list[Node]:
        """The nodes whose process runs and is not stopped."""
        return [node for node in self.nodes.values() if node.running and not node.stopped]

    async def leases(self) -> dict[str, Lease]:
        """``ce_leases`` as unit → holder: the database's word on who holds what (nothing before the
        first node created the table)."""
        connection = await asyncpg.connect(self.dsn)
        try:
            rows = await connection.fetch("SELECT unit, node, token FROM ce_leases")
        except asyncpg.UndefinedTableError:
            return {}
        finally:
            await connection.close()
        return {row["unit"]: Lease(row["node"], row["token"]) for row in rows}

    async def shares(self) -> dict[str, set[str]]:
        """Node name → the units it holds (per ``ce_leases``; every node listed, even holding none)."""
        held: dict[str, set[str]] = {name: set() for name in self.nodes}
        for unit, lease in (await self.leases()).items():
            held.setdefault(lease.node, set()).add(unit)
        return held

    async def balanced(self, among: Iterable[Node] | None = None) -> bool:
        """Whether every unit is held by one of ``among`` (default: the live nodes), nothing else is held,
        and their shares differ by one at most."""
        names = {node.name for node in (self.live() if among is None else among)}
        leases = await self.leases()
        if set(leases) != self.units or any(lease.node not in names for lease in leases.values()):
            return False
        counts = Counter(lease.node for lease in leases.values())
        shares = [counts.get(name, 0) for name in names]
        return max(shares) - min(shares) <= 1

    async def until(
        self, check: Callable[[], Awaitable[T | None]], timeout: float, what: str, every: float = 0.2
    ) -> T:
        """Ask ``check()`` every ``every`` seconds until it returns something true; that value.

        The daemons are other processes: asking again is the only way to see them change. Fails
        after ``timeout`` seconds, saying ``what`` was awaited and who held what then.
        """
        try:
            async with asyncio.timeout(timeout):
                while not (value := await check()):  # noqa: ASYNC110 - the change is in other processes
                    await asyncio.sleep(every)
                return value
        except TimeoutError:
            leases = await self.leases()
            raise AssertionError(f"not within {timeout:g} s: {what}; leases then: {leases}") from None

    async def served_ids(self) -> set[str]:
        """Every ``_id`` the simulators have served so far."""
        ids: set[str] = set()
        for tenant in self.tenants:
            ids |= await tenant.served_ids()
        return ids

    async def all_shipped(self, ids: set[str], timeout: float) -> None:
        """Wait until every one of ``ids`` has reached the receiver at least once."""

        async def arrived() -> bool:
            return not ids - set(self.shipped.counts())

        try:
            await self.until(arrived, timeout, "every served record shipped")
        except AssertionError:
            missing = ids - set(self.shipped.counts())
            raise AssertionError(f"{len(missing)} of {len(ids)} served records never shipped") from None

    async def ledgers(self) -> dict[str, dict[str, Any]]:
        """Tenant name → its simulator's lease ledger (``{endpoint: {index: {runs, violations}}}``)."""
        return {tenant.name: await tenant.simulator.leases() for tenant in self.tenants}

    async def ledger_violations(self) -> list[str]:
        """Every violation the simulators saw (an index driven by two holders at once, a stale token)."""
        found: list[str] = []
        for tenant, ledger in (await self.ledgers()).items():
            for endpoint, indexes in ledger.items():
                for index, record in indexes.items():
                    found += [f"{tenant} {endpoint} {index}: {v}" for v in record["violations"]]
        return found

    async def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every node still running (SIGCONT first if stopped); node → exit code."""
        codes: dict[str, int] = {}
        for node in self.nodes.values():
            if node.running:
                codes[node.name] = await node.terminate(timeout)
        return codes


def route_names(workload: Workload) -> dict[str, tuple[str, DataKind]]:
    """The routes of a cluster run: ``<tenant>-<kind>`` → (tenant, kind), one per tenant and data kind
    with subtypes in ``workload``."""
    kinds = sorted({kind for kind, _ in workload.streams})
    return {
        f"t{number}-{kind}": (f"t{number}", kind)
        for number in range(1, workload.tenants + 1)
        for kind in kinds
    }


def cluster_pipeline(
    directory: Path,
    dsn: str | None,
    tenants: Sequence[SimulatedTenant],
    sink_ports: Mapping[str, int],
    *,
    workload: Workload,
    lease_ttl: float,
) -> dict[str, Any]:
    """The pipeline file of a cluster run: ``tenants`` read from two hours back, the JSON routes of
    `route_names` each into the syslog receiver on its port in ``sink_ports`` (TCP, no header: each
    message is one record).

    ``dsn`` None: a SQLite state in ``directory/state`` and no ``cluster:`` section (one node).
    """
    routes: list[dict[str, Any]] = []
    for name, (tenant, kind) in route_names(workload).items():
        routes.append(
            {
                "name": name,
                "tenant": tenant,
                kind: [subtype for k, subtype in workload.streams if k == kind],
                "format": "json",
                "batch": {"max_records": workload.batch_records, "max_wait": "200ms"},
                "sink": {
                    "type": "syslog",
                    "host": "127.0.0.1",
                    "port": sink_ports[name],
                    "protocol": "tcp",
                    "header": "none",
                },
            }
        )
    state: dict[str, Any] = {"path": str(directory / "state" / "state.db")}
    config: dict[str, Any] = {
        "version": 1,
        "state": state,
        "logging": {"level": "debug", "format": "json"},
        "health": {"interval": "1h", "syslog": {"enabled": False}},
        "shutdown_grace": "5s",
        "tenants": [
            {"name": t.name, "url": t.simulator.url, "token": {"$env": "SIM_TOKEN"}, "start": "2h"}
            for t in tenants
        ],
        "logs": {"routes": routes},
    }
    if dsn is not None:
        state["url"] = dsn
        config["cluster"] = {"lease_ttl": lease_ttl}
    return config


@contextlib.asynccontextmanager
async def simulated_tenants(workload: Workload) -> AsyncIterator[list[SimulatedTenant]]:
    """``workload.tenants`` simulator processes, tenants ``t1``, ``t2``…, each with records of its own."""
    options = {
        "token": TOKEN,
        "backlog": workload.backlog,
        "arrival_rate": workload.arrival_rate,
        "page_size": workload.page_size,
        "idle_wait": workload.idle_wait,
        "subtypes": ",".join(f"{kind}/{subtype}" for kind, subtype in workload.streams),
    }
    async with contextlib.AsyncExitStack() as stack:
        tenants = []
        for number in range(1, workload.tenants + 1):
            simulator = await stack.enter_async_context(simulator_process({**options, "seed": number}))
            tenants.append(SimulatedTenant(f"t{number}", number, simulator))
        yield tenants


@contextlib.asynccontextmanager
async def cluster_run(
    directory: Path,
    dsn: str | None,
    *,
    nodes: int = 3,
    lease_ttl: float = 3.0,
    workload: Workload = Workload(),
    sink_ports: Mapping[str, int] | None = None,
) -> AsyncIterator[ClusterRun]:
    """Simulated tenants, a syslog receiver, the pipeline file and ``nodes`` started daemons on ``dsn``
    (a fresh database: see `ce_daemon.testing.state.postgres_database`; None: one node on SQLite).

    ``sink_ports`` (route name, as `route_names` gives them → port) replaces the collecting TCP
    receiver by the caller's own (a benchmark's faster ones; ``shipped`` is then not available). On
    exit every node still running gets SIGTERM (SIGKILL if it does not end).
    """
    if dsn is None and nodes != 1:
        raise ValueError("several nodes need a PostgreSQL state")
    async with contextlib.AsyncExitStack() as stack:
        tenants = await stack.enter_async_context(simulated_tenants(workload))
        collector = None
        if sink_ports is None:
            collector = await stack.enter_async_context(SyslogReceiver("tcp"))
            sink_ports = dict.fromkeys(route_names(workload), collector.port)
        pipeline = cluster_pipeline(
            directory, dsn, tenants, sink_ports, workload=workload, lease_ttl=lease_ttl
        )
        config = write_pipeline(directory / "pipeline.yaml", pipeline)
        run = ClusterRun(
            dsn=dsn or "",
            config=config,
            tenants=tenants,
            routes=[route["name"] for route in pipeline["logs"]["routes"]],
            nodes={f"n{i}": Node(f"n{i}", config, directory / f"n{i}", ENV) for i in range(1, nodes + 1)},
            collected=ShippedRecords(collector) if collector is not None else None,
            lease_ttl=lease_ttl,
        )
        stack.push_async_callback(_end_nodes, run)
        for node in run.nodes.values():
            await node.start()
        yield run


async def _end_nodes(run: ClusterRun) -> None:
    for node in run.nodes.values():
        if node.running:
            if node.stopped:
                node.signal(signal.SIGCONT)
            with contextlib.suppress(TimeoutError):
                await node.terminate(15)
        if node.runs:
            await node.process.kill()
