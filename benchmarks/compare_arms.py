"""Two fair-protocol grids (e.g. the leaderboard and its warm-start sensitivity arm) compared cell
by cell: each cell's chosen setting in both, paired over the seeds both have and the test items,
with polyvis.eval.stats' bootstrap; the difference is b minus a in points (0-100).

    .venv/bin/python benchmarks/compare_arms.py A_OUT B_OUT [--names main warm] [--out FILE.md]

Each OUT is a `polyvis ablate` folder with selection.json, leaderboard.json and
cells/CELL/SETTING/seed-S/test/answers.jsonl. The means and CIs in the table are recomputed on the
common seeds (so they match the difference); the ranks are each grid's own (leaderboard.json's
"rank", over all its cells). Also prints the Spearman correlation of the two grids' rankings over
the cells both have.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from paired_cells import seeds  # benchmarks/paired_cells.py, beside this script

from polyvis.errors import DataError
from polyvis.eval.stats import cell_scores, leaderboard
from polyvis.nano.fair_cells import slug
from polyvis.nano.protocol import Setting

HEADER = (
    "| cell | rank in {a} | {a} mean [CI] | rank in {b} | {b} mean [CI] | {b} - {a} [95 % CI] | p |"
)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        sys.exit(f"{path}: not found")
    return json.loads(path.read_text(encoding="utf-8"))


def chosen_dirs(out: Path) -> dict[str, Path]:
    """{cell name: its chosen setting folder} from OUT/selection.json."""
    cells = read_json(out / "selection.json")["cells"]
    return {
        name: out / "cells" / slug(name) / Setting(dict(sel["chosen"])).slug
        for name, sel in cells.items()
    }


def ranks(out: Path) -> dict[str, int]:
    """{cell name: rank} from OUT/leaderboard.json. Its "cells" list is in grid order, not sorted,
    so the rank is the row's own "rank" (1 = best mean)."""
    return {c["name"]: int(c["rank"]) for c in read_json(out / "leaderboard.json")["cells"]}


def compare(name: str, dirs: tuple[Path, Path], names: list[str]) -> dict[str, Any]:
    """One cell in both grids: {"seeds", "a", "b" (mean rows), "diff" (b - a comparison)}."""
    runs = [seeds(d) for d in dirs]
    common = sorted(set(runs[0]) & set(runs[1]))
    if not common:
        sys.exit(f"cell {name}: no seed with test answers in both {dirs[0]} and {dirs[1]}")
    # leaderboard() pairs seed positions, so both cells get the same sorted seeds: s with s.
    try:
        cells = [cell_scores(n, {s: r[s] for s in common}) for n, r in zip(names, runs)]
        doc = leaderboard(cells, [names[0]])
    except DataError as err:
        sys.exit(f"cell {name}: {err}")
    a, b = doc["cells"]
    return {"seeds": common, "a": a["mean"], "b": b["mean"], "diff": doc["comparisons"][0]}


def renumber(ranks: list[int]) -> list[int]:
    order = sorted(ranks)
    return [order.index(r) + 1 for r in ranks]


def spearman(x: list[int], y: list[int]) -> float:
    """Spearman's rho of two tie-free rankings (ranks re-numbered 1..n over the cells given)."""
    n = len(x)
    d2 = sum((p - q) ** 2 for p, q in zip(renumber(x), renumber(y)))
    return 1 - 6 * d2 / (n * (n * n - 1))


def fmt_mean(m: dict[str, Any]) -> str:
    lo, hi = m["ci"]
    return f"{m['mean']:.1f} [{lo:.1f}, {hi:.1f}]"


def fmt_diff(c: dict[str, Any]) -> str:
    lo, hi = c["ci"]
    return f"{c['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def fmt_p(p: float) -> str:
    # The bootstrap floors p at 1 / n_boot, so a smaller p is only known to be below 0.001.
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def table(rows: dict[str, dict[str, Any]], rank: list[dict[str, int]], names: list[str]) -> str:
    a, b = names
    lines = [HEADER.format(a=a, b=b), "|---" * 7 + "|"]
    for name in sorted(rows, key=lambda n: rank[0].get(n, len(rank[0]) + 1)):
        r = rows[name]
        cols = [name, rank[0].get(name, "-"), fmt_mean(r["a"]), rank[1].get(name, "-")]
        cols += [fmt_mean(r["b"]), fmt_diff(r["diff"]), fmt_p(r["diff"]["p"])]
        lines.append("| " + " | ".join(str(c) for c in cols) + " |")
    return "\n".join(lines)


def summary(rank: list[dict[str, int]], common: list[str], names: list[str]) -> str:
    firsts = [min(r, key=r.__getitem__) for r in rank]
    first = f"first in {names[0]}: {firsts[0]}; first in {names[1]}: {firsts[1]}"
    ranked = [n for n in common if n in rank[0] and n in rank[1]]
    if len(ranked) < 2:
        return f"Spearman rank correlation: n/a ({len(ranked)} cells ranked in both); {first}"
    rho = spearman([rank[0][n] for n in ranked], [rank[1][n] for n in ranked])
    return f"Spearman rank correlation over {len(ranked)} cells: {rho:+.3f}; {first}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--names", nargs=2, default=["a", "b"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.names[0] == args.names[1]:
        parser.error("--names: give two different names")
    dirs = [chosen_dirs(args.a), chosen_dirs(args.b)]
    rank = [ranks(args.a), ranks(args.b)]
    common = [n for n in dirs[0] if n in dirs[1]]
    if not common:
        sys.exit(f"{args.a} and {args.b}: no cell in both selection.json files")
    rows = {n: compare(n, (dirs[0][n], dirs[1][n]), args.names) for n in common}
    seed_sets = sorted({tuple(r["seeds"]) for r in rows.values()})
    text = "\n".join(
        [
            f"{args.names[1]} ({args.b}) - {args.names[0]} ({args.a}), seeds {seed_sets}",
            "",
            table(rows, rank, args.names),
            "",
            summary(rank, common, args.names),
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
