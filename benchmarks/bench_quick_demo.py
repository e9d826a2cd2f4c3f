"""`polyvis demo --quick` into a fresh folder, this tree against another, in turn.

A quick demo trains and scores ten tiny runs (the fair protocol's selection, then the test
runs), so what it costs is mostly starting processes and importing: the part of a grid that
does not depend on the budget. This times `python -m polyvis demo --quick --out <new folder>`
with this tree's `src` and with `--old`'s, alternately, `--repeats` times each, sharing one
cache whose data and quick experts are built first (one untimed demo of each tree). It prints
the wall and CPU seconds (every process the demo started) of each invocation, their medians and
the ratio, and checks that both trees give the same test answers.

    .venv/bin/python benchmarks/bench_quick_demo.py --old <a checkout>/src [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo(src: Path, out: Path, cache: Path) -> tuple[float, float]:
    """(wall s, CPU s of its processes) of one quick demo into `out`, `src` first on the path."""
    env = {**os.environ, "POLYVIS_CACHE": str(cache), "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "polyvis", "demo", "--quick", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{src}: the demo failed: {done.stderr.strip().splitlines()[-1:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def answers(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.glob("cells/*/*/*/test/*.jsonl")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the other tree's src folder")
    ap.add_argument("--repeats", type=int, default=3, help="timed demos of each tree")
    args = ap.parse_args()
    trees = {"old": args.old.resolve(), "new": ROOT / "src"}
    with tempfile.TemporaryDirectory(prefix="bench-quick-demo-") as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "cache"
        for name, src in trees.items():  # data, experts and each tree's own caches, untimed
            demo(src, tmp_path / f"warm-{name}", cache)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        print("| invocation | tree | wall s | CPU s |\n|---:|---|---:|---:|")
        for i in range(args.repeats):
            for name, src in trees.items():
                wall, cpu = demo(src, tmp_path / f"{name}-{i}", cache)
                times[name].append((wall, cpu))
                print(f"| {i + 1} | {name} | {wall:.1f} | {cpu:.1f} |", flush=True)
        same = answers(tmp_path / "old-0") == answers(tmp_path / "new-0")
    med = {n: [statistics.median(t[k] for t in ts) for k in (0, 1)] for n, ts in times.items()}
    print("\n| tree | wall s (median) | CPU s (median) |\n|---|---:|---:|")
    for name, (wall, cpu) in med.items():
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")
    ratio = [med["new"][k] / med["old"][k] for k in (0, 1)]
    print(f"\nnew / old: {ratio[0]:.2f}x wall, {ratio[1]:.2f}x CPU; test answers identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
