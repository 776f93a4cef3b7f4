"""The book in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by selenium) follows
the navigation through every page, checks figures and math render with no console error, uses the search box, and
saves a screenshot of each page under output/test/book-screenshots/ (the test's artefacts)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from metalib.runner import find_project

pytestmark = pytest.mark.slow

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = find_project(Path(__file__).parent).output_root / "test" / "book-screenshots"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not Path(CHROMEDRIVER).exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium and chromium-driver (Debian packages; .ci/run installs them)")
        pytest.skip("no chromedriver: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _shot(driver, page: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (page.removesuffix(".html").replace("/", "__") + ".png")
    driver.save_screenshot(str(path))
    return path


def test_following_next_visits_every_page_with_figures_math_and_no_console_error(browser, book_url, built_book):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    site, sources = built_book
    browser.get(f"{book_url}/index.html")
    visited, shots = [], []
    while True:
        page = browser.current_url.removeprefix(f"{book_url}/")
        assert page not in visited, f"the navigation loops back to {page}"
        visited.append(page)
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
        if browser.find_elements(By.CSS_SELECTOR, ".math"):  # typeset by the MathJax copied into the site
            WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".MathJax, .MathJax_Display"))
            assert not browser.find_elements(By.CSS_SELECTOR, ".MathJax_Error, merror"), f"{page}: a formula failed"
        if page.startswith("notebooks/"):  # every figure decoded
            images = browser.find_elements(By.CSS_SELECTOR, "div.cell_output img")
            assert images and all(browser.execute_script("return arguments[0].naturalWidth", img) > 0
                                  for img in images), f"{page}: a figure did not load"
        errors = _errors(browser)
        assert not errors, f"{page}: console errors {errors}"
        shots.append(_shot(browser, page))
        following = browser.find_elements(By.CSS_SELECTOR, "a.right-next")
        if not following:
            break
        following[0].click()
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")
             if p.relative_to(site).parts[0] not in ("_static", "_sources")}
    unvisited = pages - set(visited) - {"genindex.html", "search.html", "py-modindex.html"}
    assert not unvisited, f"pages the navigation never reaches: {sorted(unvisited)}"
    assert {f"notebooks/{s.stem}.html" for s in sources} <= set(visited)
    print(f"{len(shots)} screenshots in {SCREENSHOTS}")


def test_the_search_box_finds_the_notebook_that_teaches_a_term(browser, book_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{book_url}/index.html")
    # the "Search" field of the sidebar opens the theme's search dialog
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "button.search-button-field") if b.is_displayed()).click()
    box = WebDriverWait(browser, 10).until(
        lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "input[name='q']") if b.is_displayed()), None))
    box.send_keys("leakage", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a"))
    hits = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a")]
    assert any("notebooks/02_task_construction.html" in h for h in hits), hits
    assert not _errors(browser)
    _shot(browser, "search.html")
