"""Pipeline files written as text, and the problems `ce-daemon check` finds in them.

For tests of configuration handling (the text matters: places, tags, aliases), where
:func:`~ce_daemon.testing.harness.write_pipeline` writes a pipeline from a mapping.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ce_daemon.config.load import load_pipeline
from ce_daemon.errors import ConfigError
from ce_daemon.registry import Registry

MEMORY_LIMIT = 1024**3
"""What :func:`run_bounded` allows: far above what a command needs (~60 MB resident), far below a bomb's."""


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


def billion_laughs(levels: int = 9, *, indent: str = "") -> str:
    """YAML lines defining ``l0`` … ``l<levels>``, each alias list nine times the one before (9^levels
    values once expanded), every line prefixed with ``indent`` (to nest them inside a section)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "".join(f"{indent}{line}\n" for line in lines)


def run_bounded(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ce_daemon ARGS`` in a child limited to :data:`MEMORY_LIMIT` of address space and 30 s.

    Only ``PATH`` and ``env`` are in its environment; its output is text (``stdout``, ``stderr``).
    """
    return subprocess.run(  # noqa: S603 - this interpreter running ce-daemon, arguments from the test
        [sys.executable, "-m", "ce_daemon", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=30,
        preexec_fn=_limit_memory,
        check=False,
    )


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
