"""results.html in a real headless chromium: it opens from disk with nothing to fetch, shows its
plot and thumbnails, and filters its answers by family and by "runs disagree"."""

from __future__ import annotations

from pathlib import Path

import pytest

from _browser import browser_fixture, needs_browser, page_fixture, screenshot  # noqa: F401
from _report_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    FAMILIES,
    compare_report_fixture,
    report_runs_fixture,
)

pytestmark = [needs_browser, pytest.mark.timeout(120)]

SHOWN = """rows => rows.filter(r => r.offsetParent !== null)
    .map(r => [r.dataset.family, r.dataset.disagree])"""


def test_a_report_opens_offline_and_filters(page, compare_report: Path):
    from playwright.sync_api import expect

    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(compare_report.as_uri())
    assert {u.split(":", 1)[0] for u in fetched} <= {"file", "data"}
    assert [u for u in fetched if u.startswith("file")] == [compare_report.as_uri()]

    assert page.eval_on_selector("#plot", "p => p.naturalWidth") > 300
    widths = page.eval_on_selector_all(".thumb", "ts => ts.map(t => t.naturalWidth)")
    assert widths == [64] * 18  # 6 items for each of 3 families, every image decoded
    assert page.locator("#scores tbody tr").count() == 3
    rows = page.locator("#answers tbody tr")
    expect(page.locator("#shown")).to_have_text("18 of 18 items shown")
    everything = rows.evaluate_all(SHOWN)
    assert len(everything) == 18

    page.select_option("#family", "ocr")
    shown = rows.evaluate_all(SHOWN)
    assert shown == [row for row in everything if row[0] == "ocr"] and len(shown) == 6
    expect(page.locator("#shown")).to_have_text("6 of 18 items shown")

    page.check("#disagree")
    assert rows.evaluate_all(SHOWN) == [["ocr", "1"]] * 5
    page.select_option("#family", "")
    assert rows.evaluate_all(SHOWN) == [[f, "1"] for f in FAMILIES for _ in range(5)]
    expect(page.locator("#shown")).to_have_text("15 of 18 items shown")
    screenshot(page, "report", height=1150)
    page.uncheck("#disagree")
    assert rows.evaluate_all(SHOWN) == everything
