"""`polyvis ablate`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="grid over fusions x adapters x encoder sets x seeds (resumable)"
    )
    p.add_argument("config", help="ablation YAML (e.g. configs/ablate-nano.yaml)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--no-progress", action="store_true", help="no bars for the data and experts it builds"
    )
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args: argparse.Namespace) -> int:
    from polyvis.nano.ablate import run_ablation

    run_ablation(args.config, args.out, progress=not args.no_progress)
    return 0
