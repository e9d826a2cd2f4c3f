"""`polyvis demo`: the main job on the embedded default (nano world)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the nano demo end to end, offline")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--quick", action="store_true", help="the smallest version (used by the tests)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 150, quick 20)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from polyvis.nano.demo import run_demo

    run_demo(args.out, quick=args.quick, steps=args.steps)
    return 0
