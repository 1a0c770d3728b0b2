"""The values of a feed's last complete answer, kept on disk so that a 304 can give them again.

A feed is a full list: a pull that yields nothing would deactivate everything the source listed.
So an answer "304 Not Modified" is answered with what the last complete answer held, read back
from ``<data_dir>/<source name>.feed-cache``. The file is one JSON header line (the answer's
``ETag`` and ``Last-Modified``, and a fingerprint of the options that shape the records), then one
JSON array ``[value, type, tags]`` a record. It is written beside itself while a pull runs and
renamed over the old one only when the pull read the whole body, so it always holds a whole list.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

import orjson

from ce_daemon.plugin import IocRecord, TransientError

_VERSION = 1
_READ_LINES = 10_000


@dataclass(frozen=True, slots=True)
class Validators:
    """What an answer said to ask a conditional GET with (``ETag``, ``Last-Modified``)."""

    etag: str | None = None
    last_modified: str | None = None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)

    def request_headers(self) -> dict[str, str]:
        """``If-None-Match`` and ``If-Modified-Since`` for these."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def checkpoint(self) -> str:
        """These as a checkpoint string."""
        return orjson.dumps({"etag": self.etag, "last_modified": self.last_modified}).decode()


def fingerprint(shape: dict[str, Any]) -> str:
    """A digest of the options that decide which records a body gives."""
    return hashlib.sha256(orjson.dumps({"v": _VERSION, **shape}, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ReplayCache:
    """The records of a source's last complete answer, and the validators that answer carried."""

    def __init__(self, path: Path, shape: str) -> None:
        self.path = path
        self.shape = shape

    async def validators(self) -> Validators | None:
        """The validators of the cached answer (None: no cache, or one made with other options)."""
        return await asyncio.to_thread(self._header)

    def _header(self) -> Validators | None:
        try:
            with self.path.open("rb") as file:
                header = orjson.loads(file.readline(64 * 1024))
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(header, dict) or header.get("shape") != self.shape:
            return None
        etag, modified = header.get("etag"), header.get("last_modified")
        found = Validators(
            etag if isinstance(etag, str) else None, modified if isinstance(modified, str) else None
        )
        return found or None

    async def replay(self, target: str) -> AsyncIterator[list[IocRecord]]:
        """The cached records, in lists of at most 10,000."""
        try:
            file = await asyncio.to_thread(self.path.open, "rb")
        except OSError as exc:
            raise TransientError(f"{target} answered 304 but the cached list is gone ({exc})") from exc
        try:
            await asyncio.to_thread(file.readline)  # the header
            while lines := await asyncio.to_thread(_read_lines, file):
                yield [_record(line) for line in lines]
        except (OSError, ValueError) as exc:
            raise TransientError(f"{target} answered 304 but the cached list is unreadable ({exc})") from exc
        finally:
            file.close()

    async def forget(self) -> None:
        """Remove the cache (the feed answered without validators: no 304 will ever be asked for)."""
        await asyncio.to_thread(self.path.unlink, missing_ok=True)

    def writer(self, validators: Validators) -> CacheWriter:
        """A new cache for an answer with ``validators``, written beside the current one."""
        return CacheWriter(self, validators)


class CacheWriter:
    """A cache being written; :meth:`commit` puts it in place, :meth:`discard` throws it away."""

    def __init__(self, cache: ReplayCache, validators: Validators) -> None:
        self.cache = cache
        self.validators = validators
        self._file: IO[bytes] | None = None
        self._temporary: str | None = None

    async def add(self, records: Sequence[IocRecord]) -> None:
        """Append ``records``."""
        lines = b"".join(orjson.dumps([r.value, r.type, list(r.tags)]) + b"\n" for r in records)
        await asyncio.to_thread(self._write, lines)

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self.cache.path.parent.mkdir(parents=True, exist_ok=True)
            handle, self._temporary = tempfile.mkstemp(
                dir=self.cache.path.parent, prefix=f".{self.cache.path.name}.", suffix=".tmp"
            )
            self._file = os.fdopen(handle, "wb")
            header = {
                "shape": self.cache.shape,
                "etag": self.validators.etag,
                "last_modified": self.validators.last_modified,
            }
            self._file.write(orjson.dumps(header) + b"\n")
        self._file.write(data)

    async def commit(self) -> None:
        """Make this the cache (synced, then renamed over the old one)."""
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        self._write(b"")
        assert self._file is not None and self._temporary is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temporary, self.cache.path)
        self._file = self._temporary = None

    def discard(self) -> None:
        """Throw the half-written cache away (the pull did not read the whole body)."""
        if self._file is not None:
            self._file.close()
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temporary)
        self._file = self._temporary = None


def _read_lines(file: IO[bytes]) -> list[bytes]:
    return list(islice(file, _READ_LINES))


def _record(line: bytes) -> IocRecord:
    value, kind, tags = orjson.loads(line)
    return IocRecord(str(value), type=kind if isinstance(kind, str) else None, tags=tuple(map(str, tags)))
