"""`polyvis compare DIR1 DIR2 ... --out OUT`: put several evaluation runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare evaluation runs (a table and a grouped bar chart)",
        description="Read DIR/results.json of each run; write OUT/compare.md and "
        "OUT/compare.png and print the table.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="evaluation output folders")
    p.add_argument("--out", type=Path, required=True, help="folder for compare.md / compare.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polyvis.eval.report import compare  # matplotlib is loaded only when plotting

    table = compare(args.dirs, args.out)
    print(table)
    print(f"\nwrote {args.out / 'compare.md'} and {args.out / 'compare.png'}")
    return 0
