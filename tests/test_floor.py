"""The leaderboard's floor (polyvis.eval.floor): one constant answer per question type, chosen
on val and only on val, scored on test with each row's own metric, and said in leaderboard.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyvis.errors import DataError
from polyvis.eval.floor import choose_constants, floor_answers, floor_stats
from polyvis.eval.leaderboard import leaderboard_markdown


def _answers(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """rows of (family, metric, question type, reference)."""
    lines = [
        {"id": f"{fam}-x-{i:06d}-{kind}", "family": fam, "metric": metric, "reference": ref,
         "prediction": "?", "score": 0.0}
        for i, (fam, metric, kind, ref) in enumerate(rows)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_constants_are_chosen_on_val_and_test_only_scores_them(tmp_path: Path):
    val = _answers(tmp_path / "val.jsonl", [
        ("scene", "exact_match", "count", "1"), ("scene", "exact_match", "count", "1"),
        ("scene", "exact_match", "count", "2"), ("scene", "exact_match", "relation", "no"),
        ("latex", "edit_similarity", "transcribe", "x^{2}"),
        ("latex", "edit_similarity", "transcribe", "x^{3}"),
        ("latex", "edit_similarity", "transcribe", "\\frac{a}{b}"),
    ])  # fmt: skip
    # test alone would choose "2" for count: the floor keeps val's "1"
    test = _answers(tmp_path / "test.jsonl", [
        ("scene", "exact_match", "count", "2"), ("scene", "exact_match", "count", "2"),
        ("scene", "exact_match", "count", "1"), ("scene", "exact_match", "relation", "no"),
        ("latex", "edit_similarity", "transcribe", "x^{4}"),
    ])  # fmt: skip
    constants = choose_constants([json.loads(x) for x in val.read_text().splitlines()])
    assert constants[("scene", "exact_match", "count")] == "1"
    assert constants[("scene", "exact_match", "relation")] == "no"
    assert constants[("scene", "exact_match", "*")] == "1"  # the family's, for an unseen type
    # x^{2} and x^{3} score alike against the three; a tie goes to the first in sorted order
    assert constants[("latex", "edit_similarity", "transcribe")] == "x^{2}"
    rows = [
        json.loads(x) for x in floor_answers(val, test, tmp_path / "f").read_text().splitlines()
    ]
    assert [r["prediction"] for r in rows] == ["1", "1", "1", "no", "x^{2}"]
    assert [r["score"] for r in rows] == pytest.approx([0, 0, 1, 1, 0.8])
    stats = floor_stats(val, test, tmp_path / "f")
    assert stats["families"]["scene"]["mean"] == pytest.approx(50.0)
    assert stats["families"]["latex"]["mean"] == pytest.approx(80.0)
    assert stats["mean"]["mean"] == pytest.approx(65.0)
    assert stats["constants"] == {"latex/transcribe": "x^{2}", "scene/count": "1",
                                  "scene/relation": "no"}  # fmt: skip
    # leaderboard.md says it under the table
    doc = {"command": "c", "date": "d", "machine": "m", "wall_seconds": 1.0, "cells": [],
           "comparisons": [], "floor": stats}  # fmt: skip
    assert "**Floor.** One constant answer per question type, chosen on val, scores **65.0 [" in (
        leaderboard_markdown(doc)
    )


def test_a_test_family_that_val_lacks_is_named_with_its_record(tmp_path: Path):
    val = _answers(tmp_path / "val.jsonl", [("scene", "exact_match", "count", "1")])
    test = _answers(tmp_path / "test.jsonl", [("chart", "relaxed_accuracy", "lookup", "7")])
    with pytest.raises(DataError, match=r"record chart-x-000000-lookup: val .* has no chart "):
        floor_answers(val, test, tmp_path / "f")
    with pytest.raises(DataError, match=r"nowhere\.jsonl: cannot read the answers"):
        floor_answers(tmp_path / "nowhere.jsonl", test, tmp_path / "f")
