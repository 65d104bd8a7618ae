"""Darkboard in a real browser: headless Chromium driven by Selenium (chromedriver).

Needs /usr/bin/chromium and /usr/bin/chromedriver (``scripts/install_browser.sh``) and the ``selenium`` package;
skips with the reason otherwise. A screenshot of the dashboard (fixture runs, after a live append and a new run)
is written into the test's tmp dir and copied to ``$PYDARKNET_SCREENSHOT_DIR/darkboard.png``, by default
``build/screenshots/darkboard.png`` in the checkout (``build/`` is git-ignored), where it survives the run.
"""
import os
import shutil
import time
from pathlib import Path

import pytest

from board_fixtures.runs import write_demo, write_metrics_run
from pydarknet.board.export import export_html
from pydarknet.board.server import make_server

CHROMIUM = os.environ.get("PYDARKNET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PYDARKNET_CHROMEDRIVER", "/usr/bin/chromedriver")
RUNS = ["reference-tiny", "yolov3-giou", "yolov3-mse"]

pytestmark = pytest.mark.browser

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"browser tests need {CHROMIUM} and {CHROMEDRIVER} (run scripts/install_browser.sh)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need the selenium package")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


REPO = Path(__file__).resolve().parents[1]


def stable_screenshot_path() -> Path:
    folder = os.environ.get("PYDARKNET_SCREENSHOT_DIR")
    return (Path(folder) if folder else REPO / "build" / "screenshots") / "darkboard.png"


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1600,2200", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def board(tmp_path):
    root = tmp_path / "backup"
    write_demo(root)
    httpd = make_server(root, port=0, poll_interval=0.2).start_background()
    yield httpd
    httpd.close()


def wait(driver, predicate, timeout=30, message=""):
    # the page re-renders its run list when runs change: an element may go stale between two polls
    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: predicate(d), message)


def click(driver, css):
    """Click the element matching ``css`` (looked up and clicked in one step, so it cannot go stale)."""
    wait(driver, lambda d: d.execute_script(
        "const el = document.querySelector(arguments[0]); if (el) el.click(); return !!el;", css),
        message=f"nothing to click at {css}")


# The number of painted (non-transparent) pixels of each chart canvas.
PAINTED = """
return Array.from(document.querySelectorAll('#charts .chart')).map(box => {
  const c = box.querySelector('canvas');
  if (!c || box.querySelector('.plot').hidden) return [box.id, 0];
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
  return [box.id, n];
});
"""


# Whether the loss chart has a value for series arguments[0] at iteration arguments[1].
NEW_POINT_CHARTED = """
const u = darkboard.plots.loss.u;
const i = u.data[0].indexOf(arguments[1]);
const s = u.series.findIndex(s => s.label === arguments[0]);
return i >= 0 && s > 0 && u.data[s][i] != null;
"""


def painted(driver) -> dict:
    return dict(driver.execute_script(PAINTED))


def legend_text(driver, chart="loss") -> str:
    return driver.execute_script("const el = document.querySelector(`#chart-${arguments[0]} .u-legend`);"
                                 " return el ? el.innerText : '';", chart)


def run_attr(driver, run, attr):
    """An attribute of the run's entry in the run list (read in one step)."""
    return driver.execute_script("const el = document.querySelector(`#runs-panel li.run[data-run=\"${arguments[0]}\"]`);"
                                 " return el && el.getAttribute(arguments[1]);", run, attr)


def severe_console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]


def test_dashboard_renders_updates_hides(board, browser, tmp_path):
    root = board.board.root
    browser.get(board.url + "/")
    wait(browser, lambda d: all(n > 500 for n in painted(d).values()) and len(painted(d)) == 8,
         message="charts not drawn")
    charts = painted(browser)
    assert set(charts) == {f"chart-{c}" for c in ("loss", "iou", "giou", "losses", "share", "lr", "ips", "map")}
    for run in RUNS:  # the legends list the runs
        assert run in legend_text(browser, "loss")
    assert "yolov3-giou iou" in legend_text(browser, "map") and "yolov3-giou giou" in legend_text(browser, "map")
    assert "reference-tiny layer 1" in legend_text(browser, "iou")
    assert "yolov3-mse" in legend_text(browser, "ips") and "reference-tiny" not in legend_text(browser, "ips")
    assert run_attr(browser, "yolov3-giou", "data-last") == "1200"

    # live update: append to a run while the page is open; the page must not reload
    browser.execute_script("window.__notReloaded = true;")
    polls = int(browser.find_element(By.ID, "status").get_attribute("data-polls"))
    write_metrics_run(root / "yolov3-giou", range(1201, 1401), append=True)
    wait(browser, lambda d: run_attr(d, "yolov3-giou", "data-last") == "1400",
         message="appended iterations did not show up")
    assert browser.execute_script("return window.__notReloaded === true;")
    assert int(browser.find_element(By.ID, "status").get_attribute("data-polls")) > polls
    assert int(run_attr(browser, "yolov3-giou", "data-points")) == 1400
    assert browser.execute_script(NEW_POINT_CHARTED, "yolov3-giou avg loss", 1400)

    # a run that appears while the page is open
    write_metrics_run(root / "late-run", range(1, 50))
    wait(browser, lambda d: "late-run" in legend_text(d), message="new run did not appear")

    shot = tmp_path / "darkboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    stable = stable_screenshot_path()
    stable.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, stable)

    # hide: the button writes _HIDE, the run leaves the charts and moves to the hidden list
    click(browser, '#runs li.run[data-run="yolov3-mse"] button.hide')
    wait(browser, lambda d: "yolov3-mse" not in legend_text(d), message="hidden run still charted")
    assert (root / "yolov3-mse" / "_HIDE").exists()
    assert len(browser.find_elements(By.CSS_SELECTOR, '#hidden-runs li.run[data-run="yolov3-mse"]')) == 1
    assert browser.find_elements(By.CSS_SELECTOR, '#runs li.run[data-run="yolov3-mse"]') == []
    # unhide restores it
    click(browser, '#hidden-runs li.run[data-run="yolov3-mse"] button.unhide')
    wait(browser, lambda d: "yolov3-mse" in legend_text(d), message="unhidden run not back")
    assert not (root / "yolov3-mse" / "_HIDE").exists()
    # a _HIDE file made by hand is honoured too
    (root / "reference-tiny" / "_HIDE").touch()
    wait(browser, lambda d: "reference-tiny" not in legend_text(d), message="_HIDE file ignored")
    assert severe_console_errors(browser) == []


def test_controls_smoothing_and_axis_limits(board, browser):
    browser.get(board.url + "/")
    wait(browser, lambda d: painted(d).get("chart-loss", 0) > 500)
    before = painted(browser)["chart-loss"]
    slider = browser.find_element(By.ID, "smoothing")
    browser.execute_script("arguments[0].value = 50; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert browser.find_element(By.ID, "smoothing-value").text == "50"
    wait(browser, lambda d: painted(d)["chart-loss"] != before, message="smoothing changed nothing")
    # x limits: typed limits become the scale of every chart
    for field, value in (("xmin", "100"), ("xmax", "300")):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'));", el)
    scale = "return [darkboard.plots[arguments[0]].u.scales[arguments[1]].min, " \
            "darkboard.plots[arguments[0]].u.scales[arguments[1]].max];"
    for chart in ("loss", "iou", "map"):
        assert browser.execute_script(scale, chart, "x") == [100, 300]
    y_max = browser.find_element(By.CSS_SELECTOR, '#chart-loss input[data-lim="max"]')
    y_max.send_keys("5")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'));", y_max)
    assert browser.execute_script(scale, "loss", "y")[1] == 5
    assert browser.execute_script(scale, "iou", "y")[1] != 5
    browser.find_element(By.ID, "reset-x").click()
    assert browser.find_element(By.ID, "xmin").get_attribute("value") == ""
    assert browser.execute_script(scale, "loss", "x")[1] >= 1200
    assert severe_console_errors(browser) == []


def test_exported_report_renders_offline(tmp_path, browser):
    root = tmp_path / "backup"
    write_demo(root)
    (root / "yolov3-mse" / "_HIDE").touch()
    report = export_html(root, tmp_path / "report.html")
    browser.get(report.as_uri())
    wait(browser, lambda d: painted(d).get("chart-loss", 0) > 500, message="report charts not drawn")
    text = legend_text(browser)
    assert "yolov3-giou" in text and "reference-tiny" in text and "yolov3-mse" not in text
    assert browser.find_elements(By.CSS_SELECTOR, "button.hide") == []  # a report is read-only
    assert severe_console_errors(browser) == []
