"""The state database: one SQLite file, opened once, shared by every module.

Each module owns its tables and brings them in as versioned :class:`Migration` steps passed to
:meth:`StateStore.open`; the store applies what is pending, in order, one transaction per component,
and refuses a database written by a newer ce-daemon instead of guessing at its schema.

The database runs in WAL mode with ``synchronous=NORMAL``: a commit survives a crash of the process
(the WAL is in the OS page cache), and only a power loss can cost the last few commits. Writes go
through :meth:`StateStore.transaction`, which serialises them, because all tasks share one connection
and a statement from one task would otherwise land inside another task's open transaction.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiosqlite
import structlog

from ce_daemon.errors import CeDaemonError

__all__ = ["CORE_MIGRATIONS", "Migration", "StateError", "StateStore", "shared_directory_problem"]

log = structlog.get_logger(__name__)

# WAL readers never block the writer, but another process writing (a second `ce-daemon` command opening
# the file) can hold the write lock briefly; long enough to ride that out, short enough to surface a hang.
BUSY_TIMEOUT_MS = 10_000
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_SIDE_FILES = ("-wal", "-shm", "-journal", ".lock")
_CONTROL_SOCKET = "control.sock"  # the control socket's default place, beside the database


class StateError(CeDaemonError):
    """The state database cannot be used: corrupt, not SQLite, unreadable, or from a newer ce-daemon."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step of one component (``core``, ``spool``, ``logs`` …).

    Versions start at 1 and grow by one; ``statements`` run in order inside the component's
    migration transaction. A released migration is never edited: a change is a new version.
    """

    component: str
    version: int
    statements: tuple[str, ...]


CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "core",
        1,
        ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",),
    ),
)

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (component, version)
) WITHOUT ROWID
"""


class StateStore:
    """The open state database. Create it with :meth:`open`; close it with :meth:`close` or ``async with``."""

    def __init__(self, path: Path, db: aiosqlite.Connection) -> None:
        self._path = path
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[Migration] = ()) -> StateStore:
        """Open (creating if needed) the database at ``path`` and apply pending migrations.

        Creates the parent directory with mode 0700 when it is missing and the file with mode 0600;
        tightens an existing directory and files that others may read, or refuses them when that is
        not safe (see :func:`_prepare_directory`). Raises :class:`StateError` when the file is not a
        usable SQLite database or records a schema version newer than the given migrations know.
        """
        plan = _plan(CORE_MIGRATIONS, migrations)
        _prepare_file(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from exc
        store = cls(path, db)
        try:
            await store._configure()
            await store._migrate(plan)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StateError(
                    f"state database {path} is unusable: {exc}; if it is corrupt or not a ce-daemon "
                    "state database, move it aside or point state.path elsewhere"
                ) from exc
            raise
        return store

    async def close(self) -> None:
        """Close the connection; pending statements finish first."""
        async with self._lock:
            await self._db.close()

    async def __aenter__(self) -> StateStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        """Where the database lives."""
        return self._path

    @property
    def db(self) -> aiosqlite.Connection:
        """The shared connection (autocommit mode). Write only inside :meth:`transaction`."""
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception), one at a time.

        Not reentrant: do not open a transaction (or :meth:`read`) inside another. When the caller is
        cancelled while ``COMMIT`` runs, the commit still completes before the cancellation propagates,
        so the lock is never released over a half-finished transaction.
        """
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await _run_to_end(self._db, "COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full, I/O error), which can leave the transaction open.
                if self._db.in_transaction:
                    await _run_to_end(self._db, "ROLLBACK")
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the store for reads that must see only committed data.

        Without it a read from one task could observe another task's uncommitted transaction, since
        both go through the same connection.
        """
        async with self._lock:
            yield self._db

    async def get_meta(self, key: str) -> str | None:
        """The value stored under ``key`` in the core ``meta`` table, or None."""
        async with self.read() as db:
            rows = list(await db.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,)))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

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

    async def _pragma(self, statement: str) -> object:
        rows = list(await self._db.execute_fetchall(f"PRAGMA {statement}"))
        return rows[0][0] if rows else None

    async def _migrate(self, plan: dict[str, list[Migration]]) -> None:
        await self._db.execute(_BOOTSTRAP)
        rows = await self._db.execute_fetchall(
            "SELECT component, MAX(version) FROM schema_migrations GROUP BY component"
        )
        recorded = {str(component): int(version) for component, version in rows}
        for component, steps in plan.items():
            known = steps[-1].version
            current = recorded.get(component, 0)
            if current > known:
                raise StateError(
                    f"state database {self._path} was written by a newer ce-daemon "
                    f"({component} schema {current}, this version knows {known}); "
                    "upgrade ce-daemon or point state.path elsewhere"
                )
        for component, steps in plan.items():
            pending = [step for step in steps if step.version > recorded.get(component, 0)]
            if pending:
                await self._apply(component, pending)

    async def _apply(self, component: str, steps: list[Migration]) -> None:
        async with self.transaction() as db:
            for step in steps:
                for statement in step.statements:
                    try:
                        await db.execute(statement)
                    except sqlite3.Error as exc:
                        # A broken migration is a bug in ce-daemon, not in the user's file: say which.
                        raise StateError(
                            f"state database {self._path}: migration {component} {step.version} failed "
                            f"({exc}); nothing of {component} schema {steps[0].version}..{steps[-1].version} "
                            "was applied"
                        ) from exc
                await db.execute(
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


def _plan(*groups: Sequence[Migration]) -> dict[str, list[Migration]]:
    """Group migrations by component, checking each component's versions run 1, 2, 3 …"""
    plan: dict[str, list[Migration]] = defaultdict(list)
    for group in groups:
        for step in group:
            plan[step.component].append(step)
    for component, steps in plan.items():
        steps.sort(key=lambda step: step.version)
        versions = [step.version for step in steps]
        if versions != list(range(1, len(steps) + 1)):
            raise ValueError(
                f"migrations of {component!r} must be numbered 1..n without gaps, got {versions}"
            )
    return dict(plan)


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
        raise StateError(f"cannot create state database {path}: {exc.strerror or exc}") from exc
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
        raise StateError(f"cannot create the state directory {directory}: {exc.strerror or exc}") from exc
    problem = shared_directory_problem(directory)
    if problem:
        raise StateError(f"{problem}; give ce-daemon a directory of its own (created 0700 when missing)")
    found = directory.stat()
    mode = stat.S_IMODE(found.st_mode)
    if not mode & 0o077:
        return
    wide = f"the state directory {directory} is readable by other users (mode {mode:04o})"
    if found.st_uid != os.geteuid():
        raise StateError(
            f"{wide} and belongs to uid {found.st_uid}, not to this user: make it private "
            f"(chmod 0700 {directory}) or choose another state.path"
        )
    ours = {database + suffix for suffix in ("", *_SIDE_FILES)} | {_CONTROL_SOCKET}
    try:
        with os.scandir(directory) as entries:
            foreign = next((entry.name for entry in entries if entry.name not in ours), None)
    except OSError as exc:
        raise StateError(f"cannot list the state directory {directory}: {exc.strerror or exc}") from exc
    if foreign is not None:
        raise StateError(
            f"{wide} and holds files that are not ce-daemon's ({foreign!r}): give the state a directory "
            f"of its own, e.g. state.path: {directory / 'ce-daemon' / database}"
        )
    try:
        directory.chmod(_DIR_MODE)
    except OSError as exc:
        raise StateError(f"{wide} and cannot be made private: {exc.strerror or exc}") from exc
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
            raise StateError(f"cannot use {candidate}: {exc.strerror or exc}") from exc
        if mode == _FILE_MODE:
            continue
        try:
            candidate.chmod(_FILE_MODE)
        except OSError as exc:
            if mode & 0o077:
                raise StateError(
                    f"{candidate} is readable by other users (mode {mode:04o}) and cannot be made private: "
                    f"{exc.strerror or exc}"
                ) from exc
            log.warning("state.mode_unfixable", path=str(candidate), error=str(exc))
            continue
        if mode & 0o077:
            log.warning("state.file_tightened", path=str(candidate), mode_was=f"{mode:04o}", mode="0600")
