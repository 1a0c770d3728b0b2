"""Application logs: structlog, configured once, JSON lines when stdout is not a terminal.

Every value is scrubbed of the configured secrets before it is rendered (:mod:`ce_daemon.redact`);
tracebacks are rendered to text first so that they are scrubbed too.

When the reader of stdout goes away (``ce-daemon run … | head``, a journal stream that broke), log
lines go to /dev/null from then on, and a command that handles SIGTERM (run, demo, simulate) is sent
one: it stops as if asked to, and the ``ce-daemon`` command then exits 141 (see ``cli.main``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, BinaryIO, Literal, TextIO, cast

import orjson
import structlog

from ce_daemon import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_OUTPUT_LOST = threading.Event()


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Set up structlog for the whole process (call again on reload to change the level)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact.scrub_event,
    ]
    if use_json:
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        # _Stdout has what the loggers use of a file (write, flush), not the whole BinaryIO/TextIO.
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(
            cast(BinaryIO, _Stdout(binary=True))
        )
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()))
        factory = structlog.PrintLoggerFactory(cast(TextIO, _Stdout(binary=False)))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def output_lost() -> bool:
    """Whether a write to stdout found its reader gone."""
    return _OUTPUT_LOST.is_set()


def silence_stdout() -> None:
    """Point stdout at /dev/null, its reader being gone, so that no later write nor the flush at exit fails.

    The Python documentation's advice (the signal module's note on SIGPIPE); SIGPIPE itself stays
    ignored, as Python leaves it, so that a peer closing a socket never kills the process.
    """
    _OUTPUT_LOST.set()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


class _Stdout:
    """The file log lines are written to: stdout, until its reader goes away."""

    def __init__(self, *, binary: bool) -> None:
        self._binary = binary

    def write(self, data: Any) -> None:
        try:
            (sys.stdout.buffer if self._binary else sys.stdout).write(data)
        except BrokenPipeError:
            _reader_gone()

    def flush(self) -> None:
        try:
            (sys.stdout.buffer if self._binary else sys.stdout).flush()
        except BrokenPipeError:
            _reader_gone()


def _reader_gone() -> None:
    if _OUTPUT_LOST.is_set():
        return
    silence_stdout()
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        os.kill(os.getpid(), signal.SIGTERM)  # a long-running command stops as if asked to
