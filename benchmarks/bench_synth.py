"""Synthetic data generation speed: images per second per family on one core.

    .venv/bin/python benchmarks/bench_synth.py [--n 200] [--size 64] [--difficulty medium]

Times `generate([family], n, ...)` with workers=1 (rendering, PNG encoding, records, and for
scene the COCO file and its conversion), after a small warm-up run that pays the one-off imports.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from polyvis.data.synthetic import FAMILIES, generate


def bench(family: str, n: int, size: int, difficulty: str) -> tuple[float, int]:
    """(seconds, records) of generating n images of one family in one process."""
    with tempfile.TemporaryDirectory() as tmp:
        generate([family], 4, 0, Path(tmp) / "warm", image_size=size, progress=False)
        t0 = time.perf_counter()
        counts = generate(
            [family],
            n,
            0,
            Path(tmp) / "run",
            image_size=size,
            difficulty=difficulty,
            progress=False,
        )
        seconds = time.perf_counter() - t0
    return seconds, sum(counts[family]["records"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per family")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--difficulty", default="medium")
    parser.add_argument("--families", default=",".join(FAMILIES.names()))
    args = parser.parse_args()
    # One core: keep numpy / BLAS from spreading over more (the generators barely use them).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"n={args.n} images per family, {args.size} px, difficulty {args.difficulty}, 1 worker")
    print(f"{'family':<8} {'seconds':>8} {'images/s':>9} {'records':>8}")
    for fam in args.families.split(","):
        seconds, records = bench(fam, args.n, args.size, args.difficulty)
        print(f"{fam:<8} {seconds:>8.2f} {args.n / seconds:>9.1f} {records:>8}")


if __name__ == "__main__":
    main()
