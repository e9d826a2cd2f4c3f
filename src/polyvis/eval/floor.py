"""A grid's floor: one constant answer per question type, chosen on val, scored on test.

A model that reads neither the image nor the question, only which type of question it is, can
still answer every question of a type with one string. For each (family, metric, question type)
the string is the val reference that scores best as every val answer of that type (ties: the
first in sorted order); the test items are then scored with it, so no choice sees the test
split. A type that val lacks gets its family's constant. The rows form an answers.jsonl like
`polyvis eval`'s, so the leaderboard's statistics read the floor as a cell of one seed:

    floor = floor_stats(run / "val/answers.jsonl", run / "test/answers.jsonl", out / "floor")
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from polyvis.errors import DataError
from polyvis.eval.metrics import FAMILY_METRICS, item_scores
from polyvis.eval.stats import cell_scores, leaderboard, question_type
from polyvis.paths import write_text_atomic

FLOOR_NAME = "one constant answer per question type"
ANY_TYPE = "*"


def answer_rows(path: Path) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read the answers ({err.strerror or err})") from None
    return [json.loads(line) for line in lines if line.strip()]


def row_references(row: dict[str, Any]) -> list[str]:
    ref = row.get("reference")
    return [str(r) for r in ref] if isinstance(ref, list) else [str(ref)]


def row_metric(row: dict[str, Any]) -> str:
    return row.get("metric") or FAMILY_METRICS.get(row["family"], "exact_match")


def choose_constants(val: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """{(family, metric, question type or ANY_TYPE): the constant chosen on these val rows}."""
    groups: dict[tuple[str, str, str], list[list[str]]] = defaultdict(list)
    for row in val:
        family, metric = row["family"], row_metric(row)
        groups[(family, metric, question_type(row["id"]))].append(row_references(row))
        groups[(family, metric, ANY_TYPE)].append(row_references(row))
    chosen = {}
    for key, refs in groups.items():
        candidates = sorted({r[0] for r in refs})

        def mean(answer: str, refs: list[list[str]] = refs, metric: str = key[1]) -> float:
            return sum(item_scores(metric, [answer] * len(refs), refs)) / len(refs)

        chosen[key] = max(candidates, key=mean)
    return chosen


def floor_answers(val: Path, test: Path, out: Path) -> Path:
    """Write OUT/answers.jsonl: every test row answered with its type's constant from val."""
    return _write_answers(choose_constants(answer_rows(val)), val, test, out)


def _write_answers(
    constants: dict[tuple[str, str, str], str], val: Path, test: Path, out: Path
) -> Path:
    rows = []
    for row in answer_rows(test):
        family, metric = row["family"], row_metric(row)
        answer = constants.get((family, metric, question_type(row["id"])))
        if answer is None:
            answer = constants.get((family, metric, ANY_TYPE))
        if answer is None:
            raise DataError(
                f"{test}: record {row['id']}: val ({val}) has no {family} question scored with "
                f"{metric} to choose a constant from"
            )
        keep = ("id", "family", "metric", "question", "reference")
        rows.append({**{k: row[k] for k in keep if k in row}, "prediction": answer})
    by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_metric[row_metric(row)].append(row)
    for metric, group in by_metric.items():
        scores = item_scores(
            metric, [r["prediction"] for r in group], [row_references(r) for r in group]
        )
        for row, score in zip(group, scores):
            row["score"] = score
    path = Path(out) / "answers.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def floor_stats(val: Path, test: Path, out: Path) -> dict[str, Any]:
    """The floor as the leaderboard reports it: its constants, its per-family means and its mean,
    with 95 % CIs over test items (one seed), and where its answers are."""
    constants = choose_constants(answer_rows(val))
    path = _write_answers(constants, val, test, out)
    cell = leaderboard([cell_scores(FLOOR_NAME, {0: path})], [])["cells"][0]
    return {
        "name": FLOOR_NAME,
        "chosen_on": str(val),
        "answers": str(path),
        "constants": {
            f"{fam}/{kind}" + ("" if metric == FAMILY_METRICS.get(fam) else f" ({metric})"): answer
            for (fam, metric, kind), answer in sorted(constants.items())
            if kind != ANY_TYPE
        },
        "families": cell["families"],
        "mean": cell["mean"],
    }
