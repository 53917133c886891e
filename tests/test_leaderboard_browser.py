"""The committed leaderboard page in a real browser (Debian's chromium and chromium-driver, driven
by selenium): it loads with no console error, every image decodes, a header click sorts the rows.
A screenshot goes to $DPBENCH_ARTIFACTS (default artifacts/, not committed).

`.ci/run` installs chromium when it is missing and sets DPBENCH_BROWSER_TEST=required, so CI
cannot skip this; elsewhere it is skipped when no chromium is installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "leaderboard" / "index.html"


def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("DPBENCH_BROWSER_TEST") == "required":
            pytest.fail("chromium and chromedriver are required here (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver on this machine")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def page():
    driver = browser()
    try:
        driver.get(PAGE.as_uri())
        yield driver
    finally:
        driver.quit()


def test_the_page_loads_without_console_errors_and_every_image_decodes(page):
    from selenium.webdriver.common.by import By

    assert page.title == "dpbench leaderboard"
    images = page.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 3
    for img in images:
        assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img), (
            img.get_attribute("alt")
        )
    errors = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    artifacts = Path(os.environ.get("DPBENCH_ARTIFACTS", REPO / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    assert page.save_screenshot(str(artifacts / "leaderboard.png"))


def test_clicking_a_header_sorts_the_rows_both_ways(page):
    from selenium.webdriver.common.by import By

    table = page.find_elements(By.CSS_SELECTOR, "table.sortable")[0]
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    column = next(i for i, h in enumerate(headers) if h.text.startswith("Utility"))

    def utilities() -> list[float]:
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        return [float(r.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-sort")) for r in rows]

    before = utilities()
    assert before != sorted(before), "the first table must start unsorted by utility, or a click proves nothing"
    headers[column].click()
    ascending = utilities()
    assert ascending == sorted(before) and headers[column].get_attribute("aria-sort") == "ascending"
    headers[column].click()
    assert utilities() == sorted(before, reverse=True)
    assert ascending != before  # the click reordered the rows
