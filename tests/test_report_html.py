"""results.html: one self-contained file with the table, the plot, a sample of every run's
answers per family (thumbnails, right or wrong) and, for ablations, confidence intervals."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from _report_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    FAMILIES,
    ROW,
    RUNS,
    compare_report_fixture,
    disagree,
    prediction,
    report_runs_fixture,
)
from polyvis.cli import main
from polyvis.eval.html import Table, write_ablation_html, write_html_report
from polyvis.eval.html_assets import CSP
from polyvis.eval.html_tables import t975


def _decode(uri: str) -> bytes:
    head, _, data = uri.partition(",")
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return base64.b64decode(data, validate=True)


def test_the_report_loads_nothing_and_embeds_the_plot(compare_report: Path):
    page = compare_report.read_text(encoding="utf-8")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert "default-src 'none'" in CSP
    outside_images = re.sub(r'"data:image/[^"]*"', '""', page)
    assert re.search(r"https?:|//[a-z]", outside_images, re.IGNORECASE) is None
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert not re.search(r"<(link|iframe|object|embed)\b", page)
    plot = re.search(r'<img id="plot"[^>]*src="([^"]*)"', page).group(1)
    assert _decode(plot) == (compare_report.parent / "compare.png").read_bytes()


def test_each_family_shows_disagreements_first_with_every_runs_answer(
    compare_report: Path, report_runs: dict
):
    page = compare_report.read_text(encoding="utf-8")
    rows = ROW.findall(page)
    by_id = {
        rec["id"]: (fam, i) for fam in FAMILIES for i, rec in enumerate(report_runs["records"][fam])
    }
    seen: dict[str, list[int]] = {}
    for family, flag, cells in rows:
        item_id = re.search(r"<small>([^<]*)</small>", cells).group(1)
        fam, i = by_id[item_id]
        assert family == fam and flag == str(int(disagree(i)))
        seen.setdefault(fam, []).append(i)
        answers = re.findall(r'<td class="(right|wrong)">(.*?)<span class="mark">(.) ', cells, re.S)
        reference = report_runs["records"][fam][i]["conversations"][-1]["value"]
        expected = [
            ("right", reference, "\u2713")
            if RUNS[r](i)
            else ("wrong", f"{r}&#x27;s guess {i}", "\u2717")
            for r in RUNS
        ]
        assert answers == expected  # one column per run, in order
    # Per family, 6 of the 10 items: the 5 disagreements (2, 3, 4, 8, 9), then the first other.
    ranked = [i for i in range(10) if disagree(i)] + [i for i in range(10) if not disagree(i)]
    assert seen == {fam: [2, 3, 4, 8, 9, 0] for fam in FAMILIES} == {f: ranked[:6] for f in seen}


def test_thumbnails_are_the_records_own_pixels(compare_report: Path, report_runs: dict):
    page = compare_report.read_text(encoding="utf-8")
    records = {r["id"]: (fam, r) for fam in FAMILIES for r in report_runs["records"][fam]}
    rows = ROW.findall(page)
    assert rows
    for _, _, cells in rows:
        item_id = re.search(r"<small>([^<]*)</small>", cells).group(1)
        fam, rec = records[item_id]
        thumb = re.search(r'<img class="thumb" alt="" src="([^"]*)"', cells).group(1)
        with Image.open(io.BytesIO(_decode(thumb))) as got:
            source = report_runs["data"][FAMILIES.index(fam)].parent / rec["image"]
            with Image.open(source) as want:
                assert got.size == want.size == (64, 64)
                assert got.convert("RGB").tobytes() == want.convert("RGB").tobytes()


def test_eval_cli_writes_results_html_with_its_answers(
    tiny_model_dir: Path, report_runs: dict, capsys
):
    out = report_runs["root"] / "eval"
    data = str(report_runs["data"][1])  # ocr
    argv = ["eval", str(tiny_model_dir), "--data", data, "--limit", "3"]
    main([*argv, "--max-new-tokens", "2", "--out", str(out), "--no-progress"])
    assert "results.png and results.html" in capsys.readouterr().out
    page = (out / "results.html").read_text(encoding="utf-8")
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    rows = ROW.findall(page)
    assert len(rows) == 3 and {r[0] for r in rows} == {"ocr"}
    for (_, flag, cells), answer in zip(rows, answers):
        assert flag == "0"  # one run never disagrees with itself
        assert f"<small>{answer['id']}</small>" in cells
        assert '<img class="thumb"' in cells
    assert 'id="disagree"' not in page  # no "runs disagree" filter for a single run
    results = json.loads((out / "results.json").read_text())
    assert (
        f'<td>ocr</td><td>exact_match</td><td class="num">{results["scores"]["ocr"]:.4f}</td>'
        in page
    )


def test_compare_cli_writes_results_html(report_runs: dict, capsys):
    out = report_runs["root"] / "compare-cli"
    assert main(["compare", *map(str, report_runs["dirs"]), "--out", str(out)]) == 0
    assert f"and {out / 'results.html'}" in capsys.readouterr().out
    page = (out / "results.html").read_text(encoding="utf-8")
    header = re.search(r'<table id="answers"><thead><tr>(.*?)</tr>', page).group(1)
    assert header.endswith("<th>clip</th><th>vary</th><th>fused</th>")
    assert '<input type="checkbox" id="disagree">' in page


def test_ablation_summary_shows_student_t_intervals_over_seeds(tmp_path: Path):
    summary = {
        "clip | concat | mlp": {
            "scene": {"mean": 40.0, "std": 5.0, "n": 3},
            "mean": {"mean": 50.0, "std": 10.0, "n": 3},
        },
        "clip+vary | omnifusion | mlp": {
            "scene": {"mean": 70.0, "std": 2.0, "n": 3},
            "mean": {"mean": 60.0, "std": 4.0, "n": 3},
        },
        "vary | concat | mlp": {
            "scene": {"mean": 10.0, "std": 0.0, "n": 1},
            "mean": {"mean": 20.0, "std": 0.0, "n": 1},
        },
    }
    missing = {"clip | concat | mlp": tmp_path / "not-trained" / "answers.jsonl"}
    page = write_ablation_html(tmp_path / "results.html", summary, answers=missing).read_text()
    assert 'id="answers"' not in page  # a run without answers is left out, not an error
    rows = re.findall(r"<tbody>(.*?)</tbody>", page)[0].split("</tr>")
    half = 4.303 * 10.0 / 3**0.5  # t(0.975, 2) * s / sqrt(n)
    assert (round(50 - half, 1), round(50 + half, 1)) == (25.2, 74.8)
    assert "<td>clip+vary | omnifusion | mlp</td>" in rows[0]  # best mean first
    assert '<td class="num">40.0 ± 5.0</td><td class="num">50.0 ± 10.0</td>' in rows[1]
    assert '<td class="num">3</td><td class="num">[25.2, 74.8]</td>' in rows[1]
    assert rows[1].count("<svg") == 1 and 'aria-label="50.0 [25.2, 74.8]"' in rows[1]
    assert "<svg" not in rows[2] and '<td class="num">-</td>' in rows[2]  # one seed: no interval


def test_ablation_leaderboard_shows_its_bootstrap_intervals(tmp_path: Path):
    doc = {
        "cells": [
            {"name": "clip", "rank": 2, "p_best": 0.1, "families": {"ocr": {"mean": 30.0, "ci": [25.0, 35.5]}},
             "mean": {"mean": 30.0, "ci": [25.0, 35.5]}},
            {"name": "clip+vary", "rank": 1, "p_best": 0.9, "families": {"ocr": {"mean": 41.0, "ci": [38.0, 44.0]}},
             "mean": {"mean": 41.0, "ci": [38.0, 44.0]}},
        ]
    }  # fmt: skip
    page = write_ablation_html(tmp_path / "r.html", leaderboard=doc).read_text()
    head = re.search(r'<table id="scores"><thead><tr>(.*?)</tr>', page).group(1)
    assert re.sub(r"<[^>]+>", "|", head).strip("|").split("||") == [
        "rank", "cell", "ocr", "mean", "p_best", "mean, 95 % CI (bootstrap)",
    ]  # fmt: skip
    body = re.search(r"<tbody>(.*?)</tbody>", page).group(1)
    assert body.index("clip+vary") < body.index("<td>clip</td>")
    assert '<td class="num">41.0 [38.0, 44.0]</td><td class="num">41.0 [38.0, 44.0]</td>' in body
    assert body.count("<svg") == 2
    with pytest.raises(ValueError, match="summary or its leaderboard"):
        write_ablation_html(tmp_path / "x.html", summary={"a": {}}, leaderboard=doc)


def test_t_quantiles():
    assert (t975(1), t975(2), t975(30)) == (12.706, 4.303, 2.042)
    assert abs(t975(60) - 2.000) < 0.002 and abs(t975(120) - 1.980) < 0.002


def test_a_report_without_plot_or_images_still_lists_the_answers(tmp_path: Path):
    answers = tmp_path / "answers.jsonl"
    row = {
        "id": "1",
        "family": "ocr",
        "question": "<q>",
        "reference": "a",
        "prediction": "<script>a",
        "score": 1,
    }
    answers.write_text(json.dumps(row) + "\n")
    table = Table(["run", "ocr"], [["r", "1.0000"]])
    page = write_html_report(
        tmp_path / "out.html", "T", table, plot=tmp_path / "none.png", answers={"r": answers}
    ).read_text()
    assert 'id="plot"' not in page and '<img class="thumb"' not in page
    assert ROW.findall(page) == [("ocr", "0", ROW.findall(page)[0][2])]
    assert '<td class="right">&lt;script&gt;a<span class="mark">\u2713 1.00</span></td>' in page
    assert "<td>&lt;q&gt;</td>" in page and page.count("<script>") == 1  # markup stays text
