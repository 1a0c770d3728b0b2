"""Reading the small files a pipeline points at: the pipeline itself, ``$file`` secrets, mapping files.

Each must be a regular file of bounded size. A FIFO would block the reader until someone writes to
it, ``/dev/zero`` never ends, a socket cannot be opened, and a directory has no content: each is
refused with a message naming what the path really is. The path is opened without blocking
(``O_NONBLOCK``) and checked with ``fstat`` on the descriptor it gave, so a path swapped between
the check and the read (or a symlink to a device) cannot slip through.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ce_daemon.errors import CeDaemonError

__all__ = ["UnusableFileError", "describe_size", "read_regular_file"]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UnusableFileError(CeDaemonError):
    """A file cannot be used: missing, unreadable, not a regular file, or larger than allowed.

    ``reason`` is the short explanation without the path (``is a FIFO (named pipe), not a regular
    file``); ``errno`` is the OS error number when the OS refused, else None.
    """

    def __init__(self, path: Path, reason: str, errno_: int | None = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.errno = errno_


def read_regular_file(path: Path, *, limit: int) -> bytes:
    """The content of ``path``, which must be a regular file of at most ``limit`` bytes.

    Raises :class:`UnusableFileError` otherwise. Never blocks on a FIFO, never reads more than
    ``limit + 1`` bytes, whatever the path turns out to be.
    """
    try:
        before = os.stat(path)  # refuse devices and FIFOs before opening them at all
    except OSError as exc:
        raise _refused(path, exc) from None
    except ValueError:
        raise UnusableFileError(path, "is not a usable path (it contains a NUL character)") from None
    _require_regular(path, before.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refused(path, exc) from None
    try:
        opened = os.fstat(fd)
        _require_regular(path, opened.st_mode)  # the path may have changed since the stat
        if opened.st_size > limit:
            raise UnusableFileError(path, f"is larger than {describe_size(limit)}, the limit for this file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _refused(path, exc) from None
    finally:
        os.close(fd)
    if size > limit:  # grew while being read
        raise UnusableFileError(path, f"is larger than {describe_size(limit)}, the limit for this file")
    return b"".join(chunks)


def describe_size(size: int) -> str:
    """``1048576`` → ``1 MiB``; for messages about limits."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise UnusableFileError(path, f"is {kind}, not a regular file")


def _refused(path: Path, exc: OSError) -> UnusableFileError:
    reason = exc.strerror or type(exc).__name__
    return UnusableFileError(path, reason[:1].lower() + reason[1:], exc.errno)
