"""Pipeline files written as text, and the problems `ce-daemon check` finds in them.

For tests of configuration handling (the text matters: places, tags, aliases), where
:func:`~ce_daemon.testing.harness.write_pipeline` writes a pipeline from a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ce_daemon.config.load import load_pipeline
from ce_daemon.errors import ConfigError
from ce_daemon.registry import Registry


def write_config(directory: Path, text: str, name: str = "pipeline.yaml") -> Path:
    """Write ``text`` as ``directory/name`` (UTF-8) and return the path."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def config_problems(path: Path, registry: Registry, environ: Mapping[str, str]) -> list[str]:
    """Every problem `check` reports for ``path``, rendered as it prints them; ``[]`` when it loads."""
    try:
        load_pipeline(path, registry, environ=environ)
    except ConfigError as exc:
        return [problem.render() for problem in exc.problems]
    return []
