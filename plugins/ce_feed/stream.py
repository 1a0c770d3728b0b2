"""A feed body as a bounded stream of chunks: gzip inflated in steps, the size counted after inflating.

A gzip body is recognised by its first two bytes (``1f 8b``), so that a ``.gz`` file is read whether
or not the server also says ``Content-Encoding: gzip`` (aiohttp inflates that one itself, in bounded
steps too). Each step inflates at most :data:`STEP` bytes, and the stream stops with a
:class:`TransientError` as soon as more than ``max_bytes`` came out: a small bomb never becomes a
large buffer.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from ce_daemon.plugin import TransientError

STEP = 256 * 1024
"""The most bytes one inflating step produces."""
_GZIP_MAGIC = b"\x1f\x8b"


async def bounded(chunks: AsyncIterator[bytes], max_bytes: int, target: str) -> AsyncIterator[bytes]:
    """``chunks`` inflated when gzip; :class:`TransientError` once more than ``max_bytes`` came out."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= len(_GZIP_MAGIC):
            break
    else:
        if head:
            _check(len(head), max_bytes, target)
            yield head
        return
    inflated = _prepend(head, chunks)
    if head.startswith(_GZIP_MAGIC):
        inflated = _gunzip(inflated, target)
    total = 0
    async for piece in inflated:
        total += len(piece)
        _check(total, max_bytes, target)
        yield piece


def _check(total: int, max_bytes: int, target: str) -> None:
    if total > max_bytes:
        raise TransientError(
            f"{target}: the feed is larger than max_bytes ({max_bytes:,} bytes once inflated); it was not"
            " read further (raise max_bytes if the feed is that large)"
        )


async def _prepend(head: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in chunks:
        yield chunk


async def _gunzip(chunks: AsyncIterator[bytes], target: str) -> AsyncIterator[bytes]:
    """The members of a gzip stream inflated, each step at most :data:`STEP` bytes."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            data = chunk
            while True:
                piece = inflater.decompress(data, STEP)
                if piece:
                    yield piece
                if inflater.eof and inflater.unused_data:  # another member (`cat a.gz b.gz` is gzip too)
                    data, inflater = inflater.unused_data, zlib.decompressobj(wbits=31)
                    continue
                data = inflater.unconsumed_tail
                if not data and len(piece) < STEP:  # a full step may leave output inside zlib
                    break
    except zlib.error as exc:
        raise TransientError(f"{target}: the body is not valid gzip ({exc})") from exc
    if not inflater.eof:
        raise TransientError(f"{target}: the gzip body ended before its end (a transfer cut short)")
