"""`polyvis compare` of runs scored on different items of a family: each score shows its n, and
one line under the table names the families (item counts, or the ids of answers.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from polyvis.cli import main
from polyvis.eval.report import compare


def _run(root: Path, name: str, n: dict[str, int], ids: dict[str, list[str]] | None = None) -> Path:
    d = root / name
    d.mkdir()
    results = {"model": "m", "name": name, "scores": {"scene": 0.8, "ocr": 0.5}, "n": n}
    (d / "results.json").write_text(json.dumps(results))
    if ids is not None:  # answers.jsonl as `polyvis eval` writes it
        rows = [
            {"id": i, "family": fam, "metric": None, "prediction": "x", "score": 1.0}
            for fam, fam_ids in ids.items()
            for i in fam_ids
        ]
        (d / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_different_item_counts_show_n_and_one_line(tmp_path: Path, capsys) -> None:
    a = _run(tmp_path, "a", {"scene": 100, "ocr": 50})
    b = _run(tmp_path, "b", {"scene": 40, "ocr": 50})
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| a | 0.8000 (n=100) | 0.5000 | 0.6500 |" in printed
    assert "| b | 0.8000 (n=40) | 0.5000 | 0.6500 |" in printed  # ocr: same n, shown plain
    line = "Runs are scored on different items: scene n = 100 (a), 40 (b)."
    assert line in printed.splitlines()
    assert line in (out / "compare.md").read_text()


def test_same_n_but_different_ids_is_named(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", {"scene": 2, "ocr": 1}, {"scene": ["s1", "s2"], "ocr": ["o1"]})
    b = _run(tmp_path, "b", {"scene": 2, "ocr": 1}, {"scene": ["s1", "s3"], "ocr": ["o1"]})
    text = compare([a, b], tmp_path / "cmp")
    assert "(n=" not in text
    assert text.splitlines()[-1] == (
        "Runs are scored on different items: scene (same n, different item ids)."
    )


def test_same_items_add_nothing(tmp_path: Path) -> None:
    ids = {"scene": ["s1", "s2"], "ocr": ["o1"]}
    a = _run(tmp_path, "a", {"scene": 2, "ocr": 1}, ids)
    b = _run(tmp_path, "b", {"scene": 2, "ocr": 1}, ids)
    text = compare([a, b], tmp_path / "cmp")
    assert "(n=" not in text and "different items" not in text
    assert "different items" not in (tmp_path / "cmp" / "compare.md").read_text()


def test_the_html_comparison_shows_n_and_the_line_too(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", {"scene": 100, "ocr": 50})
    b = _run(tmp_path, "b", {"scene": 40, "ocr": 50})
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "results.html").read_text()
    assert "0.8000 (n=100)" in page and "0.8000 (n=40)" in page
    assert "Runs are scored on different items: scene n = 100 (a), 40 (b)." in page
