"""Dead letters: records a target refused for good, kept with the reason, listable and replayable."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ce_daemon import redact
from ce_daemon.errors import describe
from ce_daemon.keys import StreamKey
from ce_daemon.plugin import LogSink, OutRecord, PluginContext
from ce_daemon.store import Migration, Store, StoreError, open_store

if TYPE_CHECKING:
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.config.model import StateSettings
    from ce_daemon.logs.resolve import ResolvedRoute
    from ce_daemon.registry import Registry

DEADLETTER_MIGRATIONS = (
    Migration(
        component="deadletters",
        version=1,
        statements=(
            """CREATE TABLE dead_letters (
                id {id},
                route {text} NOT NULL,
                stream {text} NOT NULL,
                record_id {text} NOT NULL,
                reason {text} NOT NULL,
                formatted {blob} NOT NULL,
                record {blob} NOT NULL,
                created {real} NOT NULL,
                attempts {int} NOT NULL DEFAULT 1
            )""",
            "CREATE INDEX dead_letters_route ON dead_letters(route, id)",
        ),
    ),
)


class DeadLetters:
    """The dead-letter table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(
        self, route: str, stream: str, record: dict[str, Any], formatted: bytes, reason: str
    ) -> None:
        """Keep one refused record with the reason the target gave."""
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO dead_letters (route, stream, record_id, reason, formatted, record, created)"
                " VALUES (:route, :stream, :record_id, :reason, :formatted, :record, :created)",
                {
                    "route": route,
                    "stream": stream,
                    "record_id": str(record.get("_id", "")),
                    "reason": _reason(reason),
                    "formatted": formatted,
                    "record": orjson.dumps(record, default=str),
                    "created": time.time(),
                },
            )

    async def oldest(self, route: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The oldest dead letters (of one route, or of all)."""
        query = (
            "SELECT id, route, stream, record_id, reason, created, attempts, formatted, record"
            " FROM dead_letters"
        )
        if route:
            query += " WHERE route = :route"
        query += " ORDER BY id LIMIT :limit"
        async with self.store.read() as tx:
            rows = await tx.fetch(query, {"route": route, "limit": limit})
        return [
            {
                "id": r[0],
                "route": r[1],
                "stream": r[2],
                "record_id": r[3],
                "reason": r[4],
                "created": r[5],
                "attempts": r[6],
                "formatted": bytes(r[7]),
                "timestamp": _timestamp(r[8]),
            }
            for r in rows
        ]

    async def count(self, route: str | None = None) -> int:
        """How many dead letters there are."""
        query = "SELECT COUNT(*) FROM dead_letters" + (" WHERE route = :route" if route else "")  # noqa: S608 - fixed text, value bound
        async with self.store.read() as tx:
            return int(await tx.fetchval(query, {"route": route}))

    async def remove(self, ids: list[int]) -> None:
        """Forget dead letters (after a successful replay, or a purge)."""
        async with self.store.transaction() as tx:
            await tx.executemany("DELETE FROM dead_letters WHERE id = :id", [{"id": i} for i in ids])

    async def retried(self, ids: list[int], reason: str) -> None:
        """Record a failed replay attempt."""
        async with self.store.transaction() as tx:
            await tx.executemany(
                "UPDATE dead_letters SET attempts = attempts + 1, reason = :reason WHERE id = :id",
                [{"reason": _reason(reason), "id": i} for i in ids],
            )

    async def purge(self, route: str | None = None) -> int:
        """Delete dead letters; returns how many."""
        count = await self.count(route)
        async with self.store.transaction() as tx:
            if route:
                await tx.execute("DELETE FROM dead_letters WHERE route = :route", {"route": route})
            else:
                await tx.execute("DELETE FROM dead_letters")
        return count


async def dlq_command(
    args: argparse.Namespace, registry: Registry, state: StateSettings | None = None
) -> int:
    """``ce-daemon dlq list|replay|purge``.

    ``list`` and ``purge`` touch the state database only (``state``, located from the pipeline
    file without resolving any secret); ``replay`` loads the whole pipeline, since it contacts the sinks.
    """
    from ce_daemon.config.load import load_pipeline
    from ce_daemon.errors import ConfigError
    from ce_daemon.spool import SPOOL_MIGRATIONS

    loaded: LoadedPipeline | None = None
    if args.action == "replay" or state is None:
        try:
            loaded = load_pipeline(args.config, registry)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return 78
        state = loaded.config.state
    elif state.url is None and not state.path.exists():
        print(f"no state database at {state.path}: 0 dead letter(s)")
        return 0
    # Not migrated: a mistyped database gets no schema, and one a newer ce-daemon wrote is refused.
    try:
        async with await open_store(
            state, (*SPOOL_MIGRATIONS, *DEADLETTER_MIGRATIONS), migrate=False
        ) as store:
            if args.action != "replay" and not await store.columns("schema_migrations"):
                print(f"no ce-daemon state in {store.display} yet: 0 dead letter(s)")
                return 0
            return await _dlq_action(args, DeadLetters(store), loaded)
    except StoreError as exc:
        print(f"dlq {args.action}: {exc}", file=sys.stderr)
        return 1


async def _dlq_action(args: argparse.Namespace, dead: DeadLetters, loaded: LoadedPipeline | None) -> int:
    if args.action == "list":
        rows = await dead.oldest(args.route, args.limit)
        for row in rows:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created"]))
            print(
                f"{row['id']:>6} {when} {row['route']} {row['stream']} id={row['record_id']} "
                f"attempts={row['attempts']}: {row['reason']}"
            )
        print(f"{await dead.count(args.route)} dead letter(s)")
        return 0
    if args.action == "purge":
        print(f"purged {await dead.purge(args.route)} dead letter(s)")
        return 0
    assert loaded is not None
    return await _replay(loaded, dead, args.route)


async def _replay(loaded: LoadedPipeline, dead: DeadLetters, only: str | None) -> int:
    return 1 if await replay(loaded, dead, only, _say) else 0


async def replay(
    loaded: LoadedPipeline, dead: DeadLetters, only: str | None, say: Callable[[str], None]
) -> int:
    """Send the dead letters of ``only`` (every route: None) to their routes' sinks again, through a
    sink opened for the purpose; what is delivered is removed. How many are still dead letters; ``say``
    is told each route's outcome."""
    from ce_daemon.logs.job import routes_of, secrets_resolved

    redact.remember_pipeline(loaded)  # a replay's failures are stored as reasons: scrubbed like the daemon's
    failures = 0
    for name, route in routes_of(loaded).items():
        if only and name != only:
            continue
        rows = await dead.oldest(name, limit=100_000)
        if not rows:
            continue
        if not secrets_resolved(loaded, name):
            say(f"{name}: the route is disabled and its secrets are not resolved here, nothing replayed")
            failures += len(rows)
            continue
        assert route.sink.cls is not None and issubclass(route.sink.cls, LogSink)
        context = PluginContext(name=name, base_dir=loaded.base_dir, data_dir=loaded.config.state.path.parent)
        sink = route.sink.cls(route.sink_options, context)
        try:
            await sink.open()
        except Exception as exc:  # noqa: BLE001 - whatever a plugin raises, the operator reads why
            say(f"{name}: cannot open the sink, nothing replayed: {describe(exc)}")
            failures += len(rows)
            await _close(name, sink)
            continue
        try:
            failures += await _replay_rows(name, route, rows, sink, dead, say)
        finally:
            await _close(name, sink)
    return failures


async def _replay_rows(
    name: str,
    route: ResolvedRoute,
    rows: list[dict[str, Any]],
    sink: LogSink,
    dead: DeadLetters,
    say: Callable[[str], None],
) -> int:
    """Send ``rows`` again in chunks of 500; how many are still dead letters afterwards."""
    failures = 0
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        batch = []
        for row in chunk:
            stream = StreamKey.parse(row["stream"])
            batch.append(
                OutRecord(
                    row["record_id"],
                    row["timestamp"],
                    row["formatted"],
                    stream.kind,
                    stream.subtype,
                    route.config.format,
                )
            )
        try:
            result = await sink.send(batch)
        except Exception as exc:  # noqa: BLE001 - a failed chunk stays dead-lettered, with the reason
            await dead.retried([r["id"] for r in chunk], f"replay failed: {describe(exc)}")
            failures += len(chunk)
            continue
        refused = {i for i, _ in result.rejected}
        await dead.remove([r["id"] for i, r in enumerate(chunk) if i not in refused])
        if refused:
            await dead.retried([chunk[i]["id"] for i in refused], "refused again on replay")
        failures += len(refused)
        say(f"{name}: replayed {len(chunk) - len(refused)} of {len(chunk)}")
    return failures


async def _close(name: str, sink: LogSink) -> None:
    """Close the sink once (also after a failed open, as the plugin contract says); a failure is told."""
    try:
        await sink.close()
    except Exception as exc:  # noqa: BLE001 - the replay's outcome is already decided
        _say(f"{name}: closing the sink failed: {describe(exc)}")


def _say(text: str) -> None:
    """A line of the replay's report: it may quote a target's answer, so scrubbed of secrets."""
    print(redact.scrub(text, redact.STATUS_LIMIT))


def _reason(text: str) -> str:
    """A reason as stored: it may quote a target's answer, so scrubbed of secrets and bounded."""
    return redact.scrub(text, redact.DEAD_LETTER_LIMIT)


def _timestamp(record: bytes) -> int:
    """The record's own timestamp: a replay lands in the same dated index or object key as a first send."""
    try:
        value = orjson.loads(record).get("timestamp")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0
