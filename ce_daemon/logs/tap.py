"""``ce-daemon tap ROUTE``: the records a running route sends, as they leave its filter and formatter.

Read through the daemon's control socket (see :mod:`ce_daemon.control` and :mod:`ce_daemon.taps`):
the route never waits for the tap; when this reader is slower, samples are dropped and the count is
said on stderr. The tap ends after ``--limit`` records, at Ctrl-C, or when the daemon goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from ce_daemon.logs.dryrun import load_route

if TYPE_CHECKING:
    from ce_daemon.jobs import SubParsers


def add_tap_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """``ce-daemon tap ROUTE -c FILE [--limit N] [--json] [--socket PATH]``."""
    tap = commands.add_parser(
        "tap",
        help="watch what a running log route sends",
        description="Print the records a running daemon's route sends, as they leave its filter and "
        "formatter, without slowing it (a slow reader misses samples, and is told how many).",
        epilog="exit codes: 0 the limit was reached or Ctrl-C, 69 no daemon answers or it went away, "
        "78 the pipeline file is invalid or names no such enabled route",
    )
    tap.add_argument("route", metavar="ROUTE", help="the route's name")
    tap.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
    tap.add_argument("--limit", type=int, help="stop after this many records")
    tap.add_argument("--json", action="store_true", help="one JSON object per record: stream, id, data")
    tap.add_argument("--socket", type=Path, help="the control socket (default: the file's)")
    tap.set_defaults(func=_cmd_tap)


def _cmd_tap(args: argparse.Namespace) -> int:
    from ce_daemon.control import control_socket_path

    if args.limit is not None and args.limit <= 0:
        sys.stderr.write(f"ce-daemon tap: --limit must be at least 1, not {args.limit}\n")
        return os.EX_USAGE
    found = load_route(args.config, args.route)
    if found is None:
        return os.EX_CONFIG
    loaded, route = found
    if not route.config.enabled:
        sys.stderr.write(f"{args.config}: route {args.route!r} is disabled: nothing to tap\n")
        return os.EX_CONFIG
    path = args.socket or control_socket_path(loaded.config)
    try:
        return asyncio.run(_tap(path, f"route:{args.route}", args.limit, as_json=args.json))
    except KeyboardInterrupt:
        return 0


async def _tap(path: Path, component: str, limit: int | None, *, as_json: bool) -> int:
    from ce_daemon.control import tap_samples

    received = 0
    try:
        async for message in tap_samples(path, component, limit):
            if "error" in message:
                sys.stderr.write(f"ce-daemon tap: the daemon refused: {message['error']}\n")
                return os.EX_UNAVAILABLE
            if "tap" in message:
                sys.stderr.write(f"ce-daemon tap: tapping {component} (Ctrl-C to stop)\n")
                continue
            if "dropped" in message:
                sys.stderr.write(
                    f"ce-daemon tap: {message['dropped']} record(s) dropped: this reader is slower "
                    "than the route\n"
                )
                continue
            received += 1
            line = orjson.dumps(message).decode() if as_json else str(message.get("data", ""))
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sys.stderr.write(f"ce-daemon tap: nothing answers on {path} ({_why(exc)}): is the daemon running?\n")
        return os.EX_UNAVAILABLE
    except PermissionError:
        sys.stderr.write(f"ce-daemon tap: {path}: permission denied (run as the daemon's user, or root)\n")
        return os.EX_NOPERM
    except (OSError, TimeoutError, ValueError) as exc:
        sys.stderr.write(f"ce-daemon tap: no usable answer on {path}: {_why(exc)}\n")
        return os.EX_UNAVAILABLE
    if limit is not None and received >= limit:
        return 0
    sys.stderr.write(f"ce-daemon tap: the daemon ended the tap after {received} record(s) (it stopped?)\n")
    return os.EX_UNAVAILABLE


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
