"""Plugins: discovery through entry points, API versions, the contract each honours, `ce-daemon plugins`."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from ce_daemon.plugin import API_VERSION
from ce_daemon.registry import GROUPS, PluginInfo, Registry, _load, api_compatibility
from ce_daemon.testing.contract import check_plugin_class
from ce_daemon.testing.distribution import write_distribution
from ce_daemon.testing.harness import write_pipeline
from ce_daemon.testing.pipelines import pipeline_config

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
    """Each plugin passes the contract kit's static check: base class, api_version, strict options, async."""
    assert info.cls is not None, info.error
    check_plugin_class(info.cls, info.kind)


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
    """`ce-daemon plugins --json` lists every plugin: kind, type, distribution, version, API, load state."""
    result = subprocess.run(
        [sys.executable, "-m", "ce_daemon", "plugins", "--json"], capture_output=True, text=True, check=True
    )
    rows = orjson.loads(result.stdout)
    file_row = next(r for r in rows if r["type"] == "file")
    assert file_row == {
        **file_row,
        "kind": "log_sink",
        "distribution": "ce-daemon",
        "api_version": API_VERSION,
        "loaded": True,
    }
    assert file_row["version"]
    table = subprocess.run(
        [sys.executable, "-m", "ce_daemon", "plugins"], capture_output=True, text=True, check=True
    )
    assert table.stdout.splitlines()[0].split() == [
        "KIND",
        "TYPE",
        "DISTRIBUTION",
        "VERSION",
        "API",
        "LOADED",
    ]


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


# -- plugin API versions -------------------------------------------------------------------------------

_VERSIONED = """
from ce_daemon.plugin import LogSink, PluginOptions, SendResult


class Options(PluginOptions):
    pass


class Sink(LogSink):
    \"\"\"A sink declaring {declaration!r}.\"\"\"

    Options = Options
    {declaration}

    async def send(self, batch):
        return SendResult()
"""
_DECLARATIONS = {
    "api_current": f"api_version = {API_VERSION}",
    "api_newer": f"api_version = {API_VERSION + 1}",
    "api_older": "api_version = 0",
    "api_none": "",
    "api_text": 'api_version = "1"',
}


@pytest.fixture
def versioned(tmp_path: Path) -> Path:
    """A distribution `api-versions` 1.0 on a folder: one log sink per api_version declaration."""
    modules = {name: _VERSIONED.format(declaration=line) for name, line in _DECLARATIONS.items()}
    entry_points = {GROUPS["log_sink"]: {name: f"{name}:Sink" for name in _DECLARATIONS}}
    return write_distribution(tmp_path / "site", "api-versions", "1.0", modules, entry_points)


def test_api_version_is_checked_when_plugins_are_discovered(
    versioned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through real entry points: the current version loads; newer, too old or not an int are refused."""
    monkeypatch.syspath_prepend(str(versioned))
    found = {p.name: p for p in Registry.discover().all() if p.distribution == "api-versions"}
    assert found["api_current"].loaded and found["api_current"].note is None
    assert found["api_current"].api_version == API_VERSION
    newer = found["api_newer"]
    assert not newer.loaded and newer.api_version == API_VERSION + 1
    assert newer.error == (
        f"written for plugin API {API_VERSION + 1}, newer than this ce-daemon's (API {API_VERSION}): "
        "upgrade ce-daemon"
    )
    assert not found["api_older"].loaded
    assert "install a release of api-versions written for it" in (found["api_older"].error or "")
    assert not found["api_text"].loaded
    assert found["api_text"].error == "api_version must be an int (the plugin API version), not '1'"


def test_plugin_declaring_no_api_version_loads_with_a_note(
    versioned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin written before API versions existed still loads, as API 1, with a note for its author."""
    monkeypatch.syspath_prepend(str(versioned))
    undeclared = Registry.discover().get("log_sink", "api_none")
    assert undeclared is not None and undeclared.loaded and undeclared.api_version is None
    assert (
        undeclared.note
        == "declares no api_version, taken as plugin API 1: its author should add `api_version = 1`"
    )


def test_an_older_supported_api_version_loads_with_a_note() -> None:
    """From the oldest supported version to the current one a plugin loads (older: a note); below, refused."""
    assert api_compatibility(3, "d", current=3, oldest=2) == (None, None)
    assert api_compatibility(2, "d", current=3, oldest=2) == (
        None,
        "written for plugin API 2; this ce-daemon provides API 3 and still runs it",
    )
    assert api_compatibility(1, "d", current=3, oldest=2)[0] == (
        "written for plugin API 1; this ce-daemon loads API 2 to 3: install a release of d written for it"
    )
    assert api_compatibility(None, "d", current=3, oldest=2)[0] == (
        "written for plugin API 1 (it declares no api_version); this ce-daemon loads API 2 to 3: "
        "install a release of d written for it"
    )


def test_plugins_command_shows_api_versions_and_why_a_plugin_is_refused(versioned: Path) -> None:
    """`ce-daemon plugins` has an API column; a refused plugin says why, a noted one says what to fix."""
    env = {"PYTHONPATH": str(versioned), "CE_DAEMON_PLUGINS": "api_current,api_newer,api_none"}
    table = _cli(["plugins"], env)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[1]: line for line in table.stdout.splitlines()[1:]}
    assert rows["api_current"].split()[2:] == ["api-versions", "1.0", str(API_VERSION), "yes"]
    assert (
        "no: written for plugin API 2, newer than this ce-daemon's (API 1): upgrade ce-daemon"
        in rows["api_newer"]
    )
    assert rows["api_none"].split()[4] == "-"
    assert "yes (note: declares no api_version" in rows["api_none"]
    listed = {row["type"]: row for row in orjson.loads(_cli(["plugins", "--json"], env).stdout)}
    assert listed["api_newer"]["api_version"] == 2 and not listed["api_newer"]["loaded"]
    assert listed["api_none"]["note"] and listed["api_none"]["api_version"] is None


def test_check_refuses_a_route_whose_plugin_is_too_new(versioned: Path, tmp_path: Path) -> None:
    """`ce-daemon check` on a route using a plugin written for a newer API: exit 78, its place and reason."""
    config = _pipeline(tmp_path, "api_newer")
    result = _cli(["check", "-c", str(config)], {"PYTHONPATH": str(versioned)})
    assert result.returncode == 78, result.stdout + result.stderr
    assert (
        "logs.routes[0].sink.type: the 'api_newer' plugin from api-versions 1.0 failed to load: "
        "written for plugin API 2, newer than this ce-daemon's (API 1): upgrade ce-daemon"
    ) in result.stderr


def test_check_notes_a_used_plugin_that_declares_no_api_version(versioned: Path, tmp_path: Path) -> None:
    """`ce-daemon check` passes a route using a plugin without api_version, and prints the note."""
    config = _pipeline(tmp_path, "api_none")
    result = _cli(["check", "-c", str(config)], {"PYTHONPATH": str(versioned)})
    assert result.returncode == 0, result.stderr
    assert (
        f"{config}: note: the 'api_none' plugin from api-versions: declares no api_version" in result.stderr
    )


def _pipeline(tmp_path: Path, sink_type: str) -> Path:
    route = {"name": "r", "tenant": "sim", "alerts": ["dlp"], "sink": {"type": sink_type}}
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline_config(tmp_path, "https://t.example", [route]))


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ce_daemon", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SIM_TOKEN": "t" * 20, **env},
    )
