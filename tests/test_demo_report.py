"""The demo's report: a --quick run says, printed and in results.md, that its numbers mean
nothing; a full run does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyvis.nano.demo import BUDGET, QUICK_BUDGET
from polyvis.nano.demo_report import quick_notice, write_report


def _results(quick: bool) -> dict:
    return {
        "runs": [
            {"name": "clip", "scores": {"scene": 0.0, "ocr": 0.0}, "mean": 0.0},
            {"name": "vary", "scores": {"scene": 0.0, "ocr": 25.0}, "mean": 12.5},
        ],
        "machine": "test",
        "seconds": 1.0,
        "budget": dict(QUICK_BUDGET if quick else BUDGET),
        "quick": quick,
    }


@pytest.mark.parametrize("quick", [True, False])
def test_quick_report_says_it_is_a_smoke_test(tmp_path: Path, capsys, quick: bool):
    write_report(tmp_path, _results(quick), specs=[])
    printed = capsys.readouterr().out
    markdown = (tmp_path / "results.md").read_text()
    notice = quick_notice(QUICK_BUDGET)
    assert notice.startswith("SMOKE TEST (--quick): these numbers mean nothing.")
    assert f"{QUICK_BUDGET['steps']} training steps on {QUICK_BUDGET['n']} images" in notice
    assert (notice in printed) == quick and ("SMOKE TEST" in printed) == quick
    assert (f"**{notice}**" in markdown) == quick and ("SMOKE TEST" in markdown) == quick
    if quick:  # said before the table, where the zeros are
        assert printed.index(notice) < printed.index("| clip")
        assert markdown.index(notice) < markdown.index("| clip")
    assert json.loads((tmp_path / "results.json").read_text())["quick"] is quick
