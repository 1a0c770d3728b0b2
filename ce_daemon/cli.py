"""The ``ce-daemon`` command: run, check, plugins, status, demo, simulate, dlq."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ce_daemon import __version__, applog
from ce_daemon.errors import ConfigError

EXIT_CONFIG = os.EX_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ce-daemon`` script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code


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
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check",
        help="validate a pipeline file",
        description="Validate the whole pipeline exactly as a reload would. Exit 0 if valid, 78 if not.",
    )
    check.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
    check.set_defaults(func=_cmd_check)

    plugins = sub.add_parser(
        "plugins", help="list installed plugins", description="List every discovered plugin."
    )
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_cmd_plugins)

    status = sub.add_parser(
        "status",
        help="ask a running daemon how it is",
        description="Ask a running daemon (control socket, else its last saved snapshot).",
    )
    status.add_argument(
        "-c", "--config", type=Path, help="the pipeline file (to find the socket and database)"
    )
    status.add_argument("--socket", type=Path, help="the control socket path")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=_cmd_status)

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

    from ce_daemon.netskope.simulator import add_simulate_arguments

    simulate = sub.add_parser(
        "simulate",
        help="run the Netskope tenant simulator",
        description="Serve a simulated Netskope tenant's data-export API on loopback.",
    )
    add_simulate_arguments(simulate)
    simulate.set_defaults(func=_cmd_simulate)

    dlq = sub.add_parser(
        "dlq",
        help="list, replay or purge dead-lettered records",
        description="Records a target refused for good, kept with the reason.",
    )
    dlq.add_argument("action", choices=["list", "replay", "purge"])
    dlq.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
    dlq.add_argument("--route", help="only this route")
    dlq.add_argument("--limit", type=int, default=50, help="list at most this many")
    dlq.set_defaults(func=_cmd_dlq)
    return parser


def _registry() -> object:
    from ce_daemon.registry import Registry

    return Registry.discover()


def _cmd_run(args: argparse.Namespace) -> int:
    from ce_daemon.daemon import Daemon

    applog.configure()
    return asyncio.run(Daemon(args.config, _registry()).run())


def _cmd_check(args: argparse.Namespace) -> int:
    from ce_daemon.config.load import load_pipeline
    from ce_daemon.registry import Registry

    try:
        loaded = load_pipeline(args.config, Registry.discover())
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(
            f"{args.config}: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    for warning in loaded.warnings:
        print(warning.render(label="warning"), file=sys.stderr)
    streams = loaded.streams()
    print(
        f"{args.config}: OK — {len(loaded.tenants)} tenant(s), {len(loaded.routes)} log route(s), "
        f"{len(streams)} stream(s) to pull"
        + (f", {len(loaded.warnings)} warning(s)" if loaded.warnings else "")
    )
    return 0


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
                        "loaded": p.loaded,
                        "error": p.error,
                        "target": p.target,
                    }
                    for p in plugins
                ]
            ).decode()
        )
        return 0
    rows = [("KIND", "TYPE", "DISTRIBUTION", "VERSION", "LOADED")]
    rows += [
        (p.kind, p.name, p.distribution, p.version, "yes" if p.loaded else f"no: {p.error}") for p in plugins
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ce_daemon.control import ask_status

    socket_path, database = args.socket, None
    if socket_path is None:
        if args.config is None:
            print("status needs -c FILE or --socket PATH", file=sys.stderr)
            return 2
        located = _locate(args.config)
        if located is None:
            return EXIT_CONFIG
        socket_path, database = located
    try:
        snapshot = asyncio.run(ask_status(socket_path))
        source = "live"
    except (OSError, TimeoutError) as exc:
        saved = asyncio.run(_saved_snapshot(database)) if database is not None else None
        if saved is None:
            print(
                f"no daemon answers on {socket_path} ({exc.__class__.__name__}) and no saved status",
                file=sys.stderr,
            )
            return 1
        snapshot, source = saved, "saved (daemon not answering)"
    if args.json:
        print(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
        return 0
    _print_status(snapshot, source)
    return 0


def _locate(path: Path) -> tuple[Path, Path] | None:
    """The control socket and state database a pipeline file names; needs no secret to be resolvable."""
    from pydantic import ValidationError

    from ce_daemon.config.model import ControlSettings, Pipeline, StateSettings, anchor_paths
    from ce_daemon.config.source import read_source
    from ce_daemon.control import control_socket_path

    source = read_source(path, environ={})
    data = source.data if isinstance(source.data, dict) else None
    if data is None:
        print("\n".join(p.render() for p in source.problems), file=sys.stderr)
        return None
    try:
        state = StateSettings.model_validate(data.get("state") or {})
        control = ControlSettings.model_validate(data.get("control") or {})
    except ValidationError as exc:
        print(f"{path}: state/control settings invalid: {exc}", file=sys.stderr)
        return None
    config = anchor_paths(Pipeline.model_construct(state=state, control=control), path.parent.absolute())
    return control_socket_path(config), config.state.path


async def _saved_snapshot(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    from ce_daemon.daemon import STATUS_SNAPSHOT_KEY
    from ce_daemon.state import StateError, StateStore

    try:
        async with await StateStore.open(path) as store:
            text = await store.get_meta(STATUS_SNAPSHOT_KEY)
    except StateError:
        return None
    return orjson.loads(text) if text else None


def _print_status(snapshot: dict[str, Any], source: str) -> None:
    print(f"ce-daemon {snapshot.get('version')} pid {snapshot.get('pid')} ({source})")
    print(f"  file        {snapshot.get('file')}")
    print(
        f"  phase       {snapshot.get('phase')}  generation {snapshot.get('generation')}  "
        f"uptime {snapshot.get('uptime_s')}s"
    )
    print(f"  components  {snapshot.get('components_ok')}/{snapshot.get('components_total')} ok")
    reload = snapshot.get("last_reload")
    if isinstance(reload, dict):
        print(f"  last reload {reload.get('outcome')} {reload.get('reason', '')}".rstrip())
    components = snapshot.get("components")
    for comp in components if isinstance(components, list) else []:
        counters = comp.get("counters") or {}
        figures = " ".join(f"{k}={v}" for k, v in counters.items())
        print(f"    {comp['state']:<9} {comp['name']:<44} {figures}  {comp.get('detail', '')}".rstrip())
    spool = snapshot.get("spool")
    if isinstance(spool, dict):
        print(
            f"  spool       {spool.get('pages', 0)} pages, {spool.get('records', 0)} records, "
            f"{spool.get('bytes', 0)} bytes"
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    from ce_daemon.demo import run_demo

    applog.configure(fmt="console")
    return asyncio.run(run_demo(args.dir, args.duration, _registry()))


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ce_daemon.netskope.simulator import run_simulator

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_simulator(args, stop)

    applog.configure()
    return asyncio.run(serve())


def _cmd_dlq(args: argparse.Namespace) -> int:
    from ce_daemon.logs.deadletter import dlq_command

    applog.configure(fmt="console")
    return asyncio.run(dlq_command(args, _registry()))


if __name__ == "__main__":
    sys.exit(main())
