"""`polyvis eval MODEL --data RECORDS... --out DIR`: answer, score and report a records set."""

from __future__ import annotations

import argparse
from pathlib import Path

from polyvis.cli._model_args import (
    add_device_options,
    load_cli_model,
    require_at_least_one,
    resolve_model_dir,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on records files (per-family scores, report and plot)",
        description="Answer the last question of every record (after its earlier turns), score "
        "it with its family's metric and write DIR/answers.jsonl, results.json, results.md, "
        "results.png and results.html (the table, the plot and a sample of answers per family, "
        "one self-contained file). Records with unusable images are skipped and counted.",
    )
    p.add_argument("model", help="polyvis model directory, or a run directory (its final/)")
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
    p.add_argument(
        "--feature-cache",
        action="store_true",
        help="read the encoders' outputs from the feature cache, adding what it lacks "
        "(many runs with the same frozen encoders then encode the images once)",
    )
    add_device_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polyvis.eval.html import write_eval_html
    from polyvis.eval.report import results_table
    from polyvis.eval.runner import ANSWERS_FILE, evaluate, load_items

    require_at_least_one(
        {
            "--batch-size": args.batch_size,
            "--max-new-tokens": args.max_new_tokens,
            "--beams": args.beams,
            "--limit": args.limit,
        }
    )
    # bad data (an empty file included, not found later as "0 evaluated") fails before loading
    load_items(args.data, metric=args.metric, limit=args.limit, allow_empty=False)
    model_dir, name = args.model, args.name
    resolved = resolve_model_dir(args.model)
    if resolved != Path(args.model):  # a run directory: its final/ model
        model_dir = str(resolved)
        name = name or Path(args.model).name  # named after the run, not after "final"
    model, processor = load_cli_model(args)
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
        name=name,
        model_dir=model_dir,
        feature_cache=args.feature_cache,
    )
    write_eval_html(results, args.out)
    print(results_table(results))
    if results["skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(results["skipped"].items()))
        print(f"\nskipped {len(results['skipped_ids'])} record(s) ({reasons})")
    print(
        f"\nwrote {args.out / ANSWERS_FILE}, results.json, results.md, results.png and results.html"
    )
    return 0
