"""The ``s3`` log sink: gzip NDJSON objects under deterministic keys in any S3-compatible store."""

from __future__ import annotations

from ce_s3.sink import S3Sink, S3SinkOptions

__all__ = ["S3Sink", "S3SinkOptions"]
