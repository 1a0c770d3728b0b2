"""Types of the page splitter in C (``_pages.c``), built at install time when a C compiler is there."""

from typing_extensions import Buffer

ABI: int
SPAN_WIDTH: int

def split(body: Buffer, depth_limit: int, /) -> tuple[dict[str, bytes], bytes, int] | None:
    """The answer's other fields' texts, its records' spans and how many lack ``_id`` or ``timestamp``;
    None when the page must take the slow path."""

def join(body: Buffer, spans: Buffer, first: int, stop: int, /) -> bytes:
    """The JSON array of records ``first``..``stop - 1``, as the spool stores a frame."""
