"""`polyvis demo`: the main job on the embedded default (the nano world)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="nano world: experts, single vs fused models, a comparison table"
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: every step, smallest sizes (a minute); its scores mean nothing",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps per model")
    p.add_argument("--jobs", type=int, default=2, help="models trained at once (one thread each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from polyvis.nano.demo import run_demo

    run_demo(
        args.out,
        quick=args.quick,
        steps=args.steps,
        jobs=args.jobs,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return 0
