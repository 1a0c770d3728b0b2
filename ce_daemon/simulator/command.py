"""``ce-daemon simulate``: the tenant simulator as a command, its options and its run loop."""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from ce_daemon.netskope.subtypes import parse_stream
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, StreamKey, TenantSimulator

log = structlog.get_logger(__name__)

_CLI_SERVED_LIMIT = 10_000  # a long-running `ce-daemon simulate` must not grow without bound


def _token_argument(text: str) -> tuple[str, frozenset[StreamKey] | None]:
    token, sep, streams = text.partition("=")
    if not token:
        raise argparse.ArgumentTypeError("a token may not be empty")
    if not sep:
        return token, None
    try:
        return token, frozenset(parse_stream(item) for item in streams.split(",") if item)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _streams_argument(text: str) -> list[StreamKey] | None:
    if text.strip().lower() == "all":
        return None
    try:
        return [parse_stream(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser`` (read back by `run_simulator`)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument(
        "--token",
        action="append",
        type=_token_argument,
        metavar="TOKEN[=KIND/SUBTYPE,...]",
        help=f"accept this token, only for the listed streams if any (repeatable; default: {DEFAULT_TOKEN})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the generated records (default: %(default)s)"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=1000,
        help="records waiting per subtype at start (default: %(default)s)",
    )
    parser.add_argument(
        "--backlog-span",
        type=int,
        default=3600,
        help="seconds the backlog spreads over (default: %(default)s)",
    )
    parser.add_argument(
        "--arrival-rate",
        type=float,
        default=5.0,
        help="new records per second per subtype (default: %(default)s)",
    )
    parser.add_argument(
        "--page-size", type=int, default=10_000, help="records per page at most (default: %(default)s)"
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=1.0,
        help="wait_time sent with a page that is not full (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit", type=int, default=4, help="requests per second per token (default: %(default)s)"
    )
    parser.add_argument(
        "--subtypes",
        type=_streams_argument,
        default=None,
        metavar="KIND/SUBTYPE,...|all",
        help="streams that have data; the others answer empty pages (default: all)",
    )
    parser.add_argument("--no-gzip", action="store_true", help="never compress response bodies")


def simulator_from_arguments(args: argparse.Namespace) -> TenantSimulator:
    """A `TenantSimulator` configured from the options `add_simulate_arguments` defines."""
    return TenantSimulator(
        tokens=dict(args.token) if args.token else None,
        seed=args.seed,
        backlog=args.backlog,
        backlog_span=args.backlog_span,
        arrival_rate=args.arrival_rate,
        page_size=args.page_size,
        idle_wait_time=args.idle_wait,
        rate_limit=args.rate_limit,
        gzip=not args.no_gzip,
        subtypes=args.subtypes,
        served_limit=_CLI_SERVED_LIMIT,
    )


async def run_simulator(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Serve a simulator until ``stop`` is set; its base URL is printed as one line on stdout."""
    try:
        simulator = simulator_from_arguments(args)
        url = await simulator.start(args.host, args.port)
    except (ValueError, OSError) as exc:
        # An expected failure (port taken, bad option): the message is enough, a traceback is noise.
        log.error("simulator.start_failed", error=str(exc))
        return 1
    try:
        sys.stdout.write(f"{url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await simulator.stop()
    return 0
