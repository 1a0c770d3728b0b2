"""The ``file`` log sink: one formatted line per record, or NDJSON, with size-based rotation."""

from __future__ import annotations

from ce_file.sink import FileSink, FileSinkOptions

__all__ = ["FileSink", "FileSinkOptions"]
