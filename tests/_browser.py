"""A real headless browser for the page and report tests: Debian's chromium driven by playwright.

Nothing is downloaded: playwright (pip, the `web-test` extra) drives the system's chromium
(`apt-get install chromium`). Where either is missing the tests that use `browser` skip.
POLYVIS_SCREENSHOTS=DIR makes the tests save their screenshots there (docs/images).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("POLYVIS_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is missing: pip install 'polyvis[web-test]'"
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM}: apt-get install chromium"
    return None


# Mark a browser test module with this, so that it skips before its fixtures build anything.
needs_browser = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def need_browser() -> None:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    """One chromium per module; playwright gives it a fresh temporary profile (--user-data-dir)
    and removes it on close."""
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(name="page")
def page_fixture(browser):
    """A fresh page (its own storage), 1280x800, closed after the test; fails the test on a
    JavaScript error or on anything the page's Content-Security-Policy blocked."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    def on_console(msg) -> None:
        if msg.type == "error" and "Content Security Policy" in msg.text:
            errors.append(msg.text)

    page.on("console", on_console)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def screenshot(page, name: str, height: int | None = None) -> None:
    """Save a screenshot as POLYVIS_SCREENSHOTS/NAME.png when that variable is set (the top
    `height` pixels of the page, when given, else the window)."""
    folder = os.environ.get("POLYVIS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": height}
        path = str(Path(folder) / f"{name}.png")
        page.screenshot(path=path, full_page=height is not None, clip=clip if height else None)
