"""``ce-daemon top``: every component of a running daemon, its rates, errors, lag and backlog, live.

Read from the control socket's status snapshot (the one ``ce-daemon status`` shows), asked every
``interval`` seconds: rates are counter deltas between two snapshots over the daemon's own clock
(their ``at``). On a terminal the view is redrawn in place (ANSI; the screen is given back at the
end); otherwise, and with ``--once``, it is printed as plain text (``--once``: one view, from two
snapshots ``interval`` apart).

Which counters count as what is generic: a component's input is the first of :data:`IN_COUNTERS` it
has, its output the first of :data:`OUT_COUNTERS`, its errors the sum of :data:`ERROR_COUNTERS`; its
backlog is what the spool holds for it as a consumer.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

IN_COUNTERS: Final = ("received", "records", "alerts", "listed")
OUT_COUNTERS: Final = ("sent", "stored", "created", "pushes", "synced")
ERROR_COUNTERS: Final = ("failed", "dead_lettered", "rejected", "failures", "malformed_records")
COLUMNS: Final = ("COMPONENT", "STATE", "IN/s", "OUT/s", "ERRORS", "LAG", "BACKLOG", "DETAIL")

_HOME_AND_CLEAR: Final = "\x1b[H\x1b[J"
_ENTER: Final = "\x1b[?1049h\x1b[?25l"  # the terminal's alternate screen, cursor hidden
_LEAVE: Final = "\x1b[?25h\x1b[?1049l"

NOT_RUNNING: Final = 3
"""Exit code when no daemon answers, or it goes away (LSB "not running", as ``status``)."""
UNKNOWN: Final = 4
"""Exit code when the answer is unusable (permission, not a status)."""


class DaemonGoneError(Exception):
    """The control socket does not answer (any more)."""


def render(current: Mapping[str, Any], previous: Mapping[str, Any] | None) -> list[str]:
    """The view of ``current`` (rates against ``previous``, when given): a header, then one row per
    component."""
    elapsed = _elapsed(current, previous)
    before = {c.get("name"): c.get("counters") or {} for c in _components(previous)} if previous else {}
    consumers = (current.get("spool") or {}).get("consumers") or {}
    rows = [COLUMNS]
    for component in _components(current):
        name = str(component.get("name", "?"))
        counters = component.get("counters") or {}
        old = before.get(name)
        errors = sum(_number(counters.get(k)) for k in ERROR_COUNTERS)
        lag = counters.get("lag_s")
        backlog = consumers.get(name, {}).get("records") if isinstance(consumers.get(name), dict) else None
        rows.append(
            (
                name,
                str(component.get("state", "?")),
                _rate(counters, old, IN_COUNTERS, elapsed),
                _rate(counters, old, OUT_COUNTERS, elapsed),
                f"{errors:g}" if any(k in counters for k in ERROR_COUNTERS) else "-",
                f"{lag}s" if isinstance(lag, int | float) else "-",
                "-" if backlog is None else str(backlog),
                str(component.get("detail") or ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    table = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1] for row in rows
    ]
    return [_header(current, elapsed), "", *(line.rstrip() for line in table)]


def _header(snapshot: Mapping[str, Any], elapsed: float | None) -> str:
    spool = snapshot.get("spool") or {}
    fill = ""
    if spool.get("max_bytes"):
        used, cap = _number(spool.get("bytes")), _number(spool.get("max_bytes"))
        fill = f"  spool {100 * used / cap:.0f}% of {_size(cap)} ({spool.get('records', 0)} records" + (
            ", FULL)" if spool.get("full") else ")"
        )
    failing = snapshot.get("failing") or []
    return (
        f"ce-daemon {snapshot.get('version')} pid {snapshot.get('pid')}  {snapshot.get('phase')}"
        f"  generation {snapshot.get('generation')}  up {snapshot.get('uptime_s')}s"
        f"  {snapshot.get('components_ok')}/{snapshot.get('components_total')} ok"
        + (f" (not ok: {', '.join(map(str, failing))})" if failing else "")
        + fill
        + ("" if elapsed is None else f"  rates over {elapsed:.1f}s")
    )


def _components(snapshot: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    listed = snapshot.get("components") if snapshot else None
    return [c for c in listed if isinstance(c, Mapping)] if isinstance(listed, list) else []


def _elapsed(current: Mapping[str, Any], previous: Mapping[str, Any] | None) -> float | None:
    if previous is None:
        return None
    now, then = current.get("at"), previous.get("at")
    if not isinstance(now, int | float) or not isinstance(then, int | float) or now <= then:
        return None
    return float(now - then)


def _rate(
    counters: Mapping[str, Any], old: Mapping[str, Any] | None, names: tuple[str, ...], elapsed: float | None
) -> str:
    """The per-second rate of the first of ``names`` in ``counters``; ``-`` when it cannot be told
    (no such counter, no earlier snapshot, a counter reset by a restart)."""
    found = rate(counters, old, names, elapsed)
    return "-" if found is None else f"{found:.1f}"


def rate(
    counters: Mapping[str, Any], old: Mapping[str, Any] | None, names: tuple[str, ...], elapsed: float | None
) -> float | None:
    """The per-second rate of the first of ``names`` in ``counters`` since ``old`` (``elapsed`` seconds
    before); None when it cannot be told."""
    name = next((n for n in names if n in counters), None)
    if name is None or old is None or elapsed is None or name not in old:
        return None
    delta = _number(counters[name]) - _number(old[name])
    return None if delta < 0 else delta / elapsed


def component_rates(
    current: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> dict[str, tuple[float | None, float | None]]:
    """Per component of ``current``: its input and output rates (records/s) since ``previous``."""
    elapsed = _elapsed(current, previous)
    before = {str(c.get("name")): c.get("counters") or {} for c in _components(previous)}
    return {
        str(c.get("name")): (
            rate(c.get("counters") or {}, before.get(str(c.get("name"))), IN_COUNTERS, elapsed),
            rate(c.get("counters") or {}, before.get(str(c.get("name"))), OUT_COUNTERS, elapsed),
        )
        for c in _components(current)
    }


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


async def _ask(path: Path, *, answered: bool = False) -> dict[str, Any]:
    """The daemon's snapshot. Once it has ``answered``, any failure but a refused permission means it went
    away (a stopping daemon may close a connection without an answer before its socket is gone)."""
    from ce_daemon.control import ask_status

    try:
        return await ask_status(path)
    except (FileNotFoundError, ConnectionError) as exc:
        raise DaemonGoneError(f"nothing answers on {path} ({_why(exc)})") from exc
    except PermissionError:
        raise
    except (OSError, TimeoutError, ValueError) as exc:
        if not answered:
            raise
        raise DaemonGoneError(f"{path} stopped answering ({_why(exc)})") from exc


async def run_top(path: Path, interval: float, *, once: bool) -> int:
    """Show the view until Ctrl-C (the caller's), or once; the exit code."""
    live = sys.stdout.isatty() and not once
    try:
        previous = await _ask(path)
        if live:
            sys.stdout.write(_ENTER)
            _draw(render(previous, None), live=live)  # at once, the rates follow
        try:
            while True:
                await asyncio.sleep(interval)
                current = await _ask(path, answered=True)
                _draw(render(current, previous), live=live)
                if once:
                    return 0
                previous = current
        finally:
            if live:
                sys.stdout.write(_LEAVE)
                sys.stdout.flush()
    except DaemonGoneError as exc:
        sys.stderr.write(f"ce-daemon top: {exc}: the daemon is not running (any more)\n")
        return NOT_RUNNING
    except PermissionError:
        sys.stderr.write(f"ce-daemon top: {path}: permission denied (run as the daemon's user, or root)\n")
        return UNKNOWN
    except (OSError, TimeoutError, ValueError) as exc:
        sys.stderr.write(f"ce-daemon top: no usable answer on {path}: {_why(exc)}\n")
        return UNKNOWN


def _draw(lines: list[str], *, live: bool) -> None:
    if live:
        width = shutil.get_terminal_size().columns
        sys.stdout.write(_HOME_AND_CLEAR + "\n".join(line[:width] for line in lines) + "\n")
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        sys.stdout.write(f"-- {stamp}\n" + "\n".join(lines) + "\n")
    sys.stdout.flush()


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
