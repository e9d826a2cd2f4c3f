"""Scoring a model with and without the feature cache (`polyvis eval --feature-cache`).

One process, one torch thread, one model: the same records scored `--repeats` times in turn
(plain; the cache empty, so it is filled; the cache full), each pass timed, into a fresh
temporary cache, so the user's is never touched. A grid scores many runs that share their
frozen encoders on one val and one test set: the first run fills the cache, the others read it.
Prints the seconds of each pass, the ratio to plain, and whether the answers are identical.

    .venv/bin/python benchmarks/bench_eval_cache.py RUN_OR_MODEL --data RECORDS... \
        [--limit 100] [--batch-size 32] [--max-new-tokens 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a polyvis model directory, or a run directory (its final/)")
    ap.add_argument("--data", nargs="+", required=True, type=Path, help="records files")
    ap.add_argument("--limit", type=int, default=None, help="at most N records per file")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2, help="passes of each kind, alternating")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from polyvis.cli._model_args import resolve_model_dir
    from polyvis.eval.runner import evaluate
    from polyvis.models.build import load_model
    from polyvis.nano.protocol import machine

    model, processor = load_model(str(resolve_model_dir(args.model)), dtype=None, device="cpu")
    settings = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                "limit": args.limit, "progress": False}  # fmt: skip
    seconds: dict[str, list[float]] = {"plain": [], "cache empty": [], "cache full": []}
    answers: dict[str, list[list[str]]] = {k: [] for k in seconds}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-eval-cache-") as cache:
            os.environ["POLYVIS_CACHE"] = cache
            for kind in seconds:
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as out:
                    evaluate(model, processor, args.data, out_dir=out,
                             feature_cache=kind != "plain", **settings)  # fmt: skip
                    rows = (Path(out) / "answers.jsonl").read_text().splitlines()
                seconds[kind].append(time.perf_counter() - start)
                answers[kind].append(rows)
    n = len(answers["plain"][0])
    print(f"# bench_eval_cache: {n} records, batch {args.batch_size}, {args.max_new_tokens} new "
          f"tokens at most, {args.repeats} passes each, one thread; {machine()}\n")  # fmt: skip
    print("| pass | seconds (each) | median | plain / this | answers as plain |")
    print("|---|---|---:|---:|---|")
    base = statistics.median(seconds["plain"])
    for kind, values in seconds.items():
        same = all(a == answers["plain"][0] for a in answers[kind])
        each = ", ".join(f"{v:.1f}" for v in values)
        med = statistics.median(values)
        print(f"| {kind} | {each} | {med:.1f} | {base / med:.2f}x | {'identical' if same else 'DIFFER'} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
