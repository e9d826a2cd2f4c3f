"""`polyvis compare DIR1 DIR2 ... --out OUT`: put several evaluation runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare evaluation runs (a table, a grouped bar chart and an HTML report)",
        description="Read DIR/results.json of each run; write OUT/compare.md, OUT/compare.png "
        "and OUT/results.html (the table, the chart and the runs' answers side by side, with "
        "filters by family and by 'runs disagree') and print the table.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="evaluation output folders")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for compare.md, .png and results.html"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polyvis.eval.html import write_compare_html
    from polyvis.eval.report import compare  # matplotlib is loaded only when plotting

    table = compare(args.dirs, args.out)
    html = write_compare_html(args.dirs, args.out)
    print(table)
    print(f"\nwrote {args.out / 'compare.md'}, {args.out / 'compare.png'} and {html}")
    return 0
