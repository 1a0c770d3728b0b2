"""How a spooled page is stored: a few independent LZ4 frames of orjson arrays.

About 4.6x smaller than the JSON, and 5x faster to decompress than zlib (every route reads every page).
Splitting a page into frames keeps each stretch of GIL-holding JSON work short when encoding and
decoding run in a worker thread, so the event loop stays responsive while a 10,000-record page is
processed.
"""

from __future__ import annotations

import zlib
from typing import Any

import lz4.frame
import orjson

from ce_daemon.store import StoreError

__all__ = ["CODEC", "FRAME_RECORDS", "SpoolCorruptError", "UnencodableRecordsError", "decode", "encode"]

CODEC = "orjson-lz4-frames"
# Pages written before lz4 (still readable): zlib level 1 frames.
_ZLIB_CODEC = "orjson-zlib1-frames"
# Records per compressed frame: small enough that one frame's JSON work holds the GIL only ~3 ms,
# large enough that the compressor still finds the repetition between records.
FRAME_RECORDS = 1_000


class SpoolCorruptError(StoreError):
    """A stored page cannot be decoded (the database was damaged or edited by hand)."""


class UnencodableRecordsError(ValueError):
    """A page holds a value the codec cannot write (nested too deep, say); nothing was committed.

    The caller repairs the records (`ce_daemon.netskope.pages.repair_records`) and appends again.
    """


def encode(records: list[dict[str, Any]]) -> bytes:
    """The page body of ``records`` in :data:`CODEC`."""
    frames = []
    for start in range(0, len(records), FRAME_RECORDS):
        try:
            text = orjson.dumps(records[start : start + FRAME_RECORDS])
        except orjson.JSONEncodeError as exc:
            raise UnencodableRecordsError(
                f"records {start}-{min(start + FRAME_RECORDS, len(records)) - 1} of the page: {exc}"
            ) from exc
        frames.append(lz4.frame.compress(text, content_checksum=True))
    return b"".join(frames)


def decode(seq: int, codec: str, body: bytes) -> tuple[bytes, ...]:
    """The page's frames as JSON arrays (not parsed yet); damage is detected here."""
    if codec not in (CODEC, _ZLIB_CODEC):
        raise SpoolCorruptError(f"spool page {seq} uses codec {codec!r}, which this ce-daemon cannot read")
    chunks: list[bytes] = []
    rest = body
    try:
        while rest:
            frame: Any = lz4.frame.LZ4FrameDecompressor() if codec == CODEC else zlib.decompressobj()
            chunks.append(frame.decompress(rest))
            if not frame.eof:
                raise SpoolCorruptError(f"spool page {seq} ends in the middle of a frame")
            rest = frame.unused_data
    except (zlib.error, RuntimeError) as exc:
        raise SpoolCorruptError(f"spool page {seq} cannot be decoded: {exc}") from exc
    return tuple(chunks)
