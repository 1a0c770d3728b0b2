"""Plugins import only the core's public surface: ``ce_daemon.plugin`` and ``ce_daemon.http``.

Ruff enforces it with ``plugins/ruff.toml`` (banned-api); these tests check the same with ``ast``, so
that a module ruff's list does not name yet is caught too, and that the list names every core module.
"""

from __future__ import annotations

import ast
import pkgutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import ce_daemon

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"
PUBLIC = frozenset({"ce_daemon.plugin", "ce_daemon.http"})
TEST_KIT = "ce_daemon.testing"


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``; ``from pkg import mod`` names ``pkg.mod``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ce_daemon":
                for alias in node.names:
                    yield node.lineno, f"ce_daemon.{alias.name}"
            else:
                yield node.lineno, node.module


def allowed(module: str, path: Path) -> bool:
    """Whether a plugin module at ``path`` may import ``module``."""
    if module != "ce_daemon" and not module.startswith("ce_daemon."):
        return True
    if module in PUBLIC:
        return True
    return path.name == "fake.py" and (module == TEST_KIT or module.startswith(f"{TEST_KIT}."))


def test_plugins_import_only_the_public_surface() -> None:
    """Every module under plugins/ imports only ce_daemon.plugin and .http (a fake.py: the test kit too)."""
    modules = sorted(PLUGINS.rglob("*.py"))
    assert modules
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in modules
        for line, module in imported_modules(path.read_text(encoding="utf-8"))
        if not allowed(module, path)
    ]
    assert found == []


def test_the_check_catches_every_import_form() -> None:
    """`from ce_daemon.x import`, `import ce_daemon.x` and `from ce_daemon import x` are all seen."""
    source = (
        "from ce_daemon.errors import AuthError\nimport ce_daemon.redact\nfrom ce_daemon import spool, http\n"
    )
    sink = PLUGINS / "ce_acme" / "sink.py"
    refused = [module for _, module in imported_modules(source) if not allowed(module, sink)]
    assert refused == ["ce_daemon.errors", "ce_daemon.redact", "ce_daemon.spool"]
    assert allowed("ce_daemon.testing.fakes.base", PLUGINS / "ce_acme" / "fake.py")
    assert not allowed("ce_daemon.testing.fakes.base", sink)


def test_ruff_bans_every_core_module_outside_the_surface() -> None:
    """plugins/ruff.toml's banned-api names every core module but the public two, so ruff enforces it too."""
    config = tomllib.loads((PLUGINS / "ruff.toml").read_text(encoding="utf-8"))
    banned = set(config["lint"]["flake8-tidy-imports"]["banned-api"])
    core = {
        f"ce_daemon.{m.name}" for m in pkgutil.iter_modules(ce_daemon.__path__) if not m.name.startswith("_")
    }
    assert banned == core - PUBLIC
