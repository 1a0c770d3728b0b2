"""How a spooled page is stored: a few independent LZ4 frames of JSON arrays, each read with orjson.

About 4x smaller than the JSON, and 5x faster to decompress than zlib (every route reads every page).
Splitting a page into frames keeps each stretch of GIL-holding JSON work short when encoding and
decoding run in a worker thread, so the event loop stays responsive while a 10,000-record page is
processed.

A frame's array is written by orjson from parsed records (:func:`encode`), or joined from records that
are already JSON texts (:func:`encode_texts`: the Netskope fast path, `ce_daemon.netskope.rawpages`).
Damage is caught by LZ4's block checksums (xxHash32 of each compressed block), checked by
:func:`decode`: they cover every stored byte as the content checksum of earlier pages did (still read),
at a quarter of its cost, since the compressed blocks are 4x shorter than the JSON.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import lz4.frame
import orjson
from typing_extensions import Buffer

from ce_daemon.store import StoreError

__all__ = [
    "CODEC",
    "FRAME_RECORDS",
    "SpoolCorruptError",
    "TextArrays",
    "UnencodableRecordsError",
    "decode",
    "encode",
    "encode_texts",
    "parse_frame",
]

CODEC = "orjson-lz4-frames"
# Pages written before lz4 (still readable): zlib level 1 frames.
_ZLIB_CODEC = "orjson-zlib1-frames"
# Records per compressed frame: small enough that one frame's JSON work holds the GIL only ~3 ms,
# large enough that the compressor still finds the repetition between records.
FRAME_RECORDS = 1_000
# LZ4's acceleration 8 (a negative level): on the simulator's pages it compresses in a third less CPU than
# its default, and decompresses in a sixth less, for a page about 10 % larger (4.1x smaller than the JSON
# instead of 4.5x). Every page the tenant sends is compressed once, on the daemon's own cores.
_LEVEL = -8


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
        frames.append(_compress(text))
    return b"".join(frames)


@runtime_checkable
class TextArrays(Protocol):
    """Records held as JSON texts that join themselves into the spool's frames (`ce_daemon.netskope.rawpages`
    holds a page's that way)."""

    def __len__(self) -> int: ...

    def arrays(self, per: int) -> Iterator[bytes]:
        """The records as JSON arrays of ``per`` records (the last may hold fewer)."""
        ...


def encode_texts(texts: Sequence[Buffer] | TextArrays) -> bytes:
    """The page body of records given as JSON texts, stored as they are: nothing is parsed or re-written.

    The caller vouches that each text is one JSON object orjson reads (`ce_daemon.netskope.rawpages`).
    """
    if isinstance(texts, TextArrays):
        arrays: Iterable[bytes] = texts.arrays(FRAME_RECORDS)
    else:
        arrays = (
            b"[" + b",".join(texts[start : start + FRAME_RECORDS]) + b"]"
            for start in range(0, len(texts), FRAME_RECORDS)
        )
    return b"".join(_compress(array) for array in arrays)


def _compress(array: bytes) -> bytes:
    frame: bytes = lz4.frame.compress(array, block_checksum=True, compression_level=_LEVEL)
    return frame


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


def parse_frame(seq: int, chunk: bytes) -> list[dict[str, Any]]:
    """The records of one frame of page ``seq`` (a JSON array from :func:`decode`)."""
    try:
        records: list[dict[str, Any]] = orjson.loads(chunk)
    except orjson.JSONDecodeError as exc:
        raise SpoolCorruptError(f"spool page {seq} cannot be decoded: {exc}") from exc
    return records
