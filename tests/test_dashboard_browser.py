"""The dashboard in a real headless browser (Debian's /usr/bin/chromium driven by Playwright)
against a real run: `fleet serve`, upload clients with known outcomes and heartbeats, and a
`fleet monitor` process. The page must show the numbers the test knows.

FLEET_DASHBOARD_SCREENSHOT=docs/dashboard.png also saves a screenshot (after a few more upload
waves, so the plots have a history to draw).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from monitor_helpers import LEARNER_METRICS, REPO, ROBOTS, SERVED_VERSION, expected, \
    monitored_fleet

pytestmark = pytest.mark.slow  # a fleet, a monitor and a browser: about 20 s

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("FLEET_DASHBOARD_SCREENSHOT")

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e .[dev]")
if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(f"{CHROMIUM} is missing: scripts/bootstrap.sh installs it when run as root "
                f"(apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (CI must install it)"
    waves = 6 if SCREENSHOT else 0
    with monitored_fleet(tmp_path_factory.mktemp("dashboard"), waves=waves) as fleet, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 720})
            tab.goto(fleet.monitor.url + "/", wait_until="load")
            tab.wait_for_selector('tr[data-robot="arm4"] .state.offline', timeout=15_000)
            tab.fleet = fleet
            yield tab
        finally:
            browser.close()


def _cells(tab, robot_id: str) -> dict[str, str]:
    return tab.eval_on_selector_all(
        f'tr[data-robot="{robot_id}"] td',
        "tds => Object.fromEntries(tds.map(td => [td.dataset.field, td.innerText.trim()]))")


def test_the_table_shows_the_known_numbers(page):
    rows = page.eval_on_selector_all("#robots tbody tr", "trs => trs.map(t => t.dataset.robot)")
    assert rows == [r.robot_id for r in ROBOTS]
    states = {"collecting": "collecting", "estopped": "e-stopped", "idle": "idle",
              None: "offline"}
    for robot in ROBOTS:
        cells, want = _cells(page, robot.robot_id), expected(robot)
        if SCREENSHOT and robot.robot_id == "arm1":
            continue  # the screenshot run uploads more waves than `expected` counts
        assert cells["state"] == states[robot.state], robot
        assert cells["policy_version"] == f"v{robot.policy_version}"
        if want["attempts"]:
            labelled = want["successes"] + want["failures"]
            assert cells["attempts"] == str(want["attempts"]), robot
            assert cells["successes"] == str(want["successes"])
            assert cells["success_rate"] == f"{100 * want['successes'] / labelled:.1f}%"
        else:
            assert cells["attempts"] == "—" and cells["success_rate"] == "—"
    assert _cells(page, "arm2")["spool"] == "5 (120.0 KB)"
    assert _cells(page, "arm3")["spool"] == "0 (0 B)"
    assert _cells(page, "arm4")["spool"] == "—"  # it never reported a status
    assert (_cells(page, "arm3")["host"], _cells(page, "arm2")["host"]) == \
        ("ray-node-5f2c9a", "—")
    assert _cells(page, "arm2")["rate_5m"] == "0"
    assert int(_cells(page, "arm1")["rate_5m"].replace(",", "")) > 0


def test_policy_learner_and_plots_are_drawn(page):
    assert page.inner_text('#policy [data-field="served_version"]') == f"v{SERVED_VERSION}"
    assert page.inner_text('#learner [data-field="learner_version"]') == f"v{SERVED_VERSION}"
    assert page.inner_text('#learner [data-field="metric_val_auc"]') == \
        f"{LEARNER_METRICS['val_auc']:.4f}"
    # arm1 has a rate line (several polls since its late batch); every robot with stored
    # attempts has a legend entry, arm3 (nothing stored, so no history) none
    page.wait_for_selector('#plot-rate path[data-robot="arm1"]', timeout=10_000)
    legend = page.inner_text("#legend-rate").split()
    assert legend == [r.robot_id for r in ROBOTS if r.outcomes]
    assert "NOT ANSWERING" not in page.inner_text("#server")
    if SCREENSHOT:
        out = Path(SCREENSHOT)
        out = out if out.is_absolute() else REPO / out
        page.wait_for_timeout(2500)  # one more refresh: the newest points on the plots
        page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 10_000


def test_the_page_is_self_contained(page):
    """No request leaves the monitor (no CDN): every resource the page loaded is its own."""
    urls = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    base = page.fleet.monitor.url
    assert urls and all(u.startswith(base) for u in urls), urls
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
