"""Each question type's score (points, 95 % CI over seeds and items) for runs of fair grids, on
the val or the test split; the types that need two experts are marked.

    .venv/bin/python benchmarks/question_types.py NAME=SETTING_DIR [NAME=SETTING_DIR ...] \
        [--split val]

Each SETTING_DIR is a cell's setting folder (OUT/cells/CELL/SETTING) holding seed-S/SPLIT/
answers.jsonl. For example the two-expert grid's cells at 1000 steps against a val-only pilot at
3000 (docs/two-expert.md, "Does a larger budget help?").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paired_cells import seeds  # benchmarks/paired_cells.py, beside this script

from polyvis.eval.stats import question_type_stats


def table(stats: dict, names: list[str]) -> str:
    rows = [f"| question type | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for group in stats["groups"]:
        label = f"**{group}** (two experts)" if group in stats["two_expert"] else group
        cells = []
        for name in names:
            s = stats["cells"][name].get(group)
            cells.append(
                "-" if s is None else f"{s['mean']:.1f} [{s['ci'][0]:.1f}, {s['ci'][1]:.1f}]"
            )
        rows.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=SETTING_DIR")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    args = parser.parse_args(argv)
    runs = {}
    for given in args.runs:
        name, sep, folder = given.partition("=")
        if not sep or not name:
            sys.exit(f"{given!r}: give NAME=SETTING_DIR")
        runs[name] = seeds(Path(folder), args.split)
    stats = question_type_stats(runs)
    print(f"split: {args.split}; seeds: " + ", ".join(f"{n} {sorted(s)}" for n, s in runs.items()))
    print(table(stats, list(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
