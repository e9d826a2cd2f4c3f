"""Two cells of fair grids scored on the same test set, compared pairwise: each one's mean with
its 95 % CI and the paired difference (b minus a) from polyvis.eval.stats' bootstrap over seeds
and test items.

    .venv/bin/python benchmarks/paired_cells.py A_SETTING_DIR B_SETTING_DIR [--names a b]

Each directory is a cell's setting folder (OUT/cells/CELL/SETTING) holding seed-S/test/; the
seeds both have are compared. For example the leaderboard's fp32 cell against the same cell
trained in bf16 (docs/performance.md, "bf16 on the CPU").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from polyvis.eval.stats import cell_scores, leaderboard


def seeds(folder: Path, split: str = "test") -> dict[int, Path]:
    """{seed: answers.jsonl} of a setting folder's runs scored on `split`."""
    found = {int(p.parent.parent.name.removeprefix("seed-")): p
             for p in folder.glob(f"seed-*/{split}/answers.jsonl")}  # fmt: skip
    if not found:
        sys.exit(f"{folder}: no seed-S/{split}/answers.jsonl")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--names", nargs=2, default=["a", "b"])
    args = parser.parse_args(argv)
    runs = [seeds(args.a), seeds(args.b)]
    common = sorted(set(runs[0]) & set(runs[1]))
    cells = [cell_scores(n, {s: r[s] for s in common}, {}) for n, r in zip(args.names, runs)]
    doc = leaderboard(cells, [args.names[0]])
    print(f"seeds {common}")
    for c in doc["cells"]:
        lo, hi = c["mean"]["ci"]
        print(f"{c['name']}: {c['mean']['mean']:.1f} [{lo:.1f}, {hi:.1f}]")
    (cmp,) = doc["comparisons"]
    lo, hi = cmp["ci"]
    print(
        f"{cmp['cell']} - {cmp['vs']}: {cmp['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}], p = {cmp['p']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
