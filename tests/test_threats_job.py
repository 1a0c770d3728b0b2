"""The threats job: its section, and `ce-daemon iocs import|stats|show|search` end to end on the state."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson

from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import run_cli
from ce_daemon.testing.state import state_section

LIST = """# a local block list
hxxp://evil[.]biz:80/x
EVIL.biz.
10.0.0.1
8.8.4.4
not a value
mail.corp.example.net
"""


def pipeline(tmp_path: Path, threats: dict[str, Any] | None = None) -> Path:
    body: dict[str, Any] = {"state": state_section(tmp_path / "state" / "state.db")}
    if threats is not None:
        body["threats"] = threats
    return write_pipeline(tmp_path / "pipeline.yaml", body)


async def iocs(*args: str) -> Any:
    code, out = await run_cli("iocs", *args, "--json", env={})
    assert code == 0, out
    return orjson.loads(out.splitlines()[-1])


async def test_an_imported_list_is_normalised_guarded_and_counted(tmp_path: Path) -> None:
    """Import keeps the good lines in their one spelling, counts the refused ones per reason and source."""
    config = pipeline(tmp_path, {"guards": {"documentation_domains": False}})
    listing = tmp_path / "list.txt"
    listing.write_text(LIST)
    result = await iocs("import", "-c", str(config), "--source", "local", str(listing))
    assert result["written"] == 4
    assert result["rejected"] == {"guarded": 1, "contains whitespace or control characters": 1}
    stats = await iocs("stats", "-c", str(config))
    assert sorted((c["type"], c["rows"]) for c in stats["counts"]) == [("domain", 2), ("ipv4", 1), ("url", 1)]
    assert sum(c["rows"] for c in stats["counts"]) == 4
    assert [(s["source"], s["polls"], s["rejected"]) for s in stats["sources"]] == [("local", 1, 2)]
    [shown] = (await iocs("show", "-c", str(config), "hxxp://EVIL[.]biz/x"))["iocs"]
    assert (shown["value"], shown["type"], [s["source"] for s in shown["sources"]]) == (
        "http://evil.biz/x",
        "url",
        ["local"],
    )
    found = await iocs("search", "-c", str(config), "evil", "--type", "domain")
    assert [ioc["value"] for ioc in found["iocs"]] == ["evil.biz"]


async def test_a_second_import_is_a_full_list_poll(tmp_path: Path) -> None:
    """What the list no longer holds becomes inactive; search by status finds it."""
    config = pipeline(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("evil.biz\nbad.biz\n")
    await iocs("import", "-c", str(config), "--source", "local", str(listing))
    listing.write_text("evil.biz\n")
    result = await iocs("import", "-c", str(config), "--source", "local", str(listing))
    assert (result["written"], result["unchanged"], result["deactivated"]) == (0, 1, 1)
    inactive = await iocs("search", "-c", str(config), "--status", "inactive")
    assert [ioc["value"] for ioc in inactive["iocs"]] == ["bad.biz"]


async def test_reading_without_a_state_database_creates_none(tmp_path: Path) -> None:
    """`iocs stats` before anything ran says there is nothing and leaves no database behind."""
    config = pipeline(tmp_path)
    assert await iocs("stats", "-c", str(config)) == {"iocs": []}
    assert not (tmp_path / "state" / "state.db").exists()


async def test_the_section_refuses_what_it_does_not_know_with_its_place(tmp_path: Path) -> None:
    """A source with the plugin's ``type`` beside its name (not under ``plugin:``) is refused there."""
    config = pipeline(tmp_path, {"sources": [{"name": "misp", "type": "misp"}]})
    code, out = await run_cli("check", "-c", str(config), env={})
    assert code == 78, out
    assert "threats.sources[0].type: unknown key 'type'" in out


async def test_a_bad_allowlist_entry_is_refused_with_the_reason(tmp_path: Path) -> None:
    """An allowlist value that does not normalise is a config problem that says why."""
    config = pipeline(tmp_path, {"allowlist": ["http://corp.example.net:http/"]})
    code, out = await run_cli("check", "-c", str(config), env={})
    assert code == 78, out
    assert "allowlist entry 'http://corp.example.net:http/'" in out


async def test_status_shows_the_stored_iocs(tmp_path: Path) -> None:
    """A running daemon's `status` has a threats section: active and inactive rows, active rows per type."""
    config = pipeline(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("evil.biz\n8.8.4.4\nhttp://evil.biz/x\n")
    await iocs("import", "-c", str(config), "--source", "local", str(listing))
    async with DaemonProcess(config, env={}) as daemon:
        await daemon.wait_for_event("daemon.ready")
        code, out = await run_cli("status", "-c", str(config), "--json", env={})
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    assert code == 0, out
    assert orjson.loads(out)["jobs"]["threats"] == {
        "iocs_active": 3,
        "iocs_inactive": 0,
        "iocs_domain": 1,
        "iocs_ipv4": 1,
        "iocs_url": 1,
    }


async def test_check_refuses_unknown_references_with_their_places(tmp_path: Path) -> None:
    """A rule to no destination, a source's unknown tenant, an unknown plugin: refused at their places."""
    config = pipeline(
        tmp_path,
        {
            "sources": [
                {"name": "ns", "netskope": {"tenant": "nope"}},
                {"name": "odd", "plugin": {"type": "fede", "url": "https://x.example.org"}},
            ],
            "destinations": [{"name": "edl", "plugin": {"type": "edl", "port": 8443}}],
            "sharing": [{"name": "r1", "to": "edll"}],
        },
    )
    code, out = await run_cli("check", "-c", str(config), env={})
    assert code == 78, out
    assert "threats.sources[0].netskope.tenant: no tenant named 'nope'" in out
    assert "threats.sources[1].plugin.type: unknown threat source type 'fede'" in out
    assert "did you mean 'feed'?" in out
    assert "threats.sharing[0].to: no destination named 'edll'" in out


async def test_check_warns_of_idle_destinations_and_rules(tmp_path: Path) -> None:
    """A destination no rule feeds, and a rule to a disabled one: valid, but warned about."""
    config = pipeline(
        tmp_path,
        {
            "destinations": [
                {"name": "edl", "plugin": {"type": "edl", "port": 8443}},
                {"name": "off", "enabled": False, "plugin": {"type": "edl", "port": 8444}},
            ],
            "sharing": [{"name": "r2", "to": "off"}],
        },
    )
    code, out = await run_cli("check", "-c", str(config), env={})
    assert code == 0, out
    assert "threats.sharing[0].to: warning: destination 'off' is disabled" in out
    assert "threats.destinations[0]: warning: no sharing rule feeds destination 'edl'" in out
