"""docs/plugins.md as written: its example plugin installs, passes the contract kit, ships through the daemon.

The two Python blocks of the page are taken as they are (so the page and this test cannot drift): the
first is the module ``acme_ce``, installed here as a throwaway distribution with the page's entry
point; the second is that plugin's own contract test, run by a plain ``pytest`` of its own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ce_daemon.registry import GROUPS, Registry
from ce_daemon.testing.distribution import write_distribution
from ce_daemon.testing.pipelines import ship_backlog

PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
PLUGIN, CONTRACT_TEST = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
ENTRY_POINT = re.search(r'^acme = "(.+)"$', PAGE.read_text(encoding="utf-8"), re.MULTILINE)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """``acme_ce`` from the page, installed as distribution ``acme-ce`` 1.0 with the page's entry point."""
    assert ENTRY_POINT is not None, "the page registers the `acme` entry point"
    return write_distribution(
        tmp_path / "site",
        "acme-ce",
        "1.0",
        {"acme_ce": PLUGIN},
        {GROUPS["log_sink"]: {"acme": ENTRY_POINT.group(1)}},
    )


def test_the_example_plugin_is_discovered_through_its_entry_point(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's entry point makes `acme` a loaded log sink of acme-ce 1.0, API version declared, no note."""
    monkeypatch.syspath_prepend(str(site))
    info = Registry.discover().get("log_sink", "acme")
    assert info is not None and info.loaded, info
    assert (info.distribution, info.version, info.api_version, info.note) == ("acme-ce", "1.0", 1, None)


async def test_the_example_contract_test_passes_under_plain_pytest(site: Path, tmp_path: Path) -> None:
    """The page's contract test, run by a plain pytest of its own (no ce-daemon tests, no asyncio): passes."""
    tests = tmp_path / "acme" / "tests"
    tests.mkdir(parents=True)
    (tests / "test_contract.py").write_text(CONTRACT_TEST, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "tests/test_contract.py", "-q", "-W", "error",
        "-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:xdist",
        cwd=tests.parent, env={**os.environ, "PYTHONPATH": str(site)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    report = output.decode()
    assert process.returncode == 0, report
    assert re.search(r"\b12 passed\b", report) and "skipped" not in report, report


async def test_the_example_plugin_ships_a_backlog_through_the_daemon(site: Path, tmp_path: Path) -> None:
    """`sink: {type: acme, url: …, token: {$env: ACME_TOKEN}}` as the page says: every record reaches ACME."""
    documented = _contract_test_module(tmp_path)
    fake = documented.FakeAcme()
    async with fake as url:
        sink = {"type": "acme", "url": f"{url}/ingest", "token": {"$env": "ACME_TOKEN"}}
        run = await ship_backlog(
            tmp_path,
            fake,
            sink,
            lambda: fake.stored,
            env={"PYTHONPATH": str(site), "ACME_TOKEN": documented.TOKEN},
            backlog=300,
        )
    assert run.exit_code == 0, run.output
    assert set(fake.stored) == set(run.ids)
    assert documented.TOKEN not in run.output


def _contract_test_module(tmp_path: Path) -> ModuleType:
    """The page's contract test, imported (for its ``FakeAcme`` and ``TOKEN``)."""
    path = tmp_path / "documented_contract_test.py"
    path.write_text(CONTRACT_TEST, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("documented_contract_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(tmp_path / "site"))  # for its `from acme_ce import AcmeSink`
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(tmp_path / "site"))
    return module
