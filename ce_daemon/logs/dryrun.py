"""``ce-daemon test``: a dry run of one route's filter, mutes, mapping and format on sample records.

The records come from an NDJSON file (``--input``) or from the spool of the state database
(``--from-spool``: what the route has not acknowledged yet, read without changing anything). Each
goes through :func:`ce_daemon.logs.route.sift` with the route's own predicate, active mutes and
formatter, as the running route would; what would be sent is printed as the sink would receive it,
and every other record with the reason: the filter's clause it fails, the mute that matched, the
formatting error.

An input line that is not a JSON object, is longer than :data:`MAX_LINE` bytes or nests deeper than
:data:`MAX_NESTING` levels is reported with its line number and counted; the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

from ce_daemon.filter import compile_filter, describe
from ce_daemon.keys import StreamKey
from ce_daemon.netskope.subtypes import DataKind, normalise_subtype

if TYPE_CHECKING:
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.config.model import StateSettings
    from ce_daemon.jobs import SubParsers
    from ce_daemon.logs.resolve import Mute, ResolvedRoute
    from ce_daemon.logs.route import Dropped

MAX_LINE: Final = 4 * 1024 * 1024
"""Bytes of one input line; a longer one is reported and skipped."""
MAX_NESTING: Final = 128
"""Levels of lists and objects one input record may nest."""
DEFAULT_SPOOL_LIMIT: Final = 100
"""Records ``--from-spool`` reads when no ``--limit`` is given."""

VERDICTS: Final = ("sent", "filtered", "muted", "unformattable", "unrouted", "bad_input")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the route would do with one input: send ``data``, or not, and why."""

    where: str
    verdict: str
    stream: str | None = None
    id: str | None = None
    data: bytes | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The outcome as one JSON object (``data`` as text)."""
        shown: dict[str, Any] = {"where": self.where, "verdict": self.verdict}
        if self.stream is not None:
            shown["stream"] = self.stream
        if self.id is not None:
            shown["id"] = self.id
        if self.data is not None:
            shown["data"] = self.data.decode("utf-8", "backslashreplace")
        if self.reason is not None:
            shown["reason"] = self.reason
        return shown


class DryRun:
    """One route's decisions on records given one at a time (the route's own code, nothing sent)."""

    def __init__(
        self,
        route: ResolvedRoute,
        loaded: LoadedPipeline,
        *,
        now: float | None = None,
        stream: str | None = None,
        added: Sequence[Mute] = (),
    ) -> None:
        from ce_daemon.logs.route import active_mutes, route_formatter, sift  # heavy: not at `--help`

        self.sift = sift
        self.route = route
        self.formatter = route_formatter(route, loaded)
        self.mutes = active_mutes(route, time.time() if now is None else now, added)
        self.streams = {(s.kind, s.subtype): s for s in route.streams}
        self.forced = _forced_stream(stream, route) if stream else None
        self._clauses = _clauses(route.config.filter)

    def stream_of(self, record: Mapping[str, Any]) -> StreamKey | None:
        """The route's stream ``record`` belongs to: the one it reads, or the one its fields name."""
        if self.forced is not None:
            return self.forced
        if len(self.streams) == 1:
            return next(iter(self.streams.values()))
        for kind, subtype in _candidates(record):
            if (kind, subtype) in self.streams:
                return self.streams[(kind, subtype)]
        return None

    def judge(self, where: str, record: dict[str, Any], stream: StreamKey | None = None) -> Outcome:
        """What the route does with ``record`` (of ``stream``, else the one its fields name)."""
        record_id = record.get("_id")
        shown_id = None if record_id is None else str(record_id)
        stream = stream or self.stream_of(record)
        if stream is None:
            reads = ", ".join(f"{s.kind}/{s.subtype}" for s in self.streams.values())
            named = _named_stream(record)
            return Outcome(
                where,
                "unrouted",
                named,
                shown_id,
                reason=f"the route reads {reads}, not {named}"
                if named
                else f"no alert_type or record_type says which of the route's streams ({reads}) it is "
                "of: --stream KIND/SUBTYPE does",
            )
        write = self.formatter.writer_for(stream.kind, stream.subtype)
        [(_, _, data)] = self.sift([(0, record)], self.route.predicate, self.mutes, write)
        name = f"{stream.kind}/{stream.subtype}"
        if isinstance(data, bytes):
            return Outcome(where, "sent", name, shown_id, data)
        verdict, reason = self._why(data, record)
        return Outcome(where, verdict, name, shown_id, reason=reason)

    def _why(self, dropped: Dropped, record: Mapping[str, Any]) -> tuple[str, str]:
        if dropped.mute is not None:
            return "muted", f"muted by mute {dropped.mute.name!r}"
        if dropped.error is not None:
            return "unformattable", f"formatting failed: {dropped.error}"
        predicate = self.route.predicate
        if predicate is not None and not predicate(record):
            failing = next((text for text, clause in self._clauses if not clause(record)), None)
            return "filtered", f"filtered out by {failing or describe(self.route.config.filter)}"
        return "filtered", f"the {self.route.config.format} formatter writes nothing for this record"


_STREAM_FIELDS: Final[tuple[tuple[DataKind, str], ...]] = (
    ("alerts", "alert_type"),
    ("events", "record_type"),
    ("events", "type"),
)


def _candidates(record: Mapping[str, Any]) -> Iterator[tuple[DataKind, str]]:
    """The streams a record's own fields name: its ``alert_type``, else its ``record_type`` or ``type``."""
    for kind, field in _STREAM_FIELDS:
        name = record.get(field)
        if isinstance(name, str) and name:
            try:
                yield kind, normalise_subtype(kind, name)
            except ValueError:
                continue


def _named_stream(record: Mapping[str, Any]) -> str | None:
    return next((f"{kind}/{subtype}" for kind, subtype in _candidates(record)), None)


def _clauses(spec: object) -> list[tuple[str, Any]]:
    """Each top-level clause of a filter (all must hold), compiled apart to say which one fails."""
    if isinstance(spec, str):
        try:
            spec = orjson.loads(spec)
        except orjson.JSONDecodeError:
            return []
    if not isinstance(spec, Mapping):
        return []
    clauses: list[tuple[str, Any]] = []
    for key, value in spec.items():
        if key == "$and" and isinstance(value, list):  # each of its parts must hold too: say which fails
            for part in value:
                clauses.extend(_clauses(part))
        else:
            clauses.append((f"clause {describe({key: value})}", compile_filter({key: value})))
    return clauses


def _forced_stream(text: str, route: ResolvedRoute) -> StreamKey:
    kind, _, subtype = text.partition("/")
    for stream in route.streams:
        if stream.kind == kind and stream.subtype == normalise_subtype(stream.kind, subtype):
            return stream
    reads = ", ".join(f"{s.kind}/{s.subtype}" for s in route.streams)
    raise ValueError(f"route {route.config.name!r} reads no stream {text!r} (it reads {reads})")


# -- input ----------------------------------------------------------------------------------------


def read_lines(file: IO[bytes]) -> Iterator[tuple[int, bytes | str]]:
    """``(line number, line)`` of ``file``, or ``(line number, why it is refused)`` (a str) for a line
    longer than :data:`MAX_LINE`; blank lines are skipped."""
    number = 0
    while True:
        line = file.readline(MAX_LINE + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := file.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass  # the remainder of the oversized line, never held whole
            yield number, f"longer than {MAX_LINE} bytes"
            continue
        if line.strip():
            yield number, line


def parse_record(line: bytes) -> dict[str, Any] | str:
    """The record (a JSON object) ``line`` holds, or why it holds none."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(value, dict):
        return f"a JSON {_json_kind(value)}, not a record (an object)"
    if _deeper_than(value, MAX_NESTING):
        return f"nests deeper than {MAX_NESTING} levels"
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "boolean" if isinstance(value, bool) else "number"


def _deeper_than(value: object, limit: int) -> bool:
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def judge_file(run: DryRun, path: Path, file: IO[bytes]) -> Iterator[Outcome]:
    """Every outcome of the NDJSON ``file`` (named ``path`` in places), bad lines included."""
    for number, line in read_lines(file):
        where = f"{path}:{number}"
        record = parse_record(line) if isinstance(line, bytes) else line
        if isinstance(record, str):
            yield Outcome(where, "bad_input", reason=record)
        else:
            yield run.judge(where, record)


async def judge_spool(run: DryRun, state: StateSettings, limit: int) -> AsyncIterator[Outcome]:
    """The outcomes of up to ``limit`` records of the route's streams still in the spool (read only)."""
    from ce_daemon.spool import SPOOL_MIGRATIONS, peek_pages
    from ce_daemon.store import open_store

    consumer = f"route:{run.route.config.name}"
    streams = [str(s) for s in run.route.streams]
    left = limit
    async with await open_store(state, SPOOL_MIGRATIONS, migrate=False) as store:
        if not await store.columns("spool_pages"):
            return
        async for page in peek_pages(store, consumer, streams):
            stream = StreamKey.parse(page.stream)
            for position, record in enumerate(page.records[page.start :], page.start):
                if left <= 0:
                    return
                left -= 1
                yield run.judge(f"spool page {page.seq} record {position}", record, stream)


# -- the command ----------------------------------------------------------------------------------


def add_test_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """``ce-daemon test -c FILE --route NAME (--input FILE | --from-spool) [--limit N] [--json]``."""
    test = commands.add_parser(
        "test",
        help="dry-run a log route on sample records",
        description="Run a route's filter, mutes, mapping and format on sample records: print what "
        "would be sent, exactly as the sink would receive it (stdout), and why each other record "
        "would not be (stderr). Nothing is sent, acknowledged or changed.",
        epilog="exit codes: 0 done (bad input lines are reported and counted), 66 the input cannot "
        "be read, 78 the pipeline file is invalid or names no such route",
    )
    test.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
    test.add_argument("--route", required=True, help="the route to run")
    source = test.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="an NDJSON file of Netskope records ('-': stdin)")
    source.add_argument(
        "--from-spool",
        action="store_true",
        help="the records of the route's streams still in the state database's spool",
    )
    source.add_argument(
        "--show-writer",
        action="store_true",
        help="print what the route's formatter runs per record of each stream (for CEF and LEEF, the "
        "Python source generated from the mapping) instead of running records",
    )
    test.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_SPOOL_LIMIT,
        help=f"with --from-spool: at most this many records (default {DEFAULT_SPOOL_LIMIT})",
    )
    test.add_argument(
        "--stream",
        metavar="KIND/SUBTYPE",
        help="the stream every input record belongs to (by default: the route's only stream, or "
        "the one a record's alert_type / record_type names)",
    )
    test.add_argument("--json", action="store_true", help="one JSON object per record, then a summary")
    test.set_defaults(func=_cmd_test)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def load_route(config: Path, name: str) -> tuple[LoadedPipeline, ResolvedRoute] | None:
    """The loaded pipeline of ``config`` (secrets not needed) and its route ``name``; None after saying
    on stderr why not (the problems, or the routes there are)."""
    from ce_daemon.config.load import load_pipeline
    from ce_daemon.errors import ConfigError
    from ce_daemon.logs.job import routes_of
    from ce_daemon.registry import Registry

    try:
        loaded = load_pipeline(config, Registry.discover(), allow_unresolved_secrets=True)
    except ConfigError as exc:
        sys.stderr.write(exc.render() + "\n")
        return None
    routes = routes_of(loaded)
    route = routes.get(name)
    if route is None:
        close = difflib.get_close_matches(name, list(routes), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        sys.stderr.write(
            f"{config}: no route named {name!r}\n  Hint: {hint}routes: {', '.join(routes) or 'none'}\n"
        )
        return None
    return loaded, route


def _cmd_test(args: argparse.Namespace) -> int:
    from ce_daemon import applog

    applog.configure("error", fmt="console")  # stdout is the records' (the logs go there too)
    found = load_route(args.config, args.route)
    if found is None:
        return os.EX_CONFIG
    loaded, route = found
    try:
        if args.show_writer:
            return _show_writer(route, loaded, args.stream)
        run = DryRun(route, loaded, stream=args.stream, added=asyncio.run(_added_mutes(loaded, route)))
    except ValueError as exc:  # an unknown --stream, a subtype the mapping lacks
        sys.stderr.write(f"ce-daemon test: {exc}\n")
        return os.EX_CONFIG
    report = _Report(as_json=args.json)
    if args.from_spool:
        return asyncio.run(_from_spool(run, loaded, args.limit, report))
    return _from_input(run, args.input, report)


def _from_input(run: DryRun, path: Path, report: _Report) -> int:
    """Judge the records of the NDJSON file ``path`` (``-``: stdin)."""
    if str(path) == "-":
        for outcome in judge_file(run, Path("<stdin>"), sys.stdin.buffer):
            report.add(outcome)
        return report.finish()
    try:
        with path.open("rb") as file:
            for outcome in judge_file(run, path, file):
                report.add(outcome)
    except OSError as exc:
        sys.stderr.write(f"ce-daemon test: cannot read {path}: {exc.strerror or exc}\n")
        return os.EX_NOINPUT
    return report.finish()


def _show_writer(route: ResolvedRoute, loaded: LoadedPipeline, stream: str | None) -> int:
    """Print the source of the route's writer of each of its streams (or of ``stream`` alone)."""
    from ce_daemon.logs.mapping import UnmappedSubtypeError
    from ce_daemon.logs.route import route_formatter  # heavy: not at `--help`

    formatter = route_formatter(route, loaded)
    for key in route.streams if stream is None else (_forced_stream(stream, route),):
        try:
            sys.stdout.write(formatter.source(key.kind, key.subtype) + "\n")
        except UnmappedSubtypeError as exc:
            raise ValueError(str(exc)) from exc
    return 0


async def _added_mutes(loaded: LoadedPipeline, route: ResolvedRoute) -> list[Mute]:
    """The mutes added to ``route`` while running (``ce-daemon`` API), read from the state database when
    it has them (nothing is created or migrated; a state that cannot be read is said and skipped)."""
    from ce_daemon.logs.mutes import MUTE_MIGRATIONS, MuteStore
    from ce_daemon.store import StoreError, open_store

    state = loaded.config.state
    if state.url is None and not state.path.exists():
        return []
    try:
        async with await open_store(state, MUTE_MIGRATIONS, migrate=False) as store:
            if not await store.columns("log_mutes"):
                return []
            return await MuteStore(store).upcoming(route.config.name)
    except StoreError as exc:
        sys.stderr.write(f"ce-daemon test: the mutes added while running are not applied: {exc}\n")
        return []


async def _from_spool(run: DryRun, loaded: LoadedPipeline, limit: int, report: _Report) -> int:
    from ce_daemon.store import StoreError

    state = loaded.config.state
    if state.url is None and not state.path.exists():
        sys.stderr.write(f"no state database at {state.path}: the spool is empty\n")
        return report.finish()
    try:
        async for outcome in judge_spool(run, state, limit):
            report.add(outcome)
    except StoreError as exc:
        sys.stderr.write(f"ce-daemon test: {exc}\n")
        return os.EX_UNAVAILABLE
    return report.finish()


class _Report:
    """Prints outcomes as they come: sent records on stdout, the rest on stderr (or all as JSON)."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.counts: Counter[str] = Counter()

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.verdict] += 1
        if self.as_json:
            sys.stdout.write(orjson.dumps(outcome.as_json()).decode() + "\n")
        elif outcome.data is not None:
            sys.stdout.write(outcome.data.decode("utf-8", "backslashreplace") + "\n")
        else:
            what = "bad input" if outcome.verdict == "bad_input" else f"{outcome.verdict}"
            about = f" ({outcome.stream} {outcome.id})" if outcome.stream and outcome.id else ""
            sys.stderr.write(f"{outcome.where}: {what}{about}: {outcome.reason}\n")

    def finish(self) -> int:
        summary = {verdict: self.counts[verdict] for verdict in VERDICTS}
        total = sum(summary.values())
        if self.as_json:
            sys.stdout.write(orjson.dumps({"summary": {"records": total, **summary}}).decode() + "\n")
        else:
            figures = ", ".join(f"{count} {verdict.replace('_', ' ')}" for verdict, count in summary.items())
            sys.stderr.write(f"{total} input(s): {figures}\n")
        return 0
