"""The job contract: the core names no job, and a job installed as its own distribution plugs in whole.

The second job, `beacon`, is the minimal job of docs/design.md ("Jobs"): it is installed through a
real `ce_daemon.jobs` entry point, and its section, migrations, component, status and CLI command are
each exercised through the same paths `logs` takes.
"""

from __future__ import annotations

import ast
import signal
import sqlite3
from pathlib import Path

import pytest

import ce_daemon
from ce_daemon.config.load import load_pipeline
from ce_daemon.errors import ConfigError
from ce_daemon.jobs import API_VERSION, ENTRY_POINTS, Jobs
from ce_daemon.registry import Registry
from ce_daemon.testing.distribution import write_distribution
from ce_daemon.testing.harness import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import daemon_status, run_cli

BEACON_JOB = r'''
"""A minimal job: each beacon appends its message to a file, every `every` seconds."""

import asyncio
import contextlib
from pathlib import Path

from ce_daemon.config.load import digest, unique_names
from ce_daemon.config.values import Duration, Name, Strict
from ce_daemon.jobs import Job
from ce_daemon.keys import ComponentKey
from ce_daemon.pipeline import ComponentSpec
from ce_daemon.store import Migration
from ce_daemon.supervisor import Component


class Beacon(Strict):
    name: Name
    path: Path
    message: str = "tick"
    every: Duration = 0.05


class Beacons(Strict):
    beacons: list[Beacon] = []


class BeaconComponent(Component):
    kind = "beacon"

    def __init__(self, name, fingerprint, beacon):
        super().__init__(name, fingerprint)
        self.beacon = beacon

    async def run(self, stopping):
        self.status.ok()
        while not stopping.is_set():
            with self.beacon.path.open("a") as out:
                out.write(self.beacon.message + "\n")
            self.status.count("written")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.beacon.every):
                    await stopping.wait()


class BeaconJob(Job[Beacons, Beacons]):
    name = "beacon"
    section = Beacons
    migrations = (Migration("beacon", 1, ("CREATE TABLE beacon_sent (name TEXT PRIMARY KEY)",)),)

    def resolve(self, resolution, section):
        resolution.problems.extend(unique_names(resolution.source, ("beacon", "beacons")))
        return section

    def plan(self, loaded, resolved, runtime):
        for index, beacon in enumerate(resolved.beacons):
            key = ComponentKey("beacon", beacon.name)
            fingerprint = digest(beacon.model_dump(mode="json"))
            yield ComponentSpec(
                key=key,
                fingerprint=fingerprint,
                stage="other",
                build=lambda b=beacon, k=key, f=fingerprint: BeaconComponent(str(k), f, b),
                place=("beacon", "beacons", index),
            )

    def summary(self, resolved):
        return f"{len(resolved.beacons)} beacon(s)"

    async def status(self, loaded, resolved, runtime):
        return {"beacons": len(resolved.beacons)}

    def add_commands(self, commands):
        command = commands.add_parser("beacons", help="list the beacons of a pipeline file")
        command.add_argument("-c", "--config", type=Path, required=True)
        command.set_defaults(func=list_beacons)


def list_beacons(args):
    from ce_daemon.config.load import load_pipeline
    from ce_daemon.registry import Registry

    loaded = load_pipeline(args.config, Registry.discover())
    for beacon in loaded.resolved(BeaconJob).beacons:
        print(f"{beacon.name}: {beacon.message!r} every {beacon.every:g}s into {beacon.path}")
    return 0
'''


@pytest.fixture
def beacon_site(tmp_path: Path) -> Path:
    """The `ce-beacon` 1.0 distribution, installed on a folder: one job registered as `beacon`."""
    entry_points = {ENTRY_POINTS: {"beacon": "ce_beacon:BeaconJob"}}
    return write_distribution(tmp_path / "site", "ce-beacon", "1.0", {"ce_beacon": BEACON_JOB}, entry_points)


def _pipeline(tmp_path: Path, beacons: list[dict[str, object]]) -> Path:
    pipeline = {
        "version": 1,
        "state": {"path": str(tmp_path / "state" / "db.sqlite")},
        "health": {"interval": "1h", "syslog": {"enabled": False}},
        "shutdown_grace": "5s",
        "beacon": {"beacons": beacons},
    }
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline)


def _core_modules() -> list[Path]:
    root = Path(ce_daemon.__file__).parent
    jobs_and_kit = (root / "logs", root / "testing")
    return [p for p in sorted(root.rglob("*.py")) if not any(p.is_relative_to(d) for d in jobs_and_kit)]


@pytest.mark.parametrize(
    "module", _core_modules(), ids=lambda p: str(p.relative_to(Path(ce_daemon.__file__).parent))
)
def test_the_core_imports_no_job(module: Path) -> None:
    """No module of the core (ce_daemon/ but logs/ and testing/) imports `ce_daemon.logs`, even lazily."""
    tree = ast.parse(module.read_text(encoding="utf-8"), filename=str(module))
    named: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            named.append(node.module)
            named.extend(f"{node.module}.{alias.name}" for alias in node.names)
    assert not [n for n in named if n == "ce_daemon.logs" or n.startswith("ce_daemon.logs.")], module


def test_logs_is_a_job_found_through_its_entry_point() -> None:
    """`logs` is found like any job: through its entry point, loaded, with its dead-letter table."""
    [logs] = [info for info in Jobs.discover().all() if info.name == "logs"]
    assert logs.job is not None and logs.error is None and logs.distribution == "ce-daemon"
    assert {m.component for m in logs.job.migrations} == {"deadletters", "log_mutes"}


def test_a_job_that_fails_to_import_is_reported_where_its_section_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose module raises on import: its section is refused, naming job, distribution and error."""
    site = write_distribution(
        tmp_path / "site", "ce-broken", "2.0", {"ce_broken": "raise ImportError('no such thing')"},
        {ENTRY_POINTS: {"broken": "ce_broken:Job"}},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    path = write_pipeline(tmp_path / "pipeline.yaml", {"version": 1, "broken": {"x": 1}})
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, Registry.discover())
    assert caught.value.render().splitlines() == [
        f"{path}:2:1: broken: the 'broken' job from ce-broken 2.0 failed to load: ImportError: no such thing"
    ]


def test_a_job_written_for_a_newer_contract_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job contract is versioned like the plugin API: a job newer than the core does not load."""
    source = BEACON_JOB + "\nBeaconJob.api_version = 99\n"
    entry_points = {ENTRY_POINTS: {"beacon": "ce_beacon_next:BeaconJob"}}
    site = write_distribution(tmp_path / "site", "ce-beacon", "2.0", {"ce_beacon_next": source}, entry_points)
    monkeypatch.syspath_prepend(str(site))
    [info] = [info for info in Jobs.discover().all() if info.name == "beacon"]
    assert info.job is None
    assert info.error == (
        f"written for plugin API 99, newer than this ce-daemon's (API {API_VERSION}): upgrade ce-daemon"
    )


def test_a_jobs_section_is_validated_with_places_and_hints(
    tmp_path: Path, beacon_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's model and resolution report at file:line:col; an unknown section names the nearest job."""
    monkeypatch.syspath_prepend(str(beacon_site))
    beacons = [
        {"name": "a", "path": "a.txt", "every": "soon"},
        {"name": "a", "path": "b.txt", "mesage": "hi"},
    ]
    path = _pipeline(tmp_path, beacons)
    with path.open("a", encoding="utf-8") as out:
        out.write("beacons: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, Registry.discover())
    found = caught.value.render().splitlines()
    assert any(
        f"{path}:13:12: beacon.beacons[0].every: Value error, a duration is a number of seconds" in p
        for p in found
    ), found
    assert found[1:] == [
        f"{path}:14:11: beacon.beacons[1].name: the name 'a' is used twice",
        f"{path}:16:5: beacon.beacons[1].mesage: unknown key 'mesage'",
        "    Hint: did you mean 'message'?",
        f"{path}:17:1: beacons: unknown key 'beacons'",
        "    Hint: did you mean 'beacon'?",
    ]


async def test_a_job_runs_reloads_shows_its_status_and_its_command(tmp_path: Path, beacon_site: Path) -> None:
    """Through a real daemon: the job's table is created, its component runs, a changed beacon is rebuilt
    on reload while the unchanged one is kept, `status` shows its section, and `beacons` is a command."""
    env = {"PYTHONPATH": str(beacon_site)}
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    path = _pipeline(tmp_path, [{"name": "a", "path": str(a)}, {"name": "b", "path": str(b)}])
    async with DaemonProcess(path, env=env) as daemon:
        ready = await daemon.wait_for_event("daemon.ready")
        assert ready["generation"] == 1
        snapshot = await daemon_status(path, env=env)
        assert snapshot["jobs"]["beacon"] == {"beacons": 2}
        assert {c["name"] for c in snapshot["components"]} == {"beacon:a", "beacon:b"}
        code, out = await run_cli("status", "-c", str(path), env=env)
        assert code == 0 and "  beacon      beacons=2" in out.splitlines(), out
        _pipeline(tmp_path, [{"name": "a", "path": str(a), "message": "tock"}, {"name": "b", "path": str(b)}])
        daemon.signal(signal.SIGHUP)
        applied = await daemon.wait_for_event("daemon.reload_applied")
        assert (applied["kept"], applied["started"], applied["stopped"]) == (1, 1, 1)
        code, out = await run_cli("beacons", "-c", str(path), env=env)
        assert code == 0, out
        assert f"a: 'tock' every 0.05s into {a}" in out.splitlines()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    assert "tock" in a.read_text(encoding="utf-8").splitlines()
    assert set(b.read_text(encoding="utf-8").splitlines()) == {"tick"}
    with sqlite3.connect(tmp_path / "state" / "db.sqlite") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"beacon_sent", "dead_letters"} <= tables


@pytest.mark.parametrize(
    ("commands", "reason"),
    [
        ("    raise RuntimeError('no commands today')", "RuntimeError: no commands today"),
        ("    commands.add_parser('check')", "command 'check' already exists"),
    ],
    ids=["raises", "collides"],
)
async def test_a_job_whose_commands_fail_leaves_the_core_commands_working(
    tmp_path: Path, commands: str, reason: str
) -> None:
    """A job's add_commands that raises or takes a core command's name: told on stderr, `check` still runs."""
    source = (
        BEACON_JOB.replace(
            "def list_beacons(args):",
            f"def broken_commands(self, commands):\n{commands}\n\n\ndef list_beacons(args):",
        )
        + "\nBeaconJob.add_commands = broken_commands\n"
    )
    site = write_distribution(
        tmp_path / "site", "ce-beacon", "3.0", {"ce_beacon_broken": source},
        {ENTRY_POINTS: {"beacon": "ce_beacon_broken:BeaconJob"}},
    )  # fmt: skip
    path = _pipeline(tmp_path, [{"name": "a", "path": str(tmp_path / "a.txt")}])
    code, out = await run_cli("check", "-c", str(path), env={"PYTHONPATH": str(site)})
    assert code == 0, out
    assert f"the 'beacon' job's commands are left out: {reason}" in out
    code, out = await run_cli("beacons", "-c", str(path), env={"PYTHONPATH": str(site)})
    assert code == 2 and "invalid choice: 'beacons'" in out, out
