"""Application logs: structlog, configured once, JSON lines when stdout is not a terminal.

Every value is scrubbed of the configured secrets before it is rendered (:mod:`ce_daemon.redact`);
tracebacks are rendered to text first so that they are scrubbed too. Records of the standard
library's ``logging`` (asyncio's "Task exception was never retrieved", aiohttp's server errors), at
warning and above, go through the same processors: one JSON line each, scrubbed and bounded, on
stdout with the rest (``logger`` names where they come from).

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
_handler: logging.Handler | None = None  # the one that formats the standard library's records


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Set up structlog, and the standard library's logging through it, for the whole process.

    Call again on reload to change the level or the format.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    rendering: list[structlog.typing.Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact.scrub_event,
    ]
    if use_json:
        # _Stdout has what the loggers use of a file (write, flush), not the whole BinaryIO/TextIO.
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(
            cast(BinaryIO, _Stdout(binary=True))
        )
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        text_renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(serializer=_json_text)
    else:
        factory = structlog.PrintLoggerFactory(cast(TextIO, _Stdout(binary=False)))
        renderer = text_renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    stamping: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamping, *rendering, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamping],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering, text_renderer],
    )
    _route_standard_logging(formatter, max(logging.WARNING, _LEVELS[level]))


def reset() -> None:
    """Undo :func:`configure`: structlog's defaults, the standard library's logging as Python sets it up."""
    global _handler  # noqa: PLW0603 - the one handler this module installs on the root logger
    structlog.reset_defaults()
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        logging.getLogger().setLevel(logging.WARNING)  # Python's default
        _handler = None


def _route_standard_logging(formatter: logging.Formatter, level: int) -> None:
    """Send the standard library's records at ``level`` and above through ``formatter`` to stdout.

    Libraries' own chatter below warning (aiohttp's debug lines, say) stays out, as it did when
    Python's last-resort handler printed warnings and errors only.
    """
    global _handler  # noqa: PLW0603 - the one handler this module installs on the root logger
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(cast(TextIO, _Stdout(binary=False)))
        root.addHandler(_handler)
    _handler.setFormatter(formatter)
    root.setLevel(level)


def _json_text(value: Any, **options: Any) -> str:
    """orjson's JSON as text: a ``logging`` formatter returns a str."""
    return orjson.dumps(value, **options).decode()


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
