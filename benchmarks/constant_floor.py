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
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def floors(val: list[dict], test: list[dict]) -> list[dict]:
    """Per family: the constant chosen on val and its test items' scores, the same with one
    constant per question type (polyvis.eval.floor, which the leaderboard reports), and the
    run's own test score."""
    from polyvis.eval.floor import ANY_TYPE, choose_constants, row_metric, row_references
    from polyvis.eval.metrics import item_scores
    from polyvis.eval.stats import question_type

    constants = choose_constants(val)
    by_family = defaultdict(list)
    for row in test:
        by_family[row["family"]].append(row)
    out = []
    for family, rows in by_family.items():
        metric, refs = row_metric(rows[0]), [row_references(r) for r in rows]
        constant = constants[(family, metric, ANY_TYPE)]
        typed = {
            k[2]: v for k, v in constants.items() if k[:2] == (family, metric) and k[2] != ANY_TYPE
        }
        per_type = [typed.get(question_type(r["id"]), constant) for r in rows]
        one = [100.0 * x for x in item_scores(metric, [constant] * len(rows), refs)]
        by_type = [100.0 * x for x in item_scores(metric, per_type, refs)]
        run = [r["score"] for r in rows if "score" in r]
        out.append({"family": family, "metric": metric, "constant": constant, "items": one,
                    "floor": sum(one) / len(one), "typed": typed, "items_per_type": by_type,
                    "floor_per_type": sum(by_type) / len(by_type),
                    "run": 100.0 * sum(run) / len(run) if run else None})  # fmt: skip
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
    from polyvis.eval.floor import answer_rows

    table = floors(answer_rows(args.val), answer_rows(args.test))
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
