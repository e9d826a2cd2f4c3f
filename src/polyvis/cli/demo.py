"""`polyvis demo`: the fair protocol of `polyvis ablate` at one seed, on the nano world."""

from __future__ import annotations

import argparse

from polyvis.nano.budget import PRECISIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="nano world: the leaderboard's fair protocol at one seed, each expert alone and "
        "the best fusions, family scores with CIs over test items",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: every step at the smallest sizes; its scores mean nothing",
    )
    p.add_argument(
        "--jobs", type=int, default=2, help="models trained at once, one thread each (default 2)"
    )
    p.add_argument("--seed", type=int, default=0, help="the one training seed (default 0)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: experts and runs autocast to bf16 (faster on AVX512-BF16 CPUs); other "
        "models than the leaderboard's fp32 ones",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


def check_demo_args(args: argparse.Namespace) -> None:
    """The flags checked before the demo prints its plan and builds its world (minutes of
    work): --jobs 0 failed after the data, naming `workers`, and a negative --seed only in
    every run, after the experts."""
    from polyvis.cli._model_args import require_at_least_one
    from polyvis.config import MAX_SEED
    from polyvis.errors import ConfigError
    from polyvis.paths import check_folder_path

    require_at_least_one({"--jobs": args.jobs})
    if not 0 <= args.seed <= MAX_SEED:  # train.seed's bound: every run takes this seed
        raise ConfigError("--seed", f"must be between 0 and 2**32 - 1, got {args.seed}")
    check_folder_path(args.out, "--out")


def cmd_demo(args: argparse.Namespace) -> int:
    from polyvis.nano.demo import run_demo

    check_demo_args(args)
    run_demo(
        args.out,
        quick=args.quick,
        jobs=args.jobs,
        seed=args.seed,
        progress=not args.no_progress,
        precision=args.precision,
    )
    return 0
