"""Shared pieces of the HTML report tests: three runs' answers to real synthetic records (scene,
ocr, chart images), right or wrong by a known rule, and their comparison written to disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from polyvis.eval.metrics import FAMILY_METRICS

FAMILIES = ("scene", "ocr", "chart")
PER_FAMILY = 10  # answered records per family
RUNS = {  # run -> which item indices it gets right
    "clip": lambda i: i % 2 == 0,
    "vary": lambda i: i % 3 == 0,
    "fused": lambda i: i % 2 == 0 or i % 3 == 0,
}
ROW = re.compile(r'<tr data-family="([^"]*)" data-disagree="(\d)">(.*?)</tr>', re.S)


def disagree(i: int) -> bool:
    return len({rule(i) for rule in RUNS.values()}) > 1


def prediction(run: str, i: int, reference: str) -> str:
    return reference if RUNS[run](i) else f"{run}'s guess {i}"


@pytest.fixture(scope="module", name="report_runs")
def report_runs_fixture(tmp_path_factory) -> dict:
    """{"data": records files, "dirs": run folders (answers.jsonl + results.json), "records":
    family -> its first PER_FAMILY records, "root": the folder}."""
    from polyvis.data.records import read_records
    from polyvis.data.synthetic import generate

    root = tmp_path_factory.mktemp("report")
    generate(list(FAMILIES), n=24, seed=0, out=root / "data", image_size=64, progress=False)
    files = [root / "data" / f / "train.jsonl" for f in FAMILIES]
    records = {f: read_records(p)[:PER_FAMILY] for f, p in zip(FAMILIES, files)}
    dirs = []
    for run in RUNS:
        d = root / run
        d.mkdir()
        rows, scores = [], {}
        for fam in FAMILIES:
            right = 0
            for i, rec in enumerate(records[fam]):
                reference = rec["conversations"][-1]["value"]
                ok = RUNS[run](i)
                right += ok
                question = rec["conversations"][-2]["value"].replace("<image>", "").strip()
                rows.append(
                    {
                        "id": rec["id"],
                        "family": fam,
                        "metric": FAMILY_METRICS[fam],
                        "question": question,
                        "reference": reference,
                        "prediction": prediction(run, i, reference),
                        "score": 1.0 if ok else 0.0,
                    }
                )
            scores[fam] = right / PER_FAMILY
        (d / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        results = {
            "name": run,
            "model": str(d),
            "scores": scores,
            "n": dict.fromkeys(FAMILIES, PER_FAMILY),
            "settings": {"data": [str(f) for f in files]},
        }
        (d / "results.json").write_text(json.dumps(results))
        dirs.append(d)
    return {"data": files, "dirs": dirs, "records": records, "root": root}


@pytest.fixture(scope="module", name="compare_report")
def compare_report_fixture(report_runs: dict) -> Path:
    """OUT/results.html of the three runs (and compare.md / compare.png)."""
    from polyvis.eval.html import write_compare_html
    from polyvis.eval.report import compare

    out = report_runs["root"] / "compare"
    compare(report_runs["dirs"], out)
    return write_compare_html(report_runs["dirs"], out, per_family=6)
