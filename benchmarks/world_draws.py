"""Cells of fair grids run on several draws of the world's experts (`expert_seed`), with the draw
as the level that is resampled.

The leaderboard's CIs resample run seeds and test items with one build of the experts. Here each
draw contributes one run per cell, and polyvis.eval.stats' paired bootstrap treats the draws as
it treats seeds: each cell's mean with a 95 % CI over draws and test items, and each cell
against the best of the `--baseline` cells. `--seed draw` takes from draw d its run at seed d, so
that the draws differ in their experts and in their runs alike, and the spread holds both; a
number (`--seed 0`) takes that run seed from every draw, which shares the seed's own luck
(its data order, its adapter's start) across them.

    .venv/bin/python benchmarks/world_draws.py --world 0=runs/rebuild-check \\
        --world 1=runs/world-seed-1 --world 2=runs/world-seed-2 --baseline clip dino vary \\
        [--seed draw | --seed 0] [--out docs/world-draws]

Each OUT is a `polyvis ablate` folder (selection.json, cells/CELL/SETTING/seed-S/test/); the
cells every draw has are compared. With --out it writes OUT.md, OUT.json and OUT.png (each cell's
mean over draws with its CI, as the leaderboard's plot).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from compare_arms import chosen_dirs, fmt_diff, fmt_mean, fmt_p  # benchmarks/, beside this script

from polyvis.errors import DataError
from polyvis.eval.leaderboard import plot_leaderboard
from polyvis.eval.stats import cell_scores, leaderboard


def parse_world(text: str) -> tuple[int, Path]:
    seed, sep, folder = text.partition("=")
    if not sep or not seed.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: give EXPERT_SEED=OUT, e.g. 1=runs/world-seed-1"
        )
    return int(seed), Path(folder)


def seed_arg(text: str) -> str:
    if text != "draw" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a run seed (0, 1, ...) or 'draw'")
    return text


def run_seed(seed: str, draw: int) -> int:
    return draw if seed == "draw" else int(seed)


def answers_of(worlds: dict[int, Path], seed: str) -> dict[str, dict[int, Path]]:
    """{cell: {expert seed: its run's test answers}} for the cells every draw has."""
    found: dict[str, dict[int, Path]] = {}
    for draw, out in worlds.items():
        for name, setting in chosen_dirs(out).items():
            path = setting / f"seed-{run_seed(seed, draw)}" / "test" / "answers.jsonl"
            if path.is_file():
                found.setdefault(name, {})[draw] = path
    return {n: runs for n, runs in found.items() if len(runs) == len(worlds)}


def report(worlds: dict[int, Path], seed: str, baselines: list[str]) -> tuple[str, dict[str, Any]]:
    cells = answers_of(worlds, seed)
    if not cells:
        which = "its own seed's" if seed == "draw" else f"a seed-{seed}"
        sys.exit(f"no cell has {which} test run in every draw: {sorted(worlds)}")
    missing = [b for b in baselines if b not in cells]
    if missing:
        sys.exit(f"--baseline {missing[0]}: not a cell of every draw; cells: {', '.join(cells)}")
    try:
        scored = [cell_scores(name, runs) for name, runs in cells.items()]
        doc = leaderboard(scored, baselines)
    except DataError as err:
        sys.exit(str(err))
    draws = sorted(worlds)
    head = "| cell | " + " | ".join(f"draw {d}, seed {run_seed(seed, d)}" for d in draws)
    lines = [head + " | mean over draws [95 % CI] | p_best |", "|---" * (len(draws) + 3) + "|"]
    for row in sorted(doc["cells"], key=lambda r: r["rank"]):
        per = " | ".join(f"{x:.1f}" for x in row["seed_means"])
        lines.append(f"| {row['name']} | {per} | {fmt_mean(row['mean'])} | {row['p_best']:.2f} |")
    if doc["comparisons"]:
        lines += ["", "| cell | vs | diff [95 % CI] | p | p (Holm) |", "|---|---|---:|---:|---:|"]
        for c in sorted(doc["comparisons"], key=lambda c: -c["diff"]):
            lines.append(
                f"| {c['cell']} | {c['vs']} | {fmt_diff(c)} | {fmt_p(c['p'])} | "
                f"{fmt_p(c['p_holm'])} |"
            )
    where = ", ".join(f"{d}: {worlds[d]}" for d in draws)
    runs = "draw d at run seed d" if seed == "draw" else f"run seed {seed}"
    text = f"Draws of the experts (expert_seed {where}); {runs}\n\n" + "\n".join(lines)
    seeds = {str(d): run_seed(seed, d) for d in draws}
    return text, {"worlds": {str(d): str(worlds[d]) for d in draws}, "run_seeds": seeds, **doc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=parse_world, action="append", required=True,
                        metavar="EXPERT_SEED=OUT", help="one draw's grid; two or more")  # fmt: skip
    parser.add_argument("--seed", type=seed_arg, default="0",
                        help="the run seed taken from every draw, or 'draw': seed d from draw d")  # fmt: skip
    parser.add_argument("--baseline", nargs="*", default=[], help="cells to compare against")
    parser.add_argument("--out", type=Path, help="write OUT.md, OUT.json and OUT.png")
    args = parser.parse_args(argv)
    worlds = dict(args.world)
    if len(worlds) < 2:
        parser.error("--world: give two or more draws")
    text, doc = report(worlds, args.seed, args.baseline)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        plot_leaderboard(doc, args.out.with_suffix(".png"), title="draws of the experts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
