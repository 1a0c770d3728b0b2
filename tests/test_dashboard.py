"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against the running demo:
each view shows what the demo's pipeline produced, the ticket list sorts and filters by its links and
form, a ticket opens with its outbox, and the risk view draws its trend chart over the days the state
holds. Screenshots of each view are saved in ``test-artifacts/dashboard/``."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ce_daemon.config.model import StateSettings
from ce_daemon.risk.store import RISK_MIGRATIONS, RiskStore
from ce_daemon.store import open_store
from ce_daemon.testing.demo import DemoProcess, running_demo

playwright = pytest.importorskip("playwright.async_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium (installed by `make test`)"
)


async def seed_days(state: Path, days: int) -> list[str]:
    """Daily averages for the ``days`` days before today, as a daemon that ran then would have left."""
    state.parent.mkdir(parents=True, exist_ok=True)
    written = []
    async with await open_store(StateSettings(path=state), RISK_MIGRATIONS) as store:
        risk = RiskStore(store)
        for back in range(days, 0, -1):
            day = (datetime.now(UTC) - timedelta(days=back)).strftime("%Y-%m-%d")
            await risk.snapshot(day, [("user", 420.0 + 15 * back, 50), ("device", 500.0, 128)], fence=None)
            written.append(day)
    return written


@pytest.fixture
async def demo(tmp_path: Path, state_backend: str) -> AsyncIterator[DemoProcess]:
    if state_backend != "sqlite":
        pytest.skip("the demo keeps its state in SQLite whatever the run's backend: one pass is enough")
    await seed_days(tmp_path / "demo" / "state" / "ce-daemon.db", 6)
    async with running_demo(tmp_path / "demo") as running:
        yield running


@pytest.mark.timeout(300)
async def test_each_view_in_chromium(demo: DemoProcess) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1000}, java_script_enabled=False)
        try:
            base = demo.url + "ui"
            # a person without a session is sent to the login form, and back after it
            await page.goto(base + "/tickets/")
            assert "/login?next=" in page.url
            await page.fill("input[name=user]", demo.user)
            await page.fill("input[name=password]", "not the password")
            await page.click("form button")
            assert "failed=1" in page.url and "wrong user or password" in await page.content()
            await page.fill("input[name=user]", demo.user)
            await page.fill("input[name=password]", demo.password)
            await page.click("form button")
            assert page.url.endswith("/ui/tickets/"), page.url
            assert await page.locator("header .who").inner_text() == f"{demo.user} (admin)"
            await page.screenshot(path=str(ARTIFACTS / "signed-in.png"), full_page=True)
            # the overview: every component with its state, each log route with its counters
            await page.goto(base + "/")
            await _until_text(page, base + "/", "alerts-cef")
            assert await page.locator("header a.here").inner_text() == "Overview"
            routes = page.locator("table").first.locator("tbody tr")
            assert await routes.count() == 3
            await page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
            # the threat view: IOCs by type and source, and a value with its sightings and share status
            await _until_text(page, base + "/threats/", "md5")
            await page.screenshot(path=str(ARTIFACTS / "threats.png"), full_page=True)
            await page.locator("main table").last.locator("tbody tr a").first.click()
            assert "Shared with" in await page.content()
            # the ticket list: sorted by a column's link, filtered by the form, drilled into
            await _until_text(page, base + "/tickets/", "high-severity")
            await page.locator("th a", has_text="destination").click()
            assert "sort=destination" in page.url
            await page.select_option("select[name=status]", "pending")
            await page.fill("input[name=rule]", "high-severity")
            await page.click("main form button")
            statuses = await page.locator("main table tbody tr td:nth-child(4)").all_inner_texts()
            rules = await page.locator("main table tbody tr td:nth-child(2)").all_inner_texts()
            assert set(rules) <= {"high-severity"} and set(statuses) <= {"pending"}
            await page.screenshot(path=str(ARTIFACTS / "tickets.png"), full_page=True)
            await page.goto(base + "/tickets/?sort=status")
            statuses = await page.locator("main table tbody tr td:nth-child(4)").all_inner_texts()
            assert statuses == sorted(statuses) and statuses
            await page.locator("main table tbody tr td a").first.click()
            assert "Outbox" in await page.content()
            await page.screenshot(path=str(ARTIFACTS / "ticket.png"), full_page=True)
            # the risk view: averages per type, and the trend chart over the seeded days
            await _until_text(page, base + "/risk/?chart=user&days=10", "device")
            chart = page.locator("svg.chart")
            assert await chart.count() == 1
            assert await chart.locator("circle").count() == 6  # one point a day
            assert "delta" in await page.content()
            await page.screenshot(path=str(ARTIFACTS / "risk.png"), full_page=True)
            await page.locator("main table").last.locator("tbody tr a").first.click()
            assert "History" in await page.content()
            await page.screenshot(path=str(ARTIFACTS / "risk-entity.png"), full_page=True)
            # logging out ends the session: the pages ask for the login again
            await page.click("header form button")
            assert "/login" in page.url
            await page.goto(base + "/risk/")
            assert "/login?next=" in page.url
        finally:
            await browser.close()


async def _until_text(page: object, url: str, text: str, timeout: float = 90.0) -> None:
    """Load ``url`` until its page shows ``text`` (the demo fills its state within seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        await page.goto(url)  # type: ignore[attr-defined]
        if text in await page.content():  # type: ignore[attr-defined]
            return
        assert time.monotonic() < deadline, f"{url} never showed {text!r}"
        await page.wait_for_timeout(1000)  # type: ignore[attr-defined]
