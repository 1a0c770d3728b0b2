"""Plugins: discovery through entry points, the contract every plugin honours, `ce-daemon plugins`."""

from __future__ import annotations

import inspect
import subprocess
import sys
from importlib.metadata import EntryPoint

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from ce_daemon.plugin import LogSink, Plugin, PluginOptions
from ce_daemon.registry import BASES, GROUPS, PluginInfo, Registry, _load

REGISTRY = Registry.discover()
PLUGINS = REGISTRY.all()


def test_first_party_plugins_are_discovered_and_load() -> None:
    """Every first-party log sink registered in pyproject.toml is discovered and imports cleanly."""
    names = {p.name for p in PLUGINS if p.kind == "log_sink"}
    assert {
        "file",
        "syslog",
        "splunk_hec",
        "elasticsearch",
        "webhook",
        "azure_logs_ingestion",
        "chronicle",
        "s3",
    } <= names
    broken = [f"{p.name}: {p.error}" for p in PLUGINS if not p.loaded]
    assert not broken


@pytest.mark.parametrize("info", PLUGINS, ids=lambda p: f"{p.kind}:{p.name}")
def test_plugin_honours_the_contract(info: PluginInfo) -> None:
    """Each plugin subclasses its kind's base, owns a strict options model and implements every operation."""
    assert info.cls is not None, info.error
    base = BASES.get(info.kind, Plugin)
    assert issubclass(info.cls, base)
    assert info.cls.kind == info.kind
    options = info.cls.Options
    assert issubclass(options, PluginOptions)
    assert options.model_config.get("extra") == "forbid"
    with pytest.raises(ValidationError) as caught:
        options.model_validate({"__surely_not_an_option__": 1})
    assert any(e["type"] == "extra_forbidden" for e in caught.value.errors())
    for method in ("open", "health", "close", *(["send"] if issubclass(info.cls, LogSink) else [])):
        assert inspect.iscoroutinefunction(getattr(info.cls, method)), method
    assert not getattr(info.cls, "__abstractmethods__", None)
    assert (info.cls.__doc__ or "").strip(), "a plugin documents itself"


@pytest.mark.parametrize("info", PLUGINS, ids=lambda p: f"{p.kind}:{p.name}")
def test_plugin_secrets_are_secretstr(info: PluginInfo) -> None:
    """Options that look like secrets are SecretStr, so they never print."""
    assert info.cls is not None
    for name, field in info.cls.Options.model_fields.items():
        if any(word in name for word in ("token", "password", "secret", "api_key", "access_key")):
            assert field.annotation is not None
            assert "SecretStr" in str(field.annotation) or field.annotation is SecretStr, name


def test_plugin_that_fails_to_import_is_reported_not_raised() -> None:
    """A broken entry point is recorded with its error instead of crashing discovery."""
    ep = EntryPoint(name="broken", value="ce_daemon_no_such_module:Sink", group=GROUPS["log_sink"])
    info = _load("log_sink", ep)
    assert not info.loaded
    assert info.error is not None and "ModuleNotFoundError" in info.error


def test_entry_point_that_is_not_a_plugin_is_refused() -> None:
    """An entry point pointing at something that is not a plugin class is reported."""
    ep = EntryPoint(name="odd", value="ce_daemon.errors:Problem", group=GROUPS["log_sink"])
    info = _load("log_sink", ep)
    assert not info.loaded
    assert info.error is not None and "not a LogSink subclass" in info.error


def test_plugins_command_lists_kind_type_distribution_version_loaded() -> None:
    """`ce-daemon plugins --json` lists every plugin with kind, type, distribution, version and load state."""
    result = subprocess.run(
        [sys.executable, "-m", "ce_daemon", "plugins", "--json"], capture_output=True, text=True, check=True
    )
    rows = orjson.loads(result.stdout)
    file_row = next(r for r in rows if r["type"] == "file")
    assert file_row == {**file_row, "kind": "log_sink", "distribution": "ce-daemon", "loaded": True}
    assert file_row["version"]
    table = subprocess.run(
        [sys.executable, "-m", "ce_daemon", "plugins"], capture_output=True, text=True, check=True
    )
    assert table.stdout.splitlines()[0].split() == ["KIND", "TYPE", "DISTRIBUTION", "VERSION", "LOADED"]


def test_every_command_has_help() -> None:
    """`--help` works on every command, and `--version` prints the version."""
    for command in ("run", "check", "plugins", "status", "demo", "simulate", "dlq"):
        result = subprocess.run(
            [sys.executable, "-m", "ce_daemon", command, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, command
        assert "usage: ce-daemon" in result.stdout
    version = subprocess.run(
        [sys.executable, "-m", "ce_daemon", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("ce-daemon ")
