"""`polyvis eval MODEL --data RECORDS... --out DIR`: answer, score and report a records set."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on records files (per-family scores, report and plot)",
        description="Answer the last question of every record (after its earlier turns), score "
        "it with its family's metric and write DIR/answers.jsonl, results.json, results.md and "
        "results.png. Records with unusable images are skipped and counted.",
    )
    p.add_argument("model", help="polyvis model directory")
    p.add_argument(
        "--data", nargs="+", required=True, type=Path, metavar="RECORDS", help="records files"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--metric", default=None, help="score every record with this metric")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--beams", type=int, default=1, help="beam search width (1: greedy)")
    p.add_argument("--limit", type=int, default=None, help="at most N records from each file")
    p.add_argument("--name", default=None, help="the run's name in comparisons")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if any)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from polyvis.errors import ConfigError
    from polyvis.eval.report import results_table
    from polyvis.eval.runner import ANSWERS_FILE, evaluate, load_items
    from polyvis.models.build import load_model

    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--max-new-tokens", args.max_new_tokens),
        ("--beams", args.beams),
        ("--limit", args.limit),
    ):
        if value is not None and value < 1:
            raise ConfigError(flag, f"must be at least 1, got {value}")
    load_items(args.data, metric=args.metric, limit=args.limit)  # bad data fails before loading
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_model(args.model, dtype=args.dtype, device=device)
    results = evaluate(
        model,
        processor,
        args.data,
        out_dir=args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.beams,
        metric=args.metric,
        limit=args.limit,
        progress=not args.no_progress,
        name=args.name,
        model_dir=args.model,
    )
    print(results_table(results))
    if results["skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(results["skipped"].items()))
        print(f"\nskipped {len(results['skipped_ids'])} record(s) ({reasons})")
    print(f"\nwrote {args.out / ANSWERS_FILE}, results.json, results.md and results.png")
    return 0
