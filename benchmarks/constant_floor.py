"""What a model that reads neither the image nor the question scores: one constant answer.

For each family the constant is chosen on val (the val reference with the best val score under
the family's own metric), then scored on test, so no choice sees the test split. A second floor
chooses one constant per question type (the id's last part: scene's count, relation and
attribute), which is what a blind model can learn from a question's wording alone. Both are in
points, 0-100, the leaderboard's scale, next to a run's own test scores for comparison.

Any run scored on val and on test gives the two files (the references, families and metrics;
its predictions are used only for the last column):

    .venv/bin/python benchmarks/constant_floor.py --val RUN/val/answers.jsonl \
        --test RUN/test/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean(metric: str, answer: str, references: list[str]) -> float:
    from polyvis.eval.metrics import METRICS

    scores = METRICS.get(metric).items([answer] * len(references), [[r] for r in references])
    return 100.0 * sum(scores) / len(scores)


def best_constant(rows: list[dict]) -> str:
    """The val reference that scores best as every answer (ties: the first in sorted order)."""
    metric, refs = rows[0]["metric"], [r["reference"] for r in rows]
    return max(sorted(set(refs)), key=lambda c: _mean(metric, c, refs))


def floors(val: list[dict], test: list[dict]) -> list[dict]:
    """Per family: the constant chosen on val, its test score, the per-question-type constants'
    test score (the family's items pooled, as the family's score pools them), and the run's."""
    by = defaultdict(lambda: defaultdict(list))
    for split, rows in (("val", val), ("test", test)):
        for r in rows:
            by[r["family"]][split].append(r)
    out = []
    for family, split in by.items():
        metric = split["test"][0]["metric"]
        refs = [r["reference"] for r in split["test"]]
        constant = best_constant(split["val"])
        typed: dict[str, str] = {}
        for kind in sorted({r["id"].rsplit("-", 1)[-1] for r in split["val"]}):
            typed[kind] = best_constant([r for r in split["val"] if r["id"].endswith("-" + kind)])
        per_type = [
            _mean(metric, typed.get(r["id"].rsplit("-", 1)[-1], constant), [r["reference"]])
            for r in split["test"]
        ]
        run = [r["score"] for r in split["test"] if "score" in r]
        one = [_mean(metric, constant, [r]) for r in refs]
        out.append(
            {
                "family": family,
                "metric": metric,
                "constant": constant,
                "floor": sum(one) / len(one),
                "items": one,
                "typed": typed,
                "floor_per_type": sum(per_type) / len(per_type),
                "items_per_type": per_type,
                "run": 100.0 * sum(run) / len(run) if run else None,
            }
        )
    return out


def ci(families: list[list[float]], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean of the families' means, test items resampled in each family."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [np.asarray(f) for f in families]
    means = np.mean(
        [[a[rng.integers(0, len(a), len(a))].mean() for a in arrays] for _ in range(draws)], axis=1
    )
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=Path, required=True, help="a run's val answers.jsonl")
    ap.add_argument("--test", type=Path, required=True, help="the same run's test answers.jsonl")
    args = ap.parse_args(argv)
    table = floors(_rows(args.val), _rows(args.test))
    print("| family | metric | constant chosen on val | its test score | one constant per "
          "question type: test score | this run's test score |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|")
    for row in table:
        run = "-" if row["run"] is None else f"{row['run']:.1f}"
        print(f"| {row['family']} | {row['metric']} | `{row['constant']}` | {row['floor']:.1f} "
              f"| {row['floor_per_type']:.1f} | {run} |")  # fmt: skip
    mean = sum(r["floor"] for r in table) / len(table)
    typed = sum(r["floor_per_type"] for r in table) / len(table)
    lo, hi = ci([r["items"] for r in table])
    tlo, thi = ci([r["items_per_type"] for r in table])
    print(f"mean of the families: one constant {mean:.1f} [{lo:.1f}, {hi:.1f}], "
          f"one per question type {typed:.1f} [{tlo:.1f}, {thi:.1f}] (95 % CI over test items)")  # fmt: skip
    for row in table:
        if len(row["typed"]) > 1:
            print(f"{row['family']}: " + ", ".join(f"{k} `{v}`" for k, v in row["typed"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
