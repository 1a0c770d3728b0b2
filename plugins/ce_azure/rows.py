"""Log Analytics rows from formatted records, and the JSON arrays that carry them."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from ce_daemon.plugin import OutRecord


@functools.lru_cache(maxsize=4096)
def iso_time(timestamp: int) -> str:
    """Epoch seconds as ISO 8601 UTC (many records share a second, hence the cache)."""
    return datetime.fromtimestamp(max(0, timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RowEncoder:
    """Turns an `OutRecord` into one JSON object (bytes) for the DCR stream.

    JSON records keep their own fields and gain the time column, spliced in front of the
    record's bytes rather than parsed and dumped again. CEF/LEEF lines become
    ``{time: …, raw: line, id: _id}``.
    """

    def __init__(self, time_column: str, raw_column: str, id_column: str) -> None:
        self.time_column = time_column
        self.raw_column = raw_column
        self.id_column = id_column
        self._time_key = orjson.dumps(time_column)

    def encode(self, record: OutRecord) -> bytes:
        """The row for ``record``."""
        when = iso_time(record.timestamp)
        data = record.data
        if record.format == "json" and data[:1] == b"{" and data[-1:] == b"}":
            if self._time_key in data:  # the record has a column of that name: set it properly
                parsed = orjson.loads(data)
                if isinstance(parsed, dict):
                    parsed[self.time_column] = when
                    return orjson.dumps(parsed)
            head = b'{%s:"%s"' % (self._time_key, when.encode())
            rest = data[1:].lstrip()
            return head + (b"}" if rest == b"}" else b"," + rest)
        return orjson.dumps(
            {
                self.time_column: when,
                self.raw_column: data.decode("utf-8", "replace"),
                self.id_column: record.id,
            }
        )


def json_array(rows: Sequence[bytes]) -> bytes:
    """``rows`` (JSON objects) as one JSON array."""
    return b"[" + b",".join(rows) + b"]"
