"""The ``ce-daemon`` command: run, check, plugins, status, top, demo, simulate, and each job's own."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ce_daemon import __version__, applog
from ce_daemon.errors import ConfigError, describe

if TYPE_CHECKING:
    from ce_daemon.registry import Registry

if TYPE_CHECKING:
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.config.model import StateSettings
    from ce_daemon.config.node import Node
    from ce_daemon.jobs import Job, SubParsers

EXIT_CONFIG = os.EX_CONFIG
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""141: what a shell reports for any program ended by SIGPIPE (``yes | head -1``)."""

# `ce-daemon status` answers with the LSB init-script status codes (0 running, 3 not running, 4 unknown);
# LSB leaves 150-199 to applications, which is where "running but not all well" goes.
STATUS_OK = 0
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4
STATUS_DEGRADED = 150
STATUS_FAILED = 151
STATUS_CONNECT_TIMEOUT = 3.0  # seconds: `status` answers promptly even when the database does not
CHECK_CONNECT_TIMEOUT = 5.0  # seconds: `check` tells an unreachable state database without hanging
_STATUS_CODES = """exit codes (LSB init-script status codes, 150-151 being ce-daemon's own):
  0    a live daemon answered and every component is ok
  150  it answered, and a component is degraded or starting, or the last reload was rejected
  151  it answered, and a component failed (it waits for a configuration change)
  3    no daemon is running (the last saved status is shown, marked as such)
  4    the status cannot be determined (unreadable file, socket permission, no sensible answer), or
       a daemon runs (it holds the state database's lock) but its control socket does not answer"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ce-daemon`` script."""
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        code: int = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here at the latest, not in the flush at exit
    except BrokenPipeError:
        # `ce-daemon plugins | head -1`: the reader has what it wanted; end quietly.
        applog.silence_stdout()
        return EXIT_BROKEN_PIPE
    return EXIT_BROKEN_PIPE if applog.output_lost() else code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ce-daemon",
        description="Self-hosted Netskope Cloud Exchange: pull Netskope events and alerts, ship them on.",
    )
    parser.add_argument("--version", action="version", version=f"ce-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the daemon in the foreground", description="Run the pipeline until SIGTERM."
    )
    run.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
    _node_arguments(run)
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check",
        help="validate a pipeline file",
        description="Validate the whole pipeline exactly as a reload would. Exit 0 if valid, 78 if not.",
    )
    check.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
    check.add_argument(
        "--allow-unresolved-secrets",
        action="store_true",
        help="exit 0 when the only problems are secret references this environment cannot resolve "
        "(an unset variable, $credential outside systemd, a file this user may not read): everything "
        "else is validated, and those references are listed as not verified",
    )
    check.set_defaults(func=_cmd_check)

    plugins = sub.add_parser(
        "plugins", help="list installed plugins", description="List every discovered plugin."
    )
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_cmd_plugins)

    status = sub.add_parser(
        "status",
        help="ask a running daemon how it is",
        description="Ask a running daemon through its control socket; when none runs,\n"
        "show its last saved status, marked as such.",
        epilog=_STATUS_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "-c", "--config", type=Path, help="the pipeline file (to find the socket and database)"
    )
    status.add_argument("--socket", type=Path, help="the control socket path")
    status.add_argument(
        "--data-dir",
        type=Path,
        help="the node's directory, as given to `run --data-dir` (env CE_DAEMON_DATA_DIR): "
        "its control socket is there",
    )
    status.add_argument(
        "--json", action="store_true", help='print the JSON snapshot (with "live": true|false)'
    )
    status.set_defaults(func=_cmd_status)

    top = sub.add_parser(
        "top",
        help="watch every component of a running daemon, live",
        description="Every component of a running daemon with its state, rates, errors, lag and\n"
        "backlog, redrawn in place on a terminal (plain text when not, or with --once).",
        epilog="exit codes: 0 at Ctrl-C or after --once, 3 no daemon answers (or it went away),\n"
        "4 the answer is unusable (socket permission, not a status)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("-c", "--config", type=Path, help="the pipeline file (to find the socket)")
    top.add_argument("--socket", type=Path, help="the control socket path")
    top.add_argument("--data-dir", type=Path, help="the node's directory, as given to `run --data-dir`")
    top.add_argument("--interval", type=_seconds, default=2.0, help="seconds between two views (default 2)")
    top.add_argument(
        "--once", action="store_true", help="print one view (two snapshots --interval apart) and exit"
    )
    top.set_defaults(func=_cmd_top)

    demo = sub.add_parser(
        "demo",
        help="run the built-in demo against the tenant simulator",
        description="Write the demo pipeline to DIR/pipeline.yaml and run it as `run -c` would.",
    )
    demo.add_argument(
        "--dir", type=Path, default=Path("demo"), help="where the pipeline, state and outputs go"
    )
    demo.add_argument(
        "--duration", type=float, default=0, help="stop by itself after this many seconds (0: run until ^C)"
    )
    demo.set_defaults(func=_cmd_demo)

    from ce_daemon.simulator.command import add_simulate_arguments

    simulate = sub.add_parser(
        "simulate",
        help="run the Netskope tenant simulator",
        description="Serve a simulated Netskope tenant's data-export API on loopback.",
    )
    add_simulate_arguments(simulate)
    simulate.set_defaults(func=_cmd_simulate)

    from ce_daemon.jobs import Jobs

    for job in Jobs.discover().loaded():
        _add_job_commands(job, sub)

    from ce_daemon.access.commands import add_access_commands

    add_access_commands(sub)

    from ce_daemon.store.transfer import add_state_command

    add_state_command(sub)
    sub.choices["state"].set_defaults(func=_cmd_state)

    return parser


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node-name",
        help="this node's name in the cluster (env CE_DAEMON_NODE_NAME; overrides cluster.node_name)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="this node's own directory: control socket, local files, a SQLite state (env "
        "CE_DAEMON_DATA_DIR; overrides the directory state.path names), so that several nodes run "
        "from one pipeline file",
    )


def _node(args: argparse.Namespace) -> Node | None:
    """The node options of ``args`` and the environment; None (after saying why) when unusable."""
    from ce_daemon.config.node import Node

    try:
        return Node.given(os.environ, getattr(args, "node_name", None), args.data_dir)
    except ValueError as exc:
        print(f"ce-daemon: {exc}", file=sys.stderr)
        return None


def _add_job_commands(job: Job[Any, Any], sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``job``'s commands, or none of them when they would break the CLI (said on stderr).

    A job whose ``add_commands`` raises, or names a command that exists, must not take every other
    command (``run`` included) down with it: its commands are tried on a scratch parser first.
    """
    scratch = argparse.ArgumentParser().add_subparsers()
    try:
        job.add_commands(scratch)
        taken = sorted(set(scratch.choices) & set(sub.choices))
        if not taken:
            job.add_commands(sub)
    except Exception as exc:  # noqa: BLE001 - whatever a job raises, the core's commands keep working
        problem = describe(exc)
    else:
        if not taken:
            return
        problem = f"command {taken[0]!r} already exists"
    print(f"ce-daemon: the {job.name!r} job's commands are left out: {problem}", file=sys.stderr)


def _registry() -> Registry:
    from ce_daemon.registry import Registry

    return Registry.discover()


def _cmd_run(args: argparse.Namespace) -> int:
    from ce_daemon.daemon import Daemon

    node = _node(args)
    if node is None:
        return EXIT_CONFIG
    applog.configure()
    return asyncio.run(Daemon(args.config, _registry(), node=node).run())


def _cmd_check(args: argparse.Namespace) -> int:
    from ce_daemon.config.load import load_pipeline
    from ce_daemon.registry import Registry

    try:
        loaded = load_pipeline(
            args.config, Registry.discover(), allow_unresolved_secrets=args.allow_unresolved_secrets
        )
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(
            f"{args.config}: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    used = {info.name: info for job, resolved in loaded.resolved_jobs() for info in job.plugins(resolved)}
    for info in used.values():
        if info.note:
            print(
                f"{args.config}: note: the {info.name!r} plugin from {info.distribution}: {info.note}",
                file=sys.stderr,
            )
    for problem in loaded.unverified_secrets:
        print(
            replace(problem, message=f"not verified: {problem.message}", hint=None).render(), file=sys.stderr
        )
    for warning in loaded.warnings:
        print(warning.render(label="warning"), file=sys.stderr)
    unusable = asyncio.run(_state_problem(loaded, offline=args.allow_unresolved_secrets))
    if unusable is not None:
        print(unusable, file=sys.stderr)
        print(f"{args.config}: 1 problem", file=sys.stderr)
        return EXIT_CONFIG
    streams = loaded.streams()
    unverified = len(loaded.unverified_secrets)
    summaries = [line for job, resolved in loaded.resolved_jobs() if (line := job.summary(resolved))]
    print(
        f"{args.config}: OK — "
        + ", ".join([f"{len(loaded.tenants)} tenant(s)", *summaries, f"{len(streams)} stream(s) to pull"])
        + (f", {len(loaded.warnings)} warning(s)" if loaded.warnings else "")
        + (f"; {unverified} secret reference(s) not verified in this environment" if unverified else "")
    )
    return 0


async def _state_problem(loaded: LoadedPipeline, *, offline: bool) -> str | None:
    """Why the PostgreSQL state ``loaded`` names cannot be used, placed at ``state.url``; else None.

    ``check`` connects (nothing is created) with a short timeout; in the offline mode of
    ``--allow-unresolved-secrets`` it does not, as another environment may reach what this one cannot.
    """
    from ce_daemon.daemon import state_migrations
    from ce_daemon.jobs import Jobs
    from ce_daemon.store import StoreError, open_store

    if loaded.config.state.url is None or offline:
        return None
    try:
        # With the daemon's migrations: a schema a newer ce-daemon wrote is refused as `run` would.
        async with await open_store(
            loaded.config.state,
            state_migrations(Jobs.discover()),
            connect_timeout=CHECK_CONNECT_TIMEOUT,
            migrate=False,
        ):
            return None
    except StoreError as exc:
        place = loaded.source.position(("state", "url"))
        where = f"{loaded.path}:{place[0]}:{place[1]}" if place else str(loaded.path)
        return f"{where}: state.url: {exc}"


def _cmd_plugins(args: argparse.Namespace) -> int:
    from ce_daemon.registry import Registry

    plugins = Registry.discover().all()
    if args.json:
        print(
            orjson.dumps(
                [
                    {
                        "kind": p.kind,
                        "type": p.name,
                        "distribution": p.distribution,
                        "version": p.version,
                        "api_version": p.api_version,
                        "loaded": p.loaded,
                        "error": p.error,
                        "note": p.note,
                        "target": p.target,
                    }
                    for p in plugins
                ]
            ).decode()
        )
        return 0
    rows = [("KIND", "TYPE", "DISTRIBUTION", "VERSION", "API", "LOADED")]
    for p in plugins:
        loaded = f"no: {p.error}" if not p.loaded else f"yes (note: {p.note})" if p.note else "yes"
        api = "-" if p.api_version is None else str(p.api_version)
        rows.append((p.kind, p.name, p.distribution, p.version, api, loaded))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5])
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ce_daemon.config.locate import locate_state
    from ce_daemon.control import ask_status

    socket_path, state = args.socket, None
    if socket_path is None:
        if args.config is None:
            print("status needs -c FILE or --socket PATH", file=sys.stderr)
            return STATUS_UNKNOWN
        node = _node(args)
        located = locate_state(args.config, node) if node is not None else None
        if located is None:
            return STATUS_UNKNOWN
        socket_path, state = located
    try:
        snapshot = asyncio.run(ask_status(socket_path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        return _no_answer(args, f"nothing answers on {socket_path} ({_why(exc)})", state)
    except PermissionError:
        print(
            f"cannot ask the daemon on {socket_path}: permission denied (run as its user, or root)",
            file=sys.stderr,
        )
        return STATUS_UNKNOWN
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: an answer that is not a status
        print(f"no usable answer on {socket_path}: {_why(exc)}", file=sys.stderr)
        return STATUS_UNKNOWN
    snapshot["live"] = True
    code = _verdict(snapshot)
    if args.json:
        print(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"ce-daemon {snapshot.get('version')} pid {snapshot.get('pid')}: {_HEALTH[code]}")
        _print_status(snapshot)
    return code


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"between 0.05 and 3600 seconds, not {value}")
    return value


def _cmd_top(args: argparse.Namespace) -> int:
    from ce_daemon.config.locate import locate_state
    from ce_daemon.top import UNKNOWN, run_top

    socket_path = args.socket
    if socket_path is None:
        if args.config is None:
            print("top needs -c FILE or --socket PATH", file=sys.stderr)
            return UNKNOWN
        node = _node(args)
        located = locate_state(args.config, node) if node is not None else None
        if located is None:
            return UNKNOWN
        socket_path = located[0]
    try:
        return asyncio.run(run_top(socket_path, args.interval, once=args.once))
    except KeyboardInterrupt:
        return 0


_HEALTH = {STATUS_OK: "ok", STATUS_DEGRADED: "DEGRADED", STATUS_FAILED: "FAILED"}


def _verdict(snapshot: dict[str, Any]) -> int:
    """The exit code for a live daemon's answer (see ``_STATUS_CODES``)."""
    components = snapshot.get("components")
    listed = components if isinstance(components, list) else []
    if any(isinstance(c, dict) and c.get("state") == "failed" for c in listed):
        return STATUS_FAILED
    reload = snapshot.get("last_reload")
    rejected = isinstance(reload, dict) and reload.get("outcome") == "rejected"
    if snapshot.get("failing") or snapshot.get("phase") not in ("ready", "reloading") or rejected:
        return STATUS_DEGRADED
    return STATUS_OK


def _no_answer(args: argparse.Namespace, why: str, state: StateSettings | None) -> int:
    """Nothing answers on the socket: a daemon without its socket (4), or none (LSB's 3 "not running").

    A daemon runs when it holds the state database's lock. Either way the last saved status, if
    any, follows, clearly marked as not a live answer.
    """
    from ce_daemon.store.sqlite import lock_holder

    # A PostgreSQL state is shared by nodes: no lock tells whether one runs here.
    database = state.path if state is not None and state.url is None else None
    try:
        holder = lock_holder(database) if database is not None else None
    except OSError as exc:
        print(f"{why}; whether a daemon runs with {database} cannot be told: {_why(exc)}", file=sys.stderr)
        return STATUS_UNKNOWN
    code = STATUS_UNKNOWN if holder else STATUS_NOT_RUNNING
    saved = asyncio.run(_saved_snapshot(state)) if state is not None else None
    if args.json:
        running = {"running_pid": holder} if holder else {}
        print(orjson.dumps({**(saved or {}), **running, "live": False}, option=orjson.OPT_INDENT_2).decode())
        return code
    if holder:
        print(f"ce-daemon pid {holder} is RUNNING, but its control socket does not answer: {why}")
    else:
        print(f"ce-daemon is NOT RUNNING: {why}")
    if saved is not None:
        at = saved.get("at")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if isinstance(at, int | float) else "?"
        print(f"its last saved status ({when}, pid {saved.get('pid')}), not a live answer:")
        _print_status(saved)
    return code


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


async def _saved_snapshot(state: StateSettings) -> dict[str, Any] | None:
    if state.url is None and not state.path.exists():
        return None
    from ce_daemon.status import STATUS_SNAPSHOT_KEY
    from ce_daemon.store import StoreError, open_store

    try:
        async with await open_store(state, connect_timeout=STATUS_CONNECT_TIMEOUT, migrate=False) as store:
            text = await store.get_meta(STATUS_SNAPSHOT_KEY)
    except (StoreError, OSError):
        return None
    saved = orjson.loads(text) if text else None
    return saved if isinstance(saved, dict) else None


def _print_status(snapshot: dict[str, Any]) -> None:
    print(f"  file        {snapshot.get('file')}")
    print(
        f"  phase       {snapshot.get('phase')}  generation {snapshot.get('generation')}  "
        f"uptime {snapshot.get('uptime_s')}s"
    )
    failing = snapshot.get("failing") or []
    print(
        f"  components  {snapshot.get('components_ok')}/{snapshot.get('components_total')} ok"
        + (f"; not ok: {', '.join(map(str, failing))}" if failing else "")
    )
    reload = snapshot.get("last_reload")
    if isinstance(reload, dict):
        print(f"  last reload {reload.get('outcome')} {reload.get('reason', '')}".rstrip())
        if reload.get("started_degraded"):
            print(f"    started degraded: {', '.join(map(str, reload['started_degraded']))}")
        for line in reload.get("problems") or []:
            print(f"    {line}")
    components = snapshot.get("components")
    for comp in components if isinstance(components, list) else []:
        counters = comp.get("counters") or {}
        figures = " ".join(f"{k}={v}" for k, v in counters.items())
        print(f"    {comp['state']:<9} {comp['name']:<44} {figures}  {comp.get('detail', '')}".rstrip())
    jobs = snapshot.get("jobs")
    for name, section in (jobs if isinstance(jobs, dict) else {}).items():
        figures = " ".join(f"{k}={v}" for k, v in section.items()) if isinstance(section, dict) else ""
        print(f"  {name:<11} {figures}".rstrip())
    cluster = snapshot.get("cluster")
    if isinstance(cluster, dict):
        _print_cluster(cluster)
    spool = snapshot.get("spool")
    if isinstance(spool, dict):
        print(
            f"  spool       {spool.get('pages', 0)} pages, {spool.get('records', 0)} records, "
            f"{spool.get('bytes', 0)} bytes"
        )


def _print_cluster(cluster: dict[str, Any]) -> None:
    nodes = [n for n in cluster.get("nodes") or [] if isinstance(n, dict)]
    alive = sum(1 for n in nodes if n.get("alive"))
    unheld = cluster.get("unheld") or []
    print(
        f"  cluster     node {cluster.get('node')}; {alive}/{len(nodes)} node(s) alive"
        + (f"; not held: {', '.join(map(str, unheld))}" if unheld else "")
        + (f"; {cluster['health']}" if cluster.get("health") else "")
    )
    for node in nodes:
        units = ", ".join(f"{u.get('unit')} (since {u.get('since')})" for u in node.get("units") or [])
        state = "alive" if node.get("alive") else "dead"
        print(
            f"    {state:<9} {node.get('name')} on {node.get('host')} pid {node.get('pid')}, "
            f"heartbeat {node.get('heartbeat_age_s')}s ago: {units or 'holds nothing'}"
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    from ce_daemon.demo import run_demo

    applog.configure(fmt="console")
    return asyncio.run(run_demo(args.dir, args.duration, _registry()))


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ce_daemon.simulator.command import run_simulator

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_simulator(args, stop)

    applog.configure()
    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())


def _cmd_state(args: argparse.Namespace) -> int:
    from ce_daemon.daemon import state_migrations
    from ce_daemon.jobs import Jobs
    from ce_daemon.store.transfer import migrate_command

    return asyncio.run(migrate_command(args, state_migrations(Jobs.discover())))
