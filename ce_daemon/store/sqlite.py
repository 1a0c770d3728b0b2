"""The SQLite state backend: one file, opened once, shared by every module of one daemon.

The database runs in WAL mode with ``synchronous=NORMAL``: a commit survives a crash of the process
(the WAL is in the OS page cache), and only a power loss can cost the last few commits. Writes go
through :meth:`SqliteStore.transaction`, which serialises them, because all tasks share one connection
and a statement from one task would otherwise land inside another task's open transaction.

This module is the only one that knows SQLite: its placeholders, pragmas and DDL words.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from ce_daemon.store.base import (
    CORE_MIGRATIONS,
    Backend,
    MetaTable,
    Migration,
    Params,
    Row,
    StoreError,
    Transaction,
    newer_schema,
    number_placeholders,
    plan_migrations,
    render_ddl,
)

__all__ = ["SqliteStore", "exclusive_lock", "lock_holder", "shared_directory_problem"]

log = structlog.get_logger("ce_daemon.state")

# WAL readers never block the writer, but another process writing (a second `ce-daemon` command opening
# the file) can hold the write lock briefly; long enough to ride that out, short enough to surface a hang.
BUSY_TIMEOUT_MS = 10_000
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_SIDE_FILES = ("-wal", "-shm", "-journal", ".lock")
_CONTROL_SOCKET = "control.sock"  # the control socket's default place, beside the database

WORDS = {
    # AUTOINCREMENT: an id is never reused, even once every row above it has been deleted.
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "int": "INTEGER",
    "real": "REAL",
    "text": "TEXT",
    "blob": "BLOB",
    "keyed": "WITHOUT ROWID",
}

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (component, version)
) WITHOUT ROWID
"""


def translate(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with numbered ``?n`` placeholders, and the names in parameter order."""
    return number_placeholders(sql, "?")


def _bind(sql: str, params: Params | None) -> tuple[str, tuple[Any, ...]]:
    text, names = translate(sql)
    if not names:
        return text, ()
    assert params is not None, f"parameters missing for {sql}"
    return text, tuple(params[name] for name in names)


class SqliteTransaction:
    """The :class:`~ce_daemon.store.base.Transaction` of a :class:`SqliteStore` (its one connection)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params | None = None) -> int:
        text, values = _bind(sql, params)
        cursor = await self._db.execute(text, values)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        text, names = translate(sql)
        if len(names) == 1:
            (name,) = names
            await self._db.executemany(text, [(row[name],) for row in rows])
            return
        values = itemgetter(*names)  # a tuple of the row's values in parameter order, in C
        await self._db.executemany(text, [values(row) for row in rows])

    async def fetch(self, sql: str, params: Params | None = None) -> list[Row]:
        return list(await self._db.execute_fetchall(*_bind(sql, params)))

    async def fetchrow(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Params | None = None) -> Any:
        row = await self.fetchrow(sql, params)
        return None if row is None else row[0]

    async def serialize(self, name: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already serialises every write transaction."""


class SqliteStore(MetaTable):
    """The open SQLite state database. Create it with :meth:`open`; close it with :meth:`close`."""

    backend: Backend = "sqlite"
    shared = False

    def __init__(self, path: Path, db: aiosqlite.Connection) -> None:
        self._path = path
        self._db = db
        self._lock = asyncio.Lock()
        self._tx = SqliteTransaction(db)
        self.display = str(path)

    @classmethod
    async def open(
        cls, path: Path, migrations: Sequence[Migration] = (), *, migrate: bool = True
    ) -> SqliteStore:
        """Open (creating if needed) the database at ``path`` and apply pending migrations.

        Creates the parent directory with mode 0700 when it is missing and the file with mode 0600;
        tightens an existing directory and files that others may read, or refuses them when that is
        not safe (see :func:`_prepare_directory`). Raises :class:`StoreError` when the file is not a
        usable SQLite database or records a schema version newer than the given migrations know.
        """
        plan = plan_migrations(CORE_MIGRATIONS, migrations)
        _prepare_file(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {path}: {exc}") from exc
        store = cls(path, db)
        try:
            await store._configure()
            if migrate:
                await store._migrate(plan)
            else:
                await store.refuse_newer_schema(plan, "state.path")
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(
                    f"state database {path} is unusable: {exc}; if it is corrupt or not a ce-daemon "
                    "state database, move it aside or point state.path elsewhere"
                ) from exc
            raise
        return store

    async def close(self) -> None:
        """Close the connection; pending statements finish first."""
        async with self._lock:
            await self._db.close()

    @property
    def path(self) -> Path:
        """Where the database lives."""
        return self._path

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception), one at a time.

        Not reentrant: do not open a transaction (or :meth:`read`) inside another. When the caller is
        cancelled while ``COMMIT`` runs, the commit still completes before the cancellation propagates,
        so the lock is never released over a half-finished transaction.
        """
        async with self._lock:
            with self._driver_errors():
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._tx
                    await _run_to_end(self._db, "COMMIT")
                except BaseException:
                    # Also after a failed COMMIT (disk full, I/O error), which can leave it open.
                    if self._db.in_transaction:
                        await _run_to_end(self._db, "ROLLBACK")
                    raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqliteTransaction]:
        """Hold the store for reads that must see only committed data.

        Without it a read from one task could observe another task's uncommitted transaction, since
        both go through the same connection.
        """
        async with self._lock:
            with self._driver_errors():
                yield self._tx

    @contextmanager
    def _driver_errors(self) -> Iterator[None]:
        """An error of SQLite (constraint, I/O, corruption) as a StoreError naming the database."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self._path}: {exc}") from exc

    async def columns(self, table: str) -> list[str]:
        """The columns of ``table``, in order."""
        async with self._lock:
            rows = await self._db.execute_fetchall(
                "SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,)
            )
        return [str(name) for (name,) in rows]

    async def key_columns(self, tx: Transaction, table: str) -> list[str]:
        """The primary key's columns of ``table``, in key order."""
        rows = await tx.fetch(
            "SELECT name FROM pragma_table_info(:table) WHERE pk > 0 ORDER BY pk", {"table": table}
        )
        return [str(name) for (name,) in rows]

    async def last_id(self, tx: Transaction, table: str, column: str) -> int:
        """The highest id ever assigned: AUTOINCREMENT keeps it in ``sqlite_sequence``."""
        kept = await tx.fetchval("SELECT seq FROM sqlite_sequence WHERE name = :table", {"table": table})
        highest = await tx.fetchval(f"SELECT MAX({column}) FROM {table}")  # noqa: S608 - from migrations
        return max(int(kept or 0), int(highest or 0))

    async def continue_ids(self, tx: Transaction, table: str, column: str, after: int) -> None:
        """Raise the AUTOINCREMENT mark of ``table`` to ``after`` (never lowers it)."""
        moved = await tx.execute(
            "UPDATE sqlite_sequence SET seq = :after WHERE name = :table AND seq < :after",
            {"table": table, "after": after},
        )
        known = await tx.fetchval("SELECT 1 FROM sqlite_sequence WHERE name = :table", {"table": table})
        if not moved and known is None and after > 0:
            await tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES (:table, :after)",
                {"table": table, "after": after},
            )

    async def pragma(self, statement: str) -> object:
        """Run ``PRAGMA statement``; its first value (tests check the connection's settings with it)."""
        async with self._lock:
            return await self._pragma(statement)

    async def _configure(self) -> None:
        # First, so that the switch to WAL below also waits out another process's lock.
        await self._pragma(f"busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = await self._pragma("journal_mode = WAL")
        if str(mode).lower() != "wal":
            # Some filesystems (network mounts) cannot share memory for the WAL index.
            log.warning("state.wal_unavailable", path=str(self._path), journal_mode=mode)
        await self._pragma("synchronous = NORMAL")
        await self._pragma("foreign_keys = ON")
        # Debian's SQLite zeroes every deleted byte (SECURE_DELETE), which doubles the writes of the
        # spool: each acknowledged page would be written again as zeros. FAST still zeroes what lives
        # on b-tree pages but leaves freed overflow pages for reuse; the file itself is 0600.
        await self._pragma("secure_delete = FAST")
        # 64 MiB of page cache (the default is 2 MiB): large indexes written in random key order (an IOC
        # feed's values) stay in memory instead of being read back from the OS for every insert.
        await self._pragma("cache_size = -65536")

    async def _pragma(self, statement: str) -> object:
        rows = list(await self._db.execute_fetchall(f"PRAGMA {statement}"))
        return rows[0][0] if rows else None

    async def _migrate(self, plan: dict[str, list[Migration]]) -> None:
        await self._db.execute(_BOOTSTRAP)
        rows = await self._db.execute_fetchall(
            "SELECT component, MAX(version) FROM schema_migrations GROUP BY component"
        )
        recorded = {str(component): int(version) for component, version in rows}
        newer_schema(str(self._path), "state.path", plan, recorded)
        for component, steps in plan.items():
            pending = [step for step in steps if step.version > recorded.get(component, 0)]
            if pending:
                await self._apply(component, pending)

    async def _apply(self, component: str, steps: list[Migration]) -> None:
        async with self.transaction():
            for step in steps:
                for statement in step.statements:
                    try:
                        await self._db.execute(render_ddl(statement, WORDS))
                    except sqlite3.Error as exc:
                        # A broken migration is a bug in ce-daemon, not in the user's file: say which.
                        raise StoreError(
                            f"state database {self._path}: migration {component} {step.version} failed "
                            f"({exc}); nothing of {component} schema {steps[0].version}..{steps[-1].version} "
                            "was applied"
                        ) from exc
                await self._db.execute(
                    "INSERT INTO schema_migrations (component, version, applied_at) VALUES (?, ?, ?)",
                    (component, step.version, time.time()),
                )
        log.info(
            "state.migrated",
            path=str(self._path),
            component=component,
            from_version=steps[0].version - 1,
            to_version=steps[-1].version,
        )


async def _run_to_end(db: aiosqlite.Connection, statement: str) -> None:
    """Run ``statement`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(db.execute(statement))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


@contextlib.contextmanager
def exclusive_lock(database: Path) -> Iterator[None]:
    """Hold ``<database>.lock`` (flock) with this pid in it: two daemons sharing one SQLite state (and so
    one iterator index) would lose data. StoreError naming the holder when it is taken."""
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # created 0600, as the state store wants every file beside the database (it would tighten it, warning)
    descriptor = os.open(_lock_path(database), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "?"
            raise StoreError(
                f"another ce-daemon (pid {holder}) is running with the state database {database}"
            ) from None
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def lock_holder(database: Path) -> int | None:
    """The pid of the ce-daemon running with ``database`` (holding its lock), or None when none is.

    The lock is probed only when the pid written in it is alive: a daemon starting at that moment (the
    file still naming its stopped predecessor) does not find its lock held by the question. OSError when
    the lock file cannot be read.
    """
    try:
        descriptor = os.open(_lock_path(database), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(descriptor) as handle:
        written = handle.read(20).strip()
        pid = int(written) if written.isdigit() else 0
        if pid <= 0 or not _alive(pid):
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return pid
        fcntl.flock(handle, fcntl.LOCK_UN)  # free: that pid is some other process now
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def _lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def shared_directory_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold a state database whoever runs ce-daemon, else None.

    A directory that other users may write to (``/tmp``, a group-writable share) lets them delete or
    replace the database and its journal files: refused, whoever owns it. A missing directory is
    fine (it is created 0700).
    """
    try:
        found = directory.stat()
    except OSError:
        return None  # missing (created later), or not ours to look into: opening it will tell
    if not stat.S_ISDIR(found.st_mode):
        return f"the state directory {directory} is not a directory"
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o022:
        return (
            f"the state directory {directory} is writable by other users (mode {mode:04o}): they could "
            "delete or replace the database"
        )
    return None


def _prepare_file(path: Path) -> None:
    """Make the directory (0700) and the database file (0600) private before SQLite touches them.

    SQLite gives the -wal and -shm files the mode of the database file, so a 0600 database file keeps
    all three private regardless of the process umask.
    """
    _prepare_directory(path.parent, path.name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot create state database {path}: {exc.strerror or exc}") from exc
    _tighten_modes(path)


def _prepare_directory(directory: Path, database: str) -> None:
    """Create the state directory 0700, or make an existing one private, or refuse it.

    An existing directory that others may read is tightened to 0700 (with a log line) when this user
    owns it and it holds nothing but ce-daemon's files; otherwise tightening could lock others out of
    a directory that is not ce-daemon's (``/var/lib``, a home directory), so it is refused with what
    to do instead. One others may write to is always refused (:func:`shared_directory_problem`).
    """
    try:
        if not directory.exists():
            directory.mkdir(mode=_DIR_MODE, parents=True)
            return
    except OSError as exc:
        raise StoreError(f"cannot create the state directory {directory}: {exc.strerror or exc}") from exc
    problem = shared_directory_problem(directory)
    if problem:
        raise StoreError(f"{problem}; give ce-daemon a directory of its own (created 0700 when missing)")
    found = directory.stat()
    mode = stat.S_IMODE(found.st_mode)
    if not mode & 0o077:
        return
    wide = f"the state directory {directory} is readable by other users (mode {mode:04o})"
    if found.st_uid != os.geteuid():
        raise StoreError(
            f"{wide} and belongs to uid {found.st_uid}, not to this user: make it private "
            f"(chmod 0700 {directory}) or choose another state.path"
        )
    ours = {database + suffix for suffix in ("", *_SIDE_FILES)} | {_CONTROL_SOCKET}
    try:
        with os.scandir(directory) as entries:
            foreign = next((entry.name for entry in entries if entry.name not in ours), None)
    except OSError as exc:
        raise StoreError(f"cannot list the state directory {directory}: {exc.strerror or exc}") from exc
    if foreign is not None:
        raise StoreError(
            f"{wide} and holds files that are not ce-daemon's ({foreign!r}): give the state a directory "
            f"of its own, e.g. state.path: {directory / 'ce-daemon' / database}"
        )
    try:
        directory.chmod(_DIR_MODE)
    except OSError as exc:
        raise StoreError(f"{wide} and cannot be made private: {exc.strerror or exc}") from exc
    log.warning("state.directory_tightened", path=str(directory), mode_was=f"{mode:04o}", mode="0700")


def _tighten_modes(path: Path) -> None:
    """Make a database and its side files inherited from an older install (or copied around) private.

    A file others may read that cannot be made private (it belongs to another user) is refused.
    """
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot use {candidate}: {exc.strerror or exc}") from exc
        if mode == _FILE_MODE:
            continue
        try:
            candidate.chmod(_FILE_MODE)
        except OSError as exc:
            if mode & 0o077:
                raise StoreError(
                    f"{candidate} is readable by other users (mode {mode:04o}) and cannot be made private: "
                    f"{exc.strerror or exc}"
                ) from exc
            log.warning("state.mode_unfixable", path=str(candidate), error=str(exc))
            continue
        if mode & 0o077:
            log.warning("state.file_tightened", path=str(candidate), mode_was=f"{mode:04o}", mode="0600")
