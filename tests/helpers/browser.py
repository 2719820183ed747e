"""Headless Chromium for browser tests, driven by selenium through the system chromedriver (no network).

Use the ``browser`` fixture (``from tests.helpers.browser import browser``): it yields a selenium
``webdriver.Chrome`` whose console log is readable with :func:`console_errors`. Without Chromium the test is skipped
with a reason, except in CI (``CI`` set), where a missing browser fails: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _which(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def chromium_paths() -> tuple[str, str]:
    """(browser, chromedriver) paths; skips the test (fails it in CI) when either is absent."""
    chrome = _which("chromium", "chromium-browser", "google-chrome")
    driver = _which("chromedriver")
    if chrome and driver:
        return chrome, driver
    missing = "chromium" if not chrome else "chromedriver"
    message = f"{missing} not found: install it (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run browser tests")
    pytest.skip(message)


@pytest.fixture
def browser():
    """A fresh headless Chromium (its own profile folder) with the console log captured; closed after the test."""
    chrome, driver_path = chromium_paths()
    try:
        from selenium import webdriver
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("selenium not installed: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="visalign-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1200,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """The page's SEVERE console entries (script errors, failed loads) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    """``src`` of every ``<img>`` that did not load (naturalWidth 0 once complete); [] when all loaded."""
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.getAttribute('src').slice(0, 80));"
    )


def open_file(driver, path: Path) -> None:
    """Load a local file and wait until the document and its images have finished loading."""
    driver.get(Path(path).resolve().as_uri())
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (document.readyState === 'complete') done(); else window.addEventListener('load', () => done());"
    )


def screenshot(driver, path: Path, width: int = 1000, height: int = 700) -> Path:
    """Save a PNG of the viewport at ``width``x``height`` (for docs); returns ``path``."""
    driver.set_window_size(width, height)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return Path(path)
