"""Append records to a local file, one per line, rotating by size.

Each batch is written with one ``write`` and flushed (``fsync`` optional) before ``send``
returns, so an acknowledged batch is on disk.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ce_daemon.plugin import (
    Health,
    LogSink,
    OutRecord,
    PluginContext,
    PluginOptions,
    SendResult,
    Size,
    TransientError,
)


class FileSinkOptions(PluginOptions):
    """Options of the ``file`` sink."""

    path: Path
    mode: Literal["lines", "ndjson"] = "lines"
    """``lines``: the formatted record as is; ``ndjson``: an object with id, stream and the formatted line."""
    rotate_bytes: Size | Literal[0] = 0
    """Rotate when the file would grow past this size (0: never)."""
    keep: Annotated[int, Field(ge=1, le=1000)] = 5
    """How many rotated files (``path.1`` … ``path.N``) to keep."""
    fsync: bool = False
    """Force each batch to stable storage before acknowledging (slower; survives power loss)."""


class FileSink(LogSink[FileSinkOptions]):
    """The ``file`` log sink."""

    api_version = 1

    def __init__(self, options: FileSinkOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.path = self.context.resolve(self.options.path)
        self._handle: int | None = None
        self._size = 0

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._handle).st_size
        # a write cut short by a crash leaves a partial last line: end it, so the next record starts clean
        if self._size and os.pread(self._handle, 1, self._size - 1) != b"\n":
            os.write(self._handle, b"\n")
            self._size += 1

    async def health(self) -> Health:
        if not os.access(self.path.parent, os.W_OK):
            return Health(ok=False, detail=f"cannot write in {self.path.parent}")
        return Health(ok=True, detail=str(self.path))

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        if self.options.mode == "ndjson":
            import orjson

            lines = [
                orjson.dumps(
                    {
                        "id": r.id,
                        "kind": r.kind,
                        "subtype": r.subtype,
                        "format": r.format,
                        "message": r.data.decode("utf-8", "replace"),
                    }
                )
                for r in batch
            ]
        else:
            lines = [r.data for r in batch]
        payload = b"\n".join(lines) + b"\n"
        try:
            await asyncio.to_thread(self._write, payload)
        except OSError as exc:
            raise TransientError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return SendResult()

    def _write(self, payload: bytes) -> None:
        if self._handle is None:
            self._open()
        limit = self.options.rotate_bytes
        if limit and self._size and self._size + len(payload) > limit:
            self._rotate()
        assert self._handle is not None
        view = memoryview(payload)
        while view:
            written = os.write(self._handle, view)
            view = view[written:]
        self._size += len(payload)
        if self.options.fsync:
            os.fsync(self._handle)

    def _rotate(self) -> None:
        assert self._handle is not None
        os.close(self._handle)
        self._handle = None
        for n in range(self.options.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    async def close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
