"""Application logs: structlog, configured once, JSON lines when stdout is not a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Set up structlog for the whole process (call again on reload to change the level)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory()
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()))
        factory = structlog.PrintLoggerFactory()
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
