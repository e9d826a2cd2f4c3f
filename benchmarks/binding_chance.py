"""Chance levels of the two-expert question types (binding, chartbind), for docs/two-expert-questions.md.

    .venv/bin/python benchmarks/binding_chance.py [--n 1500] [--seed 0] [--levels easy,medium,hard]

Generates both families as the demo would (n images, 80/10/10, 64 px) and prints, per level and
question type, on the val split:
- uniform: a uniform guess over the answer set (six colours; the 4-letter words; values 10-99
  under relaxed accuracy);
- majority (val): the most common val answer's rate on val; majority (train): the most common
  train answer's rate on val, what a model that learnt only the prior would score;
- one expert: a uniform guess among the answers an expert that sees only one of the two
  properties cannot tell apart (every word, value or colour of the image but the binding),
  computed from each image's regenerated ground truth.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from polyvis.data.records import read_records
from polyvis.data.synthetic import FAMILIES, generate, item_rng
from polyvis.data.synthetic.chartbind import VALUES
from polyvis.data.synthetic.common import COLORS, WORDS
from polyvis.eval.text import exact_match_item, relaxed_accuracy_item

FAMS = ("binding", "chartbind")


def score(task: str, prediction: str, answer: str) -> float:
    item = relaxed_accuracy_item if task == "colour_value" else exact_match_item
    return item(prediction, [answer])


def uniform(task: str) -> float:
    if task == "position_colour":
        return 1 / len(COLORS)
    if task in ("colour_text", "position_text"):
        return 1 / len([w for w in WORDS if len(w) <= 4])
    values = [str(v) for v in range(VALUES[0], VALUES[1] + 1)]
    return sum(score(task, g, v) for v in values for g in values) / len(values) ** 2


def one_expert(task: str, meta: dict) -> float:
    """Expected score of a uniform pick among the answers one expert alone cannot separate."""
    if task == "position_colour":  # the colours seen, but not their order: all but the anchor's
        answer = meta["qa"][0]["a"]
        anchor = meta["qa"][0]["q"].rstrip("?").split()[-1]
        shown = [o["color"] for o in meta["objects"] if o["shape"] != anchor]
        return shown.count(answer) / len(shown)
    found = {"colour_text": "signs", "position_text": "rows", "colour_value": "bars"}[task]
    key = "value" if task == "colour_value" else "word"
    guesses = [str(c[key]) for c in meta[found]]
    return sum(score(task, g, meta["qa"][0]["a"]) for g in guesses) / len(guesses)


def levels_table(n: int, seed: int, level: str, root: Path) -> list[str]:
    out = root / level
    generate(list(FAMS), n, seed, out, difficulty=level, progress=False)
    rows = []
    for fam in FAMS:
        by_split = {s: read_records(out / fam / f"{s}.jsonl") for s in ("train", "val")}
        answers: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        experts: dict[str, list[float]] = defaultdict(list)
        for split, records in by_split.items():
            for rec in records:
                answers[rec["task"]][split].append(rec["conversations"][-1]["value"])
        for rec in by_split["val"]:
            index = int(rec["id"].split("-")[2])
            meta = FAMILIES.get(fam)().render(item_rng(seed, fam, "val", index), 64, level).meta
            experts[rec["task"]].append(one_expert(rec["task"], meta))
        for task in sorted(answers):
            val, train = answers[task]["val"], answers[task]["train"]
            top_val = Counter(val).most_common(1)[0][0]
            top_train = Counter(train).most_common(1)[0][0]
            maj_val = sum(score(task, top_val, a) for a in val) / len(val)
            maj_train = sum(score(task, top_train, a) for a in val) / len(val)
            mean_expert = sum(experts[task]) / len(experts[task])
            rows.append(
                f"| {level} | {fam} / `{task}` | {len(val)} | {uniform(task):.3f} | "
                f"{maj_val:.3f} | {maj_train:.3f} | {mean_expert:.3f} |"
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", default="easy,medium,hard")
    args = ap.parse_args()
    print(
        "| level | family / task | val records | uniform | majority (val) | majority (train) "
        "| one expert |\n|---|---|---:|---:|---:|---:|---:|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels.split(","):
            print("\n".join(levels_table(args.n, args.seed, level, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
