"""The report in a real browser: Debian's Chromium, headless, driven by selenium through
chromedriver. The page loads from file:// with no console message at all (no error, no
blocked fetch: it fetches nothing), every curve is drawn with a size, and the screenshot is
not blank. Skipped, saying why, where the browser is not installed (`apt-get install chromium
chromium-driver`)."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pytest

from jaxtune import report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# No sandbox (containers run as root), no GPU, and nothing that calls home at start.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1300,2200")


@pytest.fixture
def browser(tmp_path):
  webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
  for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
    if not Path(path).is_file():
      pytest.skip(f"{path} not found: the headless-browser check needs Debian's {package} "
                  f"(apt-get install chromium chromium-driver)")
  from selenium.webdriver.chrome.service import Service

  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
    opts.add_argument(flag)
  opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
  try:
    yield driver
  finally:
    driver.quit()


def test_report_renders_in_chromium_without_console_messages(browser, lm_run, cls_run, tmp_path):
  from PIL import Image

  workdir, _ = cls_run
  page, runs = report.write(workdir, [lm_run], out=str(tmp_path / "report.html"))
  browser.get(Path(page).as_uri())
  assert browser.title == f"Run comparison: {runs[0].name}, {runs[1].name}"
  assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

  widths = browser.execute_script(
    "return [...document.querySelectorAll('svg.chart g.series')].map(g => g.getBBox().width)")
  assert len(widths) > 10 and all(w > 0 for w in widths), widths
  cells = browser.execute_script(
    "return [...document.querySelectorAll('td.cell')].map(td => getComputedStyle(td).backgroundColor)")
  assert len(cells) == 9 and len(set(cells)) > 2  # shaded by share of the row

  shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
  colors = shot.getcolors(maxcolors=1 << 20)
  assert shot.size[0] >= 1000 and len(colors) > 50, "the screenshot is blank"
  white = max(n for n, c in colors if c == (255, 255, 255)) / (shot.size[0] * shot.size[1])
  assert white < 0.97, f"{white:.1%} of the screenshot is white"
  assert browser.get_log("browser") == []  # all since the page loaded: none at any level

  # The check itself sees what it must not find: a script error and a failed fetch.
  control = tmp_path / "control.html"
  control.write_text("<!doctype html><title>x</title><script>no_such()</script><img src='x.png'>")
  browser.get(control.as_uri())
  seen = []
  for _ in range(20):  # the log reaches chromedriver a moment after the page
    seen += browser.get_log("browser")
    if len(seen) >= 2:
      break
    time.sleep(0.1)
  assert {e["source"] for e in seen} == {"javascript", "network"}, seen
